"""Observation table schema (ARCHITECTURE.md, "conventions") and row-level validation with QC reasons.

Columns: ``time`` (datetime64), ``lat`` (degrees north), ``lon`` (degrees east, any range: taken modulo 360),
``value`` (physical units of ``variable``), optional ``error`` (standard deviation, same units as value),
optional ``station_id`` and ``variable`` (defaults to the only variable of a single-variable prior).

Invalid rows are never dropped silently: :func:`validate_observations` returns the table with a ``qc`` column,
``""`` for usable rows and a reason otherwise.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

OBS_COLUMNS = ("time", "lat", "lon", "value", "error", "station_id", "variable")
REQUIRED = ("lat", "lon", "value")
QC_OK = ""
QC_REASONS = {
    "non_numeric": "lat, lon, value or error is not a number",
    "nonfinite_value": "value is NaN or infinite",
    "nonfinite_coordinate": "lat or lon is NaN or infinite",
    "lat_out_of_range": "latitude outside [-90, 90]",
    "lon_out_of_range": "longitude outside [-360, 720] (taken modulo 360 only within that range)",
    "bad_error": "error standard deviation is not a finite positive number (representable in float32)",
    "unknown_variable": "variable is not one the prior knows",
    "duplicate": "same time, place and variable as an earlier row",
    "gross_departure": "departure from the prior ensemble mean beyond the QC threshold",
    "wrong_time": "time is not the day being assimilated",
}


def check_columns(df: pd.DataFrame) -> None:
    """Raise a ValueError naming the missing required columns and the columns the table has."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"observations must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"observation table lacks column(s) {missing}; it has {list(df.columns)}. "
                         f"Expected columns: {list(OBS_COLUMNS)}")


def parse_times(values: pd.Series, strict: bool = True) -> pd.Series:
    """The observation times ``values`` as UTC-naive datetime64[ns] (the one time rule of the system): times with a
    time zone are converted to UTC, naive ones are taken as UTC, missing values (None, NaN, NaT) are NaT. A value
    that is not a date/time: ValueError naming it and its row (``strict``), NaT otherwise (QC flags the row)."""
    values = pd.Series(values)
    try:
        t = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    except (TypeError, ValueError) as exc:  # e.g. a column of objects pandas cannot even try
        raise ValueError(f"observation times cannot be read as dates: {exc}") from None
    t = t.dt.tz_localize(None).astype("datetime64[ns]")
    bad = t.isna().to_numpy() & values.notna().to_numpy()
    if strict and bad.any():
        first = int(np.nonzero(bad)[0][0])
        raise ValueError(f"observation time {values.iloc[first]!r} (row {first}) is not a date/time; "
                         f"{int(bad.sum())} row(s) have unreadable times")
    return t


def validate_observations(df: pd.DataFrame, variables: Iterable[str] | None = None,
                          default_error: float | dict[str, float] | None = None,
                          time=None) -> pd.DataFrame:
    """Return a copy of ``df`` with normalised columns and a ``qc`` reason per row (``""`` = usable).

    ``variables``: allowed variable names; a table without a ``variable`` column is given the only one.
    ``default_error``: fills a missing ``error`` column (scalar or per-variable dict); without it the column is
    required. ``time``: if given, rows whose date differs from this day (or from all of these days, for a
    sequence of days: an assimilation window) get ``wrong_time``.
    """
    check_columns(df)
    out = df.copy()
    out.index = pd.RangeIndex(len(out))
    variables = list(variables) if variables is not None else None
    if "variable" not in out.columns:
        if variables is None or len(variables) != 1:
            raise ValueError(f"observation table has no 'variable' column and the prior has variables "
                             f"{variables}: add a 'variable' column naming one per row")
        out["variable"] = variables[0]
    out["variable"] = out["variable"].astype(str)
    if "error" not in out.columns:
        if default_error is None:
            raise ValueError("observation table has no 'error' column (observation error standard deviation, "
                             "same units as value) and no default error was given")
        if isinstance(default_error, dict):
            out["error"] = out["variable"].map(default_error).astype(float)
        else:
            out["error"] = float(default_error)
    if "station_id" not in out.columns:
        out["station_id"] = ""
    qc = np.full(len(out), QC_OK, dtype=object)

    def mark(mask, reason):
        mask = np.asarray(mask, dtype=bool) & (qc == QC_OK)
        qc[mask] = reason

    numeric = {}
    for c in ("lat", "lon", "value", "error"):
        raw = out[c]
        conv = pd.to_numeric(raw, errors="coerce").astype(float)
        mark(conv.isna().values & raw.notna().values, "non_numeric")
        numeric[c] = conv
        out[c] = conv
    mark(~np.isfinite(numeric["lat"].values) | ~np.isfinite(numeric["lon"].values), "nonfinite_coordinate")
    mark(np.abs(numeric["lat"].values) > 90, "lat_out_of_range")
    mark((numeric["lon"].values < -360) | (numeric["lon"].values > 720), "lon_out_of_range")
    mark(~np.isfinite(numeric["value"].values), "nonfinite_value")
    err = numeric["error"].values
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # 1/sigma^2 must be a finite positive weight in float32, the precision the assimilation works in: huge or
        # tiny errors (beyond about 1e19 or below 1e-19 of the value's units) would overflow or vanish there
        weight = 1.0 / err**2
    f32 = np.finfo(np.float32)
    mark(~np.isfinite(err) | (err <= 0) | ~(weight < f32.max) | ~(weight > f32.tiny), "bad_error")
    if variables is not None:
        mark(~out["variable"].isin(variables).values, "unknown_variable")
    if "time" in out.columns:
        out["time"] = parse_times(out["time"], strict=False).to_numpy()
        if time is not None:
            many = isinstance(time, (list, tuple, np.ndarray, pd.Index))
            days = [np.datetime64(pd.Timestamp(t).normalize()) for t in (time if many else [time])]
            mark(~np.isin(out["time"].dt.normalize().values, days), "wrong_time")
    out["lon"] = np.mod(out["lon"].values, 360.0)
    key_cols = [c for c in ("time", "lat", "lon", "variable") if c in out.columns]
    ok_rows = qc == QC_OK
    dup = np.zeros(len(out), dtype=bool)
    dup[ok_rows] = out.loc[ok_rows, key_cols].duplicated(keep="first").values
    mark(dup, "duplicate")
    out["qc"] = qc.astype(str)
    return out


def qc_summary(table: pd.DataFrame) -> dict[str, int]:
    """Counts of rows per QC reason (``used`` for the usable rows)."""
    counts = table["qc"].replace({QC_OK: "used"}).value_counts()
    return {str(k): int(v) for k, v in counts.items()}
