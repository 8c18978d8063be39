"""Assimilation task: one BLOCK of days per task (not one task per day), each day written into the archive."""
from __future__ import annotations

import os
import threading
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from latentda import archive as lib
from latentda import storage
from latentda.evaluation import heldout_stations

from . import catalog as catalog_io
from .archive import load_prior_cached, retry_on_io

_TABLES: dict[tuple, pd.DataFrame] = {}
_TABLE_LOCK = threading.Lock()


def read_observations(catalog_path: str, entry: str) -> pd.DataFrame:
    """The observation table of catalog entry ``entry``, read once per worker process and catalog version."""
    try:
        stamp = os.stat(catalog_path).st_mtime_ns if not storage.is_remote(catalog_path) else None
    except OSError:
        stamp = None
    key = (str(catalog_path), entry, stamp)
    with _TABLE_LOCK:
        if key not in _TABLES:
            _TABLES.clear()
            _TABLES[key] = catalog_io.read_table(catalog_path, entry)
        return _TABLES[key]


def holdout_for(table: pd.DataFrame, fraction: float, seed: int) -> list[str]:
    """Station ids held out of the assimilation (evaluated against later)."""
    if not fraction or "station_id" not in table.columns:
        return []
    return heldout_stations(table["station_id"].astype(str).unique(), fraction, seed)


def split_blocks(days: list[str], block_days: int | None, n_workers: int) -> list[list[str]]:
    """Consecutive blocks of days; ``block_days=None`` aims at about 2 blocks per worker (at most 16 days)."""
    if not days:
        return []
    if block_days is None:
        block_days = max(1, min(16, -(-len(days) // max(1, 2 * n_workers))))
    return [days[i:i + block_days] for i in range(0, len(days), block_days)]


def _block_run_name() -> str:
    from prefect.runtime import task_run

    days = task_run.parameters.get("days") or ["?"]
    return f"assimilate-{days[0]}..{days[-1]}"


@task(name="assimilate-block", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_on_io, task_run_name=_block_run_name)
def assimilate_block(days: list[str], prior_path: str, catalog_path: str, obs_entry: str, url: str,
                     storage_options: dict, members: int, seed: int, members_to_keep: int, options: dict,
                     config_hash: str, holdout_fraction: float = 0.0, force: bool = False,
                     threads: int = 1) -> list[str]:
    """Assimilate ``days`` (ISO dates) and write each into the archive; returns the dates written.

    The archive is the state: days already done are skipped (so a retried block resumes) unless ``force``.
    No result caching: a deleted archive must be rewritten, not served from a cache.
    """
    log = get_run_logger()
    prior = load_prior_cached(prior_path, "cpu")
    table = read_observations(catalog_path, obs_entry)
    exclude = holdout_for(table, holdout_fraction, seed)
    written = lib.assimilate_days(prior, table, days, url, members=members, seed=seed,
                                  members_to_keep=members_to_keep, options=options, config_hash=config_hash,
                                  storage_options=storage_options, exclude_stations=exclude,
                                  skip_done=not force, threads=threads)
    log.info("block %s..%s: wrote %d day(s)%s", days[0], days[-1], len(written),
             "" if len(written) == len(days) else f" ({len(days) - len(written)} already done)")
    return written

