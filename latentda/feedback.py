"""Per-observation feedback: O−B, O−A, analysis spread, QC flag and reason for every input row of every day.

What ERA5 publishes as its observation feedback. For a day with input rows k (all of them: used, rejected by QC,
held out for evaluation)::

    O−B_k = y_k − (H x̄_b)_k     x̄_b: background (prior) ensemble mean, representation error included as the
                                rto draws it (the mean behind ``fit_before``)
    O−A_k = y_k − (H x̄_a)_k     x̄_a: analysis ensemble mean (the archived ``<var>``)
    spread_k = std_m (H x_a,m)_k  (ddof=1) analysis ensemble spread at the observation

in the units of the observation; NaN where the row has no usable position or variable (H cannot be applied).

Storage (ARCHITECTURE.md, "the archive protocol"): Parquet files partitioned by day beside the archive,
``<archive>.feedback/day=YYYY-MM-DD/part.parquet``, written to a temporary name and renamed (a reader never sees
half a file), BEFORE the day's ``done`` flag in the archive. A crash between the two leaves a complete file of a
day that is not done; :func:`read_feedback` returns done days only, and the rerun rewrites the same bytes.
No orchestration import.
"""
from __future__ import annotations

import dataclasses
import io
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from . import storage
from .obs.schema import QC_OK
from .runtime import to_days

__all__ = ["COLUMNS", "STATUSES", "feedback_table", "positioned", "feedback_url", "day_url", "write_day_feedback",
           "read_feedback", "observation_feedback", "FeedbackSummaryOptions", "variable_summary", "station_summary", "station_flags",
           "format_summary"]

#: The feedback table's columns, in order (units: those of ``value`` for value/error/omb/oma/spread).
COLUMNS = ("day", "station_id", "variable", "time", "lat", "lon", "value", "error", "omb", "oma", "spread",
           "qc_flag", "qc_reason", "status")
#: ``status`` values and their ``qc_flag`` codes.
STATUSES = {"used": 0, "rejected": 1, "held_out": 2}
#: QC reasons given only after the position checks passed (validate_observations keeps the first reason of a row),
#: so a row with one of them (or none) has a valid position.
POSITION_CHECKED = (QC_OK, "nonfinite_value", "bad_error", "unknown_variable", "wrong_time", "duplicate",
                    "gross_departure")
SUFFIX = ".feedback"
PART = "part.parquet"


# ------------------------------------------------------------------------------------------- the table
def positioned(table: pd.DataFrame, variables: Iterable[str]) -> np.ndarray:
    """Row indices (n,) of a validated table (``latentda.obs.schema.validate_observations``) where H can be
    applied: the position checks passed (:data:`POSITION_CHECKED`) and the variable is one of ``variables``."""
    qc = table["qc"].to_numpy(dtype=object)
    lat = table["lat"].to_numpy(dtype=np.float64)
    lon = table["lon"].to_numpy(dtype=np.float64)
    ok = np.isin(qc, POSITION_CHECKED) & table["variable"].isin(list(variables)).to_numpy() \
        & np.isfinite(lat) & (np.abs(np.nan_to_num(lat, nan=999.0)) <= 90) & np.isfinite(lon)
    return np.nonzero(ok)[0]


