"""Deterministic skill scores on a lat/lon grid (WeatherBench2 definitions).

All functions take xarray objects (DataArray or Dataset) with dimensions ``lat`` and ``lon`` (degrees) and any
other dimensions (``time``, ...), which are kept: the spatial average is taken over ``dims`` only. Averaging over
evaluation days is left to the caller (WeatherBench2 averages the per-time scores over time).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

XrObj = xr.DataArray | xr.Dataset

SPATIAL_DIMS = ("lat", "lon")


def lat_weights(lat) -> np.ndarray:
    """Latitude area weights ``w_i = cos(phi_i) / mean_j cos(phi_j)`` (mean 1), shape (nlat,).

    ``lat`` in degrees north. Raises ValueError for latitudes outside [-90, 90] or an empty axis.
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise ValueError(f"lat must be a non-empty 1-D array of degrees, got shape {lat.shape}")
    if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90):
        raise ValueError(f"latitudes must be finite and within [-90, 90], got range {lat.min()}..{lat.max()}")
    w = np.cos(np.deg2rad(lat))
    if w.mean() <= 0:
        raise ValueError("latitude weights sum to zero (only polar latitudes given)")
    return w / w.mean()


def _check_dims(x: XrObj, dims: Sequence[str]) -> None:
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise ValueError(f"dimension(s) {missing} not in the data; it has {list(x.dims)}")


def spatial_mean(x: XrObj, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Area-weighted mean over ``dims``: ``sum_ij w_i x_ij / sum_ij w_i`` with ``w_i`` from :func:`lat_weights`.

    NaNs are skipped (their weight is dropped). If ``lat`` is not among ``dims`` the plain mean is taken.
    """
    dims = tuple(dims)
    _check_dims(x, dims)
    if "lat" in dims:
        w = xr.DataArray(lat_weights(x["lat"].values), dims=("lat",), coords={"lat": x["lat"].values})
        return x.weighted(w).mean(dims, skipna=True)
    return x.mean(dims, skipna=True)


def mse(forecast: XrObj, truth: XrObj, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted mean squared error ``MSE = (1/(I J)) sum_ij w_i (f_ij - o_ij)^2`` over ``dims``."""
    return spatial_mean((forecast - truth) ** 2, dims)


def rmse(forecast: XrObj, truth: XrObj, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted RMSE (WeatherBench2): ``RMSE = sqrt((1/(I J)) sum_ij w_i (f_ij - o_ij)^2)``.

    ``w_i = cos(phi_i)`` normalised to mean 1. Computed per remaining coordinate (e.g. per time); WeatherBench2
    averages the per-time RMSE over time. A constant offset ``c`` gives ``RMSE = |c|``.
    """
    return np.sqrt(mse(forecast, truth, dims))


def bias(forecast: XrObj, truth: XrObj, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted mean error ``bias = (1/(I J)) sum_ij w_i (f_ij - o_ij)`` over ``dims``."""
    return spatial_mean(forecast - truth, dims)


def mae(forecast: XrObj, truth: XrObj, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted mean absolute error ``(1/(I J)) sum_ij w_i |f_ij - o_ij|`` over ``dims``."""
    return spatial_mean(np.abs(forecast - truth), dims)
