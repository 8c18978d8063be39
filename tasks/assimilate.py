"""Assimilation task: one Prefect task per BLOCK of days; inside it the days are mapped over the Dask cluster with
plain Dask (a plain Dask task costs ~0.01 s against 0.10-0.15 s for a Prefect task on Dask).

Each day runs :func:`tasks.worker.run_day` on a worker (a module without Prefect: a fresh worker does not import
it): the prior and the observation table are loaded once per worker process (:func:`load_prior_cached`,
:func:`read_observations`), then ``latentda.backfill.assimilate_days`` writes the day.
Without a Dask client (a plain call, or the thread-pool runner) the days run in this process, one after another.
With ``archive.engine: icechunk`` each day is written into a fork of the block's session (:func:`run_forked_day`)
and the block is one commit (``latentda.archive_icechunk``; ARCHITECTURE.md, "the archive protocol").
"""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from latentda import archive_icechunk, backfill
from latentda.config import RunConfig
from latentda.obs.qc import AllObservationsRejected, format_counts

from .worker import (ForkedDay, _run_table, load_prior_cached, read_observations, run_day,  # noqa: F401
                     run_forked_day, run_observations, warm_up)

#: Called as ``on_day(day, error_or_None)`` when a day finishes (the flow's progress bar and artifact).
_HOOK: dict[str, Callable[[str, BaseException | None], None] | None] = {"on_day": None}


def warm_workers(config: RunConfig) -> list:
    """Start :func:`warm_up` on every Dask worker of the flow's cluster without waiting for it, so the workers
    import and load while the flow creates or checks the archive. Returns the futures (keep them until the days
    are submitted); [] without a cluster."""
    client = _client()
    if client is None:
        return []
    workers = list(client.scheduler_info().get("workers", {}))
    return [client.submit(warm_up, config, workers=[w], allow_other_workers=False, pure=False,
                          key=f"warm-up-{i}") for i, w in enumerate(workers)]


@task(name="days-to-do", cache_policy=NO_CACHE, persist_result=False)
def days_to_do(config: RunConfig, start: str, end: str) -> list[str]:
    """ISO dates of ``start..end`` to assimilate now: not done yet, or written as preliminary and with their whole
    window observed since (``latentda.backfill.days_needing_work``)."""
    prior = load_prior_cached(config.prior_path, "cpu", config.archive.storage_options)
    days = pd.date_range(start, end, freq="D")
    todo = backfill.days_needing_work(config.archive_url, days, backfill.window_of(prior), _run_table(config)[1],
                                      config.archive.storage_options)
    return [str(d.date()) for d in todo]


@task(name="plan-backfill", cache_policy=NO_CACHE, persist_result=False)
def plan_backfill(config: RunConfig, start: str, end: str) -> dict[str, list[str]]:
    """``{"todo": days of start..end to assimilate now (as :func:`days_to_do`), "missing": days of the whole
    archive period not done yet}``, ISO dates, from one read of the archive's flags
    (``latentda.backfill.plan_days``)."""
    prior = load_prior_cached(config.prior_path, "cpu", config.archive.storage_options)
    todo, missing = backfill.plan_days(config, start, end, backfill.window_of(prior), _run_table(config)[1])
    return {"todo": [str(d.date()) for d in todo], "missing": [str(d.date()) for d in missing]}


@task(name="daily-days", cache_policy=NO_CACHE, persist_result=False)
def daily_days(config: RunConfig, day: str) -> list[str]:
    """What the daily run of ``day`` assimilates: ``day`` unless done, and the preliminary days of its window
    [day - k, day) whose window is complete now (for a day prior: ``day`` alone)."""
    prior = load_prior_cached(config.prior_path, "cpu", config.archive.storage_options)
    d = pd.Timestamp(day)
    first = max(d - pd.Timedelta(days=backfill.window_of(prior)), pd.Timestamp(config.archive.start))
    return days_to_do.fn(config, str(first.date()), str(d.date()))


def split_blocks(days: list[str], block_days: int | None, n_workers: int) -> list[list[str]]:
    """Consecutive blocks of days, one Prefect task each. ``block_days=None``: 16 days per worker, at least 32
    (a month is one block): a block ends with workers idle while its last days finish, so fewer, larger blocks keep
    the workers busier; progress is reported per day anyway, and a failed day fails only itself."""
    if not days:
        return []
    if block_days is None:
        block_days = max(32, 16 * max(1, n_workers))
    return [days[i:i + block_days] for i in range(0, len(days), block_days)]


def _client():
    """The Dask client of the running flow's Dask task runner (this task runs in the flow's process), else the
    client of this Dask worker or the default one; None without any (the days then run in this process)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx is not None else None
    if runner is not None and hasattr(runner, "client") and getattr(runner, "_client", None) is not None:
        return runner.client
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def release_cluster() -> bool:
    """Close the Dask client and the cluster of the running flow's Dask task runner now (what the runner does when
    the flow run ends; its own exit then finds nothing left to close); True if there was one. For a flow whose
    Dask work is over: the workers end while the flow goes on (validation, the catalog) instead of after it."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx is not None else None
    if runner is None or getattr(runner, "_client", None) is None or not hasattr(runner, "_exit_stack"):
        return False
    runner._exit_stack.close()  # prefect_dask's stack: the client, then the cluster it started (if it did)
    return True


