"""Ingestion cost of ERA5-shaped hourly input: seconds per day through the declared steps vs reading alone.

Run from the repository root (1 thread: the Dask synchronous scheduler and one BLAS/OpenMP thread)::

    .venv/bin/python bench/ingest.py                                   # 0.25 deg (721 x 1440), 2 days, 2 variables
    .venv/bin/python bench/ingest.py --nlat 241 --nlon 480 --days 3 --repeats 3 --json out/ingest.json

A seeded hourly file in ERA5's layout (``valid_time`` x ``latitude`` 90..-90 with pole rows x ``longitude``
-180..; ``t2m`` in degC, ``sp`` in hPa, float32, one day per chunk) is written once to a temporary folder. Each
repeat then times, per mode:

* ``read``: open the file and compute the daily means (the baseline: reading and averaging are unavoidable);
* ``steps-48x96`` / ``steps-181x360``: :func:`latentda.ingest.fields.apply_field_steps` (units, duplicate and
  coverage checks, daily mean, conservative regridding to that cell-centred grid) and compute.

Prints the median seconds per input day of each mode and its ratio to ``read``; ``--json`` writes every point.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dask  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from latentda.ingest.fields import apply_field_steps  # noqa: E402
from latentda.ingest.steps import FieldSteps  # noqa: E402

SOURCES = {"t2m": ("degC", "air_temperature", "K", 15.0, 20.0),
           "sp": ("hPa", "surface_air_pressure", "Pa", 1000.0, 15.0)}


def write_input(path: Path, nlat: int, nlon: int, days: int, seed: int) -> Path:
    """Hourly ERA5-layout file: background(lat) + seeded noise, one day (24 steps) at a time into netCDF."""
    lat = np.linspace(90, -90, nlat)
    lon = -180 + 360.0 / nlon * np.arange(nlon)
    times = pd.date_range("2001-01-01", periods=24 * days, freq="h")
    rng = np.random.default_rng(seed)
    data = {}
    for name, (units, _, _, mean, amp) in SOURCES.items():
        base = (mean + amp * np.cos(np.deg2rad(lat)))[None, :, None].astype(np.float32)
        noise = rng.standard_normal((times.size, nlat, nlon), dtype=np.float32)
        data[name] = (("valid_time", "latitude", "longitude"), base + noise, {"units": units})
    ds = xr.Dataset(data, coords={"valid_time": times, "latitude": lat, "longitude": lon})
    enc = {n: {"chunksizes": (24, nlat, nlon)} for n in SOURCES}
    ds.to_netcdf(path, engine="netcdf4", encoding=enc)
    return path


def steps(nlat: int, nlon: int) -> FieldSteps:
    return FieldSteps.model_validate({
        "variables": {s: {"name": n, "units": u} for s, (_, n, u, _, _) in SOURCES.items()},
        "daily": {"method": "mean"}, "grid": {"nlat": nlat, "nlon": nlon}})


def run_mode(path: Path, mode: str) -> float:
    """Seconds to open ``path`` and compute what ``mode`` asks for."""
    t0 = time.perf_counter()
    with xr.open_dataset(path, engine="netcdf4", chunks={"valid_time": 24}) as src:
        if mode == "read":
            day = src["valid_time"].dt.floor("D")
            out = src.groupby(day).mean("valid_time")
        else:
            nlat, nlon = (int(x) for x in mode.split("-")[1].split("x"))
            out = apply_field_steps(src, steps(nlat, nlon))
        out.load()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nlat", type=int, default=721, help="source rows (pole to pole)")
    p.add_argument("--nlon", type=int, default=1440, help="source columns")
    p.add_argument("--days", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="only 1 is supported (synchronous scheduler)")
    p.add_argument("--json", help="write every measured point here")
    a = p.parse_args(argv)
    if a.threads != 1:
        p.error(f"--threads {a.threads}: this benchmark measures one thread only")
    modes = ["read", "steps-48x96", "steps-181x360"]
    points = []
    import xarray_regrid  # noqa: F401 - imports and the unit registry's set-up are not part of a day's cost

    from latentda.ingest.fields import unit_registry

    unit_registry()
    with tempfile.TemporaryDirectory(prefix="latentda-bench-ingest-") as tmp, dask.config.set(scheduler="synchronous"):
        path = write_input(Path(tmp) / "era5.nc", a.nlat, a.nlon, a.days, a.seed)
        mb = path.stat().st_size / 1e6
        print(f"input: {a.nlat}x{a.nlon}, {a.days} day(s) x 24 h, {len(SOURCES)} variables, {mb:.0f} MB")
        for r in range(a.repeats):
            for mode in modes:
                s = run_mode(path, mode)
                points.append({"repeat": r, "mode": mode, "seconds": s, "seconds_per_day": s / a.days})
                print(f"repeat {r} {mode:14s} {s:7.2f} s ({s / a.days:.2f} s/day)")
    med = {m: statistics.median(x["seconds_per_day"] for x in points if x["mode"] == m) for m in modes}
    print("\nmedian seconds per input day (all variables), ratio to read:")
    for m in modes:
        print(f"  {m:14s} {med[m]:7.2f} s/day  x{med[m] / med['read']:.2f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"args": vars(a), "points": points, "median_s_per_day": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
