#!/usr/bin/env python
"""Held-out explained variance of trained priors against the EOFs at the same latent dimension (issue 12 item 1).

For every latent dimension in ``--dims`` and every named setting in ``--settings`` (PriorConfig overrides on top
of ``--base``), trains a prior on the training period (its own 10 % block split for early stopping; the held-out
period is never seen) under ``--minutes`` of wall time, then reports the explained variance (definition in
:mod:`latentda.prior.explained`: 1 - area-weighted MSE of g(mu(x)) / second moment of the standardised anomalies)
on the held-out period, per variable and for all variables, beside the rank-k area-weighted EOFs of the training
period (k = the dimension; ``eof_zonal``: the EOFs of the rotation-averaged covariance, where the data are zonally
symmetric, :func:`latentda.eof.zonal_weighted_eofs`). Every row uses the same climatology (fitted once on the training period: zonally
uniform where the data are zonally symmetric, ``n_harmonics`` from ``--base``), so the rows are comparable.
Also printed: the EV on the training period (overfitting), training minutes, epochs, best epoch, stop reason,
and the EOFs' in-sample share of the training variance (the figure the README quoted before, for reference).

    # compare levers (small settings, one process per group, 1 thread each):
    .venv/bin/python bench/prior_variance.py --dims 32 --minutes 5 --threads 1 --json out/pv_a.json \
        --settings '{"vae": {}, "beta0.1": {"beta": 0.1}}'
    # merge JSON files into the README table:
    .venv/bin/python bench/prior_variance.py --table out/pv_a.json out/pv_b.json
    # seconds, on tiny synthetic data (the test runs this):
    .venv/bin/python bench/prior_variance.py --quick --json out/pv_quick.json

``--checkpoints '{"name": "path.pt"}'`` evaluates priors trained elsewhere (rows at their latent dimension, which
must be in ``--dims``; their climatology must be the bench's). ``--save DIR`` writes each prior to ``DIR/prior_<setting>_<dim>.pt``. ``--base`` defaults to the bench settings
of ``bench/train_prior.py`` (base_channels 32, n_harmonics 0, epochs 200, patience 8).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]
SHORT = {"air_temperature": "T", "eastward_wind": "u", "northward_wind": "v", "surface_air_pressure": "ps"}
DEFAULT_BASE = {"base_channels": 32, "n_harmonics": 0, "epochs": 200, "patience": 8, "device": "cpu"}
QUICK_BASE = {"base_channels": 4, "n_harmonics": 0, "epochs": 3, "patience": 2, "batch_size": 16,
              "learning_rate": 5e-3, "kl_warmup_epochs": 1, "device": "cpu"}


def standardised(fields: xr.Dataset, clim: xr.Dataset, variables: list[str]) -> np.ndarray:
    """x' = (x - m(d)) / s(d): (T, C, nlat, nlon) float32 from ``fields`` in physical units."""
    from latentda.normalization import climatology_at

    times = fields["time"].values
    out = np.empty((times.size, len(variables), fields.sizes["lat"], fields.sizes["lon"]), dtype=np.float32)
    for k, v in enumerate(variables):
        m, s = climatology_at(clim, v, times)
        out[:, k] = (fields[v].transpose("time", "lat", "lon").values - m) / s
    return out


def load_data(a) -> tuple[xr.Dataset, xr.Dataset, list[str]]:
    """(training fields, held-out fields, variables) in physical units."""
    from latentda.grid import normalize_grid

    if a.quick:
        from latentda.testing import synthetic_fields

        ds = synthetic_fields(ntime=400, nlat=16, nlon=32, seasonal=False, seed=3)
        return ds.isel(time=slice(0, 300)), ds.isel(time=slice(300, None)), list(ds.data_vars)
    ds = normalize_grid(xr.open_dataset(a.data))
    train = ds[VARIABLES].sel(time=slice(a.train[0], a.train[1])).load()
    train.attrs = dict(ds.attrs)
    return train, ds[VARIABLES].sel(time=slice(a.heldout[0], a.heldout[1])).load(), VARIABLES


