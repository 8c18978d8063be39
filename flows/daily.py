"""Flow ``daily``: assimilate one day (default: yesterday, UTC) into the pre-sized archive.

Schedule it with :func:`serve_daily` (``latentda daily --serve``: a Prefect cron schedule, 06:00 UTC by default).
"""
from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger

from latentda import storage
from latentda.archive import to_days
from latentda.config import load_config
from tasks.archive import missing_days, validate_archive
from tasks.assimilate import assimilate_block

from .reanalysis import block_kwargs, ensure_archive, register
from .runners import task_runner_from_config


def yesterday_utc() -> str:
    return str(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))


@flow(name="daily")
def daily(config_path: str, date: str | None = None, overrides: dict | None = None, force: bool = False) -> dict:
    """Assimilate ``date`` (ISO; default yesterday UTC) unless it is already done (``force`` rewrites it)."""
    log = get_run_logger()
    cfg = load_config(config_path, overrides)
    day = to_days(date or yesterday_utc())[0]
    if not (cfg.archive.start <= day.date() <= cfg.archive.end):
        raise ValueError(f"day {day.date()} is outside the archive period {cfg.archive.start}..{cfg.archive.end} "
                         "(archive.start/archive.end in the run config)")
    iso = str(day.date())
    url, so = cfg.archive_url, cfg.archive.storage_options
    ensure_archive(cfg)
    if not force and not missing_days(url, so, iso, iso):
        log.info("%s is already done in %s: nothing to do (force=True rewrites it)", iso, storage.redact(url))
        return {"day": iso, "written": [], "archive": storage.redact(url)}
    written = assimilate_block.submit([iso], force=force, **block_kwargs(cfg)).result()
    validate_archive(url, so, iso, iso)
    catalog_path = register(cfg)
    log.info("daily %s: written into %s", iso, storage.redact(url))
    return {"day": iso, "written": written, "archive": storage.redact(url), "catalog": catalog_path}


def run_daily(config_path: str, date: str | None = None, overrides: dict | None = None, force: bool = False) -> dict:
    """Run the ``daily`` flow on the Dask cluster the config asks for."""
    cfg = load_config(config_path, overrides)
    return daily.with_options(task_runner=task_runner_from_config(cfg.cluster))(
        config_path=str(config_path), date=date, overrides=overrides, force=force)


def serve_daily(config_path: str, cron: str = "0 6 * * *", name: str = "latentda-daily") -> None:
    """Serve the daily flow on a cron schedule (UTC) in this process (blocks; Ctrl-C stops)."""
    cfg = load_config(config_path)
    f = daily.with_options(task_runner=task_runner_from_config(cfg.cluster))
    f.serve(name=name, cron=cron, parameters={"config_path": str(config_path)})