def feedback_table(table: pd.DataFrame, day: Any, hxb: np.ndarray, hxa: np.ndarray, spread: np.ndarray,
                   held_out: bool = False) -> pd.DataFrame:
    """The feedback rows (one per row of ``table``, same order) of a validated observation table.

    ``table``: output of ``validate_observations`` (QC'd, column ``qc``); ``hxb``, ``hxa``, ``spread`` (n,):
    H x̄_b, H x̄_a and the analysis spread at every row, NaN where H was not applied, physical units.
    ``held_out``: the rows are the evaluation hold-out (status ``held_out``, never assimilated).
    """
    n = len(table)
    for name, a in (("hxb", hxb), ("hxa", hxa), ("spread", spread)):
        if np.shape(a) != (n,):
            raise ValueError(f"{name} has shape {np.shape(a)}, expected ({n},) (one value per table row)")
    qc = table["qc"].to_numpy(dtype=object).astype(str)
    if held_out:
        status = np.full(n, "held_out", dtype=object)
    else:
        status = np.where(qc == QC_OK, "used", "rejected").astype(object)
    value = table["value"].to_numpy(dtype=np.float64)
    t = table["time"] if "time" in table.columns else pd.Series(pd.NaT, index=table.index)
    out = pd.DataFrame({
        "day": np.full(n, np.datetime64(to_days(day)[0], "ns")),
        "station_id": table["station_id"].astype(str).to_numpy(),
        "variable": table["variable"].astype(str).to_numpy(),
        "time": pd.to_datetime(t).to_numpy(dtype="datetime64[ns]"),
        "lat": table["lat"].to_numpy(dtype=np.float64),
        "lon": table["lon"].to_numpy(dtype=np.float64),
        "value": value,
        "error": table["error"].to_numpy(dtype=np.float64),
        "omb": value - np.asarray(hxb, dtype=np.float64),
        "oma": value - np.asarray(hxa, dtype=np.float64),
        "spread": np.asarray(spread, dtype=np.float64),
        "qc_flag": np.array([STATUSES[s] for s in status], dtype=np.int8),
        "qc_reason": qc,
        "status": status.astype(str),
    })
    return out[list(COLUMNS)]


def observation_feedback(table: pd.DataFrame, day: Any, grid, variables: list[str], background_mean: np.ndarray,
                         analysis_members: np.ndarray, held_out: bool = False) -> pd.DataFrame:
    """The feedback rows of a validated table from the day's fields: O−B = y − H x̄_b, O−A = y − H x̄_a and the
    spread std_m(H x_a,m) (ddof=1) at every row that has a position (:func:`positioned`), NaN elsewhere.

    ``background_mean`` (C, nlat, nlon) and ``analysis_members`` (M, C, nlat, nlon): physical units, channels in
    the order of ``variables``; ``grid``: their :class:`latentda.grid.Grid`.
    """
    from .obs.operator import PointOperator

    n = len(table)
    hxb, hxa, spread = (np.full(n, np.nan) for _ in range(3))
    rows = positioned(table, variables)
    if rows.size:
        chan_of = {v: k for k, v in enumerate(variables)}
        op = PointOperator(grid, table["lat"].to_numpy(dtype=np.float64)[rows],
                           table["lon"].to_numpy(dtype=np.float64)[rows],
                           table["variable"].map(chan_of).to_numpy()[rows].astype(np.int64), nchannels=len(variables))
        members = np.asarray(analysis_members, dtype=np.float64)
        hxb[rows] = op.apply_np(np.asarray(background_mean, dtype=np.float64))
        hx_m = op.apply_np(members)  # (M, n)
        hxa[rows] = hx_m.mean(axis=0)
        spread[rows] = hx_m.std(axis=0, ddof=1) if members.shape[0] > 1 else 0.0
    return feedback_table(table, day, hxb, hxa, spread, held_out=held_out)


# ---------------------------------------------------------------------------------------------- storage
def feedback_url(archive_url: str) -> str:
    """``<archive>.feedback``: the folder/prefix of an archive's feedback files."""
    return os.fspath(archive_url).rstrip("/") + SUFFIX