def run(a) -> dict:
    import torch

    import latentda
    from latentda.grid import Grid
    from latentda.normalization import fit_climatology
    from latentda.prior.explained import eof_reconstruction, explained_variance
    from latentda.prior.zonal import data_zonal_symmetry, fit_zonal_climatology

    torch.set_num_threads(a.threads)
    train, heldout, variables = load_data(a)
    base = dict(QUICK_BASE if a.quick else DEFAULT_BASE, **json.loads(a.base or "{}"))
    zonal = data_zonal_symmetry(train)
    fit = fit_zonal_climatology if zonal else fit_climatology
    clim = fit(train, variables, base["n_harmonics"])
    w = Grid.from_dataset(train).weights()
    x_train, x_test = standardised(train, clim, variables), standardised(heldout, clim, variables)
    info = {"train_days": int(x_train.shape[0]), "heldout_days": int(x_test.shape[0]),
            "train_period": [str(train.time.values[0])[:10], str(train.time.values[-1])[:10]],
            "heldout_period": [str(heldout.time.values[0])[:10], str(heldout.time.values[-1])[:10]],
            "zonal_symmetry_of_data": bool(zonal), "base": base, "minutes": a.minutes, "threads": a.threads}
    print(json.dumps(info), flush=True)
    rows = []
    settings = json.loads(a.settings)
    for dim in a.dims:
        for method, zonal_eofs in (("eof", False), ("eof_zonal", True)):
            if a.no_eof or (zonal_eofs and not zonal):
                continue
            t0 = time.perf_counter()
            rec = eof_reconstruction(x_train, w, dim, zonal=zonal_eofs)
            ev, ev_train = explained_variance(x_test, rec(x_test), w, variables), \
                explained_variance(x_train, rec(x_train), w, variables)
            rows.append({"dim": dim, "method": method, "heldout": ev, "train": ev_train,
                         "minutes": round((time.perf_counter() - t0) / 60, 2), "epochs": None,
                         "stop_reason": "closed form"})
            print(json.dumps(rows[-1]), flush=True)
        for name, path in a.checkpoints.items():
            prior = latentda.load_prior(path, device="cpu")
            if prior.latent_dim != dim:
                continue
            if not prior.climatology.equals(clim):
                raise ValueError(f"checkpoint {path} has another climatology than the bench's (n_harmonics "
                                 f"{prior.config.n_harmonics}, zonal {prior.config.zonal_symmetry}): its rows "
                                 "would not be comparable; pass --base with its n_harmonics")
            rows.append(dict(_prior_row(prior, x_train, x_test, w, variables), dim=dim, method=name,
                             checkpoint=path))
            print(json.dumps(rows[-1]), flush=True)
        for name, overrides in settings.items():
            cfg = dict(base, latent_dim=dim, max_minutes=a.minutes, num_threads=a.threads, seed=a.seed, **overrides)
            prior = latentda.train_prior(train, cfg, variables=variables, climatology=clim, progress=False)
            row = dict(_prior_row(prior, x_train, x_test, w, variables), dim=dim, method=name, settings=overrides)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.save:
                Path(a.save).mkdir(parents=True, exist_ok=True)
                row["checkpoint"] = str(Path(a.save) / f"prior_{name}_{dim}.pt")
                row["sha256"] = prior.save(row["checkpoint"])
    return {"info": info, "rows": rows}


def _prior_row(prior, x_train, x_test, w, variables) -> dict:
    """Explained variance (held-out and training period) and the training record of one prior."""
    from latentda.prior.explained import explained_variance, prior_reconstruction

    p = prior.provenance
    return {"heldout": explained_variance(x_test, prior_reconstruction(prior, x_test), w, variables),
            "train": explained_variance(x_train, prior_reconstruction(prior, x_train), w, variables),
            "minutes": round(p["train_seconds"] / 60, 2), "epochs": p["epochs_run"],
            "best_epoch": p["best_epoch"] + 1, "stop_reason": p["stop_reason"],
            "val_mse_best": min(h["val_mse"] for h in prior.history),
            "config": {k: v for k, v in prior.config.model_dump().items()
                       if k in ("latent_dim", "base_channels", "beta", "zonal_symmetry", "weight_decay", "dropout",
                                "res_blocks", "linear_path", "max_channel_mult")}}


def table(paths: list[str]) -> str:
    """Markdown table (dimension x method) of the rows of the given JSON outputs: per dimension the EOF rows first,
    then the priors by held-out EV; a (dimension, method) seen twice is shown once (the first file wins)."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    seen, uniq = set(), []
    for r in rows:
        key = (r["dim"], r["method"])
        if key not in seen:
            seen.add(key)
            uniq.append(r)
    uniq.sort(key=lambda r: (r["dim"], not r["method"].startswith("eof"), -r["heldout"]["all"]))
    names = list(uniq[0]["heldout"]["per_variable"])
    head = ("| dim | method | held-out EV all | " + " | ".join(SHORT.get(v, v) for v in names)
            + " | train EV all | minutes | epochs (best) | stop |")
    lines = [head, "| " + " | ".join(["---:", "---"] + ["---:"] * (len(names) + 5)) + " |"]
    for r in uniq:
        ev = r["heldout"]
        ep = "" if r["epochs"] is None else f"{r['epochs']} ({r['best_epoch']})"
        lines.append(f"| {r['dim']} | {r['method']} | {ev['all']:.3f} | "
                     + " | ".join(f"{ev['per_variable'][v]:.3f}" for v in names)
                     + f" | {r['train']['all']:.3f} | {r['minutes']:.1f} | {ep} | {r['stop_reason']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "latentda" / "data" / "heldsuarez_t31_daily.nc"))
    p.add_argument("--train", nargs=2, default=["2000-01-01", "2004-12-31"], metavar=("START", "END"))
    p.add_argument("--heldout", nargs=2, default=["2005-01-01", "2005-12-31"], metavar=("START", "END"))
    p.add_argument("--dims", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated latent dimensions (default 32; 4 with --quick)")
    p.add_argument("--settings", default=None,
                   help='JSON {name: PriorConfig overrides}, e.g. \'{"vae": {}, "ae": {"beta": 0}}\'')
    p.add_argument("--base", default=None, help="JSON PriorConfig overrides common to all settings")
    p.add_argument("--minutes", type=float, default=5.0, help="training wall-time limit per prior")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eof", action="store_true", help="skip the EOF rows")
    p.add_argument("--checkpoints", type=json.loads, default={},
                   help='JSON {name: path}: also evaluate these trained priors (at their latent dimension)')
    p.add_argument("--save", default=None, help="directory for the trained priors")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data, seconds (for the test)")
    p.add_argument("--table", nargs="+", default=None, help="print the markdown table of these JSON outputs")
    a = p.parse_args(argv)
    if a.table:
        print(table(a.table))
        return 0
    a.dims = a.dims or ([4] if a.quick else [32])
    a.settings = a.settings or ('{"vae": {}, "ae_linear": {"beta": 0, "linear_path": true}}' if a.quick
                                else '{"vae": {}}')
    out = run(a)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(table([a.json]) if a.json else json.dumps(out["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
