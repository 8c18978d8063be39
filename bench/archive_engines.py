"""Archive write and read cost of the two engines (``archive.engine: zarr | icechunk``), without the assimilation.

Run from the repository root::

    .venv/bin/python bench/archive_engines.py                       # 32 days of the demo grid, blocks of 8
    .venv/bin/python bench/archive_engines.py --days 64 --block-days 16 --repeats 5 --json out/engines.json

The same precomputed day datasets (synthetic fields on a ``--nlat`` x ``--nlon`` grid, 4 variables, analysis
layout) are written into a fresh archive per repeat and mode, in this process, one after another:

* ``zarr``: ``latentda.archive.write_day`` per day (two region writes: the data, then the done flag);
* ``icechunk-block``: per block of ``--block-days`` days one writable session, one fork per day (pickled there and
  back, as to a Dask worker), the days written into their forks, merged and committed once (what the flow does);
* ``icechunk-day``: ``write_day`` without a session: each day its own commit (the plain library loop).

Then ``read``: open the archive and load every variable of the done days. Prints and (``--json``) writes the
median seconds per mode and the ratio of each Icechunk mode to ``zarr``; the three archives must hold the same
bytes (decoded arrays).
"""
from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]


def day_datasets(n_days: int, nlat: int, nlon: int, seed: int):
    """``n_days`` one-day analysis datasets (mean and spread of each variable) and their grid."""
    import xarray as xr

    from latentda.grid import Grid
    from latentda.testing import synthetic_fields

    f = synthetic_fields(ntime=n_days, nlat=nlat, nlon=nlon, variables=VARIABLES, seed=seed, start="2005-01-01")
    days = []
    for i in range(n_days):
        one = f.isel(time=slice(i, i + 1))
        days.append(xr.Dataset({v: one[v] for v in VARIABLES} | {f"{v}_spread": abs(one[v]) * 0.1
                                                                   for v in VARIABLES}))
    return days, Grid.from_dataset(f)


def write(mode: str, url: str, days: list, block_days: int) -> float:
    """Seconds to write ``days`` into the archive at ``url`` in ``mode``."""
    from latentda import archive as lib
    from latentda import archive_icechunk as ice

    prov = {"model_checksum": "a" * 64, "obs_hash": "b" * 64, "config_hash": "c" * 64}
    t0 = time.perf_counter()
    if mode in ("zarr", "icechunk-day"):
        for ds in days:
            lib.write_day(url, ds, prov)
    else:
        for b in range(0, len(days), block_days):
            session = ice.writable_session(url)
            forks = []
            for ds in days[b:b + block_days]:
                fork = pickle.loads(pickle.dumps(session.fork()))
                lib.write_day(url, ds, prov, session=fork)
                forks.append(pickle.loads(pickle.dumps(fork)))
            ice.commit(url, session, f"block {b}", forks)
    return time.perf_counter() - t0


def read(url: str) -> tuple[float, dict]:
    """Seconds to open the archive and load every variable of its done days; the loaded arrays."""
    from latentda import archive as lib

    t0 = time.perf_counter()
    ds = lib.open_archive(url)
    done = ds[lib.DONE].values.astype(bool)
    out = {v: ds[v].isel(time=done).values for v in ds.data_vars}
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=32, help="days written per run (default 32)")
    p.add_argument("--block-days", type=int, default=8, help="days per Icechunk commit in icechunk-block (8)")
    p.add_argument("--nlat", type=int, default=48, help="grid rows (default 48, the demo grid)")
    p.add_argument("--nlon", type=int, default=96, help="grid columns (default 96)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each mode (default 3)")
    p.add_argument("--json", help="write {mode: {seconds, median_s}, ratios} here")
    args = p.parse_args(argv)

    from latentda import archive as lib

    days, grid = day_datasets(args.days, args.nlat, args.nlon, seed=0)
    spec = lib.ArchiveSpec(tuple(VARIABLES), grid, "2005-01-01", "2005-12-31", members=16)
    root = Path(tempfile.mkdtemp(prefix="latentda-engines-"))
    modes = ["zarr", "icechunk-block", "icechunk-day"]
    times: dict[str, list[float]] = {m: [] for m in modes} | {f"read-{m}": [] for m in modes}
    same = True
    print(f"{args.days} days of {len(VARIABLES)} variables on {args.nlat}x{args.nlon}, Icechunk blocks of "
          f"{args.block_days} days; temp {root}", flush=True)
    try:
        for r in range(args.repeats):
            arrays = {}
            for m in modes:
                url = str(root / f"{m}-{r}")
                lib.create_archive(url, spec, {"config_hash": "c" * 64},
                                   engine="zarr" if m == "zarr" else "icechunk")
                times[m].append(write(m, url, days, args.block_days))
                t, arrays[m] = read(url)
                times[f"read-{m}"].append(t)
                print(f"  repeat {r}: {m:<15} write {times[m][-1]:6.2f} s   read {t:6.2f} s", flush=True)
            same &= all(arrays[m][v].tobytes() == arrays["zarr"][v].tobytes() for m in modes for v in arrays[m])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    print("\nmode                 median s   ratio to zarr")
    for m in modes:
        for k in (m, f"read-{m}"):
            base = med["zarr"] if k == m else med["read-zarr"]
            print(f"{k:<20}{med[k]:9.2f}{med[k] / base:14.2f}")
    print(f"archives identical: {same}")
    if args.json:
        out = {"days": args.days, "block_days": args.block_days, "grid": [args.nlat, args.nlon],
               "modes": {m: {"seconds": ts, "median_s": med[m]} for m, ts in times.items()},
               "ratio_to_zarr": {m: med[m] / (med["read-zarr"] if m.startswith("read") else med["zarr"])
                                 for m in times}, "identical": bool(same)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
