"""Failure injection: kill -9 of a backfill, a Dask worker killed mid-run, an S3 outage during a backfill, fuzzed
observation tables, corrupted or foreign checkpoints. Every test ends with an archive that is valid and, where a
run completes, byte-identical to an uninterrupted run (the plain library loop over the same days).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentda import archive as lib
from latentda.runtime import table_hash
from servers import BUCKET_PREFIX, MotoServer, PausableProxy, list_objects, make_bucket, s3_env

REPO = Path(__file__).resolve().parents[1]
FAILURE = [pytest.mark.failure, pytest.mark.slow]
#: Both archive engines (``archive.engine``): the Icechunk archive must survive the same failures.
ENGINES = pytest.mark.parametrize("engine", ["zarr", "icechunk"])


# ------------------------------------------------------------------------------------------------ helpers
def library_reference(cfg, days, url: str, observations: pd.DataFrame, storage_options=None) -> None:
    """The uninterrupted run: the plain library loop over ``days`` into ``url`` (same inputs as the flow)."""
    import dataclasses

    import latentda
    from latentda import backfill

    prior = latentda.load_prior(cfg.prior_path, device="cpu")
    spec = lib.archive_spec(prior, cfg.archive.start, cfg.archive.end, cfg.assimilation.members,
                            cfg.members_to_keep, cfg.variables)
    lib.create_archive(url, spec, dict(backfill.archive_provenance(cfg), model_checksum=prior.checksum()),
                       storage_options=storage_options)
    settings = dataclasses.replace(backfill.DaySettings.from_config(cfg), url=url, storage_options=storage_options)
    backfill.assimilate_days(prior, observations, days, settings)


def chunk_files(root: str) -> dict[str, bytes]:
    """Every chunk file under a local Zarr store (metadata files left out: they carry creation times)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f != "zarr.json":
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def archive_url(d: Path, engine: str) -> str:
    return str(d / ("archive.icechunk" if engine == "icechunk" else "archive.zarr"))


def assert_same_chunks(url: str, ref: str) -> None:
    """Every chunk file of a Zarr archive is the reference's, byte for byte (an Icechunk archive names its chunks
    by random ids: its decoded bytes are compared by :func:`assert_same_archive`)."""
    if lib.engine_at(url) == "zarr":
        fa, fb = chunk_files(url), chunk_files(ref)
        assert fa.keys() == fb.keys()
        assert [k for k in fa if fa[k] != fb[k]] == []


def assert_same_archive(url_a: str, url_b: str, so_a=None, so_b=None) -> None:
    a, b = lib.open_archive(url_a, so_a), lib.open_archive(url_b, so_b)
    assert sorted(a.data_vars) == sorted(b.data_vars)
    assert a.sizes == b.sizes
    np.testing.assert_array_equal(a["time"].values, b["time"].values)
    for v in a.data_vars:
        assert a[v].values.tobytes() == b[v].values.tobytes(), v


def days_done(url: str, so=None) -> list[str]:
    from icechunk import IcechunkError

    try:
        st = lib.day_status(url, so)
    except (FileNotFoundError, lib.ArchiveError, KeyError, ValueError, OSError, IcechunkError):  # being created
        return []
    return [str(d.date()) for d in st.index[st.values]]


