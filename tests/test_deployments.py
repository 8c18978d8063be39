"""Deployments: deploy/prefect.yaml (work pool) and flows/serve.py (serve), against a real local Prefect server.

The slow test starts ``prefect server start --host 127.0.0.1`` on a free port with its own PREFECT_HOME, registers
deploy/prefect.yaml with ``prefect deploy``, checks schedule and parameters through the API (and that the
server's scheduler creates the 06:00 UTC runs), then triggers ``backfill`` and lets ``prefect worker start
--run-once`` execute it: the archive must have the days.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import io
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from servers import PrefectServer, run_cli

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deploy" / "prefect.yaml"


def _load_yaml():
    return yaml.safe_load(PREFECT_YAML.read_text())


def test_prefect_yaml_declares_daily_and_backfill():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    raw = _load_yaml()
    model = PrefectYamlModel.model_validate(raw)  # the schema `prefect deploy` uses
    deps = {d.name: d for d in model.deployments}
    assert set(deps) == {"daily", "backfill"}
    pools = {d.work_pool.name for d in deps.values()}
    assert pools == {"latentda"}

    daily = deps["daily"]
    assert len(daily.schedules) == 1
    s = daily.schedules[0]
    assert (s.cron, s.timezone, s.active) == ("0 6 * * *", "UTC", True)
    assert daily.parameters == {"config_path": "deploy/demo.yaml"}
    assert (REPO / daily.parameters["config_path"]).is_file()

    backfill = deps["backfill"]
    assert not backfill.schedules
    assert backfill.parameters == {"config_path": "deploy/demo.yaml"}

    for d in deps.values():
        path, _, name = d.entrypoint.partition(":")
        assert (REPO / path).is_file()
        old = os.getcwd()
        os.chdir(REPO)
        try:
            f = load_flow_from_entrypoint(d.entrypoint)
        finally:
            os.chdir(old)
        sig = inspect.signature(f.fn)
        assert set(d.parameters) <= set(sig.parameters), (d.name, d.parameters, sig)
        required = {n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty}
        assert required - set(d.parameters) == ({"start", "end"} if d.name == "backfill" else set())

    text = PREFECT_YAML.read_text()
    assert "one deployment run per year" in text.lower() or "one run per year" in text.lower()
    assert "--type process" in text


def test_serve_builds_the_same_two_deployments(world, tmp_path):
    from prefect.schedules import Cron  # noqa: F401 - the schedule type used

    from flows import serve

    cfg = world.write_config(tmp_path / "run")
    deps = serve.build_deployments(cfg)
    info = {d["name"]: d for d in serve.describe(deps)}
    assert set(info) == {"latentda-daily/daily", "latentda-backfill/backfill"}
    assert info["latentda-daily/daily"]["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}]
    assert info["latentda-daily/daily"]["parameters"] == {"config_path": os.path.abspath(cfg)}
    assert info["latentda-backfill/backfill"]["schedules"] == []
    assert sorted(info["latentda-backfill/backfill"]["required"]) == ["end", "start"]
    # the entry flows carry the same names as the prefect.yaml entrypoints
    names = {d["entrypoint"].split(":")[1] for d in _load_yaml()["deployments"]}
    assert names == {"daily_entry", "backfill_entry"}


def test_serve_dry_run_and_missing_server(world, tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import serve

    cfg = world.write_config(tmp_path / "run")
    buf = io.StringIO()
    assert serve.cmd_serve(serve.build_parser().parse_args(["--config", cfg, "--dry-run", "--cron", "30 5 * * *"]),
                           out=buf) == 0
    out = json.loads(buf.getvalue())
    capsys.readouterr()
    assert out["deployments"][0]["schedules"][0]["cron"] == "30 5 * * *"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert serve.main(["--config", cfg]) == 2
    assert "prefect server start --host 127.0.0.1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        serve.main(["--config", str(tmp_path / "nope.yaml"), "--dry-run"])


# ------------------------------------------------------------------------------------------- real server
def _client_call(api_url: str, fn):
    """Run ``fn(client)`` (a coroutine function) against ``api_url``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def main():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(main())


