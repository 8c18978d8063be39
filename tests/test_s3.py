"""Object storage: archive, observations, training store and prior checkpoint on S3 (moto_server on 127.0.0.1).

The slow test backfills into ``s3://`` from 2 Dask worker processes with the prior and the observations on S3
too, reads the result back through the output catalog, and greps everything the system wrote or logged (output
catalog, every object in the bucket, captured logs, the Prefect API's logs and flow-run parameters, result
storage) for the secret access key.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from latentda import storage
from servers import TEST_KEY, TEST_SECRET, MotoServer, list_objects, make_bucket, s3_env

BUCKET = "latentda-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; stopped after the module."""
    with MotoServer() as m:
        make_bucket(m.endpoint_url, BUCKET)
        yield m


@pytest.fixture
def aws_env(s3, monkeypatch):
    """The standard AWS variables for the moto server (inherited by Dask worker processes started later)."""
    for k, v in s3_env(s3.endpoint_url).items():
        monkeypatch.setenv(k, v)
    return s3


def test_storage_options_or_environment_reach_s3(s3, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    so = {"key": TEST_KEY, "secret": TEST_SECRET, "endpoint_url": s3.endpoint_url,
          "client_kwargs": {"region_name": "us-east-1"}}
    with storage.open(f"s3://{BUCKET}/opts/blob", "wb", so) as f:
        f.write(b"via storage_options")
    # the same object through the environment only
    for k, v in s3_env(s3.endpoint_url).items():
        monkeypatch.setenv(k, v)
    with storage.open(f"s3://{BUCKET}/opts/blob", "rb") as f:
        assert f.read() == b"via storage_options"
    assert storage.exists(f"s3://{BUCKET}/opts/blob")
    assert not storage.exists(f"s3://{BUCKET}/opts/nothing")


def test_training_store_and_prior_checkpoint_on_s3(aws_env, tiny_prior_path):
    import latentda
    from latentda import training_store as lib
    from latentda.testing import synthetic_fields

    fields = synthetic_fields(ntime=40, nlat=8, nlon=16, variables=["air_temperature"], seed=3)
    url = f"s3://{BUCKET}/work/training.zarr"
    info = lib.write_training_store(fields, ["air_temperature"], url)
    assert info["days"] == 40
    anoms, _ = lib.open_training_store(url)
    local = fields["air_temperature"].values
    assert anoms["air_temperature"].shape == local.shape and np.isfinite(anoms["air_temperature"].values).all()
    back = lib.training_fields(url)
    np.testing.assert_allclose(back["air_temperature"].values, local, rtol=1e-5, atol=1e-3)

    _, prior = tiny_prior_path
    prior.save(f"s3://{BUCKET}/work/prior.pt")
    loaded = latentda.load_prior(f"s3://{BUCKET}/work/prior.pt", device="cpu")
    assert loaded.checksum() == prior.checksum()


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def _api_texts() -> list[str]:
    """Every log message and every flow-run parameter set the Prefect API holds (the session's harness)."""
    from prefect.client.orchestration import get_client

    texts = []
    with get_client(sync_client=True) as client:
        for log in client.read_logs(limit=200, offset=0) or []:
            texts.append(log.message)
        offset = 200
        while True:
            more = client.read_logs(limit=200, offset=offset) or []
            if not more:
                break
            texts += [log.message for log in more]
            offset += 200
        for fr in client.read_flow_runs(limit=200):
            texts.append(repr(fr.parameters))
    return texts


@pytest.mark.slow
def test_backfill_into_s3_from_two_workers_reads_back_and_leaks_nothing(prefect_harness, aws_env, world, tmp_path,
                                                                         tiny_prior_path, caplog):
    import intake

    from flows.reanalysis import run_reanalysis
    from latentda import archive as lib
    from latentda.config import load_config

    s3 = aws_env
    # inputs on S3: the prior checkpoint and the observation table (catalog entry with an s3:// urlpath)
    _, prior = tiny_prior_path
    prior.save(f"s3://{BUCKET}/inputs/prior.pt")
    with storage.open(f"s3://{BUCKET}/inputs/obs.parquet", "wb") as f:
        world.obs.to_parquet(f, index=False)
    catalog = tmp_path / "inputs.yaml"
    catalog.write_text(yaml.safe_dump({"metadata": {"version": 1}, "sources": {
        "obs": {"driver": "tasks.intake_sources.ParquetTableSource",
                "args": {"urlpath": f"s3://{BUCKET}/inputs/obs.parquet", "storage_options": {}}},
        "fields": {"driver": "netcdf", "args": {"urlpath": str(world.root / "fields.nc"),
                                                "xarray_kwargs": {"engine": "netcdf4"}}}}}))
    url = f"s3://{BUCKET}/reanalysis/archive.zarr"
    # the archive's storage_options carry the secret explicitly (the worst case for leaks); the workers also
    # have the AWS_* environment (the recommended way), which the output catalog relies on for reading
    cfg_path = world.write_config(
        tmp_path / "run",
        catalog={"path": str(catalog), "fields": "fields", "observations": "obs", "truth": None},
        prior={"path": f"s3://{BUCKET}/inputs/prior.pt"},
        archive={"url": url, "start": "2005-01-01", "end": "2005-01-06",
                 "storage_options": {"key": TEST_KEY, "secret": TEST_SECRET, "endpoint_url": s3.endpoint_url}},
        backfill={"start": "2005-01-01", "end": "2005-01-04"},
        assimilation={"block_days": 2},
        cluster={"profile": "local", "n_workers": 2, "threads_per_worker": 1})
    with caplog.at_level(logging.INFO):
        summary = run_reanalysis(cfg_path, progress=False, evaluate_skill=False)
    assert summary["days_written"] == 4 and summary["blocks"] == 2 and not summary["failed"]
    cfg = load_config(cfg_path)

    # read back through the output catalog (no secrets in it: credentials come from the environment)
    cat = intake.open_catalog(cfg.output_catalog)
    ds = cat[cfg.archive.name].to_dask()
    assert ds.sizes["time"] == 6
    assert ds["done"].values.tolist() == [1, 1, 1, 1, 0, 0]
    ref = lib.open_archive(url, {"endpoint_url": s3.endpoint_url})
    v = cfg.variables[0]
    np.testing.assert_array_equal(ds[v].values, ref[v].values)
    assert np.isfinite(ds[v].values[:4]).all()
    lib.validate_archive(url)
    # the per-observation feedback went to S3 beside the archive and reads back through the catalog
    fb = cat[f"{cfg.archive.name}_feedback"].read()
    assert sorted(set(fb["day"].dt.strftime("%Y-%m-%d"))) == [f"2005-01-0{i}" for i in range(1, 5)]
    assert len(fb) == sum(int((pd.to_datetime(world.obs["time"]).dt.day == i).sum()) for i in range(1, 5))
    fb_keys = [k for k in list_objects(s3.endpoint_url, BUCKET, "reanalysis/archive.zarr.feedback/")]
    assert sorted(fb_keys) == [f"reanalysis/archive.zarr.feedback/day=2005-01-0{i}/part.parquet"
                               for i in range(1, 5)]  # no temporary object left

    # the secret is nowhere the system wrote or logged
    secret = TEST_SECRET.encode()
    catalog_text = Path(cfg.output_catalog).read_text()
    assert TEST_SECRET not in catalog_text and TEST_KEY not in catalog_text
    objects = list_objects(s3.endpoint_url, BUCKET, "reanalysis/")
    assert any(k.endswith("zarr.json") for k in objects)
    leaked = [k for k, b in objects.items() if secret in b or TEST_KEY.encode() in b]
    assert not leaked, leaked
    attrs = yaml.safe_dump(dict(ds.attrs))
    assert TEST_SECRET not in attrs and TEST_KEY not in attrs
    assert TEST_SECRET not in caplog.text and TEST_KEY not in caplog.text
    api = "\n".join(_api_texts())
    assert TEST_SECRET not in api and TEST_KEY not in api
    results = Path(os.environ.get("PREFECT_LOCAL_STORAGE_PATH", tmp_path))
    if results.exists():
        assert not _grep_tree(results, secret)
    assert not _grep_tree(tmp_path, secret) or _grep_tree(tmp_path, secret) == [cfg_path]  # only the user's config


@pytest.mark.parametrize("engine", ["zarr", "icechunk"])
def test_two_processes_creating_the_same_new_archive_on_s3_both_succeed(aws_env, tiny_prior_path, engine):
    """Issue 11 finding 6 on an object store (no rename there): create-if-absent, so neither creator removes the
    other's group; both succeed and the store is complete. Icechunk: the template is the first commit, and the
    second creator's commit conflicts and finds the first one's archive."""
    import multiprocessing as mp

    from latentda import archive as lib
    from test_archive import create_after_barrier

    _, prior = tiny_prior_path
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-03", members=2)
    ctx = mp.get_context("spawn")  # no fork of s3fs's event loop
    for trial in range(3):
        url = f"s3://{BUCKET}/race{trial}.{engine}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=create_after_barrier, args=(url, spec, barrier, results, engine))
                 for _ in range(2)]
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=180) for _ in procs)
        for p in procs:
            p.join(30)
        assert got in (["created", "exists"], ["created", "created"]), f"trial {trial}: {got}"
        ds = lib.open_archive(url)
        assert ds.attrs["latentda:initialised"] == 1 and not ds["done"].values.any()
        assert lib.create_archive(url, spec, engine=engine) == "exists" and lib.engine_at(url) == engine


