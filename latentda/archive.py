"""The reanalysis archive: a Zarr v3 store pre-sized on ``time``, written one day at a time by region writes.

Layout (one chunk = one day of the whole grid; ARCHITECTURE.md, "the archive protocol"; the variables, their
attributes and the template are in :mod:`latentda.archive_layout`)::

    <var>             (time, lat, lon)          float32  ensemble mean (CF attributes of the prior's fields)
    <var>_spread      (time, lat, lon)          float32  ensemble standard deviation
    <var>_members     (time, member, lat, lon)  float32  only when members are kept
    obs_used, obs_rejected, iterations (time,) int32; fit_before, fit_after, cost, converged_fraction (time,)
    float32; no_obs (time,) int8                         per-day diagnostics (latentda.analysis.DIAGNOSTICS)
    model_sha256, obs_sha256, config_sha256 (time, sha256_byte=32) uint8   per-day provenance (hash bytes)
    status (time,) int8 (0 not written, 1 preliminary, 2 final); window_days_observed (time,) int16
    done              (time,) int8                       1 once the day is complete: written LAST

Global ``latentda:*`` attributes record the package version, git sha, model checksum, config hash, catalog
entries, members and the creation time; nothing per-day carries a timestamp, so rewriting a day rewrites the same
bytes. Writing a day is two region writes of whole chunks (``region={"time": slice(i, i + 1)}``, ``mode="r+"``):
first every data, diagnostic and provenance variable, then the ``done`` flag; a crash between the two leaves the
day "not done" and a rerun rewrites it identically. Days are independent chunks, so workers write concurrently
without locks.

Engines (``create_archive(..., engine=...)``, ``archive.engine`` of the run config): ``zarr`` (the above) or
``icechunk``: the same template in an Icechunk repository whose days become visible by whole commits, one per
block of days (:mod:`latentda.archive_icechunk`). Reading either is :mod:`latentda.archive_read` (re-exported
here): readers find the engine from what is at the URL.

Typical use (the day loop that fills it is :mod:`latentda.backfill`)::

    spec = archive_spec(prior, "2005-01-01", "2005-12-31", members=16)
    create_archive(url, spec, provenance={"config_hash": h})
    write_day(url, analysis, {"model_checksum": ..., "obs_hash": ..., "config_hash": h})
    missing_days(url, "2005-01-01", "2005-01-31")

The training store (:mod:`latentda.training_store`) is the other Zarr store of a run. No orchestration import
here (numpy, pandas, xarray, zarr; dask.array for the lazy template only).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from . import __version__
from .analysis import DIAGNOSTICS
from .grid import Grid
from . import archive_icechunk, creation, storage
from .archive_read import (ArchiveError, _exists, _show, _store, day_states, day_status, done_days, engine_at,
                           hexdigest, missing_days, open_archive, period_slice, read_store, store_layout)
from .archive_layout import (DIAG_DTYPES, DONE, FINAL, HASH_DIM, NOT_WRITTEN, PRELIMINARY, STATUS,
                             WINDOW_OBSERVED, ArchiveSpec, archive_spec, encoding, template)
from .runtime import git_sha, to_days

__all__ = ["ArchiveSpec", "ArchiveError", "ArchiveMismatchError", "archive_spec", "template", "create_archive",
           "open_archive", "check_compatible", "write_day", "day_status", "missing_days", "done_days",
           "validate_archive", "hexdigest", "day_states", "read_store", "engine_at", "ENGINES", "STATUS",
           "PRELIMINARY", "FINAL", "NOT_WRITTEN", "period_slice"]

#: Archive engines (``archive.engine`` of the run config): a plain Zarr v3 store, or an Icechunk repository
#: (:mod:`latentda.archive_icechunk`: transactional commits of whole blocks of days).
ENGINES = ("zarr", "icechunk")


class ArchiveMismatchError(ArchiveError, ValueError):
    """An existing store does not match the run configuration; it is never overwritten silently."""


# ------------------------------------------------------------------------------------------------ helpers
def _hash_bytes(hexstr: str | None) -> np.ndarray:
    if not hexstr:
        return np.zeros(32, dtype=np.uint8)
    b = bytes.fromhex(hexstr) if len(hexstr) == 64 else hashlib.sha256(hexstr.encode()).digest()
    return np.frombuffer(b, dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------- create and check
def create_archive(url: str, spec: ArchiveSpec, provenance: Mapping[str, Any] | None = None,
                   storage_options: Mapping[str, Any] | None = None, engine: str = "zarr") -> str:
    """Create the pre-sized archive at ``url`` (metadata only; no chunk is written), or check an existing one.

    ``provenance``: extra global attributes (``config_hash``, ``model_checksum``, ``catalog``, ...), stored as
    ``latentda:<key>``; the package version, git sha and creation time are added here. Credentials must not be
    in it (they are refused).

    Returns ``"created"`` or ``"exists"``. An existing store that does not match ``spec`` raises
    :class:`ArchiveMismatchError` (never overwritten). A store left half-created by a crash (no
    ``latentda:initialised`` attribute and no day done) is recreated. Creation is atomic
    (:mod:`latentda.creation`: a temporary name and one rename locally, create-if-absent on an object store), so
    processes creating the same new archive at once never see a half-made group: one gets ``"created"``, the
    others ``"exists"`` once it is complete. ``engine="icechunk"``: an Icechunk repository whose first commit is
    the template (:func:`latentda.archive_icechunk.create`); a store of the other engine at ``url`` is refused.
    """
    prov = dict(provenance or {})
    bad = [k for k in _walk_keys(prov) if storage.is_sensitive_key(k)]
    if bad:
        raise ValueError(f"provenance must not hold credentials; remove key(s) {bad}")
    if engine not in ENGINES:
        raise ValueError(f"archive engine {engine!r} is not one of {list(ENGINES)}")
    found = engine_at(url, storage_options) if _exists(url, storage_options) else None
    if found == "icechunk" and engine == "zarr":
        raise ArchiveMismatchError(f"{_show(url)} is an Icechunk archive but archive.engine is 'zarr'; set "
                                   "archive.engine: icechunk or choose another archive.url")
    if found == "zarr" and engine == "icechunk" and not archive_icechunk.may_create_in(url, storage_options):
        raise ArchiveMismatchError(f"{_show(url)} exists and is not an Icechunk repository (a plain Zarr archive "
                                   "or other files) but archive.engine is 'icechunk'; set archive.engine: zarr or "
                                   "choose another archive.url (an existing store is never overwritten)")
    stale = False
    if engine == "zarr" and _exists(url, storage_options):
        if storage.is_remote(url):  # another creator may be half-way (no rename on an object store): give it time
            creation.wait_until(lambda: "latentda:initialised" in open_archive(url, storage_options).attrs, 10.0)
        if _check_existing(url, spec, storage_options):
            return "exists"
        stale = True  # half-created by a crash before it was marked initialised and no day written: recreate it
    attrs = {"latentda:version": __version__, "latentda:git_sha": git_sha(),
             "latentda:created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}
    attrs.update({(k if k.startswith("latentda:") else f"latentda:{k}"): v for k, v in prov.items()})
    ds = template(spec, attrs)

    def write(target: str, mode: str) -> None:
        import zarr

        ds.to_zarr(_store(target, storage_options), mode=mode, compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding(ds))
        zarr.open_group(_store(target, storage_options), mode="r+", zarr_format=3).attrs.update(
            {"latentda:initialised": 1})

    if engine == "icechunk":  # the template is the repository's first commit: atomic by itself
        made = archive_icechunk.create(url, storage_options, _initialised, lambda store: write(store, "w"))
    elif not storage.is_remote(url):  # complete under a temporary name, then one atomic rename
        made = creation.create_local(url, lambda tmp: write(tmp, "w"), replace_stale=stale)
    else:  # create-if-absent: never removes another creator's group
        made = creation.create_remote(lambda: write(url, "w" if stale else "w-"))
    if made:
        return "created"
    # another process created it at the same moment: wait until it is complete, then check it like any other
    if not creation.wait_until(lambda: "latentda:initialised" in open_archive(url, storage_options).attrs):
        raise ArchiveError(f"{_show(url)} is being created by another process and was not complete after 60 s; "
                           "rerun the command")
    check_compatible(open_archive(url, storage_options), spec, url=url)
    return "exists"


def _initialised(store) -> bool:
    """Whether the Zarr store ``store`` holds a complete (``latentda:initialised``) archive."""
    import zarr

    try:
        return "latentda:initialised" in zarr.open_group(store, mode="r", zarr_format=3).attrs
    except FileNotFoundError:
        return False


def _check_existing(url: str, spec: ArchiveSpec, storage_options: Mapping[str, Any] | None) -> bool:
    """True if the store at ``url`` is a complete archive matching ``spec``; False if it was half-created (no
    ``latentda:initialised`` and no day done: safe to recreate); ArchiveMismatchError otherwise."""
    try:
        ds = open_archive(url, storage_options)
    except Exception as err:  # noqa: BLE001 - anything unreadable is "not an archive"
        raise ArchiveMismatchError(
            f"{_show(url)} exists but is not a readable Zarr archive ({type(err).__name__}: {err}); "
            "choose another archive.url or remove it yourself") from None
    initialised = "latentda:initialised" in ds.attrs
    any_done = DONE in ds and bool(ds[DONE].values.any())
    if initialised or any_done:
        check_compatible(ds, spec, url=url)
        return True
    if "latentda:variables" not in ds.attrs:
        raise ArchiveMismatchError(f"{_show(url)} exists but is not a latentda archive; choose another "
                                   "archive.url (an existing store is never overwritten)")
    return False


def _walk_keys(obj: Any) -> Iterable[str]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield str(k)
            yield from _walk_keys(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk_keys(v)

def check_compatible(ds_or_url: xr.Dataset | str, spec: ArchiveSpec, url: str | None = None,
                     storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ArchiveMismatchError` listing every difference between the store and ``spec``."""
    if isinstance(ds_or_url, str):
        url = ds_or_url
        ds = open_archive(url, storage_options)
    else:
        ds = ds_or_url
    where = _show(url) if url else "the archive"
    problems = []
    if "lat" not in ds.coords or "lon" not in ds.coords:
        problems.append("it has no lat/lon coordinates")
    else:
        g = Grid(ds["lat"].values, ds["lon"].values)
        if not g.matches(spec.grid):
            problems.append(f"grid: store has {g.describe()}, config/prior has {spec.grid.describe()}")
    have = sorted(v for v in ds.data_vars if v.endswith("_spread"))
    want = sorted(f"{v}_spread" for v in spec.variables)
    if have != want or any(v not in ds.data_vars for v in spec.variables):
        problems.append(f"variables: store has {[h[:-7] for h in have]}, config has {list(spec.variables)}")
    if "time" in ds.coords:
        t = pd.DatetimeIndex(ds["time"].values)
        if len(t) == 0 or t[0] != spec.start or t[-1] != spec.end or len(t) != len(spec.times):
            first = t[0].date() if len(t) else None
            last = t[-1].date() if len(t) else None
            problems.append(f"period: store covers {first}..{last} ({len(t)} days), config has "
                            f"{spec.start.date()}..{spec.end.date()} ({len(spec.times)} days)")
    else:
        problems.append("it has no time coordinate")
    m = ds.attrs.get("latentda:members")
    if m is not None and int(m) != spec.members:
        problems.append(f"members: store was made with {int(m)} members, config has {spec.members}")
    kept = ds.sizes.get("member", 0)
    if kept != spec.members_to_keep:
        problems.append(f"members kept: store keeps {kept}, config keeps {spec.members_to_keep}")
    for name in spec.field_names():
        if name in ds and "time" in ds[name].dims:
            ch = ds[name].encoding.get("chunks") or ds[name].encoding.get("preferred_chunks", {}).get("time")
            tc = ch[ds[name].dims.index("time")] if isinstance(ch, (tuple, list)) else ch
            if tc not in (None, 1):
                problems.append(f"{name}: time chunk {tc} (must be 1 day for safe region writes)")
                break
    if problems:
        raise ArchiveMismatchError(
            f"existing archive {where} does not match the run configuration:\n  - " + "\n  - ".join(problems)
            + "\nIt is left untouched. Point archive.url at a new location, or delete that store yourself if "
              "you mean to replace it.")