@pytest.mark.slow
def test_deploy_schedule_and_worker_backfill(world, tmp_path):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    # in-process Dask workers: the point here is the deployment/worker path, not the cluster
    cfg = world.write_config(tmp_path / "run", cluster={"n_workers": 1, "options": {"processes": False}},
                             catalog={"truth": None},
                             archive={"start": "2005-01-01", "end": "2005-01-04"},
                             backfill={"start": "2005-01-01", "end": "2005-01-04"})
    server = PrefectServer(tmp_path / "prefect-home")
    server_env = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    old = {k: os.environ.get(k) for k in server_env}
    os.environ.update(server_env)  # inherited by the server process
    try:
        server.start()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    try:
        env = server.env()
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path / "results")
        run_cli(["prefect", "work-pool", "create", "latentda", "--type", "process"], env, cwd=REPO)
        r = run_cli(["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"], env,
                    cwd=REPO)
        assert "latentda-backfill/backfill" in r.stdout and "latentda-daily/daily" in r.stdout, r.stdout

        async def read(client):
            daily = await client.read_deployment_by_name("latentda-daily/daily")
            backfill = await client.read_deployment_by_name("latentda-backfill/backfill")
            return daily, backfill

        daily, backfill = _client_call(server.api_url, read)
        assert daily.work_pool_name == backfill.work_pool_name == "latentda"
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in daily.schedules] == \
            [("0 6 * * *", "UTC", True)]
        assert daily.parameters == {"config_path": "deploy/demo.yaml"}
        assert backfill.schedules == [] and backfill.parameters == {"config_path": "deploy/demo.yaml"}
        assert set(backfill.parameter_openapi_schema["required"]) == {"start", "end"}
        assert Path(daily.path or REPO).resolve() == REPO or daily.pull_steps  # runs from this checkout

        # flows/serve.py registers the same pair (served deployments, no work pool)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows import serve

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            for d in serve.build_deployments(cfg, daily_name="daily-served", backfill_name="backfill-served"):
                d.apply()

        async def read_served(client):
            return (await client.read_deployment_by_name("latentda-daily/daily-served"),
                    await client.read_deployment_by_name("latentda-backfill/backfill-served"))

        sd, sb = _client_call(server.api_url, read_served)
        assert [(s.schedule.cron, s.schedule.timezone) for s in sd.schedules] == [("0 6 * * *", "UTC")]
        assert sd.parameters == sb.parameters == {"config_path": os.path.abspath(cfg)}
        assert sb.schedules == [] and set(sb.parameter_openapi_schema["required"]) == {"start", "end"}

        async def drop_served(client):
            await client.delete_deployment(sd.id)
            await client.delete_deployment(sb.id)

        _client_call(server.api_url, drop_served)

        # the server's scheduler turns the cron into runs at 06:00 UTC
        async def scheduled(client):
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[daily.id])))

        t0 = time.monotonic()
        runs = []
        while time.monotonic() - t0 < 60 and not runs:
            runs = _client_call(server.api_url, scheduled)
            if not runs:
                time.sleep(1)
        assert runs, "the scheduler created no run for the daily deployment within 60 s"
        for fr in runs:
            when = fr.expected_start_time.astimezone(dt.timezone.utc)
            assert (when.hour, when.minute) == (6, 0) and fr.state.is_scheduled()

        # pause the daily schedule so the one-shot worker below can only pick the backfill run
        async def pause(client):
            from prefect.exceptions import ObjectNotFound

            await client.pause_deployment(daily.id)  # also removes its auto-scheduled runs
            for fr in runs:
                try:
                    await client.delete_flow_run(fr.id)
                except ObjectNotFound:
                    pass

        _client_call(server.api_url, pause)

        r = run_cli(["prefect", "deployment", "run", "latentda-backfill/backfill", "-p", f"config_path={cfg}",
                     "-p", "start=2005-01-02", "-p", "end=2005-01-03"], env, cwd=REPO)
        w = run_cli(["prefect", "worker", "start", "--pool", "latentda", "--run-once"], env, cwd=REPO,
                    timeout=480, check=False)

        async def backfill_runs(client):
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[backfill.id])))

        done = _client_call(server.api_url, backfill_runs)
        assert len(done) == 1, done
        fr = done[0]
        assert fr.state.is_completed(), (fr.state, w.stdout[-4000:], w.stderr[-4000:])
        assert fr.parameters["start"] == "2005-01-02" and fr.parameters["end"] == "2005-01-03"
    finally:
        server.stop()

    from latentda import archive as lib

    st = lib.day_status(str(tmp_path / "run" / "archive.zarr"), None)
    assert [str(d.date()) for d in st.index[st.values]] == ["2005-01-02", "2005-01-03"]
    lib.validate_archive(str(tmp_path / "run" / "archive.zarr"))
