"""The Icechunk archive engine (latentda.archive_icechunk, ``archive.engine: icechunk``): the same bytes, status and
feedback as the Zarr store; a block of days is one commit that readers see whole or not at all; a crash before the
commit loses only that block and the rerun redoes exactly it; concurrent writers in two processes lose no commit;
the output catalog opens it; a store of the other engine is refused. (kill -9 of the CLI, a Dask worker killed:
tests/test_failures.py, parametrised over both engines.)"""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from latentda import archive as lib
from latentda import archive_icechunk as ice
from latentda.backfill import DaySettings, assimilate_days

OPTS = {"max_iter": 25}
MEMBERS = 4
PERIOD = ("2005-01-01", "2005-01-10")


def _settings(url: str) -> DaySettings:
    return DaySettings(url=url, members=MEMBERS, seed=0, members_to_keep=2, options=OPTS, config_hash="c" * 64)


def _create(url: str, prior, engine: str) -> str:
    spec = lib.archive_spec(prior, *PERIOD, members=MEMBERS, members_to_keep=2)
    return lib.create_archive(url, spec, {"config_hash": "c" * 64, "model_checksum": prior.checksum()},
                              engine=engine)


def _same_data(url_a: str, url_b: str) -> None:
    a, b = lib.open_archive(url_a), lib.open_archive(url_b)
    assert sorted(a.data_vars) == sorted(b.data_vars) and a.sizes == b.sizes
    for v in a.data_vars:
        assert a[v].values.tobytes() == b[v].values.tobytes(), v


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_prior_path, world):
    """The same three days written by the library loop into a Zarr archive and an Icechunk one."""
    _, prior = tiny_prior_path
    root = tmp_path_factory.mktemp("engines")
    urls = {"zarr": str(root / "a.zarr"), "icechunk": str(root / "a.icechunk")}
    for engine, url in urls.items():
        assert _create(url, prior, engine) == "created"
        assert assimilate_days(prior, world.obs, ["2005-01-02", "2005-01-03", "2005-01-04"], _settings(url))
    return urls, prior


def test_icechunk_archive_holds_the_zarr_archives_bytes_status_and_feedback(pair, world):
    from latentda import feedback

    urls, prior = pair
    z, i = urls["zarr"], urls["icechunk"]
    assert lib.engine_at(z) == "zarr" and lib.engine_at(i) == "icechunk"
    _same_data(z, i)
    a, b = lib.open_archive(z), lib.open_archive(i)
    assert set(a.attrs) == set(b.attrs) and a.attrs["latentda:variables"] == b.attrs["latentda:variables"]
    for v in a.variables:  # the same template: CF attributes and encodings
        assert a[v].attrs == b[v].attrs, v
        assert a[v].encoding.get("chunks") == b[v].encoding.get("chunks"), v
    pd.testing.assert_frame_equal(lib.day_states(z), lib.day_states(i))
    assert lib.missing_days(i, *PERIOD) == lib.missing_days(z, *PERIOD)
    assert lib.validate_archive(i)["done"] == 3
    pd.testing.assert_frame_equal(feedback.read_feedback(z), feedback.read_feedback(i))
    # the library loop without a session commits each day on its own (time travel: every commit is a snapshot)
    hist = ice.history(i)
    assert [h["message"] for h in hist[:3]] == ["day 2005-01-04", "day 2005-01-03", "day 2005-01-02"]
    old = lib.open_archive(i, snapshot=hist[2]["id"])  # before day 03 and 04
    assert list(old[lib.DONE].values[1:4]) == [1, 0, 0]
    # the existing archive is checked, not recreated; a rerun of done days skips them
    assert _create(i, prior, "icechunk") == "exists"
    assert assimilate_days(prior, world.obs, ["2005-01-02"], _settings(i), skip_done=True) == []


