"""Reading the reanalysis archive, whichever its engine: open it, the done flag and status of each day, missing
days (ARCHITECTURE.md, "the archive protocol"). A plain Zarr store is read as it is; an Icechunk repository
(:mod:`latentda.archive_icechunk`) at its last commit, so a reader never sees a half-written day. Writing and
creating are in :mod:`latentda.archive`, which re-exports everything here. No orchestration import.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from . import archive_icechunk, storage
from .archive_layout import DONE, FINAL, NOT_WRITTEN, STATUS, TIME_ENCODING
from .grid import Grid
from .runtime import to_days

__all__ = ["ArchiveError", "hexdigest", "engine_at", "read_store", "open_archive", "day_status", "day_states",
           "missing_days", "done_days", "StoreLayout", "store_layout", "period_slice"]


class ArchiveError(RuntimeError):
    """The archive is unusable or inconsistent (the message says what and how to fix it)."""


def hexdigest(arr: xr.DataArray | np.ndarray) -> str | list[str]:
    """Hex strings of a hash-bytes variable: one day (32,) -> str; several days (n, 32) -> list of str."""
    a = np.asarray(arr, dtype=np.uint8)
    if a.ndim == 1:
        return a.tobytes().hex() if a.any() else ""
    return [row.tobytes().hex() if row.any() else "" for row in a]


def _store(url: Any, storage_options: Mapping[str, Any] | None, read_only: bool = False):
    """A Zarr store for a URL (plain Zarr engine); a store object (an Icechunk session's) is returned as is."""
    if not isinstance(url, (str, os.PathLike)):
        return url
    return storage.zarr_store(url, storage_options or None, read_only=read_only)


def engine_at(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``"icechunk"`` when ``url`` holds an Icechunk repository, else ``"zarr"`` (what readers open it with)."""
    return "icechunk" if archive_icechunk.is_repository(url, storage_options) else "zarr"


def read_store(url: str, storage_options: Mapping[str, Any] | None = None, snapshot: str | None = None):
    """A read-only Zarr store of the archive: the Zarr store itself, or the last commit of an Icechunk archive
    (``snapshot``: an earlier commit's id, Icechunk only)."""
    if engine_at(url, storage_options) == "icechunk":
        return archive_icechunk.read_store(url, storage_options, snapshot_id=snapshot)
    if snapshot:
        raise ValueError(f"snapshot={snapshot!r}: {_show(url)} is a plain Zarr archive, which keeps no snapshots")
    return _store(url, storage_options, read_only=True)


def _exists(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    if not storage.is_remote(url):
        return os.path.exists(storage.strip_protocol(url) if url.startswith("file://") else url)
    return storage.exists(url, storage_options or None)

def _show(url: str) -> str:
    return repr(storage.redact(url))

def open_archive(url: str, storage_options: Mapping[str, Any] | None = None, chunks: Any = None,
                 snapshot: str | None = None) -> xr.Dataset:
    """The archive as a lazily loaded xarray Dataset (no dask by default; ``chunks={}``: dask arrays with the
    store's chunks, one day each). Either engine: an Icechunk archive is read at its last commit (``snapshot``:
    an earlier commit's id, :func:`latentda.archive_icechunk.history`)."""
    if not _exists(url, storage_options):
        raise FileNotFoundError(f"no archive at {_show(url)}; create it first (`latentda backfill` or "
                                "the init step of the reanalysis flow)")
    return xr.open_zarr(read_store(url, storage_options, snapshot), consolidated=False, chunks=chunks,
                        zarr_format=3)


# ------------------------------------------------------------------------------------------------- status
def _status_arrays(url: str, storage_options: Mapping[str, Any] | None, start: Any, end: Any
                   ) -> tuple[Any, pd.DatetimeIndex, slice]:
    """(the archive's Zarr group, its days, the index slice of ``start..end``) read at the Zarr level: the time
    coordinate and, by the caller, the one-byte flags of the days asked for, without opening the whole dataset
    (an xarray open reads the metadata of every variable: ~20 ms, against ~1.5 ms for this; every day of a
    backfill reads its flags before it is assimilated)."""
    import zarr
    from xarray.coding.times import decode_cf_datetime

    if not _exists(url, storage_options):
        raise FileNotFoundError(f"no archive at {_show(url)}; create it first (`latentda backfill` or "
                                "the init step of the reanalysis flow)")
    group = zarr.open_group(read_store(url, storage_options), mode="r", zarr_format=3)
    tvar = group["time"]
    values, units, calendar = np.asarray(tvar[:]), tvar.attrs["units"], tvar.attrs.get("calendar")
    if (units, calendar) == (TIME_ENCODING["units"], TIME_ENCODING["calendar"]) and values.dtype.kind == "i":
        t = pd.DatetimeIndex(values.astype("datetime64[D]").astype("datetime64[ns]"))  # what archives are made with
    else:
        t = pd.DatetimeIndex(decode_cf_datetime(values, units, calendar))
    return group, t, period_slice(t, start, end)


def period_slice(t: pd.DatetimeIndex, start: Any = None, end: Any = None) -> slice:
    """The index slice of the days ``start..end`` (default: the ends of ``t``, the archive's days); ArchiveError
    naming both periods when the range is outside the archive's."""
    s = to_days(start)[0] if start is not None else t[0]
    e = to_days(end)[0] if end is not None else t[-1]
    if s < t[0] or e > t[-1]:
        raise ArchiveError(f"range {s.date()}..{e.date()} is outside the archive period "
                           f"{t[0].date()}..{t[-1].date()}")
    return slice(int(t.searchsorted(s)), int(t.searchsorted(e, side="right")))


@dataclasses.dataclass(frozen=True)
class StoreLayout:
    """What a day's write needs to know of an archive, read at the Zarr level (:func:`store_layout`)."""

    times: pd.DatetimeIndex
    grid: Grid
    variables: list[str]
    members: int  # size of the member dimension (0: no members kept)
    has_status: bool  # False for an archive made before per-day statuses existed
    group: Any  # the Zarr group it was read from (read-only)

    def index(self, day: pd.Timestamp, url: str) -> int:
        """Time index of ``day``; ArchiveError naming the period when it is outside."""
        t = self.times
        i = int((day - t[0]).days)
        if i < 0 or i >= len(t) or t[i] != day:
            raise ArchiveError(f"day {day.date()} is outside the archive period {t[0].date()}..{t[-1].date()} of "
                               f"{_show(url)}; extend archive.start/end in a new archive or pick a day inside")
        return i

    def is_done(self, i: int) -> bool:
        """The done flag of time index ``i`` now (one one-byte chunk read)."""
        return bool(np.asarray(self.group[DONE][i]))


def store_layout(url: str, storage_options: Mapping[str, Any] | None = None) -> StoreLayout:
    """The archive's days, grid, variables, member count and status support, without opening it as a dataset
    (see :func:`_status_arrays`): the metadata of the coordinates and of one members variable, if any."""
    group, t, _ = _status_arrays(url, storage_options, None, None)
    names = set(group.array_keys())
    variables = json.loads(group.attrs.get("latentda:variables", "[]") or "[]") or \
        sorted(v[:-7] for v in names if v.endswith("_spread"))
    kept = [f"{v}_members" for v in variables if f"{v}_members" in names]
    members = 0
    if kept:
        arr = group[kept[0]]
        members = int(arr.shape[list(arr.metadata.dimension_names).index("member")])
    return StoreLayout(times=t, grid=Grid(np.asarray(group["lat"][:]), np.asarray(group["lon"][:])),
                       variables=list(variables), members=members, has_status=STATUS in names, group=group)


#: Ranges of at most this many days read their flags chunk by chunk (a day's own check before it is assimilated);
#: longer ones list the stored chunks first (:func:`_stored_values`).
LIST_FLAGS_ABOVE = 32


def _stored_values(arr: Any, sl: slice) -> np.ndarray:
    """``arr[sl]`` of a one-dimensional array with one element per chunk (a day's flag), reading only the chunks
    that are stored: one listing of the array's keys, then those chunks; a day never written is a missing chunk
    (the fill value). Reading every chunk of a year's flags cost 66 ms on a local disk (a request per day on an
    object store), nearly all of it for days not written yet; a fresh archive's flags now read no chunk at all."""
    from zarr.core.sync import sync

    if arr.ndim != 1 or arr.chunks != (1,) or sl.stop - sl.start <= LIST_FLAGS_ABOVE:
        return np.asarray(arr[sl])

    async def keys() -> list[str]:
        return [k async for k in arr.store_path.store.list_prefix(f"{arr.store_path.path}/")]

    try:
        listed = set(sync(keys()))
    except Exception:  # noqa: BLE001 - a store that cannot list: read every chunk
        return np.asarray(arr[sl])
    key = arr.metadata.chunk_key_encoding.encode_chunk_key
    idx = np.array([i for i in range(sl.start, sl.stop) if f"{arr.store_path.path}/{key((i,))}" in listed],
                   dtype=np.int64)
    out = np.full(sl.stop - sl.start, arr.fill_value, dtype=arr.dtype)
    if idx.size:
        out[idx - sl.start] = arr.get_orthogonal_selection(idx)
    return out


def day_status(url: str, storage_options: Mapping[str, Any] | None = None, start: Any = None,
               end: Any = None) -> pd.Series:
    """``done`` flag per day (bool Series indexed by date) over ``start..end`` (default: the whole period)."""
    group, t, sl = _status_arrays(url, storage_options, start, end)
    vals = _stored_values(group[DONE], sl).astype(bool)
    return pd.Series(vals, index=pd.DatetimeIndex(t[sl], name="time"), name=DONE)


def day_states(url: str, storage_options: Mapping[str, Any] | None = None, start: Any = None,
               end: Any = None) -> pd.DataFrame:
    """Per day of ``start..end``: ``done`` (bool) and ``status`` (:data:`NOT_WRITTEN`, :data:`PRELIMINARY`,
    :data:`FINAL`; an archive made before statuses existed reads FINAL for its done days), indexed by date."""
    group, t, sl = _status_arrays(url, storage_options, start, end)
    done = _stored_values(group[DONE], sl).astype(bool)
    if STATUS in group:
        st = _stored_values(group[STATUS], sl).astype(np.int8)
    else:
        st = np.where(done, FINAL, NOT_WRITTEN).astype(np.int8)
    return pd.DataFrame({"done": done, "status": st}, index=pd.DatetimeIndex(t[sl], name="time"))


def missing_days(url: str, start: Any = None, end: Any = None,
                 storage_options: Mapping[str, Any] | None = None) -> list[pd.Timestamp]:
    """Days of ``start..end`` whose done flag is not set (all of them if the archive does not exist yet)."""
    if not _exists(url, storage_options):
        if start is None or end is None:
            raise FileNotFoundError(f"no archive at {_show(url)}")
        return list(pd.date_range(to_days(start)[0], to_days(end)[0], freq="D"))
    st = day_status(url, storage_options, start, end)
    return list(st.index[~st.values])


def done_days(url: str, start: Any = None, end: Any = None,
              storage_options: Mapping[str, Any] | None = None) -> list[pd.Timestamp]:
    st = day_status(url, storage_options, start, end)
    return list(st.index[st.values])
