#!/usr/bin/env python
"""Train a VAE prior on the training years (2000-2004) of the shipped Held-Suarez data and save it.

Used to make the prior of the full skill benchmark (``bench/skill.py --prior PATH``); runs on CUDA when present
(about 0.4 s per epoch on an H100 for the default width), else on the CPU (9 s per epoch on this 2-core machine
when idle, latent 128: 8 min for 53 epochs).

    .venv/bin/python bench/train_prior.py --out prior_hs64.pt --latent-dim 64
    .venv/bin/python bench/train_prior.py --out out/prior_hs128.pt --latent-dim 128 --residual-modes 256 --threads 2
    python bench/train_prior.py --data latentda/data/heldsuarez_t31_daily.nc --out p.pt   # without the catalog

Prints the validation history summary, the mean reconstruction error (standardised units) and the checksum.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xarray as xr  # noqa: E402

import latentda  # noqa: E402
from latentda.grid import normalize_grid  # noqa: E402

VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="netCDF file instead of the catalog entry heldsuarez_daily")
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--residual-modes", type=int, default=0,
                   help="keep this many leading modes of the reconstruction residual (latentda.prior.residual)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--threads", type=int, default=None, help="CPU threads while training (torch's default if unset)")
    p.add_argument("--no-zonal-symmetry", action="store_true")
    a = p.parse_args(argv)
    if a.data:
        fields = xr.open_dataset(a.data)
    else:
        from tasks.catalog import read_fields
        fields = read_fields(ROOT / "catalogs" / "demo.yaml", "heldsuarez_daily")
    train = normalize_grid(fields[VARIABLES].sel(time=slice("2000-01-01", "2004-12-31"))).load()
    cfg = dict(latent_dim=a.latent_dim, base_channels=a.base_channels, epochs=a.epochs, patience=a.patience,
               beta=a.beta, seed=a.seed, device=a.device, n_harmonics=0, zonal_symmetry=not a.no_zonal_symmetry,
               max_minutes=a.max_minutes, num_threads=a.threads, residual_modes=a.residual_modes)
    t0 = time.perf_counter()
    prior = latentda.train_prior(train, cfg, variables=VARIABLES, progress=False)
    secs = time.perf_counter() - t0
    digest = prior.save(a.out)
    hist = prior.history if isinstance(prior.history, list) else []
    best = min(hist, key=lambda r: r.get("val_loss", float("inf"))) if hist else {}
    print(json.dumps({"out": a.out, "config": cfg, "train_seconds": round(secs, 1), "device": str(prior.device),
                      "recon_std_mean": float(prior.recon_std.mean()),
                      "recon_std_per_variable": [float(x) for x in prior.recon_std.mean(axis=(1, 2))],
                      "residual_modes": prior.provenance.get("residual_modes"),
                      "epochs_run": len(hist), "best_epoch": best, "sha256": digest}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