def test_block_commit_readers_see_the_last_commit_only(tiny_prior_path, world, tmp_path, pair):
    """The block protocol of tasks/assimilate.map_days: one session, a fork per day pickled to a worker and back,
    merged and committed once. Before the commit a reader sees none of the block; a reader that opened before
    keeps its snapshot; after it, every day of the block at once, with the bytes of the Zarr archive."""
    _, prior = tiny_prior_path
    url = str(tmp_path / "b.icechunk")
    _create(url, prior, "icechunk")
    days = ["2005-01-02", "2005-01-03", "2005-01-04"]
    session = ice.writable_session(url)
    forks = []
    for d in days:
        fork = pickle.loads(pickle.dumps(session.fork()))  # to a Dask worker ...
        assert assimilate_days(prior, world.obs, [d], _settings(url), session=fork) == [d]
        forks.append(pickle.loads(pickle.dumps(fork)))  # ... and back
        reader = lib.open_archive(url)  # while the block is being written
        assert not reader[lib.DONE].values.any()
        assert np.isnan(reader[prior.variables[0]].values).all()
    assert lib.missing_days(url, *PERIOD) == list(pd.date_range(*PERIOD))
    before = lib.open_archive(url)
    assert ice.commit(url, session, "block", forks)
    assert lib.missing_days(url, *PERIOD) == [d for d in pd.date_range(*PERIOD) if str(d.date()) not in days]
    assert not before[lib.DONE].values.any()  # an open reader keeps the commit it opened
    _same_data(url, pair[0]["zarr"])
    assert [h["message"] for h in ice.history(url)][:2] == ["block", "create the archive (template, metadata only)"]
    assert ice.commit(url, ice.writable_session(url), "nothing") is None  # no change: no empty commit