# ------------------------------------------------------------------------------------------------- writes
def write_day(url: str, analysis: xr.Dataset, provenance: Mapping[str, str | None] | None = None,
              storage_options: Mapping[str, Any] | None = None, members_to_keep: int | None = None,
              status: int = FINAL, session: Any = None) -> int:
    """Write one day's analysis (the :func:`latentda.analysis.analysis_dataset` layout) into its time slot.

    ``provenance``: ``model_checksum``, ``obs_hash`` (of the observations of the day's whole window),
    ``config_hash`` (hex sha256), stored as hash bytes. ``status``: :data:`PRELIMINARY` or :data:`FINAL`; the
    analysis' ``window_days_observed`` goes with it (archives made before these variables existed skip them).
    Two region writes of whole chunks: the data, diagnostics and provenance first, then ``done = 1``.
    Returns the time index written. Raises :class:`ArchiveError` for a day outside the period or data that does
    not fit the store (grid, variables, members).

    An Icechunk archive is written into ``session`` (a fork of the block's session, committed by the block task:
    :mod:`latentda.archive_icechunk`); without one, the day is committed on its own.
    """
    if "time" not in analysis.dims or analysis.sizes["time"] != 1:
        raise ValueError("write_day takes one day: an analysis dataset with time of length 1")
    day = to_days(analysis["time"].values[0])[0]
    layout = store_layout(url, storage_options)
    i = layout.index(day, url)
    if not layout.grid.matches(Grid.from_dataset(analysis)):
        raise ArchiveError(f"analysis grid {Grid.from_dataset(analysis).describe()} differs from the archive grid")
    variables = layout.variables
    k = layout.members if members_to_keep is None else members_to_keep
    out = {}
    for v in variables:
        if v not in analysis or f"{v}_spread" not in analysis:
            raise ArchiveError(f"analysis lacks {v!r} or {v}_spread; it has {sorted(analysis.data_vars)}")
        out[v] = analysis[v].transpose("time", "lat", "lon").astype(np.float32)
        out[f"{v}_spread"] = analysis[f"{v}_spread"].transpose("time", "lat", "lon").astype(np.float32)
        if k:
            mv = analysis.get(f"{v}_members")
            if mv is None or mv.sizes.get("member", 0) < k:
                raise ArchiveError(f"the archive keeps {k} members but the analysis has "
                                   f"{0 if mv is None else mv.sizes.get('member', 0)} for {v!r}: assimilate with "
                                   "keep_members=True")
            out[f"{v}_members"] = mv.isel(member=slice(0, k)).transpose("time", "member", "lat", "lon") \
                .astype(np.float32)
    for name in DIAGNOSTICS:
        dt = DIAG_DTYPES.get(name, np.float32)
        val = analysis[name].values if name in analysis else np.array([0 if np.issubdtype(dt, np.integer)
                                                                       else np.nan])
        if np.issubdtype(dt, np.integer):
            val = np.nan_to_num(np.asarray(val, dtype=np.float64), nan=0)
        out[name] = (("time",), np.asarray(val).reshape(1).astype(dt))
    if status not in (PRELIMINARY, FINAL):
        raise ValueError(f"status={status!r} must be PRELIMINARY ({PRELIMINARY}) or FINAL ({FINAL})")
    if layout.has_status:
        out[STATUS] = (("time",), np.array([status], dtype=np.int8))
        wo = analysis[WINDOW_OBSERVED].values if WINDOW_OBSERVED in analysis else np.zeros(1)
        out[WINDOW_OBSERVED] = (("time",), np.asarray(wo).reshape(1).astype(np.int16))
    prov = dict(provenance or {})
    for name, key in (("model_sha256", "model_checksum"), ("obs_sha256", "obs_hash"),
                      ("config_sha256", "config_hash")):
        out[name] = (("time", HASH_DIM), _hash_bytes(prov.get(key))[None])
    day_ds = xr.Dataset(out)
    day_ds = day_ds.drop_vars([c for c in day_ds.coords])
    day_ds.attrs = {}
    if engine_at(url, storage_options) == "icechunk":  # one commit: the day is whole or absent for readers
        own = session is None
        session = archive_icechunk.writable_session(url, storage_options) if own else session
        _write_region(session.store, storage_options, day_ds, i)
        _write_done(session.store, storage_options, i)
        if own:
            archive_icechunk.commit(url, session, f"day {day.date()}")
        return i
    if layout.is_done(i):
        # rewriting a done day (an upgrade or --force): unset its flag first, so that a crash part-way leaves it
        # "not done" (redone by the next run) instead of "done" with half-new data
        _write_done(url, storage_options, i, 0)
    _write_region(url, storage_options, day_ds, i)
    _write_done(url, storage_options, i)
    return i


