"""Flow ``reanalysis``: backfill a date range into the pre-sized archive, BLOCKS of days fanned out over Dask.

Resumable: the archive's done flags say which days are missing; only those are assimilated. A crash loses
nothing already written (each day's done flag is written after its data).
"""
from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.futures import as_completed

from latentda import storage
from latentda.archive import to_days
from latentda.config import RunConfig, load_config
from tasks.archive import archive_exists, init_archive, missing_days, register_archive, validate_archive
from tasks.assimilate import assimilate_block, read_observations, split_blocks
from tasks.evaluate import evaluate

from . import BackfillIncomplete
from .runners import task_runner_from_config


def provenance(cfg: RunConfig) -> dict[str, Any]:
    """Global provenance attributes of the archive (no secrets)."""
    return {"config_hash": cfg.hash, "config_name": cfg.name,
            "catalog": {"path": cfg.catalog.path, "fields": cfg.catalog.fields,
                        "observations": cfg.catalog.observations},
            "assimilation": {"seed": cfg.assimilation.seed, "options": cfg.assimilation.options,
                             "holdout_fraction": cfg.evaluation.holdout_fraction}}


def catalog_metadata(cfg: RunConfig) -> dict[str, Any]:
    return {"variables": list(cfg.variables), "period": [str(cfg.archive.start), str(cfg.archive.end)],
            "members": cfg.assimilation.members, "members_kept": cfg.members_to_keep,
            "config_hash": cfg.hash, "source_catalog": cfg.catalog.path,
            "source_entries": {"fields": cfg.catalog.fields, "observations": cfg.catalog.observations}}


def ensure_archive(cfg: RunConfig) -> str:
    """Init (create or check) the archive for ``cfg``; the prior must exist."""
    if not archive_exists(cfg.prior_path):
        raise FileNotFoundError(f"no prior checkpoint at {cfg.prior_path}; train it first: "
                                f"`latentda train --config {cfg.source or 'CONFIG'}`")
    return init_archive(cfg.archive_url, cfg.archive.storage_options, cfg.prior_path, str(cfg.archive.start),
                        str(cfg.archive.end), cfg.assimilation.members, cfg.members_to_keep, list(cfg.variables),
                        provenance(cfg))


def register(cfg: RunConfig) -> str:
    return register_archive(cfg.output_catalog, cfg.archive.name, cfg.archive_url, cfg.archive.storage_options,
                            f"latentda reanalysis '{cfg.name}': {', '.join(cfg.variables)}, "
                            f"{cfg.archive.start}..{cfg.archive.end}, {cfg.assimilation.members} members",
                            catalog_metadata(cfg))