def day_url(archive_url: str, day: Any) -> str:
    """``<archive>.feedback/day=YYYY-MM-DD/part.parquet``."""
    return storage.join(feedback_url(archive_url), f"day={to_days(day)[0].date()}", PART)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    """The Parquet bytes of ``df``: same table, same bytes (no timestamp in the file)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow", compression="zstd")
    return buf.getvalue()


def write_day_feedback(archive_url: str, day: Any, feedback: pd.DataFrame,
                       storage_options: Mapping[str, Any] | None = None) -> str:
    """Write one day's feedback table (:data:`COLUMNS`) to :func:`day_url`: a temporary name in the same folder,
    then a rename, so a reader never sees half a file. Returns the URL written."""
    missing = [c for c in COLUMNS if c not in feedback.columns]
    if missing:
        raise ValueError(f"feedback table lacks column(s) {missing}; it has {list(feedback.columns)}")
    d = to_days(day)[0]
    if len(feedback) and not (pd.DatetimeIndex(feedback["day"]) == d).all():
        raise ValueError(f"feedback rows are not all of day {d.date()}: {sorted(set(map(str, feedback['day'])))}")
    url = day_url(archive_url, d)
    data = _parquet_bytes(feedback[list(COLUMNS)].reset_index(drop=True))
    fs, path = storage.filesystem(url, storage_options)
    folder = path.rsplit("/", 1)[0] if storage.is_remote(url) else os.path.dirname(path)
    tmp = (folder + "/" if storage.is_remote(url) else folder + os.sep) + f".{PART}.{uuid.uuid4().hex}.tmp"
    fs.makedirs(folder, exist_ok=True)
    fs.pipe_file(tmp, data)
    if storage.is_remote(url):
        fs.mv(tmp, path)  # object stores: copy + delete; the final key appears whole
    else:
        os.replace(tmp, path)
    return url


def _days_with_files(archive_url: str, storage_options: Mapping[str, Any] | None) -> list[pd.Timestamp]:
    root = feedback_url(archive_url)
    if not storage.exists(root, storage_options):
        return []
    fs, path = storage.filesystem(root, storage_options)
    out = []
    for p in fs.ls(path, detail=False):
        name = str(p).rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("day="):
            try:
                out.append(to_days(name[4:])[0])
            except ValueError:
                continue
    return sorted(out)


def read_feedback(archive_url: str, start: Any = None, end: Any = None,
                  storage_options: Mapping[str, Any] | None = None, done_only: bool = True) -> pd.DataFrame:
    """The feedback of ``start..end`` (default: every day with feedback) as one table, days ascending.

    ``done_only``: only days marked done in the archive (a day whose feedback file was written but whose analysis
    was not finished by a crash is left out, as the archive leaves it out). Reads the feedback files and the
    archive's ``done`` flags only.
    """
    days = _days_with_files(archive_url, storage_options)
    s = to_days(start)[0] if start is not None else None
    e = to_days(end)[0] if end is not None else None
    if s is not None and e is not None and e < s:
        raise ValueError(f"end {e.date()} is before start {s.date()}")
    days = [d for d in days if (s is None or d >= s) and (e is None or d <= e)]
    if done_only and days:
        done = set(_done_days(archive_url, storage_options))
        days = [d for d in days if d in done]
    if not days:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_DTYPES.items()})
    import pyarrow as pa
    import pyarrow.parquet as pq

    def read(d: pd.Timestamp):
        with storage.open(day_url(archive_url, d), "rb", storage_options) as f:
            return pq.ParquetFile(f).read(use_threads=False)

    # one Arrow table per day, one conversion to pandas (per-file conversion costs more than the reads); object
    # stores answer each GET in tens of ms, so there the files are fetched by 8 threads (order kept)
    workers = 8 if storage.is_remote(archive_url) else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        tables = list(pool.map(read, days))
    return pa.concat_tables(tables).to_pandas()


def _done_days(archive_url: str, storage_options: Mapping[str, Any] | None) -> list[pd.Timestamp]:
    """Days whose ``done`` flag is set in the archive, read with zarr alone (``time`` stored as integer days since
    1970-01-01, ``latentda.archive_layout.TIME_ENCODING``): xarray's decoding of the whole store would cost ~2 s of a
    command that should take about one."""
    import zarr

    from .archive_layout import TIME_ENCODING

    if not storage.exists(archive_url, storage_options):
        raise FileNotFoundError(f"no archive at {storage.redact(archive_url)!r} for the feedback beside it")
    from .archive import read_store  # either engine (an Icechunk archive: its last commit)

    g = zarr.open_group(read_store(archive_url, storage_options), mode="r", zarr_format=3)
    units = g["time"].attrs.get("units")
    if units != TIME_ENCODING["units"]:
        raise ValueError(f"archive time units {units!r} are not {TIME_ENCODING['units']!r}: not a latentda archive")
    t = pd.Timestamp("1970-01-01") + pd.to_timedelta(np.asarray(g["time"][:], dtype=np.int64), unit="D")
    return list(t[np.asarray(g["done"][:]).astype(bool)])


_EMPTY_DTYPES = {"day": "datetime64[ns]", "station_id": object, "variable": object, "time": "datetime64[ns]",
                 "lat": float, "lon": float, "value": float, "error": float, "omb": float, "oma": float,
                 "spread": float, "qc_flag": np.int8, "qc_reason": object, "status": object}


# ---------------------------------------------------------------------------------------------- summaries
@dataclasses.dataclass(frozen=True)
class FeedbackSummaryOptions:
    """Thresholds of :func:`station_flags`.

    ``bias_t``: a station's O−B over its used rows is a persistent bias when |mean| / (std / sqrt(n)) > bias_t
    (a t statistic) with at least ``min_rows`` used rows. ``reject_rate``: a station is flagged when more than this
    fraction of its assimilable rows (used + rejected) was rejected, with at least ``min_rows`` such rows.
    """

    bias_t: float = 3.0
    reject_rate: float = 0.5
    min_rows: int = 3

    def __post_init__(self) -> None:
        if not self.bias_t > 0:
            raise ValueError(f"bias_t={self.bias_t!r} must be positive")
        if not 0 <= self.reject_rate < 1:
            raise ValueError(f"reject_rate={self.reject_rate!r} must be in [0, 1)")
        if self.min_rows < 2:
            raise ValueError(f"min_rows={self.min_rows!r} must be at least 2")


def _rms(x: pd.Series) -> float:
    x = x.to_numpy(dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x ** 2))) if x.size else float("nan")


def variable_summary(feedback: pd.DataFrame) -> pd.DataFrame:
    """Per variable: rows, used, rejected, held out, rejections per reason (``rej:<reason>``) and the mean and
    RMS of O−B and O−A over the used rows (physical units); one row per variable, sorted by name."""
    rows = []
    for var, g in feedback.groupby("variable", sort=True):
        used = g[g["status"] == "used"]
        rej = g[g["status"] == "rejected"]
        r = {"variable": var, "rows": len(g), "used": len(used), "rejected": len(rej),
             "held_out": int((g["status"] == "held_out").sum()),
             "omb_mean": float(used["omb"].mean()) if len(used) else float("nan"), "omb_rms": _rms(used["omb"]),
             "oma_mean": float(used["oma"].mean()) if len(used) else float("nan"), "oma_rms": _rms(used["oma"])}
        for reason, k in rej["qc_reason"].value_counts().sort_index().items():
            r[f"rej:{reason}"] = int(k)
        rows.append(r)
    return pd.DataFrame(rows).fillna({c: 0 for c in set().union(*[r.keys() for r in rows])
                                      if c.startswith("rej:")}) if rows else pd.DataFrame()


def station_summary(feedback: pd.DataFrame, min_rows: int = 3) -> pd.DataFrame:
    """Per station and variable (held-out rows left out): used, rejected, total, reject_rate, the mean, standard
    deviation and RMS of O−B and the RMS of O−A over the used rows, and omb_t = |mean O−B| / (sd / sqrt(used))
    (NaN with fewer than ``min_rows`` used rows; infinite for a constant non-zero O−B)."""
    fb = feedback[feedback["status"] != "held_out"]
    used = (fb["status"] == "used") & np.isfinite(fb["omb"])
    omb = fb["omb"].where(used)
    g = pd.DataFrame({"station_id": fb["station_id"], "variable": fb["variable"], "omb": omb, "omb2": omb ** 2,
                      "oma2": fb["oma"].where(used) ** 2, "rej": (fb["status"] == "rejected").astype(np.int64)}
                     ).groupby(["station_id", "variable"])
    st = g.agg(used=("omb", "count"), rejected=("rej", "sum"), total=("rej", "size"), omb_mean=("omb", "mean"),
               omb_sd=("omb", "std"), omb_ms=("omb2", "mean"), oma_ms=("oma2", "mean")).reset_index()
    st["omb_rms"], st["oma_rms"] = np.sqrt(st.pop("omb_ms")), np.sqrt(st.pop("oma_ms"))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(st["omb_mean"]) / (st["omb_sd"] / np.sqrt(st["used"]))
    t = t.where(st["omb_sd"] > 0, np.where(st["omb_mean"].abs() > 0, np.inf, 0.0))
    st["omb_t"] = t.where(st["used"] >= min_rows)
    st["reject_rate"] = st["rejected"] / st["total"]
    return st


def station_flags(feedback: pd.DataFrame, options: FeedbackSummaryOptions | None = None) -> pd.DataFrame:
    """Stations (per variable) with a persistent O−B bias or a high rejection rate (see
    :class:`FeedbackSummaryOptions`): columns station_id, variable, used, rejected, reject_rate, omb_mean,
    omb_t, reason ("bias", "rejections" or "bias+rejections"); sorted by rejection rate, then t."""
    o = options or FeedbackSummaryOptions()
    cols = ["station_id", "variable", "used", "rejected", "reject_rate", "omb_mean", "omb_t", "reason"]
    if feedback.empty:
        return pd.DataFrame(columns=cols)
    st = station_summary(feedback, o.min_rows)
    bias = (st["omb_t"] > o.bias_t).to_numpy()  # False for NaN (too few used rows)
    rej = ((st["total"] >= o.min_rows) & (st["reject_rate"] > o.reject_rate)).to_numpy()
    st["reason"] = np.where(bias & rej, "bias+rejections", np.where(bias, "bias", "rejections"))
    st = st[bias | rej]
    return st[cols].sort_values(["reject_rate", "omb_t"], ascending=False, na_position="last") \
        .reset_index(drop=True)


def format_summary(feedback: pd.DataFrame, options: FeedbackSummaryOptions | None = None,
                   max_stations: int = 20) -> str:
    """The text printed by ``latentda feedback``: the per-variable table and the flagged stations."""
    if feedback.empty:
        return ("no feedback for this range: no day of it is done, or its days were written by a version without "
                "feedback (`latentda backfill --force` rewrites them)\n")
    days = pd.DatetimeIndex(feedback["day"])
    lines = [f"feedback {days.min().date()}..{days.max().date()}: {days.nunique()} day(s), {len(feedback)} "
             "observation rows (O-B, O-A over used rows, units of each variable)"]
    vs = variable_summary(feedback)
    rej_cols = sorted(c for c in vs.columns if c.startswith("rej:"))
    head = f"{'variable':<16}{'rows':>7}{'used':>7}{'rej.':>6}{'held':>6}{'O-B mean':>10}{'O-B rms':>9}" \
           f"{'O-A mean':>10}{'O-A rms':>9}  rejected by reason"
    lines += ["", head]
    for _, r in vs.iterrows():
        reasons = ", ".join(f"{c[4:]} {int(r[c])}" for c in rej_cols if r[c]) or "-"
        lines.append(f"{r['variable']:<16}{r['rows']:>7}{r['used']:>7}{r['rejected']:>6}{r['held_out']:>6}"
                     f"{r['omb_mean']:>10.3g}{r['omb_rms']:>9.3g}{r['oma_mean']:>10.3g}{r['oma_rms']:>9.3g}  "
                     f"{reasons}")
    flags = station_flags(feedback, options)
    o = options or FeedbackSummaryOptions()
    lines += ["", f"stations flagged (O-B bias t > {o.bias_t:g} or rejection rate > {o.reject_rate:.0%}, "
                  f"at least {o.min_rows} rows): {len(flags)}"]
    if len(flags):
        lines.append(f"{'station':<16}{'variable':<16}{'used':>6}{'rej.':>6}{'rej. rate':>10}{'O-B mean':>10}"
                     f"{'t':>8}  reason")
        for _, r in flags.head(max_stations).iterrows():
            lines.append(f"{r['station_id']:<16}{r['variable']:<16}{r['used']:>6}{r['rejected']:>6}"
                         f"{r['reject_rate']:>10.0%}{r['omb_mean']:>10.3g}{r['omb_t']:>8.3g}  {r['reason']}")
        if len(flags) > max_stations:
            lines.append(f"... {len(flags) - max_stations} more")
    return "\n".join(lines) + "\n"

