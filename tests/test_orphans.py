"""No orphans (issue 11 item 4): after kill -9 of ``latentda backfill`` no process it started (its temporary
Prefect server, Dask nannies and workers) is alive 10 s later, and the next command marks its run Crashed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.failure
def test_kill9_of_backfill_leaves_no_process_and_the_run_is_marked_crashed(tmp_path, world):
    # all 31 observed days in blocks of one day: the run must still be going 2 s after the archive appears, when it
    # is killed (10 days of the tiny prior can be done by then on a fast, idle machine)
    cfg_path = world.write_config(tmp_path, backfill={"start": "2005-01-01", "end": "2005-01-31"},
                                  archive={"end": "2005-01-31"}, assimilation={"block_days": 1})
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "backfill", "--config", cfg_path, "--no-progress"]
    cli = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.time() + 240
        started = None
        while time.time() < deadline and cli.poll() is None:
            for p in psutil.Process(cli.pid).children(recursive=True):
                seen.setdefault(p.pid, p)
            if (tmp_path / "archive.zarr").exists() and started is None:
                started = time.time()
            if started is not None and time.time() - started > 2:  # the flow and its Dask workers are running
                break
            time.sleep(0.2)
        assert cli.poll() is None and started is not None, "the backfill ended or never started"
        for p in psutil.Process(cli.pid).children(recursive=True):
            seen.setdefault(p.pid, p)
        kinds = " ".join(" ".join(p.cmdline()) for p in seen.values() if p.is_running())
        assert "flows.server_child" in kinds, kinds  # the temporary server was one of them
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        time.sleep(10)
        left = _alive(list(seen.values()))
        assert not left, f"processes started by the killed CLI still alive 10 s later: {left}"
    finally:
        for p in seen.values():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    # the next command with a temporary server on the same database marks the killed run Crashed
    check = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=180)
    assert check.returncode == 0, check.stderr
    assert "reanalysis CRASHED" in check.stdout, check.stdout + check.stderr


CHECK = """
from flows import prefect_api
from prefect.client.orchestration import get_client
with prefect_api():
    with get_client(sync_client=True) as c:
        for r in c.read_flow_runs():
            print(r.name, c.read_flow(r.flow_id).name, r.state_type.value)
"""
