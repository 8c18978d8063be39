"""Flows on Dask (Prefect test harness): backfill = library loop byte for byte, resume after a partial or failed
run, no work on a finished range, daily, train (ingest through the catalog), evaluate artifact, output catalog."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentda import archive as lib
from latentda.config import load_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: In-process Dask workers (threads): cheap to start and monkeypatch reaches the task code.
INPROC = {"profile": "local", "n_workers": 2, "threads_per_worker": 1, "options": {"processes": False}}


def _assimilation_runs() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="assimilate-")),
                                     limit=200)


def _files(url: str, skip_meta: bool = True) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(url):
        for f in files:
            if skip_meta and f == "zarr.json":
                continue
            p = os.path.join(root, f)
            out[os.path.relpath(p, url)] = Path(p).read_bytes()
    return out


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, world):
    """The reanalysis flow over 2005-01-01..05 on a LocalCluster of 2 worker processes (blocks of 3 days)."""
    from flows.reanalysis import run_reanalysis

    d = tmp_path_factory.mktemp("backfill")
    cfg_path = world.write_config(d)
    summary = run_reanalysis(cfg_path, "2005-01-01", "2005-01-05", progress=False)
    return cfg_path, summary


@pytest.mark.slow
def test_backfill_two_workers_writes_same_bytes_as_library_loop(backfilled, world, tmp_path):
    import dataclasses

    import latentda
    from latentda import backfill

    cfg_path, summary = backfilled
    cfg = load_config(cfg_path)
    assert summary["days_written"] == 5 and summary["blocks"] == 2 and not summary["failed"]
    assert summary["written"] == [f"2005-01-0{i}" for i in range(1, 6)]
    assert summary["fit"]["fit_after"] < summary["fit"]["fit_before"]
    assert set(summary["truth"]) == set(cfg.variables)

    # the plain library loop over the same days, in this process
    prior = latentda.load_prior(cfg.prior_path, device="cpu")
    url2 = str(tmp_path / "library.zarr")
    spec = lib.archive_spec(prior, cfg.archive.start, cfg.archive.end, cfg.assimilation.members,
                            cfg.members_to_keep, cfg.variables)
    lib.create_archive(url2, spec, dict(backfill.archive_provenance(cfg), model_checksum=prior.checksum()))
    settings = dataclasses.replace(backfill.DaySettings.from_config(cfg), url=url2)
    backfill.assimilate_days(prior, world.obs, summary["written"], settings)
    a, b = lib.open_archive(cfg.archive_url), lib.open_archive(url2)
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for v in a.data_vars:
        assert a[v].values.tobytes() == b[v].values.tobytes(), v
    fa, fb = _files(cfg.archive_url), _files(url2)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)  # every chunk file, byte for byte


@pytest.mark.slow
def test_rerun_of_finished_range_assimilates_nothing(backfilled):
    from flows.reanalysis import run_reanalysis

    cfg_path, _ = backfilled
    cfg = load_config(cfg_path)
    before_runs = len(_assimilation_runs())
    before_files = _files(cfg.archive_url)
    summary = run_reanalysis(cfg_path, "2005-01-01", "2005-01-05", progress=False, evaluate_skill=False,
                             overrides={"cluster": INPROC})
    assert summary["days_todo"] == 0 and summary["days_written"] == 0 and summary["blocks"] == 0
    assert len(_assimilation_runs()) == before_runs  # no assimilation task ran
    assert _files(cfg.archive_url) == before_files


@pytest.mark.slow
def test_output_catalog_gives_the_archive_lazily(backfilled):
    import dask.array as dsa
    import intake

    cfg_path, summary = backfilled
    cfg = load_config(cfg_path)
    assert summary["catalog"] == cfg.output_catalog
    cat = intake.open_catalog(cfg.output_catalog)
    ds = cat[cfg.archive.name].to_dask()
    v = cfg.variables[0]
    assert isinstance(ds[v].data, dsa.Array)
    assert ds.sizes["time"] == 10 and int(ds["done"].sum()) == 5
    ref = lib.open_archive(cfg.archive_url)
    np.testing.assert_array_equal(ds[v].values, ref[v].values)
    import yaml

    entry = yaml.safe_load(Path(cfg.output_catalog).read_text())["sources"][cfg.archive.name]
    assert entry["driver"] == "zarr" and entry["metadata"]["config_hash"] == cfg.hash
    assert entry["args"]["urlpath"].startswith("{{ CATALOG_DIR }}/")  # relocatable with its catalog


@pytest.mark.slow
def test_failed_block_then_rerun_completes_only_missing_days(tmp_path, world, monkeypatch):
    from flows.reanalysis import run_reanalysis
    from latentda import backfill

    cfg_path = world.write_config(tmp_path, cluster=INPROC, assimilation={"block_days": 2})
    cfg = load_config(cfg_path)
    # 1. a run over only part of the range
    s1 = run_reanalysis(cfg_path, "2005-01-01", "2005-01-03", progress=False, evaluate_skill=False)
    assert s1["written"] == ["2005-01-01", "2005-01-02", "2005-01-03"]
    # 2. a run over more days in which one day fails (day 05 raises; the other days are written)
    real = backfill.assimilate_day

    def flaky(prior, obs, day, *a, **k):
        if pd.Timestamp(day).normalize() == pd.Timestamp("2005-01-05"):
            raise RuntimeError("injected failure on 2005-01-05")
        return real(prior, obs, day, *a, **k)

    monkeypatch.setattr(backfill, "assimilate_day", flaky)
    with pytest.raises(RuntimeError, match="1 of 5 day.*2005-01-05: RuntimeError: injected failure"):
        run_reanalysis(cfg_path, "2005-01-01", "2005-01-08", progress=False, evaluate_skill=False)
    monkeypatch.setattr(backfill, "assimilate_day", real)
    assert [str(d.date()) for d in lib.missing_days(cfg.archive_url, "2005-01-01", "2005-01-08")] == ["2005-01-05"]
    lib.validate_archive(cfg.archive_url)
    # 3. the rerun does exactly the missing day, in one block
    n = len(_assimilation_runs())
    s3 = run_reanalysis(cfg_path, "2005-01-01", "2005-01-08", progress=False, evaluate_skill=False)
    assert s3["written"] == ["2005-01-05"] and s3["blocks"] == 1
    assert len(_assimilation_runs()) == n + 1
    assert lib.missing_days(cfg.archive_url, "2005-01-01", "2005-01-08") == []


@pytest.mark.slow
def test_archive_refused_while_the_cluster_starts_leaves_no_worker(tmp_path, world, tiny_prior_path, monkeypatch):
    """The cluster starts in a thread of its own while the flow checks the archive: a mismatching archive fails the
    run, and the worker processes that were starting (here: late) end with it."""
    import time

    import psutil

    from flows import reanalysis
    from flows.reanalysis import run_reanalysis

    real = reanalysis.warm_workers
    monkeypatch.setattr(reanalysis, "warm_workers", lambda cfg: (time.sleep(2), real(cfg))[1])
    cfg_path = world.write_config(tmp_path)  # two worker processes
    cfg = load_config(cfg_path)
    lib.create_archive(cfg.archive_url, lib.archive_spec(tiny_prior_path[1], "2005-01-01", "2005-01-04", members=4))
    with pytest.raises(lib.ArchiveMismatchError, match="period"):
        run_reanalysis(cfg_path, progress=False, evaluate_skill=False)
    time.sleep(3)  # a cluster started after the run ended would be up by now
    servers = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
    assert servers  # the workers are forks of it (flows.runners.start_worker_forkserver)
    workers = [w for p in servers for w in p.children() if w.status() != psutil.STATUS_ZOMBIE]
    assert workers == [], workers


@pytest.mark.slow
def test_daily_writes_one_day_then_skips(tmp_path, world):
    from flows.daily import run_daily

    from latentda.backfill import holdout_for, observations_for_day
    from latentda.report import evaluate_archive

    cfg_path = world.write_config(tmp_path, cluster=INPROC, evaluation={"holdout_fraction": 0.3})
    cfg = load_config(cfg_path)
    out = run_daily(cfg_path, "2005-01-07")
    assert out["written"] == ["2005-01-07"]
    assert lib.done_days(cfg.archive_url) == [pd.Timestamp("2005-01-07")]
    # held-out stations were not assimilated; the evaluation scores the analysis at them
    held = holdout_for(cfg, world.obs)
    day_obs = observations_for_day(world.obs, "2005-01-07")
    used = int(lib.open_archive(cfg.archive_url).obs_used.sel(time="2005-01-07"))
    assert held and used == int((~day_obs.station_id.isin(held)).sum())
    ev = evaluate_archive(cfg, "2005-01-07", "2005-01-07", observations=world.obs)
    assert ev["days"] == 1 and set(ev["stations"]) == set(cfg.variables)
    assert all(r["n"] == int(day_obs.station_id.isin(held).sum()) // len(cfg.variables)
               for r in ev["stations"].values())
    assert run_daily(cfg_path, "2005-01-07")["written"] == []
    with pytest.raises(ValueError, match="outside the archive period"):
        run_daily(cfg_path, "2006-01-01")


@pytest.mark.slow
def test_train_flow_ingests_through_catalog_and_reuses(tmp_path, world):
    from flows.train import run_train

    prior_path = str(tmp_path / "work" / "prior.pt")
    cfg_path = world.write_config(tmp_path, cluster=INPROC, prior={"path": prior_path})
    cfg = load_config(cfg_path)
    out = run_train(cfg_path, progress=False)
    assert out["trained"] and Path(prior_path).exists() and not out["gpu"]
    from latentda.training_store import open_training_store

    anoms, clim = open_training_store(cfg.training_store)
    assert anoms.sizes["time"] == 366 and str(anoms.time.values[0])[:10] == "2004-01-01"
    assert set(cfg.variables) <= set(anoms.data_vars) and clim.attrs["variables"] == cfg.variables
    assert abs(float(anoms[cfg.variables[0]].mean())) < 0.1
    mtime = os.stat(prior_path).st_mtime_ns
    again = run_train(cfg_path, progress=False)  # cache hit (key: inputs + config hash + latentda version)
    assert again["checksum"] == out["checksum"] and os.stat(prior_path).st_mtime_ns == mtime
    os.remove(prior_path)  # a deleted checkpoint is retrained, not served from the cache
    # ... here on workers that advertise a GPU resource, the training task annotated to need one
    third = run_train(cfg_path, overrides={"cluster": {"gpu": True}}, progress=False)
    assert third["trained"] and third["gpu"] and Path(prior_path).exists()


@pytest.mark.slow
def test_evaluate_flow_publishes_markdown_artifact_with_quicklook(backfilled):
    from prefect.client.orchestration import get_client

    from flows.evaluate import run_evaluate

    cfg_path, _ = backfilled
    out = run_evaluate(cfg_path, overrides={"cluster": INPROC})
    assert out["evaluation"]["days"] == 5
    png = out["quicklook"]
    assert png and Path(png).read_bytes()[:4] == b"\x89PNG"
    assert "| variable |" in out["markdown"] and "file://" in out["markdown"]
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        art = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[out["artifact_key"]])))
    assert art and art[0].type == "markdown" and "rmse" in art[0].data and ".png" in art[0].data
    # the report also lives in the workdir (the artifact of a temporary server goes away with it), beside the PNG
    report = Path(out["report"])
    assert report.parent.name == "reports" and report.suffix == ".md"
    text = report.read_text()
    assert "| variable |" in text and f"(../quicklooks/{Path(png).name})" in text
    assert (report.parent / "../quicklooks" / Path(png).name).resolve() == Path(png).resolve()


def test_task_runner_factory_dispatch():
    from prefect_dask import DaskTaskRunner

    from flows.runners import task_runner_from_config

    r = task_runner_from_config({"profile": "local", "n_workers": 3, "threads_per_worker": 1, "gpu": False})
    assert isinstance(r, DaskTaskRunner) and r.cluster_kwargs["n_workers"] == 3
    import dask

    # local workers keep glibc's malloc trimming (the nanny's 64 KiB threshold halves torch's speed)
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") is None
    assert "resources" not in r.cluster_kwargs
    r = task_runner_from_config({"profile": "local", "gpu": True, "options": {"memory_limit": "1GiB"}})
    assert r.cluster_kwargs["resources"] == {"GPU": 1} and r.cluster_kwargs["memory_limit"] == "1GiB"
    r = task_runner_from_config({"profile": "address", "address": "tcp://127.0.0.1:8786"})
    assert r.address == "tcp://127.0.0.1:8786"
    with pytest.raises(Exception, match="nope"):
        task_runner_from_config({"profile": "nope"})


def test_split_blocks():
    from tasks.assimilate import split_blocks

    days = [f"d{i}" for i in range(31)]
    blocks = split_blocks(days, None, 2)
    assert sum(blocks, []) == days and len(blocks) == 1  # 16 days per worker, at least 32
    blocks = split_blocks(days * 3, None, 2)
    assert sum(blocks, []) == days * 3 and [len(b) for b in blocks] == [32, 32, 29]
    assert split_blocks(days[:5], 3, 2) == [days[:3], days[3:5]]
    assert split_blocks([], None, 2) == []
