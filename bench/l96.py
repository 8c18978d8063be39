#!/usr/bin/env python
"""Lorenz-96 benchmark of the sequential DA methods against DAPPER's published table (Sakov et al. 2008 setup).

Setup ``sakov`` (DAPPER ``mods/Lorenz96/sakov2008.py``): 40 variables, F = 8, RK4 dt = 0.05, every variable
observed every step with R = I; truth seed ``--seed``; ``--spinup`` cycles discarded, then ``--cycles`` scored
analysis cycles. Setup ``finn`` (Finn 2019): 20 observations (every other variable) every 8 steps with error
variance 0.25, ensemble members with forcing F_m ~ N(8, 0.25) and initial spread 2, LETKF with Gaspari-Cohn radius
5 and inflation 1.1 (N = 50). Method settings (``SETTINGS``) are DAPPER's suggested tunings; climatology, OI and
3D-Var use the mean and covariance of an independent free run (not the scored truth).

Reported per method: analysis RMSE (time mean of the spatial RMS error of the ensemble mean, DAPPER ``rmse.a``)
with its 95 % confidence half-width (AR(1)-corrected), spread (DAPPER ``rmv.a``; the assumed static analysis
error for climatology/OI/3D-Var), wall seconds per cycle and for the analysis alone, and whether the RMSE
reproduces the published figure within 5 % or within its confidence interval if wider. Every method is timed the
same way by ``run_twin``: ``s_per_cycle`` is the whole cycle loop (forecast of the members, analysis, and the
per-cycle scoring) divided by the cycles, ``s_analysis`` the ``analyse`` call alone (for the ensemble filters
with their inflation and rotation; for ``amortised`` the noise draw and one pass of the network). Each method
runs after the previous one, so on a shared machine they see different loads: ``bench/l96_speed.py`` times the
amortised network and the LETKF at N = 40 interleaved on identical inputs.
``amortised`` first trains Finn's analysis network (``--amortised-steps`` gradient steps per round,
``--train-minutes`` a safety stop) on simulated LETKF cycles of another truth (seed 1000), then for
``--amortised-rounds`` > 1 on its own cycles of further truths (DAgger; seeds 1001, ...), or loads
``--amortised-net PATH``;
``latent`` first trains the L96 VAE (free run of seed 2000) or loads ``--latent-prior PATH``, then runs latent
RTO with N = 40 (about 0.1 s per cycle here: use fewer cycles); ``letkf_n40`` is the LETKF at N = 40, the speed
reference; ``enkf_sqrt_rot`` the rotated ETKF at DAPPER's N 24, inflation 1.013.

How to run (from the repository root)::

    .venv/bin/python bench/l96.py --quick --json out/l96_quick.json          # 2,000 cycles, about a minute
    .venv/bin/python bench/l96.py --cycles 10000 --threads 1 --json out/l96_classical.json \
        --methods climatology,oi,3dvar,enkf_pertobs,enkf_sqrt,enkf_sqrt_rot,letkf,letkf_n40
    .venv/bin/python bench/l96.py --cycles 10000 --threads 1 --methods letkf,letkf_n40,amortised \
        --save-net out/amortised_sakov.pt --json out/l96_amortised.json
    .venv/bin/python bench/l96.py --cycles 2000 --threads 1 --methods enkf_pertobs,latent --json out/l96_latent.json
    .venv/bin/python bench/l96.py --setup finn --cycles 5000 --threads 1 --json out/l96_finn.json \
        --methods letkf,enkf_pertobs,amortised,3dvar,climatology
    .venv/bin/python bench/l96.py --setup finn --seed 77 --cycles 2000 --threads 1 --methods amortised \
        --train-minutes 20 --save-net out/amortised_finn.pt --json out/l96_finn_val.json   # validation truth
    .venv/bin/python bench/l96.py --setup finn --cycles 5000 --threads 1 --methods letkf,amortised \
        --amortised-net out/amortised_finn.pt --json out/l96_finn_amortised.json

JSON: ``{"config": {...}, "results": {method: {"rmse_a", "rmse_ci95", "spread", "s_per_cycle", "s_analysis",
"published", "reproduced", ...}}}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentda.sequential import FINN2019, TwinConfig, climatology, make_twin, run_twin  # noqa: E402
from latentda.sequential import methods as M  # noqa: E402

PUBLISHED = {"climatology": 3.6, "oi": 0.95, "3dvar": 0.41, "enkf_pertobs": 0.22, "enkf_sqrt": 0.18,
             "enkf_sqrt_rot": 0.18, "letkf": 0.22}
ALL = ("climatology", "oi", "3dvar", "enkf_pertobs", "enkf_sqrt", "enkf_sqrt_rot", "letkf", "letkf_n40", "amortised",
       "latent")
DEFAULT = "climatology,oi,3dvar,enkf_pertobs,enkf_sqrt,letkf"
SETUPS = {"sakov": TwinConfig(), "finn": FINN2019}
# DAPPER sakov2008 tunings (issue 13's table): EnKF PertObs N 40 infl 1.06, Sqrt N 28 infl 1.02, LETKF N 7
# infl 1.04 radius 4 (rotated); Finn (2019): LETKF N 50 infl 1.1 radius 5. The Sqrt filter is not rotated: with
# random rotations (DAPPER rot=True) at N 28 infl 1.02 it diverged for good after 3,870 cycles of truth seed 3000;
# ``enkf_sqrt_rot`` is DAPPER's tuning for the rotated filter (N 24, infl 1.013; published 0.18). The amortised
# network's inflation and data rounds were chosen on a validation truth (seed 77), not on the scored one.
SETTINGS = {
    "sakov": {"enkf_pertobs": dict(members=40, infl=1.06), "enkf_sqrt": dict(members=28, infl=1.02),
              "enkf_sqrt_rot": dict(members=24, infl=1.013, rot=True),
              "letkf": dict(members=7, infl=1.04, rot=True, radius=4.0),
              "letkf_n40": dict(members=40, infl=1.02, rot=True, radius=4.0), "latent": dict(members=40, infl=1.06),
              "amortised": dict(members=40, infl=1.01, rounds=3)},
    "finn": {"enkf_pertobs": dict(members=50, infl=1.1), "enkf_sqrt": dict(members=50, infl=1.1),
             "enkf_sqrt_rot": dict(members=50, infl=1.1, rot=True),
             "letkf": dict(members=50, infl=1.1, radius=5.0), "letkf_n40": dict(members=40, infl=1.1, radius=5.0),
             "latent": dict(members=50, infl=1.1), "amortised": dict(members=50, infl=0.9, rounds=3)},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=None, help="scored cycles (default 10000; 2000 with --quick)")
    p.add_argument("--spinup", type=int, default=None, help="discarded cycles (default 500; 200 with --quick)")
    p.add_argument("--methods", default=DEFAULT, help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--setup", choices=sorted(SETUPS), default="sakov")
    p.add_argument("--seed", type=int, default=3000, help="truth/observation seed")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--quick", action="store_true", help="2,000 cycles after 200 of spin-up")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amortised-net", type=Path, default=None, help="load a trained network instead of training")
    p.add_argument("--save-net", type=Path, default=None, help="save the trained amortised network here")
    p.add_argument("--train-minutes", type=float, default=15.0, help="wall-clock safety bound on amortised training")
    p.add_argument("--amortised-steps", type=int, default=1500, help="amortised gradient steps per data round")
    p.add_argument("--amortised-rounds", type=int, default=None,
                   help="data rounds: 1 = teacher LETKF cycles only, then the network's own cycles (DAgger); "
                        "default SETTINGS")
    p.add_argument("--amortised-unroll", type=int, default=1, help="cycles the network runs itself per sample")
    p.add_argument("--amortised-infl", type=float, default=None, help="inflation of the network (default SETTINGS)")
    p.add_argument("--latent-prior", type=Path, default=None, help="load the L96 VAE instead of training it")
    p.add_argument("--save-prior", type=Path, default=None, help="save the trained L96 VAE here")
    return p


def make_method(name: str, setup: str, clim, args, log):
    mean, cov = clim
    if name == "climatology":
        return M.Climatology(mean, cov)
    if name == "oi":
        return M.OptimalInterpolation(mean, cov)
    if name == "3dvar":
        return M.Var3D(cov, xB=0.02)
    if name == "enkf_pertobs":
        return M.EnKFPertObs(**SETTINGS[setup][name])
    if name in ("enkf_sqrt", "enkf_sqrt_rot"):
        return M.EnKFSqrt(**SETTINGS[setup][name])
    if name in ("letkf", "letkf_n40"):
        return M.LETKF(**SETTINGS[setup][name])
    if name == "amortised":
        from latentda.sequential.amortised import AmortisedConfig, AmortisedMethod, load_net, train_amortised

        if args.amortised_net is not None:
            net = load_net(args.amortised_net, device=args.device)
        else:
            teacher = M.LETKF(**SETTINGS[setup]["letkf"]) if setup == "finn" else None
            settings = dict(SETTINGS[setup]["amortised"])
            for key in ("infl", "rounds"):
                if getattr(args, f"amortised_{key}") is not None:
                    settings[key] = getattr(args, f"amortised_{key}")
            cfg = AmortisedConfig(max_minutes=args.train_minutes, steps=args.amortised_steps,
                                  unroll=args.amortised_unroll, **settings)
            net, info = train_amortised(SETUPS[setup], cfg, teacher=teacher, device=args.device, log=log)
            log(f"amortised: trained {info}")
            if args.save_net is not None:
                net.save(args.save_net)
        return AmortisedMethod(net)
    if name == "latent":
        from latentda.sequential.latent import LatentRTO, load_vae, save_vae, train_vae

        if args.latent_prior is not None:
            vae = load_vae(args.latent_prior, device=args.device)
        else:
            vae, _ = train_vae(SETUPS[setup].model, log=log)
            vae = vae.to(args.device)
            if args.save_prior is not None:
                save_vae(vae, args.save_prior)
        return LatentRTO(vae, **SETTINGS[setup]["latent"])
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(ALL)}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in ALL]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {', '.join(ALL)}")
    cycles = args.cycles or (2000 if args.quick else 10_000)
    spinup = args.spinup if args.spinup is not None else (200 if args.quick else 500)
    cfg = replace(SETUPS[args.setup], cycles=cycles, spinup=spinup, seed=args.seed)
    dev = torch.device(args.device)

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.perf_counter()
    twin = make_twin(cfg, device=dev)
    clim = climatology(cfg.model, seed=args.seed + 17, device=dev) if {"climatology", "oi", "3dvar"} & set(names) \
        else (None, None)
    log(f"setup {args.setup}: {cycles} cycles after {spinup} of spin-up, truth ready in "
        f"{time.perf_counter() - t0:.1f} s")
    results = {}
    for name in names:
        method = make_method(name, args.setup, clim, args, log)
        r = run_twin(method, twin, seed=args.seed + 101)
        pub = PUBLISHED.get(name) if args.setup == "sakov" else None
        ok = None if pub is None else bool(abs(r.rmse - pub) <= max(0.05 * pub, r.rmse_ci))
        results[name] = {"rmse_a": r.rmse, "rmse_ci95": r.rmse_ci, "spread": r.mean_spread,
                         "s_per_cycle": r.s_per_cycle, "s_analysis": r.s_analysis, "members": method.members,
                         "diverged": r.diverged, "published": pub, "reproduced": ok}
        log(f"{name:13s} rmse_a {r.rmse:.4f} ± {r.rmse_ci:.4f}  spread {r.mean_spread:.4f}  "
            f"{r.s_per_cycle * 1e3:.2f} ms/cycle ({r.s_analysis * 1e3:.2f} analysis)")
    print_table(results)
    out = {"config": {**asdict(cfg), "setup": args.setup, "device": str(dev), "threads": args.threads,
                      "load_avg_1min_end": os.getloadavg()[0]},
           "results": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite_or_null(out), indent=2, allow_nan=False))
    return out


def _finite_or_null(obj):
    """Strict JSON: non-finite floats (a diverged run's RMSE, a missing spread) become null."""
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_table(results: dict) -> None:
    print("\n| method | N | rmse_a (95 % CI) | published | spread | ms/cycle | ms analysis | reproduced |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        pub = "" if r["published"] is None else f"{r['published']:.2f}"
        rep = "" if r["reproduced"] is None else ("yes" if r["reproduced"] else "no")
        sp = "" if math.isnan(r["spread"]) else f"{r['spread']:.3f}"
        print(f"| {name} | {r['members']} | {r['rmse_a']:.3f} ± {r['rmse_ci95']:.3f} | {pub} | {sp} | "
              f"{r['s_per_cycle'] * 1e3:.2f} | {r['s_analysis'] * 1e3:.2f} | {rep} |")


if __name__ == "__main__":
    main()
