"""Dataset <-> array conversion for stacks of gridded variables.

Arrays are (time, channel, lat, lon) with one channel per variable in the order given; the inverse puts the
channels back as named variables on the grid.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr


def check_variables(ds: xr.Dataset, variables: Sequence[str]) -> None:
    """Raise a KeyError naming every requested variable that ``ds`` lacks, and what it has."""
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"variable(s) {missing} not in the dataset; available: {sorted(ds.data_vars)}")


def to_array(ds: xr.Dataset, variables: Sequence[str], dtype=np.float32) -> np.ndarray:
    """Stack ``variables`` of ``ds`` (dims time, lat, lon) into an array of shape (time, channel, lat, lon)."""
    check_variables(ds, variables)
    arrs = [ds[v].transpose("time", "lat", "lon").values.astype(dtype, copy=False) for v in variables]
    return np.stack(arrs, axis=1)


def from_array(arr: np.ndarray, variables: Sequence[str], lat: np.ndarray, lon: np.ndarray,
               time=None, attrs: dict[str, dict] | None = None) -> xr.Dataset:
    """Inverse of :func:`to_array`. ``arr``: (time, channel, lat, lon), or (channel, lat, lon) if ``time`` is None."""
    attrs = attrs or {}
    if time is None:
        dims = ("lat", "lon")
        coords = {"lat": lat, "lon": lon}
        data = {v: (dims, arr[k], attrs.get(v, {})) for k, v in enumerate(variables)}
    else:
        dims = ("time", "lat", "lon")
        coords = {"time": time, "lat": lat, "lon": lon}
        data = {v: (dims, arr[:, k], attrs.get(v, {})) for k, v in enumerate(variables)}
    return xr.Dataset(data, coords=coords)
