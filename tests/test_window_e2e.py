"""End to end with a window prior (issue 9, "must show"): the daily flow writes day d as preliminary, the observations
of d + 1 arrive, the next daily run upgrades d to final (the same bytes as the library loop with all observations),
a further run changes nothing; a kill -9 in the middle of the upgrade loses nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from latentda import archive as lib
from latentda import feedback as fbk
from latentda.config import load_config
from latentda.obs.window import row_days, window_observation_hash
from test_failures import chunk_files, library_reference

REPO = Path(__file__).resolve().parents[1]
INPROC = {"profile": "local", "n_workers": 2, "threads_per_worker": 1, "options": {"processes": False}}
D0, D1, D2 = (pd.Timestamp(f"2005-01-0{i}") for i in (5, 6, 7))  # d − 1, d, d + 1


@pytest.fixture(scope="module")
def window_run(world, tmp_path_factory):
    """A run config with a window prior (k = 1, on the world's tiny prior) and its own observation catalog, whose
    table ``publish(last_day)`` replaces by the world's rows up to ``last_day`` (observations arriving)."""
    import latentda
    from latentda.prior import add_window

    root = tmp_path_factory.mktemp("window_run")
    prior = add_window(latentda.load_prior(world.prior_path, device="cpu"),
                       world.fields.sel(time=slice("2004-01-01", "2004-12-31")), 1)
    prior_path = str(root / "window_prior.pt")
    prior.save(prior_path)
    cat = yaml.safe_load(world.catalog.read_text())
    cat["sources"]["fields"]["args"]["urlpath"] = str(world.root / "fields.nc")
    cat["sources"]["obs"]["args"]["urlpath"] = str(root / "obs.parquet")
    catalog = root / "input.yaml"

    def publish(last_day: pd.Timestamp) -> pd.DataFrame:
        obs = world.obs[(row_days(world.obs) <= last_day).to_numpy()].reset_index(drop=True)
        obs.to_parquet(root / "obs.parquet", index=False)  # the same file, the catalog unchanged
        return obs

    catalog.write_text(yaml.safe_dump(cat, sort_keys=False))
    publish(D1)
    cfg_path = world.write_config(root / "run", catalog={"path": str(catalog)}, prior={"path": prior_path},
                                  cluster=INPROC)
    return cfg_path, publish


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_daily_flow_writes_preliminary_then_upgrades_to_final_then_does_nothing(window_run, tmp_path):
    from flows.daily import run_daily

    cfg_path, publish = window_run
    cfg = load_config(cfg_path)
    url = cfg.archive_url
    out = run_daily(cfg_path, str(D1.date()))  # the record ends on d: d + 1 is not observed yet
    assert out["written"] == [str(D0.date()), str(D1.date())]
    st = lib.day_states(url, None, D0, D1)
    assert list(st["status"]) == [lib.FINAL, lib.PRELIMINARY]
    assert int(lib.open_archive(url)[lib.WINDOW_OBSERVED].sel(time=D1)) == 2

    obs = publish(D2)  # the observations of d + 1 arrive
    out = run_daily(cfg_path, str(D2.date()))
    assert out["written"] == [str(D1.date()), str(D2.date())]  # d upgraded, d + 1 written (preliminary)
    st = lib.day_states(url, None, D0, D2)
    assert list(st["status"]) == [lib.FINAL, lib.FINAL, lib.PRELIMINARY]
    ds = lib.open_archive(url)
    assert int(ds[lib.WINDOW_OBSERVED].sel(time=D1)) == 3
    assert lib.hexdigest(ds.obs_sha256.sel(time=D1).values) == window_observation_hash(obs, D1, 1)
    ref = str(tmp_path / "ref.zarr")
    library_reference(cfg, [D1], ref, obs)
    for v in list(cfg.variables) + [f"{v}_spread" for v in cfg.variables]:
        np.testing.assert_array_equal(ds[v].sel(time=D1).values, lib.open_archive(ref)[v].sel(time=D1).values)
    assert Path(fbk.day_url(url, D1)).read_bytes() == Path(fbk.day_url(ref, D1)).read_bytes()

    before = chunk_files(url)
    assert run_daily(cfg_path, str(D2.date()))["written"] == []  # d + 2 has not arrived: nothing to upgrade
    assert chunk_files(url) == before


KILLED_UPGRADE = """
import os, signal, sys
import pandas as pd
import latentda
from latentda import archive, backfill
from latentda.config import load_config

cfg = load_config(sys.argv[1])
prior = latentda.load_prior(sys.argv[2], device="cpu")
kill_at = archive.open_archive(cfg.archive_url).indexes["time"].get_loc(pd.Timestamp(sys.argv[4])) \\
    if len(sys.argv) > 4 else None
real = archive._write_done

def write_done(url, so, i, value=1):
    if value == 1 and i == kill_at:  # the upgraded day's data is rewritten, its done flag not yet set again
        os.kill(os.getpid(), signal.SIGKILL)
    real(url, so, i, value)

archive._write_done = write_done
backfill.backfill(cfg, pd.date_range("2005-01-05", "2005-01-07"), prior=prior,
                  observations=pd.read_parquet(sys.argv[3]))
"""


@pytest.mark.slow
@pytest.mark.failure
def test_kill9_during_the_upgrade_loses_nothing(window_run, world, tmp_path):
    cfg_path, _ = window_run
    run = tmp_path / "kill"
    cfg_path = world.write_config(run, **{k: v for k, v in yaml.safe_load(Path(cfg_path).read_text()).items()
                                          if k in ("catalog", "prior", "cluster")})
    cfg = load_config(cfg_path)
    url = cfg.archive_url
    early = world.obs[(row_days(world.obs) <= D1).to_numpy()].reset_index(drop=True)
    full = world.obs[(row_days(world.obs) <= D2).to_numpy()].reset_index(drop=True)
    library_reference(cfg, [D0, D1], url, early)  # d written preliminary
    assert list(lib.day_states(url, None, D0, D1)["status"]) == [lib.FINAL, lib.PRELIMINARY]
    d0_before = lib.open_archive(url)["air_temperature"].sel(time=D0).values.copy()
    full.to_parquet(run / "full.parquet", index=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", KILLED_UPGRADE, cfg_path, cfg.prior_path, str(run / "full.parquet")]
    r = subprocess.run(cmd + [str(D1.date())], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    st = lib.day_states(url, None, D0, D2)
    # d is "not done" (its half-upgraded slot is invisible), d − 1 untouched, d + 1 not started
    assert list(st["done"]) == [True, False, False]
    np.testing.assert_array_equal(lib.open_archive(url)["air_temperature"].sel(time=D0).values, d0_before)
    assert set(fbk.read_feedback(url)["day"]) == {D0}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # the next run
    assert r.returncode == 0, r.stderr[-3000:]
    st = lib.day_states(url, None, D0, D2)
    assert list(st["done"]) == [True, True, True]
    assert list(st["status"]) == [lib.FINAL, lib.FINAL, lib.PRELIMINARY]
    ref = str(tmp_path / "ref.zarr")
    library_reference(cfg, [D0, D1, D2], ref, full)
    a, b = lib.open_archive(url), lib.open_archive(ref)
    for v in list(cfg.variables) + [f"{v}_spread" for v in cfg.variables] + ["obs_sha256", lib.WINDOW_OBSERVED]:
        np.testing.assert_array_equal(a[v].sel(time=[D1, D2]).values, b[v].sel(time=[D1, D2]).values)
    for d in (D1, D2):
        assert Path(fbk.day_url(url, d)).read_bytes() == Path(fbk.day_url(ref, d)).read_bytes()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_window_backfill_on_two_worker_processes_writes_the_library_loops_bytes(window_run, world, tmp_path):
    """Days stay independent with a window prior: the reanalysis flow on a LocalCluster of 2 worker processes
    writes every chunk and feedback file of d − 1 .. d + 1 as the plain library loop does."""
    from flows.reanalysis import run_reanalysis

    cfg_path, publish = window_run
    obs = publish(D2)
    run = tmp_path / "two_workers"
    cfg_path = world.write_config(run, **{k: v for k, v in yaml.safe_load(Path(cfg_path).read_text()).items()
                                          if k in ("catalog", "prior")})  # the default cluster: 2 processes
    cfg = load_config(cfg_path)
    assert cfg.cluster.options.get("processes", True) and worker_count(cfg) == 2
    summary = run_reanalysis(cfg_path, str(D0.date()), str(D2.date()), progress=False, evaluate_skill=False)
    assert summary["written"] == [str(d.date()) for d in (D0, D1, D2)] and not summary["failed"]
    ref = str(tmp_path / "ref.zarr")
    library_reference(cfg, [D0, D1, D2], ref, obs)
    a, b = chunk_files(cfg.archive_url), chunk_files(ref)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert list(lib.day_states(cfg.archive_url, None, D0, D2)["status"]) == [lib.FINAL, lib.FINAL,
                                                                               lib.PRELIMINARY]
    for d in (D0, D1, D2):
        assert Path(fbk.day_url(cfg.archive_url, d)).read_bytes() == Path(fbk.day_url(ref, d)).read_bytes()


def worker_count(cfg) -> int:
    from flows.runners import worker_size

    return worker_size(cfg.cluster).n_workers


def test_observation_cache_follows_the_table_file(tmp_path):
    """The per-process table cache of the flows reads the table again when its file changes, the catalog not."""
    from tasks.assimilate import read_observations

    table = pd.DataFrame({"time": pd.to_datetime(["2005-01-01"] * 3), "lat": [0.0, 1.0, 2.0], "lon": 0.0,
                          "value": 1.0, "error": 1.0, "variable": "air_temperature"})
    table.to_parquet(tmp_path / "obs.parquet", index=False)
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(yaml.safe_dump({"metadata": {"version": 1}, "sources": {"obs": {
        "driver": "tasks.intake_sources.ParquetTableSource",
        "args": {"urlpath": "{{ CATALOG_DIR }}/obs.parquet"}}}}))
    assert len(read_observations(str(catalog), "obs")) == 3
    stamp = catalog.stat().st_mtime_ns
    pd.concat([table, table.assign(time=pd.Timestamp("2005-01-02"))]).to_parquet(tmp_path / "obs.parquet",
                                                                                 index=False)
    assert catalog.stat().st_mtime_ns == stamp
    assert len(read_observations(str(catalog), "obs")) == 6
