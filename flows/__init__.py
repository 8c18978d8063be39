"""Prefect flows (wiring only): ``train``, ``reanalysis`` (backfill a date range), ``daily``, ``evaluate``.

Each flow module has a ``run_<name>(config_path, ...)`` helper that builds the flow's Dask task runner from the
run config (:func:`flows.runners.task_runner_from_config`) and calls the flow; the CLI (``flows/cli.py``) and
the benchmarks use those. :func:`prefect_api` gives a command one Prefect API for the flow and all its Dask
workers (an existing ``PREFECT_API_URL``, else one temporary local server).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class BackfillIncomplete(RuntimeError):
    """Some blocks of a backfill failed; every day that could be written was written and is kept. Rerun."""


@contextlib.contextmanager
def prefect_api(timeout: int = 90) -> Iterator[str | None]:
    """Use ``PREFECT_API_URL`` if set; otherwise start ONE temporary local Prefect server for the block.

    Without it, a flow with a DaskTaskRunner in ephemeral mode starts a temporary server in every worker process
    (slow, and their runs land in separate databases). Yields the API URL.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=timeout)
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes started below
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        try:  # send the buffered flow/task logs while the server is still up
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
        except Exception:  # noqa: BLE001 - best effort
            pass
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        server.stop()


def quiet_dask_logs(level: int | str = "WARNING") -> None:
    """Show only warnings from distributed (its INFO lines about every worker and comm drown the progress)."""
    import logging

    import distributed  # noqa: F401 - imports its logging config first, so ours wins

    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(level)