def test_crash_before_the_block_commit_loses_only_that_block_and_the_rerun_redoes_it(world, tmp_path, pair,
                                                                                     monkeypatch):
    """tasks.assimilate.map_days (in this process, no Dask client) on an Icechunk run config: the first block
    commits; the second dies before its commit (as under kill -9); the rerun of the range redoes exactly the
    second block's days, and the archive holds the uninterrupted run's bytes."""
    from latentda.config import load_config
    from tasks.assimilate import map_days

    url = str(tmp_path / "run" / "archive.icechunk")
    cfg = load_config(world.write_config(tmp_path / "run", archive={"url": url, "engine": "icechunk",
                                                                    "members_to_keep": 2},
                                         assimilation={"members": MEMBERS, "options": OPTS}))
    from latentda import backfill
    from tasks.archive import load_prior_cached

    backfill.ensure_archive(cfg, load_prior_cached(cfg.prior_path))
    written, failed, _ = map_days(cfg, ["2005-01-02", "2005-01-03"])
    assert written == ["2005-01-02", "2005-01-03"] and not failed

    def killed(*a, **k):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(ice, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        map_days(cfg, ["2005-01-04", "2005-01-05"])
    monkeypatch.undo()
    assert [str(d.date()) for d in lib.done_days(url, *PERIOD)] == ["2005-01-02", "2005-01-03"]
    lib.validate_archive(url)
    written, failed, _ = map_days(cfg, ["2005-01-02", "2005-01-03", "2005-01-04", "2005-01-05"])
    assert sorted(written) == ["2005-01-04", "2005-01-05"] and not failed  # exactly the lost block
    ref = str(tmp_path / "ref.zarr")
    _create(ref, load_prior_cached(cfg.prior_path), "zarr")
    import dataclasses

    settings = dataclasses.replace(DaySettings.from_config(cfg), url=ref, storage_options=None)
    assimilate_days(load_prior_cached(cfg.prior_path), world.obs, ["2005-01-02", "2005-01-03", "2005-01-04",
                                                                   "2005-01-05"], settings)
    a, b = lib.open_archive(url), lib.open_archive(ref)
    for v in a.data_vars:
        assert a[v].values.tobytes() == b[v].values.tobytes(), v


def _write_days_after_barrier(url: str, days: list[str], barrier, results, prior, obs) -> None:
    """Child process: an uncooperative writer committing each day on its own, started at the same instant as
    another."""
    try:
        barrier.wait()
        results.put(assimilate_days(prior, obs, days, _settings(url)))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails the test with it
        results.put(f"{type(err).__name__}: {err}")


def test_two_concurrent_writers_lose_no_commit(tiny_prior_path, world, tmp_path, pair):
    """Two processes write overlapping days of one archive at the same time, each day its own commit: every
    commit lands (rebased on the other writer's), every day is done with the Zarr archive's bytes."""
    import multiprocessing as mp

    _, prior = tiny_prior_path
    url = str(tmp_path / "c.icechunk")
    _create(url, prior, "icechunk")
    plan = [["2005-01-02", "2005-01-03", "2005-01-04"], ["2005-01-04", "2005-01-03", "2005-01-02"]]
    ctx = mp.get_context("spawn")  # Icechunk's runtime threads do not survive a fork
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_write_days_after_barrier, args=(url, days, barrier, results, prior, world.obs))
             for days in plan]
    try:
        for p in procs:
            p.start()
        got = [results.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert sorted(map(str, got)) == sorted(map(str, plan)), got
    assert len(ice.history(url)) == 2 + 6  # initialised + template + one commit per day written, none lost
    _same_data(url, pair[0]["zarr"])


def test_engine_mismatch_refused_and_engine_in_the_run_config(tmp_path, tiny_prior_path, pair, world):
    from latentda.config import config_from_dict, config_hash, load_config

    urls, prior = pair
    with pytest.raises(lib.ArchiveMismatchError, match="Icechunk archive but archive.engine is 'zarr'"):
        _create(urls["icechunk"], prior, "zarr")
    with pytest.raises(lib.ArchiveMismatchError, match="not an Icechunk repository"):
        _create(urls["zarr"], prior, "icechunk")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(lib.ArchiveMismatchError, match="not an Icechunk repository"):
        _create(str(junk), prior, "icechunk")
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="engine"):
        load_config(world.write_config(tmp_path / "bad", archive={"engine": "netcdf"}))
    with pytest.raises(ValueError, match="icechunk takes a local path or an s3:// URL, not gs://"):
        load_config(world.write_config(tmp_path / "gs", archive={"engine": "icechunk", "url": "gs://b/a"}))
    d = world.config(tmp_path / "h", archive={"engine": "icechunk"})
    d["archive"].pop("url")
    assert config_from_dict(d, base_dir=tmp_path).archive_url.endswith("reanalysis.icechunk")
    plain = load_config(world.write_config(tmp_path / "z"))
    assert plain.archive.engine == "zarr"
    dumped = plain.model_dump(mode="json")
    dumped["archive"].pop("engine")
    assert config_hash(plain) == config_hash(dumped)  # the default engine leaves existing hashes alone


def test_output_catalog_opens_the_icechunk_archive(pair, tmp_path):
    import dask.array as dsa
    import intake

    from tasks.catalog import ZarrEntry, register_icechunk_source

    urls, prior = pair
    cat_path = tmp_path / "cats" / "reanalysis.yaml"
    register_icechunk_source(cat_path, ZarrEntry("rean", urls["icechunk"], storage_options={}))
    ds = intake.open_catalog(str(cat_path))["rean"].to_dask()
    v = prior.variables[0]
    assert isinstance(ds[v].data, dsa.Array) and ds[v].data.chunksize[0] == 1
    np.testing.assert_array_equal(ds[v].values, lib.open_archive(urls["zarr"])[v].values)


def test_backfill_into_a_store_of_the_other_engine_refused_before_anything(pair, world, tmp_path, capsys):
    """Preflight (exit 2, one line): the archive at archive.url is an Icechunk repository but the config says zarr;
    nothing is written."""
    from flows.cli import main

    urls, _ = pair
    before = len(ice.history(urls["icechunk"]))
    cfg_path = world.write_config(tmp_path, archive={"url": urls["icechunk"], "engine": "zarr"},
                                  assimilation={"members": MEMBERS})
    assert main(["backfill", "--config", cfg_path, "--no-progress"]) == 2
    assert "not an archive of engine 'zarr' (it is 'icechunk')" in capsys.readouterr().err
    assert len(ice.history(urls["icechunk"])) == before