def harness_env() -> dict[str, str]:
    """Environment for a subprocess that reports to this session's Prefect harness (no server of its own)."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_while(disrupt, cfg_path, events: dict, join_s: float) -> None:
    """Run the backfill of ``cfg_path`` while ``disrupt()`` runs in a side thread, then wait ``join_s`` for it.

    The summary goes to ``events["first"]``; a loud failure is an accepted outcome (the rerun must complete) and
    goes to ``events["first_error"]``."""
    from flows.reanalysis import run_reanalysis

    th = threading.Thread(target=disrupt, daemon=True)
    th.start()
    try:
        events["first"] = run_reanalysis(cfg_path, progress=False, evaluate_skill=False)
    except Exception as e:  # noqa: BLE001 - failing loudly is accepted; the rerun must complete
        events["first_error"] = f"{type(e).__name__}: {e}"
    th.join(join_s)


# ---------------------------------------------------------------------------------------------- kill -9

@pytest.mark.failure
@pytest.mark.slow
@ENGINES
def test_kill9_backfill_mid_range_then_rerun_is_byte_identical(prefect_harness, world, tmp_path, engine):
    from latentda.config import load_config

    days = [f"2005-01-{i:02d}" for i in range(1, 9)]
    block = 2 if engine == "icechunk" else 1  # Icechunk: a block of 2 days is one commit
    cfg_path = world.write_config(tmp_path / "run", archive={"start": days[0], "end": days[-1], "engine": engine,
                                                             "url": archive_url(tmp_path / "run", engine)},
                                  backfill={"start": days[0], "end": days[-1]},
                                  catalog={"truth": None}, assimilation={"block_days": block},
                                  cluster={"n_workers": 1, "threads_per_worker": 1})
    cfg = load_config(cfg_path)
    url = cfg.archive_url
    cmd = [sys.executable, "-m", "flows.cli", "backfill", "--config", cfg_path, "--no-progress"]
    env = harness_env()
    log1 = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    killed_at = None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 400 and proc.poll() is None:
            done = days_done(url)
            if len(done) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dask scheduler, nanny and worker: no cleanup
                killed_at = done
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and killed_at is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log1.close()
    assert killed_at is not None, "the backfill finished or stalled before it could be killed:\n" + \
        (tmp_path / "first.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL
    after_kill = days_done(url)
    assert 2 <= len(after_kill) < len(days), after_kill  # mid-range
    assert len(after_kill) % block == 0, after_kill  # whole blocks only: the killed block's days are all lost
    lib.validate_archive(url)  # what is marked done is complete
    from latentda import feedback as fbk

    fb = fbk.read_feedback(url)  # the feedback shows exactly the done days, each whole
    assert sorted(set(fb["day"].dt.strftime("%Y-%m-%d"))) == after_kill
    assert len(fb) == sum(int((pd.to_datetime(world.obs["time"]).dt.normalize() == pd.Timestamp(d)).sum())
                          for d in after_kill)

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert days_done(url) == days  # no day missing
    ds = lib.open_archive(url)
    assert len(np.unique(ds["time"].values)) == ds.sizes["time"] == len(days)  # none duplicated

    ref = str(tmp_path / "reference.zarr")
    library_reference(cfg, days, ref, world.obs)
    assert_same_archive(url, ref)
    assert_same_chunks(url, ref)  # every chunk file, byte for byte
    for d in days:  # and every day's feedback file
        assert Path(fbk.day_url(url, d)).read_bytes() == Path(fbk.day_url(ref, d)).read_bytes(), d


# ------------------------------------------------------------------------------------------ worker kill
@pytest.mark.failure
@pytest.mark.slow
@ENGINES
def test_dask_worker_killed_mid_run_retries_or_rerun_completes(prefect_harness, world, tmp_path, engine):
    from distributed import Client, LocalCluster

    from flows.reanalysis import run_reanalysis
    from latentda.config import load_config

    days = [f"2005-01-{i:02d}" for i in range(1, 7)]
    events: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        cfg_path = world.write_config(tmp_path / "run", archive={"start": days[0], "end": days[-1],
                                                                 "engine": engine,
                                                                 "url": archive_url(tmp_path / "run", engine)},
                                      backfill={"start": days[0], "end": days[-1]}, catalog={"truth": None},
                                      assimilation={"block_days": 1},
                                      cluster={"profile": "address", "address": cluster.scheduler_address})
        cfg = load_config(cfg_path)
        url = cfg.archive_url

        def killer():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                if len(days_done(url)) >= 1:
                    busy = [w for w, tasks in client.processing().items() if tasks]
                    if busy:
                        pids = client.run(os.getpid, workers=[busy[0]])
                        pid = pids[busy[0]]
                        os.kill(pid, signal.SIGKILL)
                        events["killed"] = (busy[0], pid, list(days_done(url)))
                        return
                time.sleep(0.1)

        run_while(killer, cfg_path, events, join_s=5)
        assert "killed" in events, "no worker was busy after the first day: nothing was killed"
        assert len(events["killed"][2]) < len(days)
        lib.validate_archive(url)
        if days_done(url) != days:
            summary = run_reanalysis(cfg_path, progress=False, evaluate_skill=False)
            assert not summary["failed"]
    assert days_done(url) == days
    ref = str(tmp_path / "reference.zarr")
    library_reference(cfg, days, ref, world.obs)
    assert_same_archive(url, ref)
    assert_same_chunks(url, ref)


# ------------------------------------------------------------------------------------------ S3 outage
@pytest.mark.failure
@pytest.mark.slow
@ENGINES
def test_s3_outage_during_backfill_recovers_or_rerun_completes(prefect_harness, world, tmp_path, monkeypatch,
                                                              engine):
    from flows.reanalysis import run_reanalysis
    from latentda.config import load_config

    bucket = f"{BUCKET_PREFIX}-outage"
    days = [f"2005-01-{i:02d}" for i in range(1, 7)]
    with MotoServer() as moto, PausableProxy(moto.port) as proxy:
        make_bucket(moto.endpoint_url, bucket)
        for k, v in s3_env(proxy.endpoint_url).items():  # the system reaches S3 only through the proxy
            monkeypatch.setenv(k, v)
        url = f"s3://{bucket}/archive.{engine}"
        direct = {"endpoint_url": moto.endpoint_url}  # the test watches the bucket past the proxy
        cfg_path = world.write_config(
            tmp_path / "run", archive={"url": url, "start": days[0], "end": days[-1], "engine": engine},
            backfill={"start": days[0], "end": days[-1]}, catalog={"truth": None},
            assimilation={"block_days": 1},
            cluster={"profile": "local", "n_workers": 2, "threads_per_worker": 1, "options": {"processes": False}})
        cfg = load_config(cfg_path)
        events: dict = {}

        def outage():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                if len(days_done(url, direct)) >= 1:
                    proxy.pause()
                    events["down"] = list(days_done(url, direct))
                    events["connections_cut"] = proxy.resets
                    time.sleep(4.0)
                    proxy.resume()
                    events["up"] = True
                    return
                time.sleep(0.1)

        run_while(outage, cfg_path, events, join_s=10)
        if proxy.paused:
            proxy.resume()
        assert "down" in events and events.get("up"), events
        assert len(events["down"]) < len(days), "the outage came after the last day"
        lib.validate_archive(url, direct)  # nothing marked done is incomplete or wrong
        if days_done(url, direct) != days:
            summary = run_reanalysis(cfg_path, progress=False, evaluate_skill=False)
            assert not summary["failed"], summary["failed"]
        assert days_done(url, direct) == days, events
        events["outcome"] = "recovered by retries" if "first" in events else "failed loudly, rerun completed"
        print(f"S3 outage: {events.get('connections_cut')} connection(s) cut while {len(events['down'])} of "
              f"{len(days)} days were done; {events['outcome']}; first error: {events.get('first_error')}")

        ref = str(tmp_path / "reference.zarr")
        library_reference(cfg, days, ref, world.obs)
        assert_same_archive(url, ref, so_a=direct)
        if engine == "zarr":  # the chunks on S3 are the uninterrupted run's bytes
            objects = {k.split("/", 1)[1]: b for k, b in list_objects(moto.endpoint_url, bucket,
                                                                      "archive.zarr/").items()
                       if not k.endswith("zarr.json")}
            assert objects == chunk_files(ref)


# ---------------------------------------------------------------------------------- fuzzed observations
def _fuzz_strategies():
    from hypothesis import strategies as st

    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                       st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, 1e-300]),
                       st.floats(-90, 90), st.floats(-720, 720))
    junk = st.one_of(st.text(max_size=4), st.none(), st.booleans(), st.integers(-10**20, 10**20))
    return st, floats, junk


def _fuzz_table(draw, variables, day):
    st, floats, junk = _fuzz_strategies()
    n = draw(st.integers(0, 12))
    var_choices = [*variables, "not_a_variable", ""]
    rows = []
    for _ in range(n):
        rows.append({
            "time": draw(st.sampled_from([day, day, day, "2005-01-03", "not a date", None])),
            "station_id": draw(st.sampled_from(["s1", "s2", "s3"])),
            "lat": draw(floats), "lon": draw(floats),
            "variable": draw(st.sampled_from(var_choices)),
            "value": draw(st.one_of(floats, st.floats(200, 300))),
            "error": draw(st.one_of(st.sampled_from([1.0, 0.5, 0.0, -1.0, np.nan, np.inf, 1e300]), floats)),
        })
    df = pd.DataFrame(rows, columns=["time", "station_id", "lat", "lon", "variable", "value", "error"])
    if n and draw(st.booleans()):  # duplicate rows
        df = pd.concat([df, df.sample(n=draw(st.integers(1, n)), replace=True, random_state=0)],
                       ignore_index=True)
    if n and draw(st.booleans()):  # a column of the wrong type
        col = draw(st.sampled_from(["lat", "lon", "value", "error"]))
        df[col] = df[col].astype(object)
        df.loc[df.index[0], col] = draw(junk)
    if draw(st.integers(0, 9)) == 0:  # a missing required column
        df = df.drop(columns=[draw(st.sampled_from(["lat", "lon", "value"]))])
    return df


@pytest.mark.failure
@pytest.mark.slow
def test_fuzzed_observation_tables_get_qc_reasons_or_clear_errors(tiny_prior_path, tmp_path):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    import latentda
    from latentda.obs.schema import QC_REASONS

    _, prior = tiny_prior_path
    day = "2005-01-02"
    url = str(tmp_path / "fuzz.zarr")
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-03", 2, 0, list(prior.variables))
    lib.create_archive(url, spec, {"config_hash": "fuzz", "model_checksum": prior.checksum()})
    outcomes = {"analysed": 0, "refused": 0}

    @st.composite
    def tables(draw):
        return _fuzz_table(draw, list(prior.variables), day)

    def explicit_cases() -> list[pd.DataFrame]:
        """One table per failure kind (hypothesis then mixes them at random)."""
        v = list(prior.variables)
        base = pd.DataFrame({"time": [day] * 4, "station_id": ["a", "b", "c", "d"], "lat": [10.0, -20.0, 45.0, 0.0],
                             "lon": [0.0, 90.0, 180.0, 359.0], "variable": [v[0], v[0], v[-1], v[-1]],
                             "value": [280.0, 290.0, 5.0, -3.0], "error": [1.0, 1.0, 1.5, 1.5]})
        cases = []
        for col, val in [("value", np.nan), ("value", np.inf), ("value", 1e300), ("value", -1e30),
                         ("lat", 200.0), ("lat", np.nan), ("lon", np.inf), ("error", 0.0), ("error", -1.0),
                         ("error", 1e300), ("variable", "sea_ice")]:
            c = base.copy()
            c.loc[0, col] = val
            cases.append(c)
        cases.append(pd.concat([base, base.iloc[:2]], ignore_index=True))  # duplicate rows
        c = base.copy()
        c["value"] = c["value"].astype(object)
        c.loc[1, "value"] = "warm"  # wrong type
        cases.append(c)
        cases.append(base.assign(value=base["value"].astype(str)))  # numbers as strings
        cases.append(base.assign(time="2005-01-03"))  # nothing on this day
        cases.append(base.iloc[:0])  # empty table
        cases.append(base.drop(columns=["value"]))  # a required column missing
        return cases

    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate],  # no shrinking: each example runs an assimilation
              suppress_health_check=list(HealthCheck))
    @given(tables())
    def check(df):
        try:
            ana = latentda.assimilate(prior, df, day, members=2, seed=0, max_iter=3)
        except (ValueError, TypeError, KeyError) as err:
            msg = str(err)
            # a clear error names what is wrong: a column, the table or the value
            assert any(w in msg for w in ("column", "observation", "lat", "lon", "value", "error", "time")), msg
            outcomes["refused"] += 1
            return
        qc = json.loads(ana.attrs["latentda:qc"])
        assert set(qc) <= set(QC_REASONS) | {"used"}, qc
        assert sum(qc.values()) == len(df), (qc, len(df))  # every row accounted for: used or a reason
        assert int(ana["obs_used"].values[0]) == qc.get("used", 0)
        for v in prior.variables:
            bad = int((~np.isfinite(ana[v].values)).sum() + (~np.isfinite(ana[f"{v}_spread"].values)).sum())
            assert bad == 0, f"{v}: {bad} non-finite analysis values (qc {qc}); this table must be refused or QC'd"
        lib.write_day(url, ana, {"model_checksum": prior.checksum(), "obs_hash": table_hash(df),
                                 "config_hash": "fuzz"})
        outcomes["analysed"] += 1

    failures = []
    for i, case in enumerate(explicit_cases()):
        try:
            check.hypothesis.inner_test(case)
        except AssertionError as err:
            failures.append(f"explicit case {i}:\n{case}\n-> {err}")
    check()
    assert not failures, "\n\n".join(failures)
    assert outcomes["analysed"] >= 5, outcomes
    report = lib.validate_archive(url)
    assert report["done"] == 1 and days_done(url) == [day]


# ------------------------------------------------------------------------------------------ checkpoints
def _bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    import torch

    out = {}
    p = tmp_path / "garbage.pt"
    p.write_bytes(os.urandom(4096))
    out["garbage"] = p
    p = tmp_path / "truncated.pt"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = p
    p = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, p)
    out["foreign"] = p
    p = tmp_path / "pickle.pt"
    torch.save({"obj": io.StringIO("x")}, p)  # needs full unpickling: weights_only refuses it
    out["pickle"] = p
    p = tmp_path / "bitflip.pt"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    out["bitflip"] = p
    return out


@pytest.mark.failure
@pytest.mark.slow
def test_corrupted_or_foreign_checkpoint_refused_before_any_archive_write(prefect_harness, world, tmp_path,
                                                                           tiny_prior_path):
    import latentda
    from flows.reanalysis import run_reanalysis

    good = Path(tiny_prior_path[0])
    bad = _bad_checkpoints(tmp_path, good)
    for name, p in bad.items():
        with pytest.raises(ValueError) as info:
            latentda.load_prior(str(p), device="cpu")
        assert str(p) in str(info.value), (name, info.value)
    # the flow: refused at init, nothing created (one corrupt and one foreign file)
    for name in ("bitflip", "foreign"):
        d = tmp_path / f"run-{name}"
        cfg_path = world.write_config(d, prior={"path": str(bad[name])}, catalog={"truth": None},
                                      cluster={"n_workers": 1, "options": {"processes": False}})
        with pytest.raises(Exception) as info:
            run_reanalysis(cfg_path, progress=False, evaluate_skill=False)
        assert str(bad[name]) in str(info.value) or "checkpoint" in str(info.value), info.value
        assert not (d / "archive.zarr").exists(), f"{name}: an archive was written"
