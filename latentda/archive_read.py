"""Reading the reanalysis archive, whichever its engine: open it, the done flag and status of each day, missing
days (ARCHITECTURE.md, "the archive protocol"). A plain Zarr store is read as it is; an Icechunk repository
(:mod:`latentda.archive_icechunk`) at its last commit, so a reader never sees a half-written day. Writing and
creating are in :mod:`latentda.archive`, which re-exports everything here. No orchestration import.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from . import archive_icechunk, storage
from .archive_layout import DONE, FINAL, NOT_WRITTEN, STATUS
from .runtime import to_days

__all__ = ["ArchiveError", "hexdigest", "engine_at", "read_store", "open_archive", "day_status", "day_states",
           "missing_days", "done_days"]


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
def day_status(url: str, storage_options: Mapping[str, Any] | None = None, start: Any = None,
               end: Any = None) -> pd.Series:
    """``done`` flag per day (bool Series indexed by date) over ``start..end`` (default: the whole period)."""
    ds = open_archive(url, storage_options)
    done = ds[DONE]
    if start is not None or end is not None:
        t = pd.DatetimeIndex(ds["time"].values)
        s = to_days(start)[0] if start is not None else t[0]
        e = to_days(end)[0] if end is not None else t[-1]
        if s < t[0] or e > t[-1]:
            raise ArchiveError(f"range {s.date()}..{e.date()} is outside the archive period "
                               f"{t[0].date()}..{t[-1].date()}")
        done = done.sel(time=slice(s, e))
    vals = done.values.astype(bool)
    return pd.Series(vals, index=pd.DatetimeIndex(done["time"].values, name="time"), name=DONE)


def day_states(url: str, storage_options: Mapping[str, Any] | None = None, start: Any = None,
               end: Any = None) -> pd.DataFrame:
    """Per day of ``start..end``: ``done`` (bool) and ``status`` (:data:`NOT_WRITTEN`, :data:`PRELIMINARY`,
    :data:`FINAL`; an archive made before statuses existed reads FINAL for its done days), indexed by date."""
    done = day_status(url, storage_options, start, end)
    ds = open_archive(url, storage_options)
    if STATUS in ds:
        st = ds[STATUS].sel(time=done.index.values).values.astype(np.int8)
    else:
        st = np.where(done.values, FINAL, NOT_WRITTEN).astype(np.int8)
    return pd.DataFrame({"done": done.values, "status": st}, index=done.index)


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
