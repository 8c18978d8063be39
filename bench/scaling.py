#!/usr/bin/env python
"""Scaling benchmark of the latent assimilation: seconds and peak memory per analysed day against the number of
observations, the grid size and the ensemble size; seconds and memory per training epoch against the grid size.

Every point analyses ``--repeats`` different days (median reported; the repeats are the outer loop, so a change
of load on a shared machine hits every point alike) with ``latentda.assimilate`` (default options,
QC off so that every observation is used: ``qc_threshold=inf``). Sweeps (each at the defaults of the others):

* observations per day ``--obs`` (default 400,1600,3200,6400,12800,25600; 4 variables per station) at
  ``--base-grid`` (48x96) and ``--members`` (32); where "auto" picks the grid form, also with
  ``covariance_form="obs"`` (the dense n x n path of before) up to ``--dense-max`` (12,800) observations, and
  with the full-rank grid form (``covariance_rank_tol=0``: the npts x npts Woodbury system of round one) from
  ``--full-rank-min`` (12,800) observations: the baselines measured in the same run;
* grids ``--grids`` (48x96 .. 192x384, including pole-row grids 73x144, 181x360) at ``--grid-obs`` (1600) per day;
* members ``--member-sweep`` (8 .. 128) at 1600 observations per day.

Priors: random-weight VAEs (latent ``--latent-dim`` 128, ``--base-channels`` 32: the demo prior's architecture;
``recon_std`` 0.5) with the harmonic climatology of ``latentda.testing.synthetic_fields`` on that grid, which also
gives the truth observed by a random station network. Timings of random-weight decoders are representative of
the linear algebra, not of a trained prior's iteration counts. Training: one epoch of ``--train-days`` synthetic
days per grid (``latentda.prior.train_prior``, batch 32), reported per 1000 training days.

Peak memory: on the CPU the largest resident-set growth over the process's size before the call (sampled every
5 ms, after ``malloc_trim`` hands freed heap pages back); on CUDA ``torch.cuda.max_memory_allocated``. Log-log slopes (least squares of log seconds on log size) are
printed for each sweep, and for observations also over 1,600 .. 25,600 per day (the issue's criterion).

How to run (from the repository root; 1 thread, in the background on a shared machine)::

    .venv/bin/python bench/scaling.py --threads 1 --json out/scaling.json > out/scaling.log 2>&1 &
    .venv/bin/python bench/scaling.py --quick --threads 1          # a minute: small sweeps
    .venv/bin/python bench/scaling.py --table out/scaling.json     # the README tables of a run
    .venv/bin/python bench/scaling.py --device cuda --grids 181x360 --members 32 --json out/scaling_gpu.json
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from early_threads import early_threads  # noqa: E402

_THREADS = early_threads(sys.argv[1:])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import latentda  # noqa: E402
from latentda.da.ensemble import GaussianSmoother, default_length_scale_km  # noqa: E402
from latentda.da.lowrank import RANK_TOL, LowRankSmoother  # noqa: E402
from latentda.da.obs_covariance import choose_form  # noqa: E402
from latentda.grid import Grid  # noqa: E402
from latentda.normalization import fit_climatology  # noqa: E402
from latentda.prior.checkpoint import Prior  # noqa: E402
from latentda.prior.train import PriorConfig, train_prior  # noqa: E402
from latentda.prior.vae import ConvVAE  # noqa: E402
from latentda.testing import synthetic_fields, synthetic_observations  # noqa: E402

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None
VARIABLES = ("air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure")


class PeakMemory:
    """Peak memory growth (bytes) during a ``with`` block: CPU resident set sampled every 5 ms, or CUDA
    ``max_memory_allocated``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._rss())
            self._stop.wait(0.005)

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type != "cuda" and _LIBC is not None:
            _LIBC.malloc_trim(0)  # hand freed heap pages back, so that the baseline is what is really in use
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._max = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self._base


