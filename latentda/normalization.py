"""Climatology (day-of-year mean and standard deviation, smoothed by harmonics), anomalies and their inverse.

For each variable and grid point the climatological mean and variance are least-squares fits of a truncated
Fourier series in the day of the year::

    m(d) = a_0 + sum_{k=1..K} a_k cos(2 pi k d / 365.25) + b_k sin(2 pi k d / 365.25)
    s(d)^2 = same series fitted to (x - m(d))^2,  floored at ``min_std``^2

Anomalies are standardised: ``x' = (x - m(d)) / s(d)``; the inverse is ``x = x' s(d) + m(d)``. With K = 0 this is
the plain mean and standard deviation (what the season-less Held-Suarez demo needs); K = 3 follows the annual
cycle of real data. The climatology is stored as a small dataset of coefficients (dims ``harmonic, lat, lon``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .fields import check_variables

YEAR_DAYS = 365.25


def _design(times, n_harmonics: int) -> np.ndarray:
    """Design matrix (ntime, 2K+1): [1, cos(w d), sin(w d), ..., cos(K w d), sin(K w d)], d = day of year - 1."""
    t = pd.DatetimeIndex(np.atleast_1d(np.asarray(times, dtype="datetime64[ns]")))
    d = (t.day_of_year.values - 1) + (t.hour.values / 24.0)
    cols = [np.ones_like(d, dtype=np.float64)]
    for k in range(1, n_harmonics + 1):
        w = 2 * np.pi * k * d / YEAR_DAYS
        cols += [np.cos(w), np.sin(w)]
    return np.stack(cols, axis=1)


def fit_climatology(ds: xr.Dataset, variables: Sequence[str], n_harmonics: int = 3,
                    min_std: float = 1e-6) -> xr.Dataset:
    """Fit the harmonic climatology of ``variables`` over all of ``ds.time``.

    Returns a Dataset with ``<var>_mean`` and ``<var>_var`` coefficients, dims (harmonic, lat, lon), and attrs
    ``n_harmonics`` and ``min_std``. Needs at least 2K+2 times; use K = 0 for data shorter than a year.
    """
    check_variables(ds, variables)
    if n_harmonics < 0:
        raise ValueError(f"n_harmonics={n_harmonics} must be >= 0")
    X = _design(ds["time"].values, n_harmonics)
    if X.shape[0] < X.shape[1] + 1:
        raise ValueError(f"{X.shape[0]} times are too few to fit {n_harmonics} harmonics; lower n_harmonics")
    pinv = np.linalg.pinv(X)  # (2K+1, ntime)
    out = {}
    for v in variables:
        x = ds[v].transpose("time", "lat", "lon").values.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"variable {v!r} has {np.size(x) - np.isfinite(x).sum()} non-finite values; "
                             "fill or mask them before fitting a climatology")
        nt, ny, nx = x.shape
        mean_c = pinv @ x.reshape(nt, -1)
        resid2 = (x.reshape(nt, -1) - X @ mean_c) ** 2
        var_c = pinv @ resid2
        out[f"{v}_mean"] = (("harmonic", "lat", "lon"), mean_c.reshape(-1, ny, nx), dict(ds[v].attrs))
        out[f"{v}_var"] = (("harmonic", "lat", "lon"), var_c.reshape(-1, ny, nx))
    clim = xr.Dataset(out, coords={"lat": ds["lat"].values, "lon": ds["lon"].values,
                                   "harmonic": np.arange(2 * n_harmonics + 1)})
    clim.attrs.update(n_harmonics=int(n_harmonics), min_std=float(min_std), variables=list(variables),
                      period=f"{str(ds.time.values[0])[:10]}/{str(ds.time.values[-1])[:10]}")
    return clim


def climatology_at(clim: xr.Dataset, variable: str, times) -> tuple[np.ndarray, np.ndarray]:
    """Climatological mean and standard deviation of ``variable`` at ``times``: two arrays (ntime, lat, lon)."""
    if f"{variable}_mean" not in clim:
        raise KeyError(f"variable {variable!r} not in the climatology; it has {clim.attrs.get('variables')}")
    X = _design(times, int(clim.attrs["n_harmonics"]))
    mean = np.einsum("th,hyx->tyx", X, clim[f"{variable}_mean"].values)
    var = np.einsum("th,hyx->tyx", X, clim[f"{variable}_var"].values)
    std = np.sqrt(np.maximum(var, float(clim.attrs["min_std"]) ** 2))
    return mean, std


def _apply(ds: xr.Dataset, clim: xr.Dataset, variables: Sequence[str] | None, inverse: bool) -> xr.Dataset:
    variables = list(variables or clim.attrs["variables"])
    check_variables(ds, variables)
    out = ds.copy()
    for v in variables:
        da = ds[v].transpose("time", "lat", "lon")
        mean, std = climatology_at(clim, v, da["time"].values)
        x = da.values.astype(np.float64)
        y = x * std + mean if inverse else (x - mean) / std
        attrs = dict(clim[f"{v}_mean"].attrs) if inverse else {
            "units": "1", "long_name": f"standardised anomaly of {da.attrs.get('long_name', v)}"}
        out[v] = (da.dims, y, attrs)
    return out


def to_anomalies(ds: xr.Dataset, clim: xr.Dataset, variables: Sequence[str] | None = None) -> xr.Dataset:
    """Standardised anomalies ``(x - m(d)) / s(d)`` of ``variables`` (default: all in the climatology)."""
    return _apply(ds, clim, variables, inverse=False)


def from_anomalies(ds: xr.Dataset, clim: xr.Dataset, variables: Sequence[str] | None = None) -> xr.Dataset:
    """Inverse of :func:`to_anomalies`: ``x' s(d) + m(d)`` in physical units, CF attributes restored."""
    return _apply(ds, clim, variables, inverse=True)
