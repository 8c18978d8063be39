"""Wall seconds of ``latentda feedback`` (a fresh process, imports included) against ``latentda status`` on the
same archive, for feedback of ``--days`` days with ``--rows`` observation rows per day.

Run (from the repository root, 1 thread; numbers in the README come from this)::

    PYTHONPATH=$PWD .venv/bin/python bench/feedback.py --days 5 365 --rows 400 --repeats 5 --threads 1

The archive (a 16 x 32 grid, metadata and done flags only) and its feedback files (synthetic rows: 10 % rejected
with reasons, 5 % held out, Gaussian O−B/O−A) are written under ``--workdir`` (default ``out/bench_feedback``);
both commands then run ``--repeats`` times, alternating. Prints the median seconds of each command, their ratio,
and the rows read. ``status`` is the baseline: it starts the same CLI and opens the same archive, so the ratio says
what reading and summarising the feedback adds to a command's start-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from early_threads import early_threads  # noqa: E402

early_threads(sys.argv)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

REASONS = ("gross_departure", "lat_out_of_range", "bad_error", "duplicate")


def synthetic_day(day: pd.Timestamp, rows: int, seed: int) -> pd.DataFrame:
    """A feedback table of ``rows`` rows for ``day`` (400 stations, two variables), drawn from ``seed``."""
    from latentda.feedback import feedback_table

    rng = np.random.default_rng([seed, day.toordinal()])
    status = rng.choice(3, size=rows, p=[0.85, 0.10, 0.05])  # used, rejected, held out
    qc = np.where(status == 1, rng.choice(REASONS, size=rows), "")
    t = pd.DataFrame({"time": day + pd.to_timedelta(rng.integers(0, 24, rows), unit="h"),
                      "lat": rng.uniform(-80, 80, rows), "lon": rng.uniform(0, 360, rows),
                      "value": rng.normal(280, 10, rows), "error": np.full(rows, 1.0),
                      "station_id": [f"S{k:05d}" for k in rng.integers(0, 400, rows)],
                      "variable": rng.choice(["air_temperature", "eastward_wind"], rows), "qc": qc})
    omb = rng.normal(0, 2.0, rows)
    oma = rng.normal(0, 1.0, rows)
    hxb, hxa = t["value"].to_numpy() - omb, t["value"].to_numpy() - oma
    fb = feedback_table(t, day, hxb, hxa, rng.uniform(0.5, 1.5, rows))
    held = status == 2
    fb.loc[held, "status"] = "held_out"
    fb.loc[held, "qc_flag"] = 2
    return fb


def build(workdir: Path, days: int, rows: int) -> str:
    """Archive + feedback of ``days`` days under ``workdir``; returns the path of a run config pointing at it."""
    import zarr

    from latentda import archive as lib
    from latentda.feedback import write_day_feedback
    from latentda.grid import Grid

    d = workdir / f"d{days}_r{rows}"
    url = str(d / "archive.zarr")
    start = pd.Timestamp("2005-01-01")
    end = start + pd.Timedelta(days=days - 1)
    if not Path(url).exists():
        grid = Grid(np.linspace(-84.375, 84.375, 16), np.arange(32) * 11.25)
        spec = lib.ArchiveSpec(("air_temperature", "eastward_wind"), grid, start, end, members=4)
        lib.create_archive(url, spec, {"config_hash": "b" * 64})
        for k, day in enumerate(pd.date_range(start, end)):
            write_day_feedback(url, day, synthetic_day(day, rows, seed=0))
        g = zarr.open_group(url, mode="r+", zarr_format=3)
        g["done"][:] = 1
    cfg = {"name": "bench", "workdir": str(d / "work"), "variables": ["air_temperature", "eastward_wind"],
           "catalog": {"path": str(d / "none.yaml"), "fields": "fields", "observations": "obs"},
           "prior": {"path": str(d / "prior.pt")},
           "archive": {"url": url, "start": str(start.date()), "end": str(end.date()), "name": "bench",
                       "catalog": str(d / "catalog_out.yaml")}}
    p = d / "run.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(p)


def timed(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, nargs="+", default=[5, 365], help="days of feedback (one archive each)")
    p.add_argument("--rows", type=int, default=400, help="observation rows per day")
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (median reported)")
    p.add_argument("--workdir", default=str(REPO / "out" / "bench_feedback"), help="where the archives go")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.rows < 1 or min(a.days) < 1:
        p.error("--days, --rows and --repeats must be positive")
    print(f"{'days':>6}{'rows':>9}{'feedback s':>12}{'status s':>10}{'ratio':>7}")
    for days in a.days:
        cfg = build(Path(a.workdir), days, a.rows)
        fb, st = [], []
        for _ in range(a.repeats):  # alternate, so load drift hits both alike
            fb.append(timed([sys.executable, "-m", "flows.cli", "feedback", "--config", cfg]))
            st.append(timed([sys.executable, "-m", "flows.cli", "status", "--config", cfg]))
        mf, ms = statistics.median(fb), statistics.median(st)
        print(f"{days:>6}{days * a.rows:>9}{mf:>12.2f}{ms:>10.2f}{mf / ms:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
