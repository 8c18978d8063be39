#!/usr/bin/env python
"""Seconds per Lorenz-96 analysis: Finn's amortised network against the LETKF at N = 40, on identical inputs.

Setup ``sakov`` of ``bench/l96.py`` (40 variables, every variable observed every step, R = I), truth seed
``--seed``. The LETKF at N = 40 (inflation 1.02, radius 4, rotated: ``letkf_n40`` of ``bench/l96.py``) cycles
the twin; after ``--spinup`` cycles, each of the next ``--cycles`` cycles times, one call each, in an order that
alternates between cycles:

* ``forecast``: the RK4 forecast of the 40 members (the same for every method);
* ``letkf_n40``: ``LETKF.analyse`` (the analysis, its inflation and rotation);
* ``amortised``: ``AmortisedMethod.analyse`` (noise draw and one pass of the network's
  :class:`latentda.sequential.amortised_inference.AnalysisPlan`);
* ``amortised_forward``: the network's training forward pass :meth:`AnalysisNet.forward` on the same input
  (what ``AmortisedMethod`` ran per cycle before the plan), as a baseline of this change.

All analyses see the same forecast ensemble and observations; the LETKF's analysis is carried on. Then
``letkf_n40_alone`` and ``amortised_alone`` time each method again on the recorded inputs with its calls back to
back (warm caches: a lower bound, not a cycle), and ``letkf_n40_cycle`` and ``amortised_cycle`` time whole
cycles (the forecast from the recorded previous analysis, then the analysis) as a filter runs them, in blocks of
50 cycles that alternate between the two methods (each method's own code between its calls, both at nearly the
same load). Reported:
the median and the 10-90 % range of each, the ratio of the LETKF's median to the amortised one for the analysis
alone and for forecast + analysis (median forecast + median analysis), in wall time (the issue's seconds) and in
CPU time of the benchmark's thread (``time.thread_time``: not counting the time the process waits for a core,
so much less sensitive to the load of a shared machine). Interleaving makes both methods see the same load,
which on a shared machine moves the absolute times by 2-10× (the JSON records the 1-minute load average before
and after the timed loop). ``--profile PATH`` then runs each method under cProfile on the recorded inputs and
writes the 20 most expensive functions by own time.

How to run (from the repository root; the network from ``bench/l96.py --save-net``)::

    .venv/bin/python bench/l96_speed.py --amortised-net out/amortised_sakov.pt --threads 1 \
        --json out/l96_speed.json --profile out/l96_profile.txt

JSON: ``{"config": {..., "load_avg_1min": [before, after]}, "ms": {name: {"median", "p10", "p90"}}, "cpu_ms":
{name: median}, "ratio_analysis", "ratio_cycle", "ratio_analysis_cpu", "ratio_cycle_cpu", "ratio_cycle_blocks",
"ratio_cycle_blocks_cpu", ...}``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentda.sequential import TwinConfig, make_twin  # noqa: E402
from latentda.sequential.amortised import AmortisedMethod, load_net  # noqa: E402
from latentda.sequential.methods import LETKF  # noqa: E402

BLOCK = 50  # cycles per block of the whole-cycle timing
LETKF_N40 = dict(members=40, infl=1.02, rot=True, radius=4.0)  # bench/l96.py SETTINGS["sakov"]["letkf_n40"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--amortised-net", type=Path, required=True, help="network saved by bench/l96.py --save-net")
    p.add_argument("--cycles", type=int, default=2000, help="timed cycles")
    p.add_argument("--spinup", type=int, default=200, help="LETKF cycles before timing")
    p.add_argument("--seed", type=int, default=3000, help="truth/observation seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--profile", type=Path, default=None, help="write cProfile tables of each method here")
    return p


def _timed(f, *args):
    """``f(*args)``, its wall seconds and the CPU seconds of this thread (time not counted while descheduled)."""
    t, c = time.perf_counter(), time.thread_time()
    out = f(*args)
    return out, (time.perf_counter() - t, time.thread_time() - c)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.cycles < 1 or args.spinup < 0:
        raise SystemExit(f"--cycles must be >= 1 and --spinup >= 0, got {args.cycles} and {args.spinup}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    cfg = replace(TwinConfig(), cycles=args.cycles, spinup=args.spinup, seed=args.seed)
    twin = make_twin(cfg)
    net = load_net(args.amortised_net)
    if net.config.members != LETKF_N40["members"] or net.n != cfg.n:
        raise SystemExit(f"{args.amortised_net}: a network for N = {net.config.members}, n = {net.n}; "
                         f"this benchmark needs N = 40, n = {cfg.n}")
    letkf = LETKF(**LETKF_N40)
    amort = AmortisedMethod(net)

    def forward(E, y, twin, g):
        with torch.no_grad():
            return net(E[None], y[None], net.noise(1, g, E.device))[0]

    methods = {"letkf_n40": letkf.analyse, "amortised": amort.analyse, "amortised_forward": forward}
    g = torch.Generator().manual_seed(args.seed + 101)
    gm = {name: torch.Generator().manual_seed(args.seed + 7) for name in methods}
    E = twin.truth[0] + torch.randn(40, cfg.n, generator=g, dtype=torch.float64)
    times = {name: [] for name in ("forecast", *methods)}                   # (wall, CPU) seconds per call
    inputs = []
    order = list(methods)
    for k in range(cfg.spinup + cfg.cycles):
        prev = E
        E, dt = _timed(cfg.model.step, E, cfg.obs_every)
        y = twin.obs[k]
        if k < cfg.spinup:
            E = letkf.analyse(E, y, twin, gm["letkf_n40"])
            continue
        times["forecast"].append(dt)
        inputs.append((prev, E, y))
        out = {}
        for name in (order if k % 2 else order[::-1]):
            out[name], dt = _timed(methods[name], E, y, twin, gm[name])
            times[name].append(dt)
        E = out["letkf_n40"]
    for name in ("letkf_n40", "amortised"):  # the same inputs again, one method's calls back to back
        times[f"{name}_alone"] = [_timed(methods[name], E, y, twin, gm[name])[1] for _, E, y in inputs]

    def cycle(name, prev, y):
        return methods[name](cfg.model.step(prev, cfg.obs_every), y, twin, gm[name])

    for name in ("letkf_n40", "amortised"):
        times[f"{name}_cycle"] = []
    for b, start in enumerate(range(0, len(inputs), BLOCK)):  # whole cycles, blocks alternating
        for name in (("letkf_n40", "amortised") if b % 2 else ("amortised", "letkf_n40")):
            times[f"{name}_cycle"] += [_timed(cycle, name, prev, y)[1] for prev, _, y in inputs[start:start + BLOCK]]
    ms, cpu_ms = {}, {}
    for name, t in times.items():
        wall, cpu = np.array(t).T * 1e3
        ms[name] = {"median": float(np.median(wall)), "p10": float(np.percentile(wall, 10)),
                    "p90": float(np.percentile(wall, 90))}
        cpu_ms[name] = float(np.median(cpu))
    med = {name: v["median"] for name, v in ms.items()}
    result = {"config": {"cycles": cfg.cycles, "spinup": cfg.spinup, "seed": cfg.seed, "threads": args.threads,
                         "net": str(args.amortised_net), "hidden": net.config.hidden, "layers": net.config.layers,
                         "window": net.config.window, "load_avg_1min": [load_before, os.getloadavg()[0]]},
              "ms": ms, "cpu_ms": cpu_ms,
              "ratio_analysis": med["letkf_n40"] / med["amortised"],
              "ratio_cycle": (med["forecast"] + med["letkf_n40"]) / (med["forecast"] + med["amortised"]),
              "ratio_analysis_forward": med["letkf_n40"] / med["amortised_forward"],
              "ratio_analysis_cpu": cpu_ms["letkf_n40"] / cpu_ms["amortised"],
              "ratio_cycle_cpu": (cpu_ms["forecast"] + cpu_ms["letkf_n40"])
              / (cpu_ms["forecast"] + cpu_ms["amortised"]),
              "ratio_cycle_blocks": med["letkf_n40_cycle"] / med["amortised_cycle"],
              "ratio_cycle_blocks_cpu": cpu_ms["letkf_n40_cycle"] / cpu_ms["amortised_cycle"]}
    print("| step | median ms | 10-90 % ms | median CPU ms |\n|---|---:|---:|---:|")
    for name, v in ms.items():
        print(f"| {name} | {v['median']:.3f} | {v['p10']:.3f}-{v['p90']:.3f} | {cpu_ms[name]:.3f} |")
    print(f"LETKF N 40 / amortised: analysis {result['ratio_analysis']:.1f}x, forecast + analysis "
          f"{result['ratio_cycle']:.1f}x (training forward pass: {result['ratio_analysis_forward']:.1f}x); "
          f"CPU time: analysis {result['ratio_analysis_cpu']:.1f}x, forecast + analysis "
          f"{result['ratio_cycle_cpu']:.1f}x; whole cycles in blocks: {result['ratio_cycle_blocks']:.1f}x wall, "
          f"{result['ratio_cycle_blocks_cpu']:.1f}x CPU; load {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    if args.profile is not None:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        for name, f in methods.items():
            pr = cProfile.Profile()
            pr.enable()
            for _, E, y in inputs:
                f(E, y, twin, gm[name])
            pr.disable()
            buf.write(f"== {name}: {len(inputs)} analyses\n")
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(20)
        args.profile.write_text(buf.getvalue())
        print(f"profile written to {args.profile}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
