#!/usr/bin/env python
"""Twin-experiment skill benchmark: latent DA against climatology, OI, TSVD 3D-Var and the Brohan (2022) seed search.

Truth = the held-out year (2005) of the shipped Held-Suarez data (catalog entry ``heldsuarez_daily`` of
``catalogs/demo.yaml``); training years 2000-2004 fit the VAE prior (or ``--prior PATH`` loads one), the OI
correlation model and the TSVD modes. For each network kind (random, clustered: ``latentda.sim.stations``) and
size (25, 100, 400, 1600 stations) pseudo-observations of all four variables are drawn from the truth with the
station errors ``DEFAULT_ERRORS`` (1 K, 1.5 m/s, 100 Pa), and every method analyses each evaluation day. The
stations are the same every day, or with ``--moving-network`` each day draws its own network of the same kind and
size (what changes for the window methods: a neighbouring day then observes other places).

Scores per (network, method), averaged over the evaluation days (``latentda.metrics``, WeatherBench2 conventions):
RMSE (latitude-weighted, per day then averaged), CRPS (fair ensemble CRPS from the members of ensemble methods;
closed-form Gaussian CRPS from mean +- spread for climatology and OI), spread/skill ratio (pooled over days:
sqrt(mean spread^2 (M+1)/M) / sqrt(mean MSE); analytic spreads use (M+1)/M = 1), 90 % interval coverage
(member quantiles with Weibull positions: an M-member ensemble covers at most (M-1)/(M+1), 0.78 for M = 8, 0.82
for M = 10; the Gaussian interval for mean + spread methods), and wall seconds per analysed day (median over the
days; the mean is in the JSON). The headline variable is air_temperature (physical units, K); ``all*`` columns
average the four variables after standardising every field by the climatological standard deviation (unitless).

Methods: ``climatology``, ``oi`` (optimal interpolation), ``tsvd`` (TSVD 3D-Var; ``--tsvd-truncation``, default
99 % of the training variance: the strongest setting, close to the BLUE with the full sample covariance),
``tsvd_eq`` (TSVD 3D-Var truncated to the prior's latent dimension: Mack & Arcucci's comparison of the two
reduced spaces at equal dimension),
``seed`` (Brohan 2022: Adam 0.05, <= 1000 steps, obs misfit only, ``--seed-restarts`` sequential restarts = the
ensemble), ``latent`` (``latentda.assimilate(prior, obs, time, members=M, seed=s)``); and the window methods, which
also see the observations of the days d − k .. d + k (``--window`` k, default 1; days of 2005 only, so the first and
last day use what exists): ``smoother`` (linear smoother: VAR(1) in ``--smoother-rank`` EOFs, window BLUE, analytic
spread; ``latentda.baselines.linear_smoother``), ``oi_window`` (space-time OI: the OI's spatial correlation x a
temporal correlation fitted on the training years, advected by the mean zonal flow times a fitted factor;
``latentda.baselines.space_time_oi``), ``oi_win_noadv`` (the same without advection), ``latent_window``
(the windowed latent analysis with a window prior: ``--window-prior PATH``, or ``latentda.prior.add_window``
fitted on the training years to the day prior; representation error independent between days,
``repr_time_correlation="none"``) and ``latent_window_rc`` (the same with the representation error AR(1) in time,
the window prior's fitted ρ per variable, ``repr_time_correlation="fitted"``; the record counts the days on which
each time model was actually used, ``repr_time_models``); both solve the members with the neighbouring days
linearised at the window's posterior mode (the default ``window_neighbours="linearised"``), and
``latent_window_nl`` is ``latent_window_rc`` with every day decoded at every evaluation
(``window_neighbours="nonlinear"``).

How to run (from the repository root)::

    .venv/bin/python bench/skill.py --quick --synthetic            # a few minutes, synthetic fields (no data file)
    .venv/bin/python bench/skill.py --quick                         # a few minutes, real data, trains a small prior
    .venv/bin/python bench/skill.py --prior prior.pt --out skill.json               # full benchmark
    .venv/bin/python bench/skill.py --days 12 --members 16 --sizes 25,400 --methods climatology,oi,latent
    .venv/bin/python bench/skill.py --quick --synthetic --threads 1   # stable timings on a busy machine
    .venv/bin/python bench/skill.py --prior prior.pt --methods latent,smoother,latent_window --window 1
    .venv/bin/python bench/skill.py --prior prior.pt --methods latent --kinds random --sizes 25,100,400 \
        --priors vae,pae --flow-prior pae.pt --samplers rto,laplace,langevin --threads 1   # flow prior x samplers

``--priors vae,pae`` x ``--samplers rto,laplace,langevin`` run the ``latent`` method once per pair (``pae``: the
prior with a latent flow, ``--flow-prior PATH`` or fitted by ``latentda.prior.add_flow`` on the training years;
labels ``pae/langevin`` etc., plain ``latent`` for vae + rto). The ``rank`` columns are the rank-histogram flatness
chi2 / N of the members' ranks pooled over the evaluation days (0 is flat).

``--quick``: 3 evaluation days, sizes 25 and 400, 8 members and 3 seed-search restarts (the paper's 10 sequential
restarts dominate the run time), a prior trained for at most ``--prior-minutes`` (default 3 in quick mode). Without
``--quick``: 24 evaluation days spread evenly over 2005, sizes 25, 100, 400, 1600, 32 members. ``--synthetic``
replaces the data file by ``latentda.testing.synthetic_fields`` (6 years on a 16 x 32 grid, all four variables,
same date split). ``--save-prior PATH`` keeps the trained prior for a later ``--prior PATH``. The table is
printed and, with ``--out PATH``, written as JSON (config, provenance, one record per network and method).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time as _time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from early_threads import early_threads  # noqa: E402

_THREADS = early_threads(sys.argv[1:])

import numpy as np
import pandas as pd
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import latentda  # noqa: E402
from latentda import baselines, metrics  # noqa: E402
from latentda.grid import normalize_grid  # noqa: E402
from latentda.normalization import climatology_at, fit_climatology  # noqa: E402
from latentda.sim.stations import DEFAULT_ERRORS, network, sample_observations  # noqa: E402

VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]
HEADLINE = "air_temperature"
TRAIN = ("2000-01-01", "2004-12-31")
HELDOUT = ("2005-01-01", "2005-12-31")
ALL_METHODS = ("climatology", "oi", "tsvd", "tsvd_eq", "seed", "latent", "smoother", "oi_window", "oi_win_noadv",
               "latent_window", "latent_window_rc", "latent_window_nl")
WINDOW_METHODS = ("smoother", "oi_window", "oi_win_noadv", "latent_window", "latent_window_rc", "latent_window_nl")
LATENT_WINDOW = {  # method -> its window options
    "latent_window": {"repr_time_correlation": "none"},
    "latent_window_rc": {"repr_time_correlation": "fitted"},
    "latent_window_nl": {"repr_time_correlation": "fitted", "window_neighbours": "nonlinear"}}


# -- data and fitted models ----------------------------------------------------------------------------------------
def load_fields(args) -> xr.Dataset:
    if args.synthetic:
        from latentda.testing import synthetic_fields

        return synthetic_fields(ntime=2192, nlat=16, nlon=32, variables=VARIABLES, seed=args.seed,
                                start="2000-01-01")
    data = ROOT / "latentda" / "data" / "heldsuarez_t31_daily.nc"
    if not data.exists():
        raise SystemExit(f"{data} does not exist yet (it is generated by `latentda simulate`); "
                         "run with --synthetic to use synthetic fields instead")
    from tasks.catalog import read_fields

    return read_fields(args.catalog, "heldsuarez_daily")


def train_or_load_prior(train: xr.Dataset, args):
    if args.prior:
        prior = latentda.load_prior(args.prior, device=args.device)
        missing = [v for v in VARIABLES if v not in prior.variables]
        if missing:
            raise SystemExit(f"prior {args.prior} lacks variable(s) {missing}")
        return prior, {"prior": str(args.prior), "trained": False}
    cfg = dict(latent_dim=args.latent_dim, epochs=args.prior_epochs, device=args.device, seed=args.seed,
               n_harmonics=args.harmonics)
    if args.prior_minutes:
        cfg["max_minutes"] = args.prior_minutes
    if args.synthetic or args.quick:
        cfg.update(base_channels=16, batch_size=32, learning_rate=2e-3, patience=8)
    t0 = _time.perf_counter()
    prior = latentda.train_prior(train, cfg, variables=VARIABLES, progress=False)
    info = {"prior": "trained", "trained": True, "train_seconds": round(_time.perf_counter() - t0, 1),
            "config": cfg, "provenance": {k: v for k, v in getattr(prior, "provenance", {}).items()
                                          if isinstance(v, (str, int, float))}}
    if args.save_prior:
        prior.save(str(args.save_prior))
        info["saved_to"] = str(args.save_prior)
    return prior, info


def evaluation_days(heldout: xr.Dataset, n: int) -> np.ndarray:
    t = heldout["time"].values
    if n < 1:
        raise SystemExit(f"--days {n} must be >= 1")
    idx = np.unique(np.linspace(0, t.size - 1, min(n, t.size)).round().astype(int))
    return t[idx]


# -- scoring -------------------------------------------------------------------------------------------------------
def _da(a: np.ndarray, grid_ds: xr.Dataset, member: bool = False) -> xr.DataArray:
    dims = ("member", "lat", "lon") if member else ("lat", "lon")
    return xr.DataArray(a, dims=dims, coords={"lat": grid_ds["lat"].values, "lon": grid_ds["lon"].values})


def score_day(out: xr.Dataset, truth: xr.Dataset, clim: xr.Dataset, day) -> dict[str, dict[str, float]]:
    """Per-variable score components of one analysis, physical (``phys``) and standardised (``std``) units.

    ``mse``, ``crps``, ``var`` (mean spread^2 times (M+1)/M, or 1 for analytic spreads), ``cov`` (90 %), ``bias``.
    """
    res = {}
    for v in VARIABLES:
        m, s = (a[0] for a in climatology_at(clim, v, [np.datetime64(day, "ns")]))
        y = truth[v].sel(time=day).transpose("lat", "lon").values.astype(np.float64)
        mean = out[v].values[0].astype(np.float64)
        spread = out[f"{v}_spread"].values[0].astype(np.float64)
        ens = out[f"{v}_members"].values[0].astype(np.float64) if f"{v}_members" in out else None
        comp = {}
        for unit, (f, sc) in {"phys": (lambda x: x, lambda x: x),
                              "std": (lambda x: (x - m) / s, lambda x: x / s)}.items():
            yt, mu = _da(f(y), out), _da(f(mean), out)
            row = {"mse": float(metrics.mse(mu, yt)), "bias": float(metrics.bias(mu, yt))}
            if ens is not None and ens.shape[0] > 1:
                e = _da(f(ens), out, member=True)
                M = ens.shape[0]
                row["crps"] = float(metrics.crps_ensemble(e, yt))
                row["var"] = float(metrics.ensemble_variance(e)) * (M + 1) / M
                row["cov"] = float(metrics.interval_coverage(e, yt, 0.9))
                # spread/skill uses the members' mean, as metrics.spread_skill_ratio does
                row["mse_ens"] = float(metrics.mse(e.mean("member"), yt))
                row["ranks"] = metrics.rank_histogram(e, yt)
            else:
                sd = _da(sc(spread), out)
                row["crps"] = float(metrics.crps_gaussian(mu, sd, yt))
                row["var"] = float(metrics.spatial_mean(sd ** 2))
                row["cov"] = float(metrics.interval_coverage_gaussian(mu, sd, yt, 0.9))
                row["mse_ens"] = row["mse"]
            comp[unit] = row
        res[v] = comp
    return res


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values; NaN (no warning) when there is none (a diagnostic the method does not write)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def aggregate(day_scores: list[dict], seconds: list[float], diags: list[dict]) -> dict:
    """Average per-day components into the reported scores (module docstring)."""
    out = {"days": len(day_scores), "seconds_per_day": float(np.median(seconds)),
           "seconds_per_day_mean": float(np.mean(seconds)),
           "diagnostics": {k: _nanmean([d[k] for d in diags]) for k in diags[0]}}
    for unit in ("phys", "std"):
        per_var = {}
        for v in VARIABLES:
            rows = [d[v][unit] for d in day_scores]
            mse = np.array([r["mse"] for r in rows])
            ranks = np.sum([r["ranks"] for r in rows], axis=0) if "ranks" in rows[0] else None
            per_var[v] = {
                "rmse": float(np.mean(np.sqrt(mse))),
                "rmse_per_day": np.sqrt(mse).tolist(),  # for paired comparisons of methods on the same days
                "bias": float(np.mean([r["bias"] for r in rows])),
                "crps": float(np.mean([r["crps"] for r in rows])),
                "crps_per_day": [float(r["crps"]) for r in rows],
                "spread_skill": float(np.sqrt(np.mean([r["var"] for r in rows]))
                                      / np.sqrt(np.mean([r["mse_ens"] for r in rows]))),
                "coverage90": float(np.mean([r["cov"] for r in rows])),
                # rank-histogram flatness chi2 / N of the histogram pooled over days (0: flat; metrics docs)
                "rank_chi2": metrics.rank_histogram_chi2(ranks)[1] if ranks is not None else float("nan"),
                "rank_counts": ranks.tolist() if ranks is not None else None,
            }
        out[unit] = per_var
    out["headline"] = dict(out["phys"][HEADLINE], variable=HEADLINE)
    out["all_standardised"] = {k: float(np.mean([out["std"][v][k] for v in VARIABLES]))
                               for k in ("rmse", "crps", "spread_skill", "coverage90", "rank_chi2")}
    return out


# -- driver --------------------------------------------------------------------------------------------------------
def variants(method: str, args) -> list[dict]:
    """The runs of one method: ``latent`` once per (prior, sampler) of ``--priors`` x ``--samplers``."""
    if method != "latent":
        return [{"label": method}]
    return [{"label": "latent" if (p, s) == ("vae", "rto") else f"{p}/{s}", "prior": p, "sampler": s}
            for p in args.priors for s in args.samplers]


def run_method(name: str, models: dict, obs: pd.DataFrame, day, args, variant: dict | None = None) -> xr.Dataset:
    if name == "climatology":
        return baselines.climatology(models["clim_bg"], obs, day, members=args.members, seed=args.seed)
    if name == "oi":
        return baselines.optimal_interpolation(models["oi"], obs, day, members=args.members, seed=args.seed)
    if name == "tsvd":
        return baselines.tsvd_3dvar(models["tsvd"], obs, day, members=args.members, seed=args.seed,
                                    keep_members=True)
    if name == "tsvd_eq":
        return baselines.tsvd_3dvar(models["tsvd_eq"], obs, day, members=args.members, seed=args.seed,
                                    keep_members=True)
    if name == "seed":
        return baselines.seed_search(models["prior"], obs, day, members=args.seed_restarts, seed=args.seed,
                                     keep_members=True)
    if name == "latent":
        v = variant or {"prior": "vae", "sampler": "rto"}
        opts = dict(args.latent_options, sampler=v["sampler"])
        return latentda.assimilate(models["pae" if v["prior"] == "pae" else "prior"], obs, day,
                                   members=args.members, seed=args.seed, keep_members=True, **opts)
    if name == "smoother":
        return baselines.linear_smoother(models["smoother"], obs, day, members=args.members, seed=args.seed,
                                         window=args.window)
    if name in ("oi_window", "oi_win_noadv"):
        return baselines.space_time_oi(models[name], obs, day, members=args.members, seed=args.seed,
                                       window=args.window)
    if name in LATENT_WINDOW:
        opts = {**args.latent_options, **LATENT_WINDOW[name]}
        return latentda.assimilate(models["window_prior"], obs, day, members=args.members, seed=args.seed,
                                   keep_members=True, window=args.window, **opts)
    raise ValueError(f"unknown method {name!r}; choose from {ALL_METHODS}")


def members_of(name: str, args) -> int:
    return {"climatology": 0, "oi": 0, "smoother": 0, "oi_window": 0, "oi_win_noadv": 0,
            "seed": args.seed_restarts}.get(name, args.members)


def format_table(records: list[dict]) -> str:
    hdr = (f"{'network':<10} {'n':>5} {'method':<16} {'M':>3} | {'T rmse':>7} {'T crps':>7} {'T ssr':>6} "
           f"{'T cov':>6} {'T rank':>6} | {'all rmse':>8} {'all crps':>8} {'all ssr':>7} {'all cov':>7} "
           f"{'all rank':>8} | {'s/day':>7} {'iter':>5}")
    lines = [hdr, "-" * len(hdr)]
    for r in records:
        h, a = r["headline"], r["all_standardised"]
        m = str(r["members"]) if r["members"] else "-"
        lines.append(f"{r['network']:<10} {r['stations']:>5} {r.get('label', r['method']):<16} {m:>3} | "
                     f"{h['rmse']:7.3f} {h['crps']:7.3f} {h['spread_skill']:6.2f} {h['coverage90']:6.2f} "
                     f"{h['rank_chi2']:6.3f} | {a['rmse']:8.3f} {a['crps']:8.3f} {a['spread_skill']:7.2f} "
                     f"{a['coverage90']:7.2f} {a['rank_chi2']:8.3f} | "
                     f"{r['seconds_per_day']:7.2f} {r['diagnostics']['iterations']:5.0f}")
    return "\n".join(lines)


LEGEND = ("T = air_temperature (K); all = mean over the 4 variables in climatological-std units; rmse, crps "
          "(fair ensemble CRPS, Gaussian for M = -), ssr = spread/skill, cov = 90 % interval coverage; rank = "
          "rank-histogram flatness chi2/N pooled over days (0 flat; metrics.rank_histogram_chi2); "
          "M = members (- : mean + analytic spread); s/day = median wall seconds per analysed day; iter = mean "
          "solver iterations per member.")


def _finite(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few days, sizes 25 and 400, 8 members")
    p.add_argument("--synthetic", action="store_true", help="synthetic fields instead of the Held-Suarez file")
    p.add_argument("--catalog", default=str(ROOT / "catalogs" / "demo.yaml"))
    p.add_argument("--prior", default=None, help="load this prior checkpoint instead of training one")
    p.add_argument("--save-prior", default=None, help="save the trained prior here")
    p.add_argument("--days", type=int, default=None, help="evaluation days (evenly spread over 2005)")
    p.add_argument("--members", type=int, default=None, help="ensemble size of latent DA and TSVD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default=None, help="comma-separated station counts")
    p.add_argument("--kinds", default="random,clustered")
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--tsvd-truncation", type=float, default=0.99,
                   help="TSVD modes: variance fraction in (0, 1] or, if > 1, a number of modes")
    p.add_argument("--seed-restarts", type=int, default=None,
                   help="restarts of the seed search (default 10 as in the paper; 3 with --quick)")
    p.add_argument("--latent-options", type=json.loads, default={},
                   help='JSON dict of keyword options for latentda.assimilate, e.g. \'{"repr_scale": 1.2}\'')
    p.add_argument("--samplers", default="rto", help="comma list of latent samplers: rto, laplace, langevin")
    p.add_argument("--priors", default="vae", help="comma list: vae (the --prior), pae (the same with a flow)")
    p.add_argument("--flow-prior", default=None,
                   help="the pae prior checkpoint (default: latentda.prior.add_flow on the training years)")
    p.add_argument("--window", type=int, default=1,
                   help="half-width k (days) of the window methods smoother and latent_window")
    p.add_argument("--window-prior", default=None,
                   help="window prior checkpoint for latent_window (default: latentda.prior.add_window on the prior)")
    p.add_argument("--moving-network", action="store_true",
                   help="draw a new network of the same kind and size for every observation day (seed + the day's "
                        "ordinal): stations that move from day to day, like ships and aircraft; default: fixed")
    p.add_argument("--smoother-rank", type=int, default=128, help="EOFs of the linear smoother's VAR(1)")
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--prior-epochs", type=int, default=None)
    p.add_argument("--prior-minutes", type=float, default=None)
    p.add_argument("--harmonics", type=int, default=None, help="climatology harmonics (default 0 real, 3 synthetic)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/torch threads (set before import; 1 gives stable timings on a shared machine)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.days = args.days or (3 if args.quick else 24)
    args.members = args.members or (8 if args.quick else 32)
    args.seed_restarts = args.seed_restarts or (3 if args.quick else 10)
    args.sizes = [int(s) for s in (args.sizes or ("25,400" if args.quick else "25,100,400,1600")).split(",")]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.methods = [m for m in args.methods.split(",") if m]
    args.samplers = [x for x in args.samplers.split(",") if x]
    args.priors = [x for x in args.priors.split(",") if x]
    if set(args.priors) - {"vae", "pae"} or set(args.samplers) - {"rto", "laplace", "langevin"}:
        p.error(f"--priors {args.priors} / --samplers {args.samplers}: choose from vae, pae / rto, laplace, langevin")
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(ALL_METHODS)}")
    if args.harmonics is None:
        args.harmonics = 3 if args.synthetic else 0  # Held-Suarez has no seasons
    if args.prior_epochs is None:
        args.prior_epochs = 30 if (args.quick or args.synthetic) else 60
    if args.prior_minutes is None and args.quick:
        args.prior_minutes = 3.0
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t_start = _time.perf_counter()
    fields = normalize_grid(load_fields(args)).sortby("time")
    train = fields.sel(time=slice(*TRAIN))[VARIABLES].load()
    heldout = fields.sel(time=slice(*HELDOUT))[VARIABLES].load()
    if train.sizes["time"] == 0 or heldout.sizes["time"] == 0:
        raise SystemExit(f"need training days in {TRAIN} and held-out days in {HELDOUT}")
    days = evaluation_days(heldout, args.days)
    print(f"data: {'synthetic' if args.synthetic else 'heldsuarez_daily'} {dict(fields.sizes)}; "
          f"train {train.sizes['time']} days, evaluate {days.size} days of 2005", flush=True)

    models: dict = {}
    info: dict = {}
    need_prior = any(m in args.methods for m in ("seed", "latent", "tsvd_eq", *LATENT_WINDOW))
    if need_prior:
        models["prior"], info["prior"] = train_or_load_prior(train, args)
        clim = models["prior"].climatology
        print(f"prior: {info['prior'].get('prior')} latent_dim={models['prior'].latent_dim} "
              f"({info['prior'].get('train_seconds', 0)} s)", flush=True)
    else:
        clim = fit_climatology(train, VARIABLES, args.harmonics)
    models["clim_bg"] = clim
    if "latent" in args.methods and "pae" in args.priors:
        t0 = _time.perf_counter()
        if args.flow_prior:
            models["pae"] = latentda.load_prior(args.flow_prior, device=args.device)
        else:
            from latentda.prior import add_flow

            models["pae"] = add_flow(models["prior"], train)
        info["pae"] = {"source": args.flow_prior or "add_flow", "flow": models["pae"].flow.info(),
                       "seconds": round(_time.perf_counter() - t0, 1)}
        print(f"pae prior: flow held-out NLL/dim {models['pae'].flow.fit_info.get('val_nll', float('nan')):.4f} "
              f"(N(0, I): {models['pae'].flow.fit_info.get('val_nll_gaussian', float('nan')):.4f})", flush=True)
    if any(m in args.methods for m in LATENT_WINDOW):
        t0 = _time.perf_counter()
        if args.window_prior:
            models["window_prior"] = latentda.load_prior(args.window_prior, device=args.device)
        else:
            from latentda.prior import add_window

            models["window_prior"] = add_window(models["prior"], train, args.window)
        info["window_prior"] = {"window": models["window_prior"].window, "source": args.window_prior or "add_window",
                                "transition": models["window_prior"].transition.info,
                                "seconds": round(_time.perf_counter() - t0, 1)}
        print(f"window prior: ±{models['window_prior'].window} days, one-day latent R² "
              f"{models['window_prior'].transition.info.get('one_day_r2', float('nan')):.3f}", flush=True)
        rt = models["window_prior"].transition.info.get("repr_time")
        if rt:
            print("representation error in time (lag-1 / lag-2, training pairs): " + ", ".join(
                f"{v} {l1:.3f} / {l2:.3f}" for v, l1, l2 in zip(rt["variables"], rt["lag1"], rt["lag2"])), flush=True)
    if "smoother" in args.methods:
        t0 = _time.perf_counter()
        models["smoother"] = baselines.fit_smoother(train, clim, VARIABLES, rank=args.smoother_rank)
        info["smoother"] = {"rank": args.smoother_rank, "window": args.window,
                            "one_day_r2": models["smoother"].one_day_r2,
                            "fit_seconds": round(_time.perf_counter() - t0, 1)}
        print(f"smoother: VAR(1) in {args.smoother_rank} EOFs, one-day R² {models['smoother'].one_day_r2:.3f}",
              flush=True)
    if any(m in args.methods for m in ("oi", "oi_window", "oi_win_noadv")):
        t0 = _time.perf_counter()
        models["oi"] = baselines.fit_oi(train, clim, VARIABLES, seed=args.seed)
        info["oi"] = {"model": models["oi"].model, "length_scale_km": models["oi"].length_scale_km,
                      "variance": models["oi"].variance, "fit_seconds": round(_time.perf_counter() - t0, 1)}
        print("oi: " + ", ".join(f"{v} {models['oi'].model[v]} L={models['oi'].length_scale_km[v]:.0f} km"
                                 for v in VARIABLES), flush=True)
    for name, advect in (("oi_window", True), ("oi_win_noadv", False)):
        if name in args.methods:
            t0 = _time.perf_counter()
            models[name] = baselines.fit_space_time_oi(train, clim, VARIABLES, oi=models["oi"],
                                                       options=baselines.SpaceTimeFitOptions(advection=advect))
            st = models[name]
            info[name] = {"time_model": st.time_model, "time_scale_days": st.time_scale_days,
                          "advection_factor": st.advection_factor, "lag_correlation": st.lag_correlation,
                          "fit_seconds": round(_time.perf_counter() - t0, 1)}
            print(f"{name}: " + ", ".join(f"{v} {st.time_model[v]} tau={st.time_scale_days[v]:.2f} d "
                                          f"alpha={st.advection_factor[v]:.1f} r1={st.lag_correlation[v][0]:.2f}"
                                          for v in VARIABLES), flush=True)
    if "tsvd" in args.methods:
        t0 = _time.perf_counter()
        trunc = int(args.tsvd_truncation) if args.tsvd_truncation > 1 else float(args.tsvd_truncation)
        models["tsvd"] = baselines.fit_tsvd(train, clim, VARIABLES, truncation=trunc)
        info["tsvd"] = {"truncation": models["tsvd"].truncation,
                        "explained_variance": models["tsvd"].explained_variance,
                        "fit_seconds": round(_time.perf_counter() - t0, 1)}
        print(f"tsvd: {models['tsvd'].truncation} modes, {models['tsvd'].explained_variance:.3f} of the variance",
              flush=True)

    if "tsvd_eq" in args.methods:
        t0 = _time.perf_counter()
        models["tsvd_eq"] = baselines.fit_tsvd(train, clim, VARIABLES, truncation=int(models["prior"].latent_dim))
        info["tsvd_eq"] = {"truncation": models["tsvd_eq"].truncation,
                           "explained_variance": models["tsvd_eq"].explained_variance,
                           "fit_seconds": round(_time.perf_counter() - t0, 1)}
        print(f"tsvd_eq: {models['tsvd_eq'].truncation} modes (the latent dimension), "
              f"{models['tsvd_eq'].explained_variance:.3f} of the variance", flush=True)

    # window methods also see the observations of d − k .. d + k (days of 2005 only: the record's edges use what
    # exists); each day's pseudo-observations do not depend on which other days are sampled
    k_obs = args.window if any(m in WINDOW_METHODS for m in args.methods) else 0
    obs_days = pd.DatetimeIndex(sorted({pd.Timestamp(d) + pd.Timedelta(days=o) for d in days
                                        for o in range(-k_obs, k_obs + 1)}))
    obs_days = obs_days[obs_days.isin(pd.DatetimeIndex(heldout["time"].values))].values
    records = []
    for kind in args.kinds:
        for size in args.sizes:
            if args.moving_network:  # each day its own stations (seed + the day's ordinal), same kind and size
                obs_all = pd.concat([sample_observations(heldout, network(kind, size, args.seed + pd.Timestamp(t)
                                                                          .toordinal()), VARIABLES,
                                                         errors=DEFAULT_ERRORS, seed=args.seed, times=[t])
                                     for t in obs_days], ignore_index=True)
            else:
                obs_all = sample_observations(heldout, network(kind, size, args.seed), VARIABLES,
                                              errors=DEFAULT_ERRORS, seed=args.seed, times=obs_days)
            for method, variant in [(m, v) for m in args.methods for v in variants(m, args)]:
                scores, secs, diags, time_models = [], [], [], {}
                for day in days:
                    k = args.window if method in WINDOW_METHODS else 0
                    lo, hi = pd.Timestamp(day) - pd.Timedelta(days=k), pd.Timestamp(day) + pd.Timedelta(days=k)
                    obs = obs_all[(obs_all["time"] >= lo) & (obs_all["time"] <= hi)]
                    t0 = _time.perf_counter()
                    out = run_method(method, models, obs, pd.Timestamp(day), args, variant)
                    secs.append(_time.perf_counter() - t0)
                    scores.append(score_day(out, heldout, clim, pd.Timestamp(day)))
                    tm = out.attrs.get("latentda:repr_time_correlation")
                    if tm is not None:
                        time_models[tm] = time_models.get(tm, 0) + 1
                    diags.append({k: float(out[k].values[0]) if k in out else float("nan") for k in
                                  ("obs_used", "fit_before", "fit_after", "iterations", "converged_fraction",
                                   "acceptance_rate", "ess")})
                rec = {"network": f"{kind}-moving" if args.moving_network else kind, "stations": size,
                       "method": method, "label": variant["label"],
                       "prior_kind": variant.get("prior"), "sampler": variant.get("sampler"),
                       "members": members_of(method, args), "repr_time_models": time_models or None,
                       **aggregate(scores, secs, diags)}
                records.append(rec)
                print(format_table([rec]).splitlines()[-1], flush=True)

    print()
    print(format_table(records))
    print(LEGEND)
    result = {
        "config": {k: v for k, v in vars(args).items()},
        "data": "synthetic" if args.synthetic else "heldsuarez_daily",
        "evaluation_days": [str(pd.Timestamp(d).date()) for d in days],
        "observation_errors": {v: DEFAULT_ERRORS[v] for v in VARIABLES},
        "models": info,
        "records": records,
        "provenance": {"latentda": latentda.__version__, "python": platform.python_version(),
                       "total_seconds": round(_time.perf_counter() - t_start, 1),
                       "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(_finite(result), indent=1, default=str))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
