"""Flow ``reanalysis``: backfill a date range into the pre-sized archive (wiring only; see ARCHITECTURE.md).

init archive -> plan (days to do, days missing) -> blocks of days, each one Prefect task whose days are mapped
over the Dask cluster with plain Dask -> validate -> register in the output catalog -> evaluate. Resumable: the
archive's done flags say which days are missing; only those are assimilated. A crash loses nothing already
written.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import json
import time
from typing import Any, Callable, Iterator

import pandas as pd
from prefect import flow, get_run_logger

from latentda import backfill, storage
from latentda.config import RunConfig, load_config
from latentda.obs.qc import format_counts
from tasks.archive import init_archive, missing_days, register_archive, validate_archive
from tasks.assimilate import (assimilate_block, plan_backfill, release_cluster, run_observations, set_progress_hook,
                              split_blocks, warm_workers)
from tasks.evaluate import evaluate

from . import BackfillIncomplete, untagged_tasks
from .progress import DayProgress
from .runners import task_runner_from_config, worker_size


def ensure_archive(cfg: RunConfig) -> str:
    """Init (create or check) the archive for ``cfg``; the prior must exist."""
    if not storage.exists(cfg.prior_path, cfg.archive.storage_options or None):
        raise FileNotFoundError(f"no prior checkpoint at {storage.redact(cfg.prior_path)}; train it first: "
                                f"`latentda train --config {cfg.source or 'CONFIG'}`")
    return init_archive(cfg)


def in_background(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` in a thread of its own, in this flow run's context (the Dask task runner, the run logger)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="latentda-flow")
    try:
        return pool.submit(contextvars.copy_context().run, fn, *args)
    finally:
        pool.shutdown(wait=False)


@contextlib.contextmanager
def cluster_closing() -> Iterator[None]:
    """Close the running flow's Dask cluster (:func:`tasks.assimilate.release_cluster`) in a thread while the body
    runs; wait for it after the body, a failure to close logged as a warning."""
    closing = in_background(release_cluster)
    try:
        yield
    finally:
        concurrent.futures.wait([closing])
        if closing.exception() is not None:
            get_run_logger().warning("closing the Dask cluster: %s: %s", type(closing.exception()).__name__,
                                     closing.exception())


def run_blocks(cfg: RunConfig, todo: list[str], force: bool, progress: DayProgress
               ) -> tuple[list, dict, dict, int]:
    """Assimilate ``todo`` block by block; returns (written, failed {day: error}, outcomes {day: {"qc",
    "prior_only"}}, number of blocks)."""
    blocks = split_blocks(todo, cfg.assimilation.block_days, worker_size(cfg.cluster).n_workers)
    written: list[str] = []
    failed: dict[str, str] = {}
    outcomes: dict[str, dict] = {}
    set_progress_hook(progress.day_done)
    try:
        for block in blocks:
            try:
                out = assimilate_block(cfg, block, force)
            except Exception as err:  # noqa: BLE001 - the whole block failed (lost worker, outage): the next runs
                get_run_logger().error("block %s..%s failed: %s: %s", block[0], block[-1], type(err).__name__, err)
                failed.update({d: f"{type(err).__name__}: {err}" for d in block})
                continue
            written += out["written"]
            failed.update(out["failed"])
            outcomes.update(out["outcomes"])
    finally:
        set_progress_hook(None)
    return written, failed, outcomes, len(blocks)


def incomplete_message(failed: dict[str, str], todo: int, written: int, qc: dict) -> str:
    """The one-line error of a backfill with failed days: how many, the first error, the QC rejections over the
    range, how many days were written and kept."""
    first = sorted(failed.items())[0]
    rejected = format_counts(qc["qc"])
    return (f"{len(failed)} of {todo} day(s) failed (first: {first[0]}: {first[1]}); "
            + (f"QC rejections over the range: {rejected}; " if rejected != "none" else "")
            + f"{written} day(s) were written and kept. Fix the cause and rerun the same command to resume.")


@flow(name="reanalysis")
def reanalysis(config_path: str, start: str | None = None, end: str | None = None,
               overrides: dict | None = None, progress: bool = True, evaluate_skill: bool = True,
               force: bool = False) -> dict:
    """Assimilate the days of ``start..end`` (default: the config's backfill range) that are not done yet
    (``force``: all of them).

    Returns a summary: days requested / written / done, failed days, fit to observations, skill vs truth.
    Raises after writing everything it could if a day failed (rerun to resume).
    """
    with untagged_tasks():
        return _reanalysis(config_path=config_path, start=start, end=end, overrides=overrides, progress=progress, evaluate_skill=evaluate_skill, force=force)


def _reanalysis(config_path: str, start: str | None = None, end: str | None = None,
               overrides: dict | None = None, progress: bool = True, evaluate_skill: bool = True,
               force: bool = False) -> dict:
    """The body of :func:`reanalysis`."""
    log = get_run_logger()
    t0 = time.perf_counter()
    cfg = load_config(config_path, overrides)
    s, e = backfill.day_range(cfg, start, end)
    # the cluster starts, and its workers load the prior and the table, while this thread reads the table, creates
    # or checks the archive and plans the days (each of the two took 0.1-0.3 s)
    starting = in_background(warm_workers, cfg)
    try:
        run_observations(cfg)  # read (and so check) the observation entry before the archive is created
        status = ensure_archive(cfg)
        plan = plan_backfill(cfg, str(s.date()), str(e.date()))
    except BaseException:
        concurrent.futures.wait([starting])  # a cluster being started is up (and closed with the run) or failed
        raise
    warming = starting.result()
    all_missing = plan["missing"]
    wanted = [str(d.date()) for d in pd.date_range(s, e, freq="D")]
    todo = wanted if force else plan["todo"]
    log.info("archive %s (%s): %d of %d day(s) in %s..%s to do", storage.redact(cfg.archive_url), status, len(todo),
             len(wanted), s.date(), e.date())
    with DayProgress(len(todo), bar=progress) as bar:
        written, failed, outcomes, n_blocks = run_blocks(cfg, todo, force, bar)
    for fut in warming:  # a failed warm-up shows up again, named, in the days it would have served
        fut.release()
    with cluster_closing():  # no Dask work is left: the workers end while the archive is checked
        qc = backfill.summarise_outcomes(outcomes)
        if any(k != "used" for k in qc["qc"]):
            log.warning("QC rejections over %s..%s: %s", s.date(), e.date(), format_counts(qc["qc"]))
        if qc["prior_only"]:
            log.warning("%d day(s) analysed from the prior alone (no usable observation; no_obs=1 in the archive): %s",
                        len(qc["prior_only"]), ", ".join(qc["prior_only"]))
        report = validate_archive(cfg, str(s.date()), str(e.date()))
        catalog_path = register_archive(cfg)
        newly = len(set(written) & set(all_missing))
        summary: dict[str, Any] = {
            "archive": storage.redact(cfg.archive_url), "catalog": catalog_path, "entry": cfg.archive.name,
            "feedback_entry": backfill.feedback_entry_name(cfg), "config": str(cfg.source or config_path),
            "range": [str(s.date()), str(e.date())], "days_requested": len(wanted), "days_todo": len(todo),
            "days_written": len(written), "written": sorted(written), "blocks": n_blocks,
            "failed": [{"day": d, "error": err} for d, err in sorted(failed.items())],
            "qc": qc["qc"], "prior_only": qc["prior_only"],
            "range_days_done": report["done"], "archive_days": cfg.archive.period.days,
            "archive_days_done": cfg.archive.period.days - len(all_missing) + newly,
            "seconds": round(time.perf_counter() - t0, 1)}
        if evaluate_skill:
            ev = evaluate(cfg, str(s.date()), str(e.date()))
            summary.update(fit=ev["fit"], truth=ev["truth"], stations=ev["stations"], days_evaluated=ev["days"])
        log.info("reanalysis summary: %s", json.dumps({k: v for k, v in summary.items() if k != "written"},
                                                      default=str))
        if failed:
            # what is kept is what the archive says is done now (a block that failed as a whole may have written
            # some of its days before it failed): the days of this run written, plus those done now that were not
            still = set(missing_days(cfg, str(s.date()), str(e.date())))
            before = set(all_missing)
            kept = set(written) | {d for d in todo if d in before and d not in still}
            for d in kept:
                failed.pop(d, None)
            raise BackfillIncomplete(incomplete_message(failed, len(todo), len(kept), qc))
        return summary


def run_reanalysis(config_path: str, start: str | None = None, end: str | None = None,
                   overrides: dict | None = None, progress: bool = True, evaluate_skill: bool = True,
                   force: bool = False) -> dict:
    """Run the ``reanalysis`` flow on the Dask cluster the config asks for."""
    cfg = load_config(config_path, overrides)
    runner = task_runner_from_config(cfg.cluster)
    return reanalysis.with_options(task_runner=runner)(
        config_path=str(config_path), start=None if start is None else str(start),
        end=None if end is None else str(end), overrides=overrides, progress=progress,
        evaluate_skill=evaluate_skill, force=force)
