#!/usr/bin/env python
"""Make a window prior from a trained day prior: fit the latent transition (``latentda.prior.add_window``) on the
training years 2000-2004 of the shipped Held-Suarez data, report its one-day skill in latent space and save it.

Reported: the one-day R² of the transition on the held-out validation blocks of the prior's split (1 − Σ‖u_{t+1} −
A u_t‖² / Σ‖u_{t+1}‖², whitened posterior samples) and on the training pairs, the spectral norm of A, and the
eigenvalue range of the encoded posterior samples' covariance (1 everywhere would mean the aggregate posterior is
exactly the N(0, I) prior).

    PYTHONPATH=$PWD .venv/bin/python bench/window_prior.py --prior out/prior_hs128.pt --window 1 \\
        --out out/prior_hs128_w1.pt --threads 1
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
from latentda.prior import add_window  # noqa: E402

DATA = ROOT / "latentda" / "data" / "heldsuarez_t31_daily.nc"
TRAIN = ("2000-01-01", "2004-12-31")


def training_fields(variables) -> xr.Dataset:
    """The training years 2000-2004 of the shipped Held-Suarez data (``variables``; time, lat, lon), loaded."""
    return normalize_grid(xr.open_dataset(DATA)).sortby("time")[list(variables)].sel(time=slice(*TRAIN)).load()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    prior = latentda.load_prior(a.prior, device="cpu")
    fields = training_fields(prior.variables)
    t0 = time.perf_counter()
    wp = add_window(prior, fields, a.window)
    seconds = time.perf_counter() - t0
    sha = wp.save(a.out)
    print(json.dumps({"window": wp.window, "fit_seconds": round(seconds, 1), "transition": wp.transition.info,
                      "sha256": sha, "out": a.out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
