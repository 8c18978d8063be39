"""Gridded input (e.g. ERA5-shaped: hourly, ``valid_time``, short names, descending latitude, -180..180
longitude, degC / hPa) -> the prior's daily fields on its grid, by the declared :class:`~.steps.FieldSteps`.

Every check runs before any data are computed, so bad input fails fast and nothing downstream is written.
Output: a Dataset (time, lat, lon), one variable per declared target name, in the declared units, daily
(times at 00 UTC), latitude ascending, longitude in [0, 360), in the source's float precision.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import xarray as xr

from ..grid import Grid, normalize_grid
from .steps import DailyStep, FieldSteps, IngestError, VariableStep

__all__ = ["unit_registry", "check_units", "convert_units", "check_times", "to_daily", "check_global",
           "regrid_conservative", "apply_field_steps"]


@functools.lru_cache(maxsize=1)
def unit_registry():
    """The pint registry of cf-xarray (understands CF unit strings such as ``m s-1``, ``degC``, ``hPa``)."""
    import pint_xarray  # noqa: F401 - registers the .pint accessor
    from cf_xarray.units import units

    return units


def _parse_unit(text: str, what: str):
    import pint

    try:
        return unit_registry().Unit(text)
    except (pint.errors.UndefinedUnitError, ValueError, AssertionError, TypeError) as err:
        raise IngestError(f"unknown unit {text!r} of {what}: {err}") from None


def check_units(ds: xr.Dataset, variables: dict[str, VariableStep]) -> dict[str, tuple]:
    """(source unit, target unit) of each declared source variable, parsed by pint and of one dimensionality.

    Reads attributes only. Raises :class:`IngestError` naming a missing variable or an unknown/incompatible unit.
    """
    missing = [src for src in variables if src not in ds.data_vars]
    if missing:
        raise IngestError(f"variable(s) {missing} declared in ingest.fields.variables are not in the source; "
                          f"it has {sorted(map(str, ds.data_vars))}")
    out = {}
    for src, step in variables.items():
        src_units = step.source_units or ds[src].attrs.get("units")
        if not src_units:
            raise IngestError(f"source variable {src!r} has no 'units' attribute; declare source_units for it")
        unit_in = _parse_unit(str(src_units), f"source variable {src!r}")
        unit_out = _parse_unit(step.units, f"target {step.name!r}")
        if unit_in.dimensionality != unit_out.dimensionality:
            raise IngestError(f"cannot convert {src!r} from {src_units!r} to {step.units!r} for {step.name!r}: "
                              f"{unit_in.dimensionality} is not {unit_out.dimensionality}")
        out[src] = (unit_in, unit_out)
    return out


def convert_units(da: xr.DataArray, unit_in, unit_out) -> xr.DataArray:
    """x_target = pint conversion of x_source from ``unit_in`` to ``unit_out`` (pint-xarray; lazy stays lazy)."""
    return da.pint.quantify(unit_in, unit_registry=unit_registry()).pint.to(unit_out).pint.dequantify()


def check_times(ds: xr.Dataset) -> xr.Dataset:
    """``valid_time`` renamed to ``time``; raises :class:`IngestError` naming the first duplicated time."""
    if "time" not in ds.dims and "valid_time" in ds.dims:
        ds = ds.rename({"valid_time": "time"})
    if "time" not in ds.dims:
        raise IngestError(f"the source has no time dimension (time or valid_time); dims: {dict(ds.sizes)}")
    t = pd.DatetimeIndex(ds["time"].values)
    dup = t[t.duplicated()]
    if dup.size:
        raise IngestError(f"duplicated time {dup[0]} in the source ({dup.size} duplicate(s)); "
                          "remove the repeated records (e.g. overlapping files) before ingesting")
    return ds.sortby("time") if not t.is_monotonic_increasing else ds


def to_daily(ds: xr.Dataset, step: DailyStep) -> xr.Dataset:
    """One field per UTC day: ``mean`` = (1/n) sum of the n samples of the day; ``at_hour`` = the sample at
    ``hour``. Times become the day (00 UTC). Raises :class:`IngestError` naming a day with fewer samples than
    the others (mean) or without the requested hour (at_hour)."""
    t = pd.DatetimeIndex(ds["time"].values)
    days = t.floor("D")
    if step.method == "mean":
        counts = pd.Series(1, index=days).groupby(level=0).size()
        full = int(counts.max())
        short = counts[counts < full]
        if short.size:
            raise IngestError(f"day {short.index[0].date()} has {int(short.iloc[0])} of {full} samples "
                              f"({short.size} incomplete day(s)); give whole days or use daily.method at_hour")
        if full == 1:
            return ds.assign_coords(time=days)
        daily = ds.assign_coords(day=("time", days)).groupby("day").mean("time", keep_attrs=True)
        return daily.rename({"day": "time"})
    at = (t.hour == step.hour) & (t.minute == 0) & (t.second == 0)
    lacking = days.unique().difference(days[at])
    if lacking.size:
        raise IngestError(f"day {lacking[0].date()} has no sample at {step.hour:02d}:00 UTC "
                          f"({lacking.size} day(s) lack it)")
    out = ds.isel(time=np.nonzero(at)[0])
    return out.assign_coords(time=days[at])


def _spacing(x: np.ndarray) -> float:
    return float(np.median(np.diff(x))) if x.size > 1 else 0.0


def check_global(ds: xr.Dataset, what: str = "the source grid") -> None:
    """Raise :class:`IngestError` unless lat/lon (normalised: ascending, lon in [0, 360)) cover the globe:
    the outermost rows within one spacing of the poles, no latitude or longitude gap over 1.5 spacings (the
    longitudes wrapping around)."""
    lat = np.asarray(ds["lat"].values, dtype=float)
    lon = np.asarray(ds["lon"].values, dtype=float)
    dlat, dlon = _spacing(lat), _spacing(lon)
    tol = 1e-6
    if lat.size < 2 or lat[0] > -90 + dlat + tol or lat[-1] < 90 - dlat - tol:
        raise IngestError(f"{what} does not cover the globe: latitude {lat[0]:g}..{lat[-1]:g} "
                          f"(spacing {dlat:g}); it must reach within one spacing of -90 and 90")
    if lat.size > 1 and np.diff(lat).max() > 1.5 * dlat + tol:
        i = int(np.argmax(np.diff(lat)))
        raise IngestError(f"{what} does not cover the globe: latitude has a gap of {lat[i + 1] - lat[i]:g} degrees "
                          f"after {lat[i]:g} (spacing {dlat:g})")
    gaps = np.diff(np.concatenate([lon, [lon[0] + 360.0]]))
    if lon.size < 2 or gaps.max() > 1.5 * dlon + tol:
        i = int(np.argmax(gaps))
        raise IngestError(f"{what} does not cover the globe: longitude {lon[0]:g}..{lon[-1]:g} has a gap of "
                          f"{gaps[i]:g} degrees after {lon[i]:g} (spacing {dlon:g})")


def regrid_conservative(ds: xr.Dataset, grid: Grid) -> xr.Dataset:
    """First-order conservative regridding (xarray-regrid) of a global ``ds`` to ``grid``:
    x_target(c) = sum_s w_cs x_s / sum_s w_cs, w_cs = overlap area of source cell s with target cell c.

    Cell edges are midpoints between centres (xarray-regrid), longitudes wrap around, and the cell areas use
    sin(lat) differences. A source already on ``grid`` is returned unchanged.
    """
    import xarray_regrid  # noqa: F401 - registers the .regrid accessor

    ds = normalize_grid(ds)
    if Grid.from_dataset(ds).matches(grid):
        return ds
    target = xr.Dataset(coords={"lat": ("lat", grid.lat, {"units": "degrees_north"}),
                                "lon": ("lon", grid.lon, {"units": "degrees_east"})})
    out = ds.regrid.conservative(target, latitude_coord="lat", time_dim="time", skipna=False)
    return out.assign_coords(lat=("lat", grid.lat, ds["lat"].attrs), lon=("lon", grid.lon, ds["lon"].attrs))


def apply_field_steps(ds: xr.Dataset, steps: FieldSteps) -> xr.Dataset:
    """All declared steps on a (lazy) source Dataset -> daily fields of ``steps.names`` (lazy, source precision).

    Every check first, on coordinates and attributes only: variables and units, duplicated times, coverage of
    the globe, dimensions. Then daily aggregation, latitude ascending / longitude in [0, 360), conservative
    regridding to ``steps.grid``, and last the unit conversion (affine, so it commutes with the means that
    aggregation and regridding take, and costs least on the smallest array). Other coordinates (e.g. ERA5's
    scalar ``number`` or ``expver`` along time) are dropped: the output has time, lat and lon only.
    """
    units = check_units(ds, steps.variables)
    names = {src: step.name for src, step in steps.variables.items()}
    ds = check_times(ds[list(names)].rename(names))
    check_global(normalize_grid(ds.drop_vars(list(ds.data_vars))))
    if steps.daily is not None:
        ds = to_daily(ds, steps.daily)
    ds = normalize_grid(ds)
    for src, v in names.items():
        extra = [str(d) for d in ds[v].dims if d not in ("time", "lat", "lon")]
        if extra or ds[v].ndim != 3:
            raise IngestError(f"source variable {src!r} has dims {list(ds[v].dims)}; need (time, latitude, "
                              f"longitude): select or reduce {extra or 'the missing ones'} first (e.g. ERA5's "
                              "expver or number)")
    if steps.grid is not None:
        ds = regrid_conservative(ds, Grid.regular(steps.grid.nlat, steps.grid.nlon))
    out = {}
    for src, v in names.items():
        conv = convert_units(ds[v].reset_coords(drop=True).transpose("time", "lat", "lon"), *units[src])
        attrs = {k: a for k, a in ds[v].attrs.items() if k != "units"}
        conv.attrs = dict(attrs, units=steps.variables[src].units, source_variable=src,
                          source_units=str(steps.variables[src].source_units or ds[v].attrs.get("units")))
        out[v] = conv
    coords = {c: (c, ds[c].values, ds[c].attrs) for c in ("time", "lat", "lon")}
    return xr.Dataset(out, coords=coords, attrs=ds.attrs)
