"""What runs on a Dask worker for the reanalysis flow: one day of the run, with the prior and the observation table
cached per worker process. No Prefect import here (nor in anything this imports): a fresh worker that unpickles
:func:`run_day` imports this module, and Prefect's import alone costs ~0.7 s of CPU per worker and flow run. The
Prefect tasks that map these days are in :mod:`tasks.assimilate`.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from typing import Any, Mapping

import pandas as pd

import latentda
from latentda import backfill, storage
from latentda.config import RunConfig

from . import catalog as catalog_io

_TABLES: dict[tuple, tuple[pd.DataFrame, pd.Timestamp | None]] = {}
_ENTRY_URLS: dict[tuple, tuple[str | None, dict | None]] = {}
_TABLE_LOCK = threading.Lock()


_PRIORS: dict[tuple, Any] = {}
_PRIOR_LOCK = threading.Lock()


def _file_stamp(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """(size, mtime or ETag) of a local or remote file: changes when the file is rewritten."""
    fs, path = storage.filesystem(url, storage_options)
    info = fs.info(path)
    return info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))


def load_prior_cached(path: str, device: str = "cpu", storage_options: Mapping[str, Any] | None = None):
    """``latentda.load_prior`` once per worker process and checkpoint version (path + size + mtime)."""
    try:
        stamp = _file_stamp(path, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"no prior checkpoint at {storage.redact(path)!r}; train one first "
                                "(`latentda train --config ...`)") from None
    key = (path, device, stamp)
    with _PRIOR_LOCK:
        if key not in _PRIORS:
            if len(_PRIORS) >= 2:
                _PRIORS.pop(next(iter(_PRIORS)))
            _PRIORS[key] = latentda.load_prior(path, device=device, storage_options=dict(storage_options or {})
                                               or None)
        return _PRIORS[key]


def _entry_url(catalog_path: str, entry: str, cat_stamp: Any) -> tuple[str | None, dict | None]:
    """(urlpath, storage_options) of a catalog entry's data file, parsed once per catalog file version (a local
    catalog's mtime; a remote catalog is parsed every time): parsing the YAML costs ~20 ms, the day ~400 ms."""
    key = (catalog_path, entry, cat_stamp)
    if cat_stamp is not None and key in _ENTRY_URLS:
        return _ENTRY_URLS[key]
    src = catalog_io.entry(catalog_io.open_catalog(catalog_path), entry)
    url = getattr(src, "urlpath", None)
    found = (url if isinstance(url, str) else None, getattr(src, "storage_options", None) or None)
    if cat_stamp is not None:
        _ENTRY_URLS.clear()
        _ENTRY_URLS[key] = found
    return found


def _table_version(catalog_path: str, entry: str) -> tuple:
    """Version stamp of a catalog entry's table: the catalog file's mtime and the entry's data file's size and
    mtime (or ETag), so that observations arriving in the same file are read again (the daily run upgrades
    preliminary days with them); None parts where a stamp cannot be had (then the cache keys on the rest)."""
    try:
        cat_stamp = os.stat(catalog_path).st_mtime_ns if not storage.is_remote(catalog_path) else None
    except OSError:
        cat_stamp = None
    data_stamp = None
    try:
        url, options = _entry_url(catalog_path, entry, cat_stamp)
        if url is not None:
            data_stamp = _file_stamp(url, options)
    except (OSError, KeyError, ValueError):
        data_stamp = None  # the read below reports a missing entry or file with its own message
    return cat_stamp, data_stamp


def read_observations(catalog_path: str, entry: str) -> pd.DataFrame:
    """The observation table of catalog entry ``entry``, read once per worker process and table version
    (:func:`_table_version`)."""
    return _read_table(catalog_path, entry)[0]


def _read_table(catalog_path: str, entry: str) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """(the table, its last day: ``latentda.backfill.record_end``), cached as :func:`read_observations` says."""
    key = (str(catalog_path), entry, _table_version(catalog_path, entry))
    with _TABLE_LOCK:
        if key not in _TABLES:
            _TABLES.clear()
            table = catalog_io.read_table(catalog_path, entry)
            _TABLES[key] = (table, backfill.record_end(table))
        return _TABLES[key]


def run_observations(config: RunConfig) -> pd.DataFrame:
    """The run's observation table (catalog entry ``catalog.observations``), cached per process."""
    return _run_table(config)[0]


def _run_table(config: RunConfig) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    if not config.catalog.observations:
        raise ValueError("catalog.observations is not set in the run config: no observations to assimilate")
    return _read_table(config.catalog.path, config.catalog.observations)


def run_day(day: str, config: RunConfig, force: bool = False) -> dict[str, dict]:
    """Assimilate and write one day of the run on this process (a Dask worker or the caller); returns
    ``{day: outcome}`` (QC counts, prior only: ``latentda.backfill.day_outcome``) if it was written, ``{}`` if it
    was already done (and not ``force``)."""
    return run_forked_day(ForkedDay(day, None), config, force)[0]


@dataclasses.dataclass
class ForkedDay:
    """A day of an Icechunk archive's block and the fork of the block's session it is written into (None: the
    archive's own writes, as :func:`run_day`)."""

    day: str
    fork: Any


def run_forked_day(job: ForkedDay, config: RunConfig, force: bool = False) -> tuple[dict[str, dict], Any]:
    """:func:`run_day` into ``job.fork`` (nothing is committed here); returns ``(outcomes, fork)``: the block task
    merges the forks of the days that succeeded and commits them at once (``latentda.archive_icechunk``)."""
    prior = load_prior_cached(config.prior_path, "cpu", config.archive.storage_options)
    outcomes: dict[str, dict] = {}
    table, end_of_record = _run_table(config)
    backfill.backfill(config, [job.day], prior=prior, observations=table, force=force, outcomes=outcomes,
                      session=job.fork, end_of_record=end_of_record)
    return outcomes, job.fork


def warm_up(config: RunConfig) -> None:
    """Load the run's prior and observation table into this process's caches (imports torch and the
    assimilation code): what the first day on a fresh worker would otherwise pay for."""
    importlib.import_module("latentda.da.rto")
    load_prior_cached(config.prior_path, "cpu", config.archive.storage_options)
    run_observations(config)
