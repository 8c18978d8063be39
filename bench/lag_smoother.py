#!/usr/bin/env python
"""What time gives a linear method on the shipped data (issue 9, item 1): lagged correlations of the anomalies and
the linear smoother's gain over the per-day BLUE of the same prior.

1. Lagged correlations of the standardised anomalies of the training years 2000-2004 (climatology with 0 harmonics:
   Held-Suarez has no seasons), per variable and lag 1-5 days: ``local`` = the area-weighted mean over grid points
   of corr(x'_t, x'_{t+lag}) at the same point, ``shift`` = the same at the best zonal shift (the longitude offset,
   one for the whole globe, that maximises it: eddies travel east).
2. The linear smoother (:mod:`latentda.baselines.smoother`: VAR(1) in ``--rank`` EOFs of the training years, window
   BLUE) at windows 0 (the per-day BLUE of the same prior), 1, 2, 3 days, analysing evenly spread days of 2005 from
   pseudo-observations of all four variables at ``--sizes`` stations (random and clustered networks,
   ``latentda.sim.stations``, errors 1 K, 1.5 m/s, 100 Pa). Reported: air-temperature RMSE (K) per window, mean over
   the days, and the gain 1 − RMSE(k) / RMSE(0).

Run (from the repository root; ~10 min on 1 thread)::

    PYTHONPATH=$PWD .venv/bin/python bench/lag_smoother.py --days 24 --sizes 25,100,400 --out out/lag_smoother.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time as _time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latentda.baselines.common import training_anomalies  # noqa: E402
from latentda.baselines.smoother import fit_smoother, linear_smoother  # noqa: E402
from latentda.grid import normalize_grid  # noqa: E402
from latentda.normalization import fit_climatology  # noqa: E402
from latentda.sim.stations import DEFAULT_ERRORS, network, sample_observations  # noqa: E402

VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]
DATA = ROOT / "latentda" / "data" / "heldsuarez_t31_daily.nc"
TRAIN, HELDOUT = ("2000-01-01", "2004-12-31"), ("2005-01-01", "2005-12-31")


def lag_correlations(anom: np.ndarray, weights: np.ndarray, max_lag: int = 5) -> dict[str, dict[str, list]]:
    """Local and best-zonal-shift lag correlations per channel of ``anom`` (T, C, nlat, nlon), lat ``weights``."""
    out = {}
    T, C, nlat, nlon = anom.shape
    w = weights[:, None] / weights.sum() / nlon
    for c in range(C):
        x = anom[:, c].astype(np.float64)
        x = (x - x.mean(0)) / x.std(0)
        local, shifted, best = [], [], []
        for lag in range(1, max_lag + 1):
            a, b = x[:-lag], x[lag:]
            # corr at every zonal shift s: mean_t a(lon) b(lon + s), by FFT along longitude
            cc = np.fft.irfft(np.conj(np.fft.rfft(a, axis=-1)) * np.fft.rfft(b, axis=-1), n=nlon, axis=-1)
            per_shift = (cc.mean(0) * w).sum(axis=0)  # (nlon,) area-weighted mean over points
            s = int(np.argmax(per_shift))
            local.append(round(float(per_shift[0]), 3))
            shifted.append(round(float(per_shift[s]), 3))
            best.append(round(float(((s + nlon // 2) % nlon - nlon // 2) * 360.0 / nlon), 2))
        out[str(c)] = {"local": local, "shift": shifted, "best_shift_deg_east": best}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=24)
    p.add_argument("--sizes", default="25,100,400")
    p.add_argument("--kinds", default="random,clustered")
    p.add_argument("--windows", default="0,1,2,3")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t_start = _time.perf_counter()
    fields = normalize_grid(xr.open_dataset(DATA)).sortby("time")[VARIABLES]
    train = fields.sel(time=slice(*TRAIN)).load()
    heldout = fields.sel(time=slice(*HELDOUT)).load()
    clim = fit_climatology(train, VARIABLES, 0)
    anom, grid = training_anomalies(train, clim, VARIABLES, dtype=np.float32)
    lags = lag_correlations(anom, grid.weights())
    lags = {v: lags[str(k)] for k, v in enumerate(VARIABLES)}
    for v, r in lags.items():
        print(f"{v:<22} local {r['local']}  best shift {r['shift']} at {r['best_shift_deg_east']} deg", flush=True)
    model = fit_smoother(train, clim, VARIABLES, rank=args.rank)
    print(f"VAR(1) in {args.rank} EOFs: one-day R² of the coefficients {model.one_day_r2:.3f}", flush=True)
    windows = [int(k) for k in args.windows.split(",")]
    kmax = max(windows)
    t = heldout["time"].values
    idx = np.unique(np.linspace(kmax, t.size - 1 - kmax, args.days).round().astype(int))
    days = pd.DatetimeIndex(t[idx])
    need = pd.DatetimeIndex(sorted({d + pd.Timedelta(days=o) for d in days for o in range(-kmax, kmax + 1)}))
    records = []
    for kind in args.kinds.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            obs_all = sample_observations(heldout, network(kind, size, args.seed), VARIABLES, errors=DEFAULT_ERRORS,
                                          seed=args.seed, times=need.values)
            rec = {"network": kind, "stations": size, "rmse_T": {}, "spread_T": {}, "seconds": {}}
            for k in windows:
                err, spr, secs = [], [], []
                for d in days:
                    lo, hi = d - pd.Timedelta(days=k), d + pd.Timedelta(days=k)
                    obs = obs_all[(obs_all["time"] >= lo) & (obs_all["time"] <= hi)]
                    t0 = _time.perf_counter()
                    out = linear_smoother(model, obs, d, members=2, seed=args.seed, window=k)
                    secs.append(_time.perf_counter() - t0)
                    truth = heldout["air_temperature"].sel(time=d).values
                    wts = grid.weights()[:, None]
                    err.append(float(np.sqrt((wts * (out["air_temperature"].values[0] - truth) ** 2).mean())))
                    spr.append(float(np.sqrt((wts * out["air_temperature_spread"].values[0] ** 2).mean())))
                rec["rmse_T"][k] = float(np.mean(err))
                rec["spread_T"][k] = float(np.sqrt(np.mean(np.square(spr))))
                rec["seconds"][k] = float(np.median(secs))
            base = rec["rmse_T"][windows[0]]
            rec["gain"] = {k: round(1 - rec["rmse_T"][k] / base, 4) for k in windows}
            records.append(rec)
            print(f"{kind:<9} {size:>4}: T RMSE " + ", ".join(f"k={k} {rec['rmse_T'][k]:.3f}" for k in windows)
                  + " | gain " + ", ".join(f"k={k} {100 * rec['gain'][k]:.1f}%" for k in windows), flush=True)
    result = {"config": vars(args), "lag_correlations": lags, "one_day_r2": model.one_day_r2,
              "evaluation_days": [str(d.date()) for d in days], "records": records,
              "seconds": round(_time.perf_counter() - t_start, 1)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
