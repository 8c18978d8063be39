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


def _server_class():
    """Prefect's ``SubprocessASGIServer`` whose uvicorn child dies with this process (``flows.server_child``)."""
    import subprocess
    import sys

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnedServer(SubprocessASGIServer):
        """The same command and environment as Prefect 3.8's ``_run_uvicorn_command``, run through
        ``python -m flows.server_child PID`` (a watcher of this process; see that module)."""

        _instances: dict = {}  # Prefect keeps one server per port and class; not shared with Prefect's own

        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect

            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # flows/ importable in the child
            env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
            return subprocess.Popen([sys.executable, "-m", "flows.server_child", str(os.getpid()), "--app-dir",
                                     str(prefect.__module_path__.parent), "--factory",
                                     "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
                                     str(self.port), "--log-level", "error", "--lifespan", "on"], env=env)

    return OwnedServer


@contextlib.contextmanager
def prefect_api(timeout: int = 90) -> Iterator[str | None]:
    """Use ``PREFECT_API_URL`` if set; otherwise start ONE temporary local Prefect server for the block.

    Without it, a flow with a DaskTaskRunner in ephemeral mode starts a temporary server in every worker process
    (slow, and their runs land in separate databases). The temporary server is a child that exits when this process
    dies, SIGKILL included (:mod:`flows.server_child`). Every flow run started in the block is tagged with its
    owner (:func:`flows.owner.owner_tag`), and runs left RUNNING by owners that died are marked Crashed first
    (:func:`flows.owner.mark_crashed_runs`). Yields the API URL.

    With the temporary server, flow-run heartbeats are off: they tell a long-lived server's zombie detection that a
    run is alive, and this server dies with the process (its runs are marked Crashed by the owner check above
    instead), while Prefect 3.8 ends every flow run by waiting up to 1 s for its heartbeat thread to wake from a
    1-s sleep (measured 0.7-0.9 s of a 16-s backfill flow). With an existing ``PREFECT_API_URL`` they stay on.
    """
    from prefect import tags
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from .owner import mark_crashed_runs, owner_tag

    install_log_redaction()
    url = PREFECT_API_URL.value()
    if url:
        _mark_crashed(mark_crashed_runs)
        with tags(owner_tag()):
            yield url
        return
    server = _server_class()()
    server.start(timeout=timeout)
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes started below
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            _mark_crashed(mark_crashed_runs)
            with tags(owner_tag()):
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


@contextlib.contextmanager
def untagged_tasks() -> Iterator[None]:
    """Task runs started in the block carry no inherited tags (the owner tag of :func:`prefect_api`, a deployment's
    tags): the flow runs keep them.

    Prefect 3.8 asks the API for tag-concurrency slots for every tagged task run; measured with the temporary
    server, 1 task run in 10 then stalls 2-3 s (``acquire_concurrency_slots_with_lease``), a quarter of a month's
    backfill on one worker. Each flow body runs inside this; latentda sets no tag-concurrency limit itself.
    """
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


class _OneLineErrors:
    """Logging filter: records of Prefect's loggers lose their traceback (``exc_info``); the message stays."""

    def filter(self, record) -> bool:  # noqa: A003 - logging API
        if record.name.startswith("prefect") and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def _add_to_every_handler(make_filter, kind: type, handler_type: type | None = None) -> int:
    """Put ``make_filter()`` on every logging handler (of ``handler_type``, if given) of this process that has no
    ``kind`` filter yet (after Prefect configured its handlers, which it does lazily); returns how many got it."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    added = 0
    for lg in loggers:
        for h in lg.handlers:
            if handler_type is not None and not isinstance(h, handler_type):
                continue
            if not any(isinstance(f, kind) for f in h.filters):
                h.addFilter(make_filter())
                added += 1
    return added


def hide_prefect_tracebacks() -> int:
    """Prefect's flow and task engines log a failed run's exception with its traceback (20-190 lines) before the
    CLI's one-line error; without ``--debug`` the CLI calls this so that the terminal shows their one line only.
    Only stream (console) handlers change: the flow run's logs in the Prefect API keep the traceback. Returns the
    number of handlers changed."""
    import logging

    return _add_to_every_handler(_OneLineErrors, _OneLineErrors, logging.StreamHandler)


def install_log_redaction() -> int:
    """Put :class:`latentda.storage.RedactingFilter` on every logging handler of this process (root's,
    Prefect's console and API handlers, ...), so a secret that slipped into a log call is masked before any
    handler writes it to the terminal or sends it to the Prefect API. Idempotent; returns the number of handlers
    that got it now. Called by the CLI and :func:`prefect_api` after Prefect configured its logging."""
    from latentda.storage import RedactingFilter

    return _add_to_every_handler(RedactingFilter, RedactingFilter)


def _mark_crashed(mark) -> None:
    """Mark the runs of dead owners Crashed; a failure here (an old server, no permission) never stops a run."""
    import logging

    try:
        names = mark()
    except Exception as err:  # noqa: BLE001 - bookkeeping of earlier runs, not this run's work
        logging.getLogger(__name__).warning("could not check for crashed flow runs: %s", err)
        return
    if names:
        import sys

        print(f"note: {len(names)} flow run(s) left running by a process that died were marked Crashed: "
              f"{', '.join(names)}", file=sys.stderr)


def quiet_dask_logs(level: int | str = "WARNING") -> None:
    """Show only warnings from distributed (its INFO lines about every worker and comm drown the progress)."""
    import logging

    import distributed  # noqa: F401 - imports its logging config first, so ours wins

    for name in ("distributed", "bokeh", "tornado"):
        logging.getLogger(name).setLevel(level)
