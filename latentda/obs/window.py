"""Assimilation windows: the days [d − k, d + k] around an analysed day d, the observations that fall in them, how
well they cover the window, and the hash of the window's observations (provenance of a windowed analysis).

A window of half-width k = 0 is the day itself: every function then reduces to the per-day case.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..runtime import table_hash
from .schema import parse_times


def window_days(time, window: int) -> pd.DatetimeIndex:
    """The 2 ``window`` + 1 consecutive days [d − k, d + k] (midnights) around the day d of ``time``."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise ValueError(f"window={window!r} must be a non-negative integer (half-width in days)")
    try:
        d = pd.Timestamp(time).normalize()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"time={time!r} is not a date: {exc}") from None
    if d is pd.NaT:
        raise ValueError(f"time={time!r} is not a date (NaT)")
    return pd.date_range(d - pd.Timedelta(days=int(window)), periods=2 * int(window) + 1, freq="D")


def row_days(observations: pd.DataFrame, strict: bool = True) -> pd.Series:
    """Day (UTC midnight) of every row of ``observations`` by :func:`latentda.obs.schema.parse_times` (time zones
    converted; NaT where ``time`` is missing). A time that is not a date: ValueError naming the value (``strict``:
    selecting a day's rows) or NaT (``strict=False``: inside an analysis, where QC flags the row). ValueError if
    the table has no ``time`` column."""
    if "time" not in observations.columns:
        raise ValueError(f"the observation table has no 'time' column (needed to find each row's day); it has "
                         f"{list(observations.columns)}")
    return parse_times(observations["time"], strict=strict).dt.normalize()


def window_coverage(observations: pd.DataFrame, days: pd.DatetimeIndex) -> dict[str, int]:
    """``window_days_observed``: how many of ``days`` have at least one row; ``obs_outside_window``: rows of other
    days (rows with a missing or unreadable time count as outside: QC flags them ``wrong_time``)."""
    t = row_days(observations, strict=False)
    inside = t.isin(days)
    return {"window_days_observed": int(t[inside].nunique()), "obs_outside_window": int((~inside).sum())}


def window_table(observations: pd.DataFrame, time, window: int) -> pd.DataFrame:
    """The rows of ``observations`` whose day (:func:`row_days`) lies in [d − k, d + k], in their original order
    (``latentda.backfill.observations_for_day`` selects through it)."""
    return observations[row_days(observations).isin(window_days(time, window)).to_numpy()]


def window_observation_hash(observations: pd.DataFrame, time, window: int) -> str:
    """sha256 (hex) of the observations of the window of ``time``: column names and dtypes, then the rows of the
    window in their given order (``pandas.util.hash_pandas_object``, index excluded) — the same digest as
    ``latentda.runtime.table_hash`` (the archive's ``obs_hash``) of :func:`window_table`, so with ``window=0`` it is the day's table hash when
    the table holds that day only. A rerun with the same window observations gives the same digest."""
    return table_hash(window_table(observations, time, window))