def random_prior(nlat: int, nlon: int, latent_dim: int, base_channels: int, device: str, seed: int = 0) -> tuple:
    """(prior, fields): a random-weight VAE prior on an nlat x nlon grid (with pole rows if nlat is odd, as ERA5's
    73 x 144, 121 x 240, 181 x 360) with the climatology of 60 synthetic days, and those days (the truth)."""
    fields = synthetic_fields(ntime=60, nlat=nlat, nlon=nlon, variables=VARIABLES, seed=seed, poles=nlat % 2 == 1)
    clim = fit_climatology(fields, list(VARIABLES), n_harmonics=1)
    torch.manual_seed(seed)
    model = ConvVAE(len(VARIABLES), nlat, nlon, latent_dim=latent_dim, base_channels=base_channels)
    cfg = PriorConfig(latent_dim=latent_dim, base_channels=base_channels, n_harmonics=1, device=device)
    prior = Prior(model, config=cfg, variables=VARIABLES, grid=Grid.from_dataset(fields), climatology=clim,
                  var_attrs={v: dict(fields[v].attrs) for v in VARIABLES}, provenance={"random_weights": True},
                  recon_std=np.full((len(VARIABLES), nlat, nlon), 0.5, np.float32), device=device)
    day = pd.Timestamp(fields["time"].values[5])  # warm-up (first-call allocations), not timed
    latentda.assimilate(prior, synthetic_observations(fields, n=20, seed=0, time=day), day, members=2, max_iter=5)
    return prior, fields


