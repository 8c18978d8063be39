"""Write the shipped demo data in real archives' shapes, to try (and test) the ingestion steps end to end.

* :func:`era5_like`: hourly fields with ``valid_time``, ERA5 short names ``t2m`` (degC), ``u10``, ``v10``
  (m s-1), ``sp`` (hPa), dims ``latitude`` (descending) x ``longitude`` (-180..179.25) on a 0.75 degree grid.
* :func:`ghcnd_like`: a GHCN-Daily-shaped station CSV (one row per station and day, ``TAVG`` in degC, ``PRES`` in
  hPa, ``AWND_U``/``AWND_V`` in m s-1, missing = -9999) and its station list (ID, LATITUDE, LONGITUDE in
  -180..180, ELEVATION, NAME).

Both are built so that the declared steps give back the demo's own values up to float64 rounding: each 3.75
degree demo cell is tiled by 5 x 5 cells of 0.75 degrees carrying its value (a conservative regridder returns
cell means, so exactly that value), and the hourly values are the daily value plus a diurnal cycle
A sin(2 pi h / 24) whose daily mean and 00 UTC value are both zero. The latitude rows are cell-centred
(+-89.625; ERA5's own 0.75 degree grid has pole rows, which the regridding also accepts).

Run: ``python -m latentda.ingest.examples --out out/byod --start 2004-12-29 --end 2004-12-31
--obs-start 2005-01-01 --obs-end 2005-01-03``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..grid import Grid

#: ERA5 short name -> (demo variable, units in the file, file value as a function of the demo value, diurnal A).
ERA5_NAMES = {
    "t2m": ("air_temperature", "degC", lambda x: x - 273.15, 2.0),
    "u10": ("eastward_wind", "m s-1", lambda x: x, 1.0),
    "v10": ("northward_wind", "m s-1", lambda x: x, 1.0),
    "sp": ("surface_air_pressure", "hPa", lambda x: x / 100.0, 0.5),
}
#: GHCN-Daily-like column -> (demo variable, units in the file, file value as a function of the demo value).
GHCND_COLUMNS = {
    "TAVG": ("air_temperature", "degC", lambda x: x - 273.15),
    "AWND_U": ("eastward_wind", "m s-1", lambda x: x),
    "AWND_V": ("northward_wind", "m s-1", lambda x: x),
    "PRES": ("surface_air_pressure", "hPa", lambda x: x / 100.0),
}
MISSING = -9999


@dataclasses.dataclass(frozen=True)
class Era5Grid:
    """The fine grid of :func:`era5_like`: ``refine`` x ``refine`` cells per cell of the coarse regular grid."""

    refine: int = 5

    def coords(self, coarse: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(latitude descending, longitude in [-180, 180)) of the fine grid, degrees."""
        dlat = 180.0 / coarse.lat.size / self.refine
        dlon = 360.0 / coarse.lon.size / self.refine
        lat = 90.0 - dlat / 2 - dlat * np.arange(coarse.lat.size * self.refine)
        lon = -180.0 + dlon * np.arange(coarse.lon.size * self.refine)
        return lat, lon

    def parents(self, coarse: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Index of the coarse cell holding each fine latitude row / longitude column."""
        lat, lon = self.coords(coarse)
        dlat, dlon = 180.0 / coarse.lat.size, 360.0 / coarse.lon.size
        ilat = np.floor((lat + 90.0) / dlat).astype(int)
        ilon = np.round(np.mod(lon, 360.0) / dlon).astype(int) % coarse.lon.size
        return ilat, ilon


def era5_like(daily: xr.Dataset, days: pd.DatetimeIndex, path: str | Path, grid: Era5Grid = Era5Grid()) -> Path:
    """Write ``days`` of ``daily`` (demo fields, time x lat x lon, cell-centred regular grid) as an ERA5-shaped
    hourly netCDF at ``path`` (float64, see the module docstring). Returns the path."""
    coarse = Grid.from_dataset(daily)
    if not coarse.matches(Grid.regular(*coarse.shape)):
        raise ValueError(f"era5_like needs a cell-centred regular grid (Grid.regular), got {coarse.describe()}")
    lat, lon = grid.coords(coarse)
    ilat, ilon = grid.parents(coarse)
    hours = np.arange(24)
    times = (days.values[:, None] + hours[None, :] * np.timedelta64(1, "h")).ravel()
    diurnal = np.sin(2 * np.pi * hours / 24.0)
    data = {}
    for short, (name, units, to_file, amp) in ERA5_NAMES.items():
        x = daily[name].sel(time=days).transpose("time", "lat", "lon").values.astype(np.float64)
        fine = x[:, ilat][:, :, ilon]                                        # (day, lat, lon)
        hourly = fine[:, None] + (amp * diurnal)[None, :, None, None]        # (day, hour, lat, lon), demo units
        data[short] = (("valid_time", "latitude", "longitude"),
                       to_file(hourly.reshape(-1, lat.size, lon.size)), {"units": units, "long_name": name})
    ds = xr.Dataset(data, coords={"valid_time": times, "latitude": ("latitude", lat, {"units": "degrees_north"}),
                                  "longitude": ("longitude", lon, {"units": "degrees_east"})})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="netcdf4")
    return path


def ghcnd_like(obs: pd.DataFrame, days: pd.DatetimeIndex, folder: str | Path) -> tuple[Path, Path]:
    """Write the observation table ``obs`` (time, station_id, lat, lon, variable, value) on ``days`` as a
    GHCN-Daily-shaped CSV ``ghcnd.csv`` plus ``stations.csv`` in ``folder``; one extra station ``DEAD0001`` has
    only missing values (-9999). Values are written with full float64 precision. Returns the two paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    obs = obs[pd.to_datetime(obs["time"]).dt.normalize().isin(days)]
    wide = obs.pivot_table(index=["station_id", "time"], columns="variable", values="value", aggfunc="first",
                           observed=True)
    rows = pd.DataFrame({"ID": wide.index.get_level_values(0).astype(str),
                         "DATE": pd.DatetimeIndex(wide.index.get_level_values(1)).strftime("%Y%m%d")})
    for col, (name, _, to_file) in GHCND_COLUMNS.items():
        v = wide[name].to_numpy(dtype=np.float64) if name in wide else np.full(len(wide), np.nan)
        rows[col] = np.where(np.isnan(v), MISSING, to_file(v))
    dead = pd.DataFrame({"ID": "DEAD0001", "DATE": days.strftime("%Y%m%d"),
                         **{c: MISSING for c in GHCND_COLUMNS}})
    rows = pd.concat([rows, dead], ignore_index=True)
    st = obs.groupby("station_id", observed=True)[["lat", "lon"]].first()
    stations = pd.DataFrame({"ID": st.index.astype(str), "LATITUDE": st["lat"].values,
                             "LONGITUDE": np.where(st["lon"].values >= 180, st["lon"].values - 360, st["lon"].values),
                             "ELEVATION": 0.0, "NAME": [f"STATION {s}" for s in st.index.astype(str)]})
    stations = pd.concat([stations, pd.DataFrame({"ID": ["DEAD0001"], "LATITUDE": [0.0], "LONGITUDE": [0.0],
                                                  "ELEVATION": [0.0], "NAME": ["CLOSED STATION"]})],
                         ignore_index=True)
    data_path, list_path = folder / "ghcnd.csv", folder / "stations.csv"
    rows.to_csv(data_path, index=False, float_format="%.17g")
    stations.to_csv(list_path, index=False, float_format="%.17g")
    return data_path, list_path


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m latentda.ingest.examples``."""
    p = argparse.ArgumentParser(prog="python -m latentda.ingest.examples", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write era5_like.nc, ghcnd.csv, stations.csv into")
    p.add_argument("--start", required=True, help="first day of the hourly fields (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last day of the hourly fields")
    p.add_argument("--obs-start", required=True, help="first day of the station file")
    p.add_argument("--obs-end", required=True, help="last day of the station file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write both example inputs from the shipped demo data."""
    from importlib.resources import files

    a = build_parser().parse_args(argv)
    data = files("latentda") / "data"
    with xr.open_dataset(str(data / "heldsuarez_t31_daily.nc"), engine="netcdf4") as daily:
        f = era5_like(daily, pd.date_range(a.start, a.end, freq="D"), Path(a.out) / "era5_like.nc")
    obs = pd.read_parquet(str(data / "pseudo_obs_clustered200_2005.parquet"))
    d, s = ghcnd_like(obs, pd.date_range(a.obs_start, a.obs_end, freq="D"), a.out)
    print(f"wrote {f}, {d}, {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
