"""Backfill throughput (days per minute): the reanalysis flow on 1 and 2 Dask workers vs a plain library loop.

Run from the repository root::

    .venv/bin/python bench/backfill.py                      # synthetic world + tiny prior (16x32, 2 variables)
    .venv/bin/python bench/backfill.py --days 16 --repeats 3 --members 8
    .venv/bin/python bench/backfill.py --config deploy/demo.yaml --days 8   # the demo (after `latentda train`)
    .venv/bin/python bench/backfill.py --config deploy/demo.yaml --days 31 --repeats 3 --json out/backfill.json
    .venv/bin/python bench/backfill.py --icechunk --days 12 --repeats 3      # + the flow on an Icechunk archive
    .venv/bin/python bench/backfill.py --config deploy/demo.yaml --days 31 --repeats 3 --parallel-loop  # + ceiling

Each repeat writes the same days into a fresh archive three ways:

* ``library``: the plain library loop a script would run, in this process, at the thread counts of a Dask
  worker (1 torch thread; BLAS/OpenMP pools limited to 1 as on workers): load the prior, read the observation
  table through the catalog, create the archive (``latentda.backfill.ensure_archive``), then
  ``latentda.backfill.backfill`` over the days;
* ``flow-1w`` / ``flow-2w``: ``flows.reanalysis.run_reanalysis`` on a LocalCluster of 1 / 2 worker processes
  (wall time of the whole flow: flow and task runs on the Prefect API, cluster start, workers loading the prior
  and the table, archive creation, the days, validation, catalog registration, cluster teardown);
* with ``--parallel-loop`` also ``library-2p``: the library loop in 2 processes at once (forked from the same
  preloaded server as the workers), each loading the prior and the table and assimilating every other day into the
  archive the parent created: the speed-up this machine gives two processes that share nothing but its cores,
  the ceiling for ``flow-2w / flow-1w`` (its ratio ``library / library-2p`` is printed beside);
* with ``--icechunk`` also ``flow-1w-icechunk`` / ``flow-2w-icechunk``: the same flows with ``archive.engine:
  icechunk`` (each block of days one commit), and their ratio to the Zarr flow on the same number of workers.

Imports are outside every timing: this process imported torch and latentda before the first repeat, and the
local workers are forked from a server process that imported them once (``flows.runners.start_worker_forkserver``,
started here before the first repeat, as the CLI starts it before its Prefect server).
Prints per-run times, then the median days/minute of each mode and the ratios to the library loop; ``--json``
writes the per-run and median seconds of each mode. The flow archives are checked to hold the same bytes as the
library loop's. Without ``PREFECT_API_URL`` one temporary
Prefect server (in a temporary PREFECT_HOME) serves all runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_TEMP_HOME = None
if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
    _TEMP_HOME = os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="latentda-bench-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def synthetic_config(root: Path, members: int, days: int) -> dict:
    """A synthetic world like tests/conftest.py: fields + observations behind an Intake catalog, tiny prior."""
    import yaml

    from latentda.testing import synthetic_fields, synthetic_observations, tiny_prior

    prior = tiny_prior(0)
    prior_path = root / "tiny_prior.pt"
    prior.save(str(prior_path))
    fields = synthetic_fields(ntime=400 + days, variables=list(prior.variables), seed=0, start="2004-01-01")
    fields.to_netcdf(root / "fields.nc", engine="netcdf4")
    obs = synthetic_observations(fields.sel(time=slice("2005-01-01", None)), n=100, seed=1)
    obs.to_parquet(root / "obs.parquet", index=False)
    cat = root / "input.yaml"
    cat.write_text(yaml.safe_dump({"metadata": {"version": 1}, "sources": {
        "fields": {"driver": "netcdf", "args": {"urlpath": "{{ CATALOG_DIR }}/fields.nc",
                                                "xarray_kwargs": {"engine": "netcdf4"}}},
        "obs": {"driver": "tasks.intake_sources.ParquetTableSource",
                "args": {"urlpath": "{{ CATALOG_DIR }}/obs.parquet"}}}}))
    return {"name": "bench", "workdir": str(root / "work"), "variables": list(prior.variables),
            "catalog": {"path": str(cat), "fields": "fields", "observations": "obs", "truth": None},
            "prior": {"path": str(prior_path)},
            "assimilation": {"members": members, "seed": 0},
            "archive": {"url": str(root / "a.zarr"), "start": "2005-01-01", "end": "2005-12-31",
                        "catalog": str(root / "catalog_out.yaml")},
            "cluster": {"profile": "local", "n_workers": 2, "threads_per_worker": 1}}


def library_loop(cfg, days: list[str], create: bool = True) -> None:
    """The library loop a script runs, at the thread counts of a Dask worker (OMP/MKL/OpenBLAS threads = 1, as
    Dask's nanny sets them): load the prior, read the table through the catalog, create the archive (``create``),
    assimilate ``days``."""
    from threadpoolctl import threadpool_limits

    import latentda
    from latentda import backfill
    from tasks.catalog import read_table

    with threadpool_limits(1):
        prior = latentda.load_prior(cfg.prior_path, device="cpu")
        table = read_table(cfg.catalog.path, cfg.catalog.observations)
        if create:
            backfill.ensure_archive(cfg, prior)
        backfill.backfill(cfg, days, prior=prior, observations=table)


def _loop_part(cfg_dict: dict, base_dir: str, days: list[str]) -> None:
    """One process of ``library-2p``: :func:`library_loop` over ``days`` into the archive the parent created."""
    import torch

    from latentda.config import config_from_dict

    torch.set_num_threads(1)
    library_loop(config_from_dict(cfg_dict, base_dir=Path(base_dir)), days, create=False)


def parallel_loop(cfg_dict: dict, base_dir: Path, days: list[str], n: int = 2) -> None:
    """The library loop in ``n`` processes of the workers' forkserver, every n-th day each, into one archive."""
    import latentda
    from distributed.utils import get_mp_context
    from latentda import backfill
    from latentda.config import config_from_dict

    cfg = config_from_dict(cfg_dict, base_dir=base_dir)
    backfill.ensure_archive(cfg, latentda.load_prior(cfg.prior_path, device="cpu"))
    ctx = get_mp_context()
    procs = [ctx.Process(target=_loop_part, args=(cfg_dict, str(base_dir), days[i::n])) for i in range(n)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    if any(pr.exitcode for pr in procs):
        raise RuntimeError(f"library-2p: a process failed (exit codes {[pr.exitcode for pr in procs]})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="benchmark this run config (its prior must exist); default: synthetic")
    p.add_argument("--days", type=int, default=12, help="days per run (default 12)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each mode (default 3)")
    p.add_argument("--members", type=int, default=8, help="ensemble size (synthetic world; default 8)")
    p.add_argument("--block-days", type=int, default=None, help="days per task (default: config's / auto)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", help="write {mode: {seconds: [...], median_s, days_per_min}} and the ratios here")
    p.add_argument("--icechunk", action="store_true", help="also run the flows on an Icechunk archive")
    p.add_argument("--parallel-loop", action="store_true",
                   help="also time the library loop in 2 processes at once (library-2p: this machine's ceiling)")
    args = p.parse_args(argv)

    import importlib

    import pandas as pd
    import yaml

    for module in ("threadpoolctl", "latentda", "latentda.backfill", "tasks.catalog"):
        importlib.import_module(module)  # what library_loop imports, imported before any timing
    from flows import prefect_api, quiet_dask_logs
    from flows.reanalysis import run_reanalysis
    from latentda import archive as lib
    from latentda.config import config_from_dict, deep_merge, load_config
    from flows.runners import start_worker_forkserver

    quiet_dask_logs()
    root = Path(tempfile.mkdtemp(prefix="latentda-bench-"))
    if args.config:
        base_cfg = load_config(args.config)
        base = yaml.safe_load(Path(args.config).read_text())
        base_dir = Path(args.config).resolve().parent
        base = deep_merge(base, {"catalog": {"path": base_cfg.catalog.path}, "prior": {"path": base_cfg.prior_path},
                                 "workdir": str(root / "work"), "archive": {"catalog": str(root / "cat.yaml")}})
    else:
        base = synthetic_config(root, args.members, args.days)
        base_dir = root
    if args.block_days:
        base = deep_merge(base, {"assimilation": {"block_days": args.block_days}})
    cfg0 = config_from_dict(base, base_dir=base_dir)
    start = pd.Timestamp(cfg0.backfill_period().start)
    days = [str(d.date()) for d in pd.date_range(start, periods=args.days, freq="D")]
    print(f"benchmark: {args.days} days from {days[0]}, {cfg0.assimilation.members} members, variables "
          f"{cfg0.variables}, prior {cfg0.prior_path}; temp {root}", flush=True)

    start_worker_forkserver()  # as the CLI does before its Prefect server: workers fork with torch imported
    engines = ["zarr", "icechunk"] if args.icechunk else ["zarr"]
    times: dict[str, list[float]] = {"library": [], "flow-1w": [], "flow-2w": []}
    times.update({f"flow-{n}w-icechunk": [] for n in (1, 2) if args.icechunk})
    if args.parallel_loop:
        times["library-2p"] = []
    same = True
    with prefect_api():
        for r in range(args.repeats):
            # library loop: what a script without Prefect/Dask does, from cold caches
            d = root / f"lib-{r}"
            cfg_lib = config_from_dict(deep_merge(base, {"archive": {"url": str(d / "a.zarr")}}), base_dir=base_dir)
            url = cfg_lib.archive_url
            t0 = time.perf_counter()
            library_loop(cfg_lib, days)
            times["library"].append(time.perf_counter() - t0)
            print(f"  repeat {r}: library  {times['library'][-1]:7.1f} s", flush=True)
            if args.parallel_loop:
                d = root / f"lib2p-{r}"
                t0 = time.perf_counter()
                parallel_loop(deep_merge(base, {"archive": {"url": str(d / "a.zarr")}}), base_dir, days)
                times["library-2p"].append(time.perf_counter() - t0)
                a, b = lib.open_archive(url), lib.open_archive(str(d / "a.zarr"))
                eq = all(a[v].values.tobytes() == b[v].values.tobytes() for v in a.data_vars if v != "config_sha256")
                same &= eq
                print(f"  repeat {r}: library-2p {times['library-2p'][-1]:5.1f} s{'' if eq else '  BYTES DIFFER'}",
                      flush=True)
            for n, engine in [(n, e) for n in (1, 2) for e in engines]:
                mode = f"flow-{n}w" + ("-icechunk" if engine == "icechunk" else "")
                d = root / f"{mode}-{r}"
                d.mkdir()
                cfg_dict = deep_merge(base, {"archive": {"url": str(d / f"a.{engine}"), "engine": engine},
                                             "cluster": {"profile": "local", "n_workers": n,
                                                         "threads_per_worker": 1}})
                cfg_path = d / "run.yaml"  # every path in it is absolute
                cfg_path.write_text(yaml.safe_dump(cfg_dict))
                t0 = time.perf_counter()
                s = run_reanalysis(str(cfg_path), days[0], days[-1], progress=False, evaluate_skill=False)
                times[mode].append(time.perf_counter() - t0)
                assert s["days_written"] == len(days), s
                a, b = lib.open_archive(url), lib.open_archive(str(d / f"a.{engine}"))
                eq = all(a[v].values.tobytes() == b[v].values.tobytes() for v in a.data_vars
                         if v != "config_sha256")
                same &= eq
                print(f"  repeat {r}: {mode:<17} {times[mode][-1]:7.1f} s ({s['blocks']} block(s))"
                      f"{'' if eq else '  BYTES DIFFER'}", flush=True)

    print("\nmode              median s   days/min   ratio to library")
    lib_rate = len(days) / statistics.median(times["library"]) * 60
    for mode, ts in times.items():
        med = statistics.median(ts)
        rate = len(days) / med * 60
        print(f"{mode:<17}{med:9.1f}{rate:11.1f}{rate / lib_rate:12.2f}")
    speedup = statistics.median(times["flow-1w"]) / statistics.median(times["flow-2w"])
    print(f"flow-2w / flow-1w speed-up: {speedup:.2f}")
    # the same ratios repeat by repeat (the runs of one repeat are minutes apart, so they share the machine's state)
    paired = [a / b for a, b in zip(times["flow-1w"], times["flow-2w"])]
    print(f"flow-2w / flow-1w per repeat: {', '.join(f'{x:.2f}' for x in paired)} "
          f"(median {statistics.median(paired):.2f})")
    ceiling = paired_ceiling = None
    if args.parallel_loop:
        ceiling = statistics.median(times["library"]) / statistics.median(times["library-2p"])
        paired_ceiling = [a / b for a, b in zip(times["library"], times["library-2p"])]
        print(f"library / library-2p speed-up (this machine's ceiling for 2 processes): {ceiling:.2f}; per repeat: "
              f"{', '.join(f'{x:.2f}' for x in paired_ceiling)} (median {statistics.median(paired_ceiling):.2f})")
    icechunk_over_zarr = {f"{n}w": statistics.median(times[f"flow-{n}w-icechunk"]) / statistics.median(
        times[f"flow-{n}w"]) for n in (1, 2) if args.icechunk}
    for k, v in icechunk_over_zarr.items():
        print(f"icechunk / zarr flow time on {k}: {v:.2f}")
    print(f"archives identical to the library loop's: {same}")
    if args.json:
        out = {"days": len(days), "members": cfg0.assimilation.members, "config": args.config or "synthetic",
               "modes": {m: {"seconds": ts, "median_s": statistics.median(ts),
                             "days_per_min": len(days) / statistics.median(ts) * 60} for m, ts in times.items()},
               "flow_1w_over_library": statistics.median(times["flow-1w"]) / statistics.median(times["library"]),
               "speedup_2w_over_1w": speedup, "speedup_2w_over_1w_per_repeat": paired,
               "speedup_library_2p": ceiling, "speedup_library_2p_per_repeat": paired_ceiling, "identical": bool(same),
               "icechunk_over_zarr_seconds": icechunk_over_zarr}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        if _TEMP_HOME:
            shutil.rmtree(_TEMP_HOME, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
