"""Where a reanalysis flow run's time and CPU go: per process (the flow process with the Dask scheduler and the
nannies, the Prefect server, each worker) and on the run's critical path. For a machine whose cores are shared with
other jobs, where wall times of ``bench/backfill.py`` say little: CPU seconds do not depend on the load.

Run from the repository root (the prior of the config must exist)::

    .venv/bin/python bench/flow_cpu.py --config deploy/demo.yaml --days 31 --repeats 2 --workers 1,2

Each run writes the days into a fresh archive (as ``bench/backfill.py``) and prints one JSON line: ``wall``,
``load1`` (the 1-minute load average before it), ``cpu`` (seconds per process kind: ``flow``, ``server``,
``worker``; ``flow`` without this script's own sampling), ``warm_up_cpu`` (per worker: loading the prior and the table), ``day_thread_cpu`` /
``day_process_cpu`` (summed over the days: the thread that ran them, the whole worker process meanwhile; the
difference is the worker's other threads: Zarr I/O, and Dask's own periodic work), ``blocks_start`` (seconds from
the call to the first block), ``first_day`` / ``last_day`` (seconds to the first / last day done), ``tail``
(seconds from the last day done to the end of the run). The first run of a process also pays the process's first
flow run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="latentda-flow-cpu-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

_DAYS: list[float] = []


def _instrument_worker(dask_worker=None) -> None:
    """Run on each worker (``Client.run``) before its warm-up: time the warm-up and each day there, as (name, wall,
    thread CPU, process CPU) in ``tasks.worker._flow_cpu_records``."""
    import tasks.worker as w

    if getattr(w, "_flow_cpu_records", None) is not None:
        return
    records: list[tuple] = []
    w._flow_cpu_records = records

    def timed(name, fn):
        def wrapped(*a, **k):
            t, c, p = time.perf_counter(), time.thread_time(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                records.append((name, time.perf_counter() - t, time.thread_time() - c, time.process_time() - p))
        return wrapped

    w.warm_up = timed("warm_up", w.warm_up)
    w.run_forked_day = timed("day", w.run_forked_day)


def _records(dask_worker=None) -> list[tuple]:
    import tasks.worker as w

    return list(getattr(w, "_flow_cpu_records", None) or [])


class _Sampler(threading.Thread):
    """Last CPU seconds seen of the Prefect server and of every worker (a worker's are lost when it exits)."""

    def __init__(self) -> None:
        import psutil

        super().__init__(daemon=True)
        self.me, self.cpu, self.stop, self.own = psutil.Process(), {}, threading.Event(), 0.0

    def sample(self) -> None:
        import psutil

        for child in self.me.children():
            try:
                cmd = " ".join(child.cmdline())
                kind = "server" if "server_child" in cmd else "forkserver" if "forkserver" in cmd else None
                if kind:
                    procs = [child] + (child.children(recursive=True) if kind == "forkserver" else [])
                    for p in procs:
                        ct = p.cpu_times()
                        self.cpu[p.pid] = ("worker" if p is not child else kind, ct.user + ct.system)
            except psutil.Error:
                pass

    def run(self) -> None:
        while not self.stop.wait(0.1):
            c = time.thread_time()
            self.sample()
            self.own += time.thread_time() - c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="deploy/demo.yaml")
    p.add_argument("--days", type=int, default=31)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    args = p.parse_args(argv)

    import pandas as pd
    import yaml

    import flows.progress as progress
    import flows.reanalysis as reanalysis
    import tasks.assimilate as assimilate
    from flows import prefect_api, quiet_dask_logs
    from flows.runners import start_worker_forkserver
    from latentda.config import config_from_dict, deep_merge, load_config

    quiet_dask_logs()
    records: dict = {}
    real_map, real_warm, real_done = assimilate.map_days, reanalysis.warm_workers, progress.DayProgress.day_done

    def warm_workers(cfg):
        client = assimilate._client()
        if client is not None:
            client.run(_instrument_worker)
        return real_warm(cfg)

    def map_days(config, days, force=False):
        out = real_map(config, days, force)
        client = assimilate._client()
        if client is not None:
            records.update(client.run(_records))
        return out

    def day_done(self, day, error=None):
        _DAYS.append(time.perf_counter())
        return real_done(self, day, error)

    reanalysis.warm_workers, assimilate.map_days, progress.DayProgress.day_done = warm_workers, map_days, day_done
    real_blocks, blocks_at = reanalysis.run_blocks, []
    reanalysis.run_blocks = lambda *a, **k: (blocks_at.append(time.perf_counter()), real_blocks(*a, **k))[1]

    root = Path(tempfile.mkdtemp(prefix="latentda-flow-cpu-"))
    base_cfg = load_config(args.config)
    base = deep_merge(yaml.safe_load(Path(args.config).read_text()), {
        "catalog": {"path": base_cfg.catalog.path}, "prior": {"path": base_cfg.prior_path},
        "workdir": str(root / "work"), "archive": {"catalog": str(root / "cat.yaml")}})
    cfg0 = config_from_dict(base, base_dir=Path(args.config).resolve().parent)
    days = [str(d.date()) for d in pd.date_range(cfg0.backfill_period().start, periods=args.days, freq="D")]
    start_worker_forkserver()
    sampler = _Sampler()
    sampler.start()
    with prefect_api():
        for r in range(args.repeats):
            for n in [int(x) for x in args.workers.split(",")]:
                d = root / f"{n}w-{r}"
                d.mkdir()
                (d / "run.yaml").write_text(yaml.safe_dump(deep_merge(base, {
                    "archive": {"url": str(d / "a.zarr")},
                    "cluster": {"profile": "local", "n_workers": n, "threads_per_worker": 1}})))
                time.sleep(0.5)
                sampler.sample()
                before, load1, own0 = dict(sampler.cpu), os.getloadavg()[0], sampler.own
                _DAYS.clear()
                records.clear()
                blocks_at.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                reanalysis.run_reanalysis(str(d / "run.yaml"), days[0], days[-1], progress=False,
                                          evaluate_skill=False)
                wall, flow_cpu = time.perf_counter() - t0, time.process_time() - c0 - (sampler.own - own0)
                time.sleep(0.5)
                sampler.sample()
                cpu = {"flow": flow_cpu}  # this process (the flow, the Dask scheduler and nannies), less the sampler
                for pid, (kind, c) in sampler.cpu.items():
                    cpu[kind] = cpu.get(kind, 0.0) + c - before.get(pid, (kind, 0.0))[1]
                recs = [x for v in records.values() for x in v]
                day_recs = [x for x in recs if x[0] == "day"]
                print(json.dumps({
                    "workers": n, "repeat": r, "wall": round(wall, 2), "load1": round(load1, 2),
                    "cpu": {k: round(v, 2) for k, v in cpu.items()},
                    "warm_up_cpu": [round(x[3], 3) for x in recs if x[0] == "warm_up"],
                    "day_thread_cpu": round(sum(x[2] for x in day_recs), 2),
                    "day_process_cpu": round(sum(x[3] for x in day_recs), 2),
                    "blocks_start": round(blocks_at[0] - t0, 2) if blocks_at else None,
                    "first_day": round(min(_DAYS) - t0, 2), "last_day": round(max(_DAYS) - t0, 2),
                    "tail": round(t0 + wall - max(_DAYS), 2)}), flush=True)
    sampler.stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