def dask_placement() -> str:
    """Where :func:`map_days` runs days now, in words (for the logs)."""
    client = _client()
    if client is None:
        return "in this process (no Dask client)"
    n = len(client.scheduler_info().get("workers", {}))
    return f"mapped over {n} Dask worker(s)"


def map_days(config: RunConfig, days: list[str], force: bool = False
             ) -> tuple[list[str], dict[str, str], dict[str, dict]]:
    """Run :func:`run_day` for each of ``days`` on the current Dask client (in this process without one).

    Returns ``(written, failed, outcomes)``: the ISO dates written, ``{day: error}`` for days that failed (the
    other days still run) and ``{day: {"qc": counts, "prior_only": bool}}`` of the days written and of the days
    that failed QC (:class:`latentda.obs.qc.AllObservationsRejected`). The progress hook
    (:func:`set_progress_hook`) is called as each day finishes. An Icechunk archive: the days are written into
    forks of one session, and the forks of the days that succeeded are committed together at the end.
    """
    on_day = _HOOK["on_day"]
    client = _client()
    written: list[str] = []
    failed: dict[str, str] = {}
    outcomes: dict[str, dict] = {}
    icechunk = config.archive.engine == "icechunk"
    session = archive_icechunk.writable_session(config.archive_url, config.archive.storage_options) \
        if icechunk else None
    items = [ForkedDay(d, session.fork()) for d in days] if icechunk else days
    run = run_forked_day if icechunk else run_day
    forks: list = []

    def done(day: str, result: Any, err: BaseException | None) -> None:
        if err is None and icechunk:
            result, fork = result
            forks.append(fork)
        if err is None:
            written.extend(result or {})
            outcomes.update(result or {})
        else:
            failed[day] = f"{type(err).__name__}: {err}"
            if isinstance(err, AllObservationsRejected):
                outcomes[day] = {"qc": err.counts, "prior_only": False}
        if on_day is not None:
            on_day(day, err)

    if client is None:
        for d, item in zip(days, items):
            try:
                done(d, run(item, config, force), None)
            except Exception as err:  # noqa: BLE001 - the other days still run; reported by the caller
                done(d, None, err)
    else:
        from distributed import as_completed

        futures = client.map(run, items, config=config, force=force, pure=False, key=[f"day-{d}" for d in days])
        day_of = {f.key: d for f, d in zip(futures, days)}
        for fut in as_completed(futures, loop=client.loop):
            try:
                done(day_of[fut.key], fut.result(), None)
            except Exception as err:  # noqa: BLE001
                done(day_of[fut.key], None, err)
            fut.release()
    if icechunk and days:  # the block's days become visible together, or (a crash before this) not at all
        archive_icechunk.commit(config.archive_url, session, f"days {days[0]}..{days[-1]}: {len(written)} written",
                                forks)
    return written, failed, outcomes


def _block_run_name() -> str:
    from prefect.runtime import task_run

    days = task_run.parameters.get("days") or ["?"]
    return f"assimilate-{days[0]}..{days[-1]}"


@task(name="assimilate-block", cache_policy=NO_CACHE, persist_result=False, task_run_name=_block_run_name)
def assimilate_block(config: RunConfig, days: list[str], force: bool = False) -> dict:
    """Assimilate ``days`` (ISO dates) of the run into its archive, mapped over the Dask cluster.

    The archive is the state: days already done are skipped unless ``force``. Returns ``{"written": [...],
    "failed": {day: error}, "outcomes": {day: {"qc", "prior_only"}}}``; a failed day leaves its done flag unset,
    so a rerun redoes exactly the failed days.
    """
    log = get_run_logger()
    log.info("block %s..%s: %d day(s) %s", days[0], days[-1], len(days), dask_placement())
    written, failed, outcomes = map_days(config, days, force)
    log.info("block %s..%s: wrote %d day(s)%s%s", days[0], days[-1], len(written),
             "" if len(written) + len(failed) == len(days) else
             f" ({len(days) - len(written) - len(failed)} already done)",
             f", {len(failed)} failed" if failed else "")
    qc = backfill.summarise_outcomes(outcomes)
    if qc["prior_only"]:
        log.warning("block %s..%s: %d day(s) analysed from the PRIOR ALONE (no usable observation): %s", days[0],
                    days[-1], len(qc["prior_only"]), ", ".join(qc["prior_only"]))
    if any(k != "used" for k in qc["qc"]):
        log.info("block %s..%s: QC rejections %s", days[0], days[-1], format_counts(qc["qc"]))
    return {"written": sorted(written), "failed": failed, "outcomes": outcomes}


def set_progress_hook(hook: Callable[[str, BaseException | None], None] | None) -> None:
    """Have :func:`assimilate_block` call ``hook(day, error_or_None)`` as each day finishes (the flow's progress
    bar and artifact); None removes it."""
    _HOOK["on_day"] = hook
