"""Which process owns a flow run, and marking the runs of dead owners Crashed (issue 11 item 4).

Every flow run a CLI command starts carries the tag ``latentda-owner:HOST:PID:START`` (:func:`owner_tag`; START is
the process start time, so a reused pid is not mistaken for the owner). A CLI killed with SIGKILL cannot report
its run's end, so the run stays RUNNING in the Prefect database; the next command that starts
(:func:`mark_crashed_runs`, called by :func:`flows.prefect_api`) sets every RUNNING/PENDING run whose owner on this
host is gone to Crashed. Runs owned by another host are left alone (their owner cannot be checked from here).
"""
from __future__ import annotations

import logging
import os
import socket

import psutil

PREFIX = "latentda-owner:"
log = logging.getLogger(__name__)


def owner_tag(pid: int | None = None) -> str:
    """``latentda-owner:HOST:PID:START`` of process ``pid`` (default: this one)."""
    p = psutil.Process(pid or os.getpid())
    return f"{PREFIX}{socket.gethostname()}:{p.pid}:{int(p.create_time())}"


def owner_alive(tag: str) -> bool | None:
    """Whether the owner named by ``tag`` is still running: True/False on this host, None for another host or a
    tag that is not an owner tag."""
    if not tag.startswith(PREFIX):
        return None
    try:
        host, pid, start = tag[len(PREFIX):].rsplit(":", 2)
        pid_i, start_i = int(pid), int(start)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        p = psutil.Process(pid_i)
        return int(p.create_time()) == start_i and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mark_crashed_runs(limit: int = 200) -> list[str]:
    """Set the RUNNING/PENDING flow runs whose owner (tag) is dead on this host to Crashed; returns their names.

    Uses the current Prefect API (call it inside :func:`flows.prefect_api`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    marked = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))), limit=limit)
        for run in runs:
            tags = [t for t in (run.tags or []) if t.startswith(PREFIX)]
            if not tags or owner_alive(tags[0]) is not False:
                continue
            client.set_flow_run_state(run.id, Crashed(message=f"its owner process ({tags[0]}) died without "
                                                              "reporting an end (killed?); marked on the next start"),
                                      force=True)
            marked.append(run.name)
            log.warning("flow run %s (%s) was left %s by a process that died: marked Crashed", run.name, run.id,
                        run.state_type.value if run.state_type else "?")
    return marked