def test_icechunk_archive_on_s3_block_commit_and_no_secret_in_the_bucket(s3, monkeypatch, tiny_prior_path, world):
    """archive.engine icechunk on S3 (moto): Icechunk's own S3 storage is built from the archive's storage options
    (credentials and endpoint), or from the AWS environment alone; a block written in forks and committed once
    reads back whole; the secret appears in no object of the repository."""
    from latentda import archive as lib
    from latentda import archive_icechunk as ice
    from latentda.backfill import DaySettings, assimilate_days

    _, prior = tiny_prior_path
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    so = {"key": TEST_KEY, "secret": TEST_SECRET, "endpoint_url": s3.endpoint_url}
    url = f"s3://{BUCKET}/rean.icechunk"
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-05", members=4)
    assert lib.create_archive(url, spec, {"config_hash": "c" * 64}, so, engine="icechunk") == "created"
    settings = DaySettings(url=url, members=4, seed=0, options={"max_iter": 10}, storage_options=so)
    session = ice.writable_session(url, so)
    forks = [session.fork() for _ in range(2)]
    for d, fork in zip(["2005-01-02", "2005-01-03"], forks):
        assimilate_days(prior, world.obs, [d], settings, session=fork)
        assert not lib.day_status(url, so).any()  # nothing visible before the commit
    assert ice.commit(url, session, "block", forks)
    for k, v in s3_env(s3.endpoint_url).items():  # a reader with the environment only
        monkeypatch.setenv(k, v)
    assert lib.engine_at(url) == "icechunk"
    assert list(lib.day_status(url).values) == [False, True, True, False, False]
    assert lib.validate_archive(url)["done"] == 2
    assert lib.create_archive(url, spec, engine="icechunk") == "exists"
    objects = list_objects(s3.endpoint_url, BUCKET, "rean.icechunk/")
    assert objects and not any(TEST_SECRET.encode() in b for b in objects.values())
