"""GHCN-Daily / ISD-like station files -> latentda's observation table (:mod:`latentda.obs.schema`) with station
metadata, by a declared :class:`~.steps.StationLayout` (column mapping, units, missing-value codes, station list).

Output columns: time (datetime64, the day), station_id (str), lat (degrees north), lon (degrees east in
[0, 360)), variable, value (in ``to_units``), error (std, ``to_units``), then the station metadata columns
declared in ``stations.metadata_columns``. Values equal to a declared missing-value code, and empty cells, are not
observations and are left out; anything else that is not a number is an error naming the column and the value.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import storage
from .steps import ColumnSpec, IngestError, StationLayout

__all__ = ["read_any_table", "read_station_list", "read_station_table", "convert_values"]


def read_any_table(urlpath: str, storage_options: Mapping[str, Any] | None, what: str,
                   str_columns: list[str] | None = None) -> pd.DataFrame:
    """A CSV or Parquet file (by suffix; any fsspec URL) as a DataFrame; ``str_columns`` read as text."""
    try:
        with storage.open(urlpath, "rb", dict(storage_options or {}) or None) as f:
            if urlpath.lower().endswith((".parquet", ".pq")):
                df = pd.read_parquet(f)
                for c in str_columns or []:
                    if c in df.columns:
                        df[c] = df[c].astype(str)
                return df
            return pd.read_csv(f, dtype={c: str for c in str_columns or []}, keep_default_na=False,
                               na_values=[""])
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {urlpath!r} does not exist") from None


def read_station_list(layout: StationLayout) -> pd.DataFrame:
    """The station list indexed by station id: columns lat, lon and the declared metadata columns."""
    sl = layout.stations
    df = read_any_table(sl.urlpath, sl.storage_options, "station list", [sl.id_column])
    need = [sl.id_column, sl.lat_column, sl.lon_column, *sl.metadata_columns]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise IngestError(f"station list {sl.urlpath!r} lacks column(s) {missing}; it has {list(df.columns)}")
    ids = df[sl.id_column].astype(str).str.strip()
    dup = ids[ids.duplicated()]
    if dup.size:
        raise IngestError(f"station id {dup.iloc[0]!r} is listed more than once in {sl.urlpath!r}")
    out = pd.DataFrame({"lat": pd.to_numeric(df[sl.lat_column], errors="coerce"),
                        "lon": pd.to_numeric(df[sl.lon_column], errors="coerce")})
    bad = out["lat"].isna() | out["lon"].isna() | (out["lat"].abs() > 90)
    if bad.any():
        i = int(np.flatnonzero(bad.values)[0])
        raise IngestError(f"station {ids.iloc[i]!r} in {sl.urlpath!r} has latitude/longitude "
                          f"{df[sl.lat_column].iloc[i]!r}, {df[sl.lon_column].iloc[i]!r}")
    out["lon"] = np.mod(out["lon"].values, 360.0)
    for src, dst in sl.metadata_columns.items():
        out[dst] = df[src].values
    out.index = pd.Index(ids.values, name="station_id")
    return out


def convert_values(values: np.ndarray, spec: ColumnSpec, column: str) -> np.ndarray:
    """value_out = pint conversion of (scale * value_in) from ``spec.units`` to ``spec.to_units``."""
    import pint

    from .fields import unit_registry

    ureg = unit_registry()
    for u, role in ((spec.units, "units"), (spec.to_units, "to_units")):
        try:
            ureg.Unit(u)
        except (pint.errors.UndefinedUnitError, ValueError, AssertionError, TypeError):
            raise IngestError(f"unknown unit {u!r} ({role}) of station column {column!r}") from None
    if ureg.Unit(spec.units).dimensionality != ureg.Unit(spec.to_units).dimensionality:
        raise IngestError(f"cannot convert station column {column!r} from {spec.units!r} to {spec.to_units!r}: "
                          "the dimensions differ")
    return ureg.Quantity(values * spec.scale, spec.units).to(spec.to_units).magnitude


def _numbers(raw: pd.Series, missing: list, column: str) -> np.ndarray:
    """Float values of ``raw`` with the missing-value codes as NaN; an error names any other non-number."""
    num = pd.to_numeric(raw, errors="coerce").astype(float)
    codes_num = [float(m) for m in missing if isinstance(m, (int, float))]
    codes_str = {str(m).strip() for m in missing}
    is_missing = raw.astype(str).str.strip().isin(codes_str).values | np.isin(num.values, codes_num) \
        | raw.isna().values
    bad = num.isna().values & ~is_missing
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise IngestError(f"station column {column!r} holds {raw.iloc[i]!r} (row {i}), which is neither a number "
                          f"nor a declared missing value {missing}")
    out = num.values.copy()
    out[is_missing] = np.nan
    return out


def _long_rows(df: pd.DataFrame, layout: StationLayout) -> pd.DataFrame:
    """(station, time, key, raw value) rows from a wide or long file."""
    st, tc = layout.station_column, layout.time_column
    if layout.element_column is None:
        keys = list(layout.columns)
        return df.melt(id_vars=[st, tc], value_vars=keys, var_name="_key", value_name="_raw")
    out = df[[st, tc, layout.element_column, layout.value_column]].rename(
        columns={layout.element_column: "_key", layout.value_column: "_raw"})
    unknown = sorted(set(out["_key"].astype(str)) - set(layout.columns))
    if unknown:
        raise IngestError(f"element(s) {unknown} in column {layout.element_column!r} are not declared in "
                          f"layout.columns ({sorted(layout.columns)}); declare them or filter the file")
    return out


def read_station_table(urlpath: str, layout: StationLayout | Mapping[str, Any],
                       storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read the station file at ``urlpath`` by ``layout`` -> observation table (see the module docstring).

    Raises :class:`IngestError` naming an unknown or missing column, an unknown unit, a non-number that is not
    a missing-value code, an unparseable time, or a station id absent from the station list.
    """
    layout = layout if isinstance(layout, StationLayout) else StationLayout.model_validate(dict(layout))
    df = read_any_table(urlpath, storage_options, "station file", [layout.station_column])
    value_cols = [layout.element_column, layout.value_column] if layout.element_column else list(layout.columns)
    known = {layout.station_column, layout.time_column, *value_cols, *layout.ignore_columns}
    unknown = [c for c in df.columns if c not in known]
    if unknown:
        raise IngestError(f"station file {urlpath!r} has unknown column(s) {unknown}: map them in layout.columns "
                          f"or list them in layout.ignore_columns (declared: {sorted(known)})")
    missing = [c for c in [layout.station_column, layout.time_column, *value_cols] if c not in df.columns]
    if missing:
        raise IngestError(f"station file {urlpath!r} lacks declared column(s) {missing}; it has {list(df.columns)}")
    stations = read_station_list(layout)
    rows = _long_rows(df, layout)
    rows[layout.station_column] = rows[layout.station_column].astype(str).str.strip()
    absent = sorted(set(rows[layout.station_column]) - set(stations.index))
    if absent:
        raise IngestError(f"station id(s) {absent[:5]} of {urlpath!r} are not in the station list "
                          f"{layout.stations.urlpath!r} ({len(absent)} unknown)")
    try:
        time = pd.to_datetime(rows[layout.time_column].astype(str), format=layout.time_format)
    except (ValueError, TypeError) as err:
        raise IngestError(f"column {layout.time_column!r} of {urlpath!r}: time not in format "
                          f"{layout.time_format!r}: {err}") from None
    parts = []
    for key, spec in layout.columns.items():
        sel = (rows["_key"].astype(str) == key).values
        if not sel.any():
            continue
        raw = rows.loc[sel, "_raw"]
        vals = _numbers(raw, layout.missing_values, key)
        ok = ~np.isnan(vals)
        sid = rows.loc[sel, layout.station_column].values[ok]
        part = pd.DataFrame({"time": time.values[sel][ok], "station_id": sid, "variable": spec.variable,
                             "value": convert_values(vals[ok], spec, key), "error": spec.error})
        parts.append(part)
    cols = ["time", "station_id", "lat", "lon", "variable", "value", "error",
            *layout.stations.metadata_columns.values()]
    if not parts:
        return pd.DataFrame({c: [] for c in cols})
    table = pd.concat(parts, ignore_index=True)
    table = table.join(stations, on="station_id")
    order = {k: i for i, k in enumerate(s.variable for s in layout.columns.values())}
    table = table.assign(_v=table["variable"].map(order)).sort_values(["time", "_v", "station_id"], kind="stable")
    return table[cols].reset_index(drop=True)
