"""Pseudo-observation networks: sample a truth field at stations with seeded Gaussian errors.

Two network kinds:
* ``random``: points uniform on the sphere (area-uniform: sin(lat) uniform in [-1, 1]);
* ``clustered``: a fraction of stations in a few dense clusters (von Mises-Fisher-like caps around seeded
  centres in the mid-latitudes, like historical land networks), the rest uniform and sparse.

Observations are the truth interpolated bilinearly (the same operator as the assimilation uses) plus
``N(0, error^2)`` noise, one row per station, day and variable, in the observation-table layout of ARCHITECTURE.md.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..fields import check_variables
from ..grid import Grid, normalize_grid
from ..obs.operator import PointOperator

#: Typical station observation errors (standard deviation) for the demo variables.
DEFAULT_ERRORS = {
    "air_temperature": 1.0,        # K
    "eastward_wind": 1.5,          # m/s
    "northward_wind": 1.5,         # m/s
    "surface_air_pressure": 100.0,  # Pa
}


def make_network(lat, lon, station_id: Sequence[str] | None = None) -> pd.DataFrame:
    """A station table (station_id, lat, lon). Raises ValueError naming any latitude outside [-90, 90]."""
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    if lat.shape != lon.shape:
        raise ValueError(f"lat has {lat.size} values but lon has {lon.size}")
    bad = ~np.isfinite(lat) | (np.abs(np.nan_to_num(lat, nan=1e9)) > 90)
    if bad.any():
        k = int(np.nonzero(bad)[0][0])
        raise ValueError(f"station {k} latitude {lat[k]} outside [-90, 90]")
    if not np.isfinite(lon).all():
        k = int(np.nonzero(~np.isfinite(lon))[0][0])
        raise ValueError(f"station {k} longitude {lon[k]} is not finite")
    if station_id is None:
        station_id = [f"S{k:05d}" for k in range(lat.size)]
    return pd.DataFrame({"station_id": list(station_id), "lat": lat, "lon": np.mod(lon, 360.0)})


def random_network(n: int, seed: int) -> pd.DataFrame:
    """``n`` stations uniform in area on the sphere."""
    if n < 0:
        raise ValueError(f"station count {n} must be >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return make_network(np.rad2deg(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(0, 360, n))


def clustered_network(n: int, seed: int, n_clusters: int = 4, clustered_fraction: float = 0.8,
                      cluster_radius_deg: float = 12.0) -> pd.DataFrame:
    """``n`` stations: ``clustered_fraction`` of them in ``n_clusters`` dense caps, the rest uniform."""
    if n < 0:
        raise ValueError(f"station count {n} must be >= 0")
    if not 0 <= clustered_fraction <= 1:
        raise ValueError(f"clustered_fraction {clustered_fraction} must be in [0, 1]")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    n_cl = int(round(n * clustered_fraction))
    # cluster centres in the mid-latitudes of both hemispheres, like historical land networks (mostly north)
    c_lat = rng.uniform(25, 60, n_clusters) * np.where(rng.uniform(size=n_clusters) < 0.75, 1, -1)
    c_lon = rng.uniform(0, 360, n_clusters)
    which = rng.integers(0, n_clusters, n_cl)
    # offsets: isotropic Gaussian in a local tangent plane, radius in degrees of arc
    r = np.abs(rng.normal(0, cluster_radius_deg, n_cl))
    az = rng.uniform(0, 2 * np.pi, n_cl)
    lat0, lon0 = np.deg2rad(c_lat[which]), np.deg2rad(c_lon[which])
    d = np.deg2rad(r)
    lat1 = np.arcsin(np.sin(lat0) * np.cos(d) + np.cos(lat0) * np.sin(d) * np.cos(az))
    lon1 = lon0 + np.arctan2(np.sin(az) * np.sin(d) * np.cos(lat0), np.cos(d) - np.sin(lat0) * np.sin(lat1))
    u_lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n - n_cl)))
    u_lon = rng.uniform(0, 360, n - n_cl)
    return make_network(np.concatenate([np.rad2deg(lat1), u_lat]),
                        np.concatenate([np.rad2deg(lon1), u_lon]))


def network(kind: str, n: int, seed: int) -> pd.DataFrame:
    """Dispatch on ``kind`` in {"random", "clustered"}."""
    if kind == "random":
        return random_network(n, seed)
    if kind == "clustered":
        return clustered_network(n, seed)
    raise ValueError(f"network kind {kind!r} unknown; use 'random' or 'clustered'")


def sample_observations(truth: xr.Dataset, stations: pd.DataFrame, variables: Sequence[str],
                        errors: Mapping[str, float] | None = None, seed: int = 0,
                        times=None) -> pd.DataFrame:
    """Observe ``variables`` of ``truth`` (time, lat, lon) at ``stations`` with Gaussian errors.

    Returns the observation table (time, station_id, lat, lon, variable, value, error), one row per day,
    station and variable. Each day draws its noise from its own seed (``SeedSequence([seed, day ordinal])``),
    so any subset of days reproduces the same values.
    """
    truth = normalize_grid(truth)
    check_variables(truth, variables)
    errors = dict(DEFAULT_ERRORS if errors is None else errors)
    missing = [v for v in variables if v not in errors]
    if missing:
        raise KeyError(f"no observation error given for variable(s) {missing}")
    if times is not None:
        truth = truth.sel(time=times)
    grid = Grid.from_dataset(truth)
    H = PointOperator(grid, stations["lat"].values, stations["lon"].values)
    frames = []
    for t in truth["time"].values:
        day = pd.Timestamp(t)
        rng = np.random.default_rng(np.random.SeedSequence([seed, day.toordinal()]))
        for v in variables:
            x = truth[v].sel(time=t).transpose("lat", "lon").values[None]
            clean = H.apply_np(x)
            noise = rng.normal(0.0, errors[v], size=clean.shape)
            frames.append(pd.DataFrame({
                "time": day, "station_id": stations["station_id"].values, "lat": stations["lat"].values,
                "lon": stations["lon"].values, "variable": v, "value": clean + noise, "error": float(errors[v]),
            }))
    cols = ["time", "station_id", "lat", "lon", "variable", "value", "error"]
    if not frames:
        return pd.DataFrame({c: [] for c in cols})
    return pd.concat(frames, ignore_index=True)[cols]


def demo_observations(fields: xr.Dataset, kind: str = "clustered", n: int = 200, seed: int = 0,
                      start: str = "2005-01-01", end: str = "2005-12-31",
                      variables: Sequence[str] | None = None) -> pd.DataFrame:
    """The demo's pseudo-observation table: network ``kind`` of ``n`` stations observing ``fields`` on
    ``start``..``end`` with DEFAULT_ERRORS. Values are stored as float32 (far below the observation error)."""
    variables = list(variables or [v for v in DEFAULT_ERRORS if v in fields.data_vars])
    stations = network(kind, n, seed)
    truth = fields[variables].sel(time=slice(start, end)).load()
    if truth.sizes["time"] == 0:
        raise ValueError(f"no fields between {start} and {end}; the data cover "
                         f"{str(fields.time.values[0])[:10]}..{str(fields.time.values[-1])[:10]}")
    table = sample_observations(truth, stations, variables, seed=seed)
    table["value"] = table["value"].astype(np.float32)
    table["error"] = table["error"].astype(np.float32)
    table["variable"] = table["variable"].astype("category")
    table["station_id"] = table["station_id"].astype("category")
    return table


def main(argv: list[str] | None = None) -> int:
    """``latentda make-obs``: write the demo pseudo-observation Parquet table from the demo fields."""
    import argparse
    from pathlib import Path

    data_dir = Path(__file__).resolve().parent.parent / "data"
    p = argparse.ArgumentParser(prog="latentda make-obs", description=demo_observations.__doc__.splitlines()[0])
    p.add_argument("--fields", default=str(data_dir / "heldsuarez_t31_daily.nc"), help="gridded truth (netCDF/Zarr)")
    p.add_argument("--out", default=str(data_dir / "pseudo_obs_clustered200_2005.parquet"))
    p.add_argument("--kind", default="clustered", choices=["clustered", "random"])
    p.add_argument("--stations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", default="2005-01-01")
    p.add_argument("--end", default="2005-12-31")
    a = p.parse_args(argv)
    opener = xr.open_zarr if a.fields.rstrip("/").endswith(".zarr") else xr.open_dataset
    with opener(a.fields) as ds:
        table = demo_observations(normalize_grid(ds), a.kind, a.stations, a.seed, a.start, a.end)
    table.to_parquet(a.out, index=False, compression="zstd")
    print(f"wrote {len(table)} observations of {table['station_id'].nunique()} stations to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
