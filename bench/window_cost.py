"""Cost of the windowed latent analysis against the per-day analysis, interleaved day by day (issue 9: "cost per day
at most 3x the per-day latent analysis, same run, medians").

For each network and each evaluation day this runs, back to back in one process, the per-day analysis
(``latentda.assimilate`` with the day prior) and the window analysis (``--window-prior``, window ±k) with every
``--neighbours`` choice of the option ``window_neighbours`` ("linearised": the members solved with the neighbouring
days linearised at the window's posterior mode, the default; "nonlinear": every day decoded at every evaluation).
Interleaving puts the methods being compared under the same machine load (a shared machine's load drifts over a
run that takes one method at a time over all days, as ``bench/skill.py`` does). Reports, per network, the median
wall seconds per day of each method, the median of the per-day ratios window / per-day, and the temperature RMSE
(K, area-weighted, ensemble mean against the held-out truth) of each method over the days. Same data, days,
networks, observation errors and seed as ``bench/skill.py`` (its evaluation days, its ``network`` and
``sample_observations``); 32 members; the isotropic representation error (``residual_modes: false``) as in the
README's issue-9 tables.

Run from the repository root (after ``bench/train_prior.py`` and ``bench/window_prior.py``, see the README)::

    .venv/bin/python bench/window_cost.py --prior out/prior_hs128.pt --window-prior out/prior_hs128_w1.pt \\
        --kinds random,clustered --sizes 25,100,400 --days 8 --threads 1 --json out/window_cost.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from early_threads import early_threads  # noqa: E402

early_threads(sys.argv)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", required=True, help="day prior checkpoint")
    p.add_argument("--window-prior", required=True, help="window prior checkpoint (bench/window_prior.py)")
    p.add_argument("--kinds", default="random,clustered")
    p.add_argument("--sizes", default="25,100,400")
    p.add_argument("--days", type=int, default=8, help="evaluation days (bench/skill.py's evenly spread days)")
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbours", default="linearised,nonlinear", help="window_neighbours choices to time")
    p.add_argument("--catalog", default=str(ROOT / "catalogs" / "demo.yaml"))
    p.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (1 for stable timings)")
    p.add_argument("--json", default=None, help="write the per-day seconds and the summary here")
    args = p.parse_args(argv)
    args.kinds = args.kinds.split(",")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.neighbours = args.neighbours.split(",")
    return args


def t_rmse(out, truth) -> float:
    """``latentda.metrics.rmse`` (K, latitude-weighted) of the ensemble-mean temperature against the truth field
    (lat, lon), on the analysis's grid coordinates."""
    from latentda import metrics

    mean = out["air_temperature"].isel(time=0).astype(np.float64)
    return float(metrics.rmse(mean, mean.copy(data=truth.transpose("lat", "lon").values.astype(np.float64))))


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import latentda
    from latentda.grid import normalize_grid
    from latentda.sim.stations import DEFAULT_ERRORS, network, sample_observations
    from skill import HELDOUT, VARIABLES, evaluation_days
    from tasks.catalog import read_fields

    fields = normalize_grid(read_fields(args.catalog, "heldsuarez_daily")).sortby("time")
    heldout = fields.sel(time=slice(*HELDOUT))[VARIABLES].load()
    days = evaluation_days(heldout, args.days)
    day_prior = latentda.load_prior(args.prior)
    window_prior = latentda.load_prior(args.window_prior)
    k = int(window_prior.window)
    obs_days = pd.DatetimeIndex(sorted({pd.Timestamp(d) + pd.Timedelta(days=o) for d in days
                                        for o in range(-k, k + 1)}))
    obs_days = obs_days[obs_days.isin(pd.DatetimeIndex(heldout["time"].values))].values
    opts = {"residual_modes": False}
    methods = ["per-day"] + [f"window-{nb}" for nb in args.neighbours]
    print(f"{days.size} days, window ±{k}, {args.members} members, threads {torch.get_num_threads()}", flush=True)

    def analyse(method: str, obs: pd.DataFrame, day: pd.Timestamp):
        if method == "per-day":
            sel = obs[(obs["time"] >= day) & (obs["time"] <= day)]  # bench/skill.py's selection with k = 0
            return latentda.assimilate(day_prior, sel, day, members=args.members, seed=args.seed, **opts)
        return latentda.assimilate(window_prior, obs, day, members=args.members, seed=args.seed, window=k,
                                   window_neighbours=method.removeprefix("window-"), **opts)

    records = []
    for kind in args.kinds:
        for size in args.sizes:
            obs_all = sample_observations(heldout, network(kind, size, args.seed), VARIABLES,
                                          errors=DEFAULT_ERRORS, seed=args.seed, times=obs_days)
            secs = {m: [] for m in methods}
            rmse = {m: [] for m in methods}
            for day in days:
                day = pd.Timestamp(day)
                lo, hi = day - pd.Timedelta(days=k), day + pd.Timedelta(days=k)
                obs = obs_all[(obs_all["time"] >= lo) & (obs_all["time"] <= hi)]
                for m in methods:
                    t0 = time.perf_counter()
                    out = analyse(m, obs, day)
                    secs[m].append(time.perf_counter() - t0)
                    rmse[m].append(t_rmse(out, heldout["air_temperature"].sel(time=day)))
            rec = {"network": kind, "stations": size, "days": int(days.size),
                   "seconds_median": {m: float(np.median(v)) for m, v in secs.items()},
                   "ratio_median": {m: float(np.median(np.array(secs[m]) / np.array(secs["per-day"])))
                                    for m in methods[1:]},
                   "t_rmse": {m: float(np.sqrt(np.mean(np.square(v)))) for m, v in rmse.items()},
                   "seconds": secs, "t_rmse_per_day": rmse}
            records.append(rec)
            print(f"{kind:>9} {size:5d} | " + " | ".join(
                f"{m} {rec['seconds_median'][m]:.2f} s" + (f" ({rec['ratio_median'][m]:.2f}x)" if m in
                                                            rec["ratio_median"] else "")
                + f" T {rec['t_rmse'][m]:.3f}" for m in methods), flush=True)
    result = {"config": {k_: v for k_, v in vars(args).items()}, "window": k, "records": records}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
