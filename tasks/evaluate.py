"""Evaluation tasks: read the truth and the observations through the catalog, then one call into
:mod:`latentda.report` (skill of the archive; quicklook PNG of one day)."""
from __future__ import annotations

import xarray as xr
from prefect import task
from prefect.cache_policies import NO_CACHE

from latentda import report
from latentda.config import RunConfig
from latentda.training_store import open_training_store

from . import catalog as catalog_io
from .archive import RETRY_IO
from .assimilate import read_observations


def run_truth(config: RunConfig) -> xr.Dataset | None:
    """The run's gridded truth entry (lazy), or None when the config names none."""
    if not config.catalog.truth:
        return None
    return catalog_io.read_fields(config.catalog.path, config.catalog.truth)


def run_observations(config: RunConfig):
    """The run's observation table (cached per process), or None when the config names none."""
    if not config.catalog.observations:
        return None
    return read_observations(config.catalog.path, config.catalog.observations)


def _climatology(config: RunConfig) -> xr.Dataset | None:
    try:
        return open_training_store(config.training_store, config.archive.storage_options)[1]
    except FileNotFoundError:
        return None


def evaluate_run(config: RunConfig, start: str | None = None, end: str | None = None) -> dict:
    """:func:`latentda.report.evaluate_archive` with the run's truth, observations and climatology."""
    needs_obs = bool(config.evaluation.holdout_fraction)
    return report.evaluate_archive(config, start, end, truth=run_truth(config),
                                   observations=run_observations(config) if needs_obs else None,
                                   climatology=_climatology(config))


@task(name="evaluate", cache_policy=NO_CACHE, **RETRY_IO)
def evaluate(config: RunConfig, start: str | None = None, end: str | None = None) -> dict:
    """Task wrapper of :func:`evaluate_run`."""
    return evaluate_run(config, start, end)


@task(name="quicklook", cache_policy=NO_CACHE, **RETRY_IO)
def make_quicklook(config: RunConfig, day: str, out_png: str) -> str:
    """:func:`latentda.report.quicklook_day` of the config's quicklook variable, with the run's truth and
    observations."""
    return report.quicklook_day(config, day, config.quicklook_variable, out_png, truth=run_truth(config),
                                observations=run_observations(config))