def _write_region(url: Any, storage_options: Mapping[str, Any] | None, ds: xr.Dataset, i: int) -> None:
    """Write whole one-day chunks (time index ``i``) of every variable of ``ds`` into the store at ``url`` (or the
    store object ``url``: an Icechunk session's); every variable must have the time dim first, the store's dims
    and dtype. Written at the Zarr level, array by array in the order of ``ds``: the store's arrays carry no
    encoding to apply (float NaN fill, no scale or offset; :func:`latentda.archive_layout.encoding`), and an
    xarray region write of the same bytes costs ~20 ms more per call in metadata reads and alignment."""
    import zarr

    group = zarr.open_group(_store(url, storage_options), mode="r+", zarr_format=3)
    for name, var in ds.data_vars.items():
        arr = group[name]
        dims = tuple(arr.metadata.dimension_names or ())
        if var.dims != dims or var.dtype != arr.dtype or var.shape[1:] != arr.shape[1:]:
            raise ArchiveError(f"{name}: {var.dims} {var.dtype} {var.shape} does not fit the archive's "
                               f"{dims} {arr.dtype} {arr.shape}")
        arr[i:i + 1] = np.ascontiguousarray(var.values)


def _write_done(url: Any, storage_options: Mapping[str, Any] | None, i: int, value: int = 1) -> None:
    """Set the done flag of day ``i`` (1: only after the day's data is written; 0: before rewriting a done day)."""
    _write_region(url, storage_options, xr.Dataset({DONE: (("time",), np.full(1, value, dtype=np.int8))}), i)


