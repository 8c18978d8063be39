"""The temporary Prefect server of one CLI run, as a child that dies with its parent (issue 11 item 4).

``python -m flows.server_child PARENT_PID UVICORN_ARGS...`` runs uvicorn exactly as Prefect's
``SubprocessASGIServer`` does, plus a daemon thread that polls ``os.getppid()`` every ``POLL_S`` seconds: when the
parent is gone (killed with SIGKILL included: the child is then re-parented), the server stops itself (SIGTERM to
itself, then a hard exit after ``GRACE_S``). On Linux it also asks the kernel for SIGKILL when the parent dies
(``prctl(PR_SET_PDEATHSIG)``), which is immediate; the thread is the portable guarantee.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

POLL_S = 0.5
GRACE_S = 3.0


def _kernel_death_signal() -> None:
    """Linux: SIGKILL this process when its parent thread dies (best effort, no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def watch_parent(parent_pid: int) -> threading.Thread:
    """Start the daemon thread that stops this process once ``parent_pid`` is no longer its parent."""

    def run() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
        time.sleep(GRACE_S)
        os._exit(1)

    t = threading.Thread(target=run, name="watch-parent", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].isdigit():
        raise SystemExit("usage: python -m flows.server_child PARENT_PID UVICORN_ARGS...")
    parent = int(argv[0])
    _kernel_death_signal()
    if os.getppid() != parent:  # the parent died before we got here
        raise SystemExit(1)
    watch_parent(parent)
    import uvicorn

    sys.argv = ["uvicorn", *argv[1:]]
    uvicorn.main()


if __name__ == "__main__":  # pragma: no cover
    main()