def predicted_form(prior, n_obs: int, members: int, form: str = "auto", rank_tol: float = RANK_TOL) -> str:
    """The covariance form ``assimilate`` will use for n_obs = 4 x stations (``choose_form``'s flop model)."""
    nlat, nlon = prior.grid.shape
    stations = max(1, n_obs // len(VARIABLES))
    length = getattr(prior, "recon_length_scale_km", None) or default_length_scale_km(prior.grid)
    rank = LowRankSmoother(GaussianSmoother(prior.grid, length), rank_tol).rank
    return choose_form({c: stations for c in range(len(VARIABLES))}, nlat * nlon, nlat, members, form=form,
                       rank=rank).form


def time_day(prior, fields, n_obs: int, members: int, k: int, device: torch.device, **options) -> dict:
    """Seconds, peak memory growth (MiB) and observations used of one analysed day (day index 10 + 7k)."""
    stations = max(1, n_obs // len(VARIABLES))
    day = pd.Timestamp(fields["time"].values[10 + 7 * k])
    obs = synthetic_observations(fields, n=stations, seed=100 + k, time=day)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        ds = latentda.assimilate(prior, obs, day, members=members, seed=k, qc_threshold=math.inf, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sec = time.perf_counter() - t0
    return {"seconds": sec, "peak_mb": mem.peak / 2 ** 20, "obs_used": int(ds["obs_used"].values.item())}


def run_interleaved(cases: list[dict], repeats: int, device: torch.device) -> list[dict]:
    """Time every case (dict with prior, fields, obs, members, form, and labels) on ``repeats`` days, the repeats
    outermost so that a change of machine load during the run hits every case alike; medians per case."""
    runs: list[list[dict]] = [[] for _ in cases]
    for k in range(repeats):
        for case, out in zip(cases, runs):
            out.append(time_day(case["prior"], case["fields"], case["obs"], case["members"], k, device,
                                covariance_form=case["form"], covariance_rank_tol=case["rank_tol"]))
            print(f"  repeat {k}: {case['label']} {out[-1]['seconds']:.2f} s", flush=True)
    result = []
    for case, out in zip(cases, runs):
        labels = {key: v for key, v in case.items() if key not in ("prior", "fields", "label")}
        result.append({**labels, "seconds": float(np.median([o["seconds"] for o in out])),
                       "seconds_all": [o["seconds"] for o in out],
                       "peak_mb": float(np.median([o["peak_mb"] for o in out])),
                       "obs_used": int(np.median([o["obs_used"] for o in out])),
                       "form_used": predicted_form(case["prior"], case["obs"], case["members"], case["form"],
                                                   case["rank_tol"])})
    return result


def time_training(nlat: int, nlon: int, days: int, latent_dim: int, base_channels: int, device: torch.device) -> dict:
    """Seconds and peak memory of one training epoch over ``days`` synthetic days, and per 1000 days."""
    fields = synthetic_fields(ntime=days, nlat=nlat, nlon=nlon, variables=VARIABLES, seed=1, poles=nlat % 2 == 1)
    cfg = dict(latent_dim=latent_dim, base_channels=base_channels, epochs=1, batch_size=32, n_harmonics=1,
               device=str(device), val_fraction=0.1, num_threads=_THREADS)
    with PeakMemory(device) as mem:
        prior = train_prior(fields, cfg, progress=False)
    epoch_s = float(prior.history[-1]["seconds"])
    trained = int(round(days * 0.9))
    return {"epoch_seconds": epoch_s, "train_days": trained, "seconds_per_1000_days": 1000 * epoch_s / trained,
            "peak_mb": mem.peak / 2 ** 20}


def slope(x, y) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def markdown_tables(points: list[dict]) -> str:
    """The README tables of a run: per analysed day (observations, members, grids) and per training epoch."""
    rows = ["| sweep | grid | obs/day | members | R form | s/day (median) | peak MiB |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for q in points:
        if q["sweep"] != "train":
            form = q["form_used"] + (" (forced)" if q["form"] != "auto" else "")
            form += ", full rank" if q["form_used"] == "grid" and q.get("rank_tol", RANK_TOL) == 0 else ""
            rows.append(f"| {q['sweep']} | {q['grid']} | {q['obs']} | {q['members']} | {form} | {q['seconds']:.2f}"
                        f" | {q['peak_mb']:.0f} |")
    rows += ["", "| grid | grid points | s/epoch | s per 1000 training days | peak MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    rows += [f"| {q['grid']} | {q['npts']} | {q['epoch_seconds']:.2f} ({q['train_days']} days) | "
             f"{q['seconds_per_1000_days']:.1f} | {q['peak_mb']:.0f} |" for q in points if q["sweep"] == "train"]
    return "\n".join(rows)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _grids(s: str) -> list[tuple[int, int]]:
    out = []
    for g in s.split(","):
        a, b = g.lower().split("x")
        out.append((int(a), int(b)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obs", type=_ints, default=_ints("400,1600,3200,6400,12800,25600"))
    p.add_argument("--dense-max", type=int, default=12800, help="largest n also timed with the dense 'obs' form")
    p.add_argument("--full-rank-min", type=int, default=12800,
                   help="smallest n also timed with the full-rank grid form (covariance_rank_tol=0)")
    p.add_argument("--grids", type=_grids, default=_grids("48x96,73x144,96x192,121x240,181x360,192x384"))
    p.add_argument("--grid-obs", type=int, default=1600)
    p.add_argument("--member-sweep", type=_ints, default=_ints("8,16,32,64,128"))
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--base-grid", type=_grids, default=_grids("48x96"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--train-days", type=int, default=128)
    p.add_argument("--sweeps", default="obs,grid,members,train", help="comma list of obs, grid, members, train")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="small sweeps (about a minute)")
    p.add_argument("--json", default=None, help="write every measured point here")
    p.add_argument("--table", default=None, metavar="JSON", help="only print the markdown tables of a --json file")
    a = p.parse_args(argv)
    if a.table:
        print(markdown_tables(json.loads(Path(a.table).read_text())["points"]))
        return 0
    if a.quick:
        a.obs, a.dense_max, a.grids, a.member_sweep = [400, 1600], 1600, [(16, 32), (19, 36)], [4, 8]
        a.base_grid, a.repeats, a.latent_dim, a.base_channels, a.train_days = [(16, 32)], 1, 16, 8, 64
        a.members, a.grid_obs, a.full_rank_min = 8, 400, 1600
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device on this machine", file=sys.stderr)
        return 2
    sweeps = set(a.sweeps.split(","))
    points: list[dict] = []

    def record(**kw) -> None:
        points.append(kw)
        print(json.dumps(kw), flush=True)

    nlat0, nlon0 = a.base_grid[0]
    cases: list[dict] = []
    if sweeps & {"obs", "members"}:
        prior, fields = random_prior(nlat0, nlon0, a.latent_dim, a.base_channels, a.device)
        base = dict(prior=prior, fields=fields, grid=f"{nlat0}x{nlon0}", rank_tol=RANK_TOL)
        if "obs" in sweeps:
            for n in a.obs:
                cases.append(dict(base, sweep="obs", obs=n, members=a.members, form="auto", label=f"{n} obs"))
                if n <= a.dense_max and predicted_form(prior, n, a.members) != "obs":  # the dense path of before
                    cases.append(dict(base, sweep="obs", obs=n, members=a.members, form="obs",
                                      label=f"{n} obs, dense form"))
                if n >= a.full_rank_min:  # the full-rank grid form of round one
                    cases.append(dict(base, sweep="obs", obs=n, members=a.members, form="grid", rank_tol=0.0,
                                      label=f"{n} obs, full-rank grid form"))
        if "members" in sweeps:
            cases += [dict(base, sweep="members", obs=a.grid_obs, members=m, form="auto", label=f"{m} members")
                      for m in a.member_sweep]
    if "grid" in sweeps:
        for nlat, nlon in a.grids:
            prior, fields = random_prior(nlat, nlon, a.latent_dim, a.base_channels, a.device)
            cases.append(dict(prior=prior, fields=fields, grid=f"{nlat}x{nlon}", npts=nlat * nlon, sweep="grid",
                              obs=a.grid_obs, members=a.members, form="auto", rank_tol=RANK_TOL,
                              label=f"{nlat}x{nlon}"))
    for r in run_interleaved(cases, a.repeats, device):
        record(**r)
    del cases
    for nlat, nlon in a.grids:
        if "train" in sweeps:
            r = time_training(nlat, nlon, a.train_days, a.latent_dim, a.base_channels, device)
            record(sweep="train", grid=f"{nlat}x{nlon}", npts=nlat * nlon, **r)

    print("\nlog-log slopes of seconds per day:")
    slopes = {}
    auto = [q for q in points if q["sweep"] == "obs" and q["form"] == "auto"]
    dense = [q for q in points if q["sweep"] == "obs" and q["form_used"] == "obs"]
    for name, pts, key in (("obs (all)", auto, "obs"), ("obs (dense form)", dense, "obs"),
                           ("obs (grid form)", [q for q in auto if q["form_used"] == "grid"], "obs"),
                           ("obs 1600..25600", [q for q in auto if 1600 <= q["obs"] <= 25600], "obs"),
                           ("grid points", [q for q in points if q["sweep"] == "grid"], "npts"),
                           ("members", [q for q in points if q["sweep"] == "members"], "members"),
                           ("training s/epoch vs grid points", [q for q in points if q["sweep"] == "train"], "npts")):
        if len(pts) >= 2:
            yk = "seconds_per_1000_days" if name.startswith("training") else "seconds"
            slopes[name] = slope([q[key] for q in pts], [q[yk] for q in pts])
            print(f"  {name:34s} {slopes[name]:.2f}  ({len(pts)} points)")
    for q in (q for q in points if q["sweep"] == "obs" and q["form"] != "auto"):
        match = [r for r in auto if r["obs"] == q["obs"]]
        if match:
            name = "dense" if q["form"] == "obs" else "full-rank grid"
            print(f"  {q['obs']} obs/day: auto ({match[0]['seconds']:.2f} s) / {name} ({q['seconds']:.2f} s) = "
                  f"{match[0]['seconds'] / q['seconds']:.2f}")
    if a.json:
        out = {"config": {k: v for k, v in vars(a).items()}, "slopes": slopes, "points": points,
               "provenance": {"latentda": latentda.__version__, "torch": torch.__version__,
                              "python": platform.python_version(), "machine": platform.machine(),
                              "threads": torch.get_num_threads(), "device": str(device),
                              "cpu_count": os.cpu_count()}}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
