"""Regular latitude/longitude grids: normalisation at the boundary and area weights.

Convention (ARCHITECTURE.md, "conventions"): dimensions ``lat`` (degrees north, ascending after normalisation) and ``lon`` (degrees
east in [0, 360), ascending). Input with descending latitude, longitudes in [-180, 180) or the names
``latitude``/``longitude`` is accepted and normalised once, here.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

_ALIASES = {"latitude": "lat", "longitude": "lon", "valid_time": "time"}


@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular lat/lon grid. ``lat``: (nlat,) ascending degrees north; ``lon``: (nlon,) ascending in [0, 360)."""

    lat: np.ndarray
    lon: np.ndarray

    def __post_init__(self) -> None:
        lat = np.asarray(self.lat, dtype=np.float64)
        lon = np.asarray(self.lon, dtype=np.float64)
        if lat.ndim != 1 or lon.ndim != 1 or lat.size < 2 or lon.size < 2:
            raise ValueError(f"grid needs 1-D lat and lon with >= 2 points, got shapes {lat.shape}, {lon.shape}")
        if np.any(np.abs(lat) > 90):
            raise ValueError(f"grid latitude {lat[np.abs(lat) > 90][0]} outside [-90, 90]")
        if np.any(np.diff(lat) <= 0):
            raise ValueError("grid latitudes must be strictly ascending (use normalize_grid on input data)")
        if np.any(np.diff(lon) <= 0) or lon[0] < 0 or lon[-1] >= 360:
            raise ValueError("grid longitudes must be strictly ascending in [0, 360) (use normalize_grid)")
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "lon", lon)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lat.size, self.lon.size)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset | xr.DataArray) -> "Grid":
        return cls(ds["lat"].values, ds["lon"].values)

    @classmethod
    def regular(cls, nlat: int, nlon: int, poles: bool = False) -> "Grid":
        """Equiangular grid, nlon columns from 0 east: cell-centred rows 180/nlat degrees apart, or with
        ``poles=True`` rows 180/(nlat − 1) apart from −90 to 90 inclusive (ERA5's layout: 73 x 144 at 2.5°,
        121 x 240 at 1.5°, 181 x 360 at 1°)."""
        if poles:
            if nlat < 3:
                raise ValueError(f"a grid with pole rows needs nlat >= 3, got {nlat}")
            lat = np.linspace(-90.0, 90.0, nlat)
        else:
            dlat = 180.0 / nlat
            lat = -90 + dlat / 2 + dlat * np.arange(nlat)
        return cls(lat, 360.0 / nlon * np.arange(nlon))

    def weights(self) -> np.ndarray:
        """Latitude area weights cos(lat), shape (nlat,), normalised to mean 1 (WeatherBench2 convention)."""
        w = np.cos(np.deg2rad(self.lat))
        return w / w.mean()

    def to_dict(self) -> dict[str, list[float]]:
        return {"lat": self.lat.tolist(), "lon": self.lon.tolist()}

    def matches(self, other: "Grid", atol: float = 1e-6) -> bool:
        return (self.shape == other.shape and np.allclose(self.lat, other.lat, atol=atol)
                and np.allclose(self.lon, other.lon, atol=atol))

    def describe(self) -> str:
        return (f"{self.lat.size}x{self.lon.size} grid, lat {self.lat[0]:.3f}..{self.lat[-1]:.3f}, "
                f"lon {self.lon[0]:.3f}..{self.lon[-1]:.3f}")


def normalize_grid(ds: xr.Dataset) -> xr.Dataset:
    """Rename lat/lon aliases, wrap longitudes into [0, 360) and sort both coordinates ascending."""
    ds = ds.rename({k: v for k, v in _ALIASES.items() if k in ds.dims or k in ds.coords})
    for name in ("lat", "lon"):
        if name not in ds.coords:
            raise ValueError(f"dataset has no {name!r} coordinate (found {list(ds.coords)}); "
                             "rename its latitude/longitude coordinates to 'lat'/'lon'")
    if (np.abs(ds["lat"].values) > 90).any():
        bad = ds["lat"].values[np.abs(ds["lat"].values) > 90][0]
        raise ValueError(f"latitude {bad} outside [-90, 90]")
    lon = np.mod(ds["lon"].values, 360.0)
    ds = ds.assign_coords(lon=("lon", lon, ds["lon"].attrs))
    ds = ds.sortby(["lat", "lon"])
    if np.unique(ds["lon"].values).size != ds.sizes["lon"]:
        raise ValueError("duplicate longitudes after wrapping into [0, 360)")
    return ds
