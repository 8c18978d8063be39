"""Quicklook PNG of one analysis day: ensemble mean, spread with the observation locations, truth if known.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change, no display needed).
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import storage

__all__ = ["quicklook", "quicklook_title", "display_units"]


def _field(ds: xr.Dataset, name: str) -> xr.DataArray:
    da = ds[name]
    if "time" in da.dims:
        da = da.isel(time=0)
    return da.transpose("lat", "lon")


#: Units shown on a plot instead of the stored ones: ``stored -> (shown, factor)``, shown = factor * stored.
DISPLAY_UNITS = {"Pa": ("hPa", 0.01)}


def display_units(units: str) -> tuple[str, float]:
    """``(units shown, factor)`` for data stored in ``units`` (pressure in hPa; others unchanged)."""
    return DISPLAY_UNITS.get(units, (units, 1.0))


def quicklook_title(base: str, members: int | None = None, rmse: float | None = None, units: str = "") -> str:
    """``"<base> (16 members, RMSE vs truth 1.23 hPa)"``: the ensemble size and, when the truth is known, the
    latitude-weighted RMSE of the mean (units as shown)."""
    parts = ([f"{members} members"] if members else []) + (
        [f"RMSE vs truth {rmse:.3g} {units}".rstrip()] if rmse is not None else [])
    return f"{base} ({', '.join(parts)})" if parts else base


def quicklook(analysis: xr.Dataset, variable: str, path: str | os.PathLike,
              observations: pd.DataFrame | None = None, truth: xr.Dataset | None = None,
              title: str | None = None, dpi: int = 90, members: int | None = None) -> str:
    """Write a PNG of ``variable`` for the single day in ``analysis`` and return ``path``.

    Panels: analysis mean; ensemble spread with the used observation locations (black dots, rows of
    ``observations`` for that variable); and, with ``truth`` (same grid, the day selected or selectable by time),
    the truth and the analysis error (analysis - truth). The title adds the ensemble size (``members``) and, with
    the truth, the latitude-weighted RMSE of the mean (:func:`latentda.metrics.deterministic.rmse`). Pressure
    (stored in Pa) is shown in hPa (:data:`DISPLAY_UNITS`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for name in (variable, f"{variable}_spread"):
        if name not in analysis:
            raise KeyError(f"{name!r} not in the analysis; it has {sorted(analysis.data_vars)}")
    mean = _field(analysis, variable)
    spread = _field(analysis, f"{variable}_spread")
    day = pd.Timestamp(analysis["time"].values[0]).date() if "time" in analysis.dims else None
    tr = None
    if truth is not None:
        t = truth
        if "time" in t[variable].dims:
            t = t.sel(time=np.datetime64(pd.Timestamp(day), "ns")) if day is not None else t.isel(time=0)
        tr = t[variable].transpose("lat", "lon")
    npanel = 2 + (2 if tr is not None else 0)
    ncols = 2
    nrows = (npanel + 1) // 2
    fig = Figure(figsize=(11, 3.6 * nrows), dpi=dpi)
    FigureCanvasAgg(fig)
    lon, lat = mean["lon"].values, mean["lat"].values
    units, factor = display_units(analysis[variable].attrs.get("units", ""))
    mean, spread = mean * factor, spread * factor
    error = None
    if tr is not None:
        from .metrics.deterministic import rmse

        tr = tr * factor
        error = float(rmse(mean, tr))
    vmin = float(np.nanmin(mean.values)) if tr is None else float(min(np.nanmin(mean.values), np.nanmin(tr.values)))
    vmax = float(np.nanmax(mean.values)) if tr is None else float(max(np.nanmax(mean.values), np.nanmax(tr.values)))

    def panel(k: int, data: np.ndarray, label: str, cmap: str, **kw: Any):
        ax = fig.add_subplot(nrows, ncols, k)
        im = ax.pcolormesh(lon, lat, data, shading="nearest", cmap=cmap, **kw)
        fig.colorbar(im, ax=ax, shrink=0.85, label=units)
        ax.set_title(label, fontsize=10)
        ax.set_xlim(0, 360)
        ax.set_ylim(-90, 90)
        ax.set_xlabel("longitude (deg E)")
        ax.set_ylabel("latitude (deg N)")
        return ax

    panel(1, mean.values, "analysis mean", "viridis", vmin=vmin, vmax=vmax)
    ax = panel(2, spread.values, "ensemble spread + observations", "magma_r", vmin=0)
    if observations is not None and len(observations):
        rows = observations
        if "variable" in rows.columns:
            rows = rows[rows["variable"].astype(str) == variable]
        if len(rows):
            ax.scatter(np.mod(rows["lon"].values, 360), rows["lat"].values, s=6, c="k", lw=0,
                       label=f"{len(rows)} obs")
            ax.legend(loc="lower left", fontsize=8)
    if tr is not None:
        panel(3, tr.values, "truth", "viridis", vmin=vmin, vmax=vmax)
        err = mean.values - tr.values
        lim = float(np.nanmax(np.abs(err))) or 1.0
        panel(4, err, "analysis - truth", "RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle(quicklook_title(title or f"{variable} {day}", members, error, units), fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    p = os.fspath(path)
    if storage.is_remote(p):
        with storage.open(p, "wb") as f:
            f.write(buf.getvalue())
    else:
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        with open(p, "wb") as f:
            f.write(buf.getvalue())
    return p
