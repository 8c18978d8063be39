"""Flow ``daily``: assimilate one day (default: yesterday, UTC) into the pre-sized archive.

Schedule it with :func:`serve_daily` (``latentda daily --serve``: a Prefect cron schedule, 06:00 UTC by default).
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from latentda import backfill, storage
from latentda.config import load_config
from tasks.archive import register_archive, validate_archive
from tasks.assimilate import assimilate_block, daily_days

from . import BackfillIncomplete, untagged_tasks
from .preflight import yesterday_utc
from .reanalysis import ensure_archive, incomplete_message
from .runners import task_runner_from_config


@flow(name="daily")
def daily(config_path: str, date: str | None = None, overrides: dict | None = None, force: bool = False) -> dict:
    """Assimilate ``date`` (ISO; default yesterday UTC) unless it is already done (``force`` rewrites it), and
    upgrade the preliminary days of its window whose observations have all arrived since."""
    with untagged_tasks():
        return _daily(config_path=config_path, date=date, overrides=overrides, force=force)


def _daily(config_path: str, date: str | None = None, overrides: dict | None = None, force: bool = False) -> dict:
    """The body of :func:`daily`."""
    log = get_run_logger()
    cfg = load_config(config_path, overrides)
    day, _ = backfill.day_range(cfg, date or yesterday_utc(), date or yesterday_utc())
    iso = str(day.date())
    url = storage.redact(cfg.archive_url)
    ensure_archive(cfg)
    todo = [iso] if force else daily_days(cfg, iso)
    if not todo:
        log.info("%s is already done in %s: nothing to do (force=True rewrites it)", iso, url)
        return {"day": iso, "written": [], "archive": url}
    out = assimilate_block(cfg, todo, force)
    if out["failed"]:
        qc = backfill.summarise_outcomes(out["outcomes"])
        raise BackfillIncomplete(incomplete_message(out["failed"], len(todo), len(out["written"]), qc))
    for d in todo:
        if out["outcomes"].get(d, {}).get("prior_only"):
            log.warning("daily %s: %s analysed from the PRIOR ALONE (no usable observation; no_obs=1)", iso, d)
    validate_archive(cfg, todo[0], iso)
    catalog_path = register_archive(cfg)
    log.info("daily %s: written into %s", iso, url)
    return {"day": iso, "written": out["written"], "archive": url, "catalog": catalog_path,
            "outcome": out["outcomes"].get(iso)}


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