def block_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The per-run (unmapped) arguments of ``assimilate_block``."""
    if not cfg.catalog.observations:
        raise ValueError("catalog.observations is not set in the run config: no observations to assimilate")
    return dict(prior_path=cfg.prior_path, catalog_path=cfg.catalog.path, obs_entry=cfg.catalog.observations,
                url=cfg.archive_url, storage_options=cfg.archive.storage_options,
                members=cfg.assimilation.members, seed=cfg.assimilation.seed, members_to_keep=cfg.members_to_keep,
                options=dict(cfg.assimilation.options), config_hash=cfg.hash,
                holdout_fraction=cfg.evaluation.holdout_fraction, threads=cfg.assimilation.threads)


@flow(name="reanalysis")
def reanalysis(config_path: str, start: str | None = None, end: str | None = None,
               overrides: dict | None = None, progress: bool = True, evaluate_skill: bool = True) -> dict:
    """Assimilate the days of ``start..end`` (default: the config's backfill range) that are not done yet.

    Returns a summary: days requested / written / done, failed blocks, fit to observations, skill vs truth.
    Raises after writing everything it could if a block failed (rerun to resume).
    """
    log = get_run_logger()
    t0 = time.perf_counter()
    cfg = load_config(config_path, overrides)
    period = cfg.backfill_period()
    s = to_days(start or period.start)[0]
    e = to_days(end or period.end)[0]
    if e < s:
        raise ValueError(f"end {e.date()} is before start {s.date()}")
    if s.date() < cfg.archive.start or e.date() > cfg.archive.end:
        raise ValueError(f"range {s.date()}..{e.date()} is outside the archive period {cfg.archive.start}.."
                         f"{cfg.archive.end} (archive.start/archive.end in the run config)")
    url, so = cfg.archive_url, cfg.archive.storage_options
    if cfg.catalog.observations:  # read (and so check) the observation entry before the archive is created
        read_observations(cfg.catalog.path, cfg.catalog.observations)
    status = ensure_archive(cfg)
    all_missing = missing_days(url, so, str(cfg.archive.start), str(cfg.archive.end))
    todo = [d for d in all_missing if str(s.date()) <= d <= str(e.date())]
    n_req = (e - s).days + 1
    log.info("archive %s (%s): %d of %d day(s) in %s..%s to do", storage.redact(url), status, len(todo), n_req,
             s.date(), e.date())
    blocks = split_blocks(todo, cfg.assimilation.block_days, cfg.cluster.n_workers)
    written: list[str] = []
    failed: list[dict] = []
    if blocks:
        kw = {k: unmapped(v) for k, v in block_kwargs(cfg).items()}
        futures = assimilate_block.map(days=blocks, **kw)
        days_of = {f.task_run_id: b for f, b in zip(futures, blocks)}
        bar = _bar(len(todo), progress)
        for fut in as_completed(futures):
            block = days_of[fut.task_run_id]
            try:
                written += fut.result()
            except Exception as err:  # noqa: BLE001 - keep going: other blocks' days are still written
                failed.append({"days": [block[0], block[-1]], "error": f"{type(err).__name__}: {err}"})
                log.error("block %s..%s failed: %s", block[0], block[-1], err)
            if bar is not None:
                bar.update(len(block))
        if bar is not None:
            bar.close()
    report = validate_archive(url, so, str(s.date()), str(e.date()))
    catalog_path = register(cfg)
    summary: dict[str, Any] = {
        "archive": storage.redact(url), "catalog": catalog_path, "entry": cfg.archive.name,
        "range": [str(s.date()), str(e.date())], "days_requested": n_req, "days_todo": len(todo),
        "days_written": len(written), "written": sorted(written), "blocks": len(blocks), "failed": failed,
        "range_days_done": report["done"], "archive_days": cfg.archive.period.days,
        "archive_days_done": cfg.archive.period.days - len(all_missing) + len(written),
        "seconds": round(time.perf_counter() - t0, 1)}
    if evaluate_skill:
        ev = evaluate(url, so, list(cfg.variables), str(s.date()), str(e.date()), cfg.catalog.path,
                      cfg.catalog.truth, cfg.catalog.observations, cfg.evaluation.holdout_fraction,
                      cfg.assimilation.seed, cfg.training_store, cfg.assimilation.members)
        summary.update(fit=ev["fit"], truth=ev["truth"], stations=ev["stations"], days_evaluated=ev["days"])
    log.info("reanalysis summary: %s", json.dumps({k: v for k, v in summary.items() if k != "written"},
                                                  default=str))
    if failed:
        raise BackfillIncomplete(f"{len(failed)} of {len(blocks)} block(s) failed ({failed[0]['error']}); "
                           f"{len(written)} day(s) were written and kept. Rerun the same command to resume.")
    return summary


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="backfill", unit="day")


def run_reanalysis(config_path: str, start: str | None = None, end: str | None = None,
                   overrides: dict | None = None, progress: bool = True, evaluate_skill: bool = True) -> dict:
    """Run the ``reanalysis`` flow on the Dask cluster the config asks for."""
    cfg = load_config(config_path, overrides)
    runner = task_runner_from_config(cfg.cluster)
    return reanalysis.with_options(task_runner=runner)(
        config_path=str(config_path), start=None if start is None else str(start),
        end=None if end is None else str(end), overrides=overrides, progress=progress,
        evaluate_skill=evaluate_skill)