# --------------------------------------------------------------------------------------------- validation
def validate_archive(url: str, storage_options: Mapping[str, Any] | None = None, spec: ArchiveSpec | None = None,
                     start: Any = None, end: Any = None) -> dict[str, Any]:
    """Check the archive: compatible with ``spec`` (if given), every done day has finite fields and provenance.

    Returns a report ``{"days", "done", "missing", "problems": [...]}``; raises :class:`ArchiveError` when there
    are problems (a done day must never lack its data).
    """
    ds = open_archive(url, storage_options)
    if spec is not None:
        check_compatible(ds, spec, url=url)
    if start is not None or end is not None:
        ds = ds.sel(time=slice(to_days(start or ds.time.values[0])[0], to_days(end or ds.time.values[-1])[0]))
    done = ds[DONE].values.astype(bool)
    problems = []
    variables = json.loads(ds.attrs.get("latentda:variables", "[]"))
    if done.any():
        idx = np.nonzero(done)[0]
        sub = ds.isel(time=idx)
        for v in variables:
            for name in (v, f"{v}_spread"):
                bad = ~np.isfinite(sub[name].values).all(axis=(1, 2))
                if bad.any():
                    days = [str(d)[:10] for d in sub["time"].values[bad]]
                    problems.append(f"{name}: non-finite values on done day(s) {days}")
        nohash = ~sub["model_sha256"].values.any(axis=1)
        if nohash.any():
            problems.append(f"model_sha256 missing on done day(s) {[str(d)[:10] for d in sub.time.values[nohash]]}")
    report = {"url": storage.redact(url), "days": int(done.size), "done": int(done.sum()),
              "missing": int((~done).sum()), "problems": problems}
    if problems:
        raise ArchiveError(f"archive {_show(url)} failed validation: " + "; ".join(problems))
    return report


