"""The Zarr archive (latentda.archive): pre-sized template, one-day region writes, done flags written last,
identical bytes on rerun, refusal of mismatching stores, provenance, output catalog, evaluation and quicklook."""
from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentda import archive as lib
from latentda.backfill import DaySettings, assimilate_days, observations_for_day
from latentda.runtime import table_hash
from latentda.grid import Grid

OPTS = {"max_iter": 25}
MEMBERS = 4


def _zarr_json_bytes(url: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(url):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, url)] = Path(p).read_bytes()
    return out


def _settings(url: str) -> DaySettings:
    return DaySettings(url=url, members=MEMBERS, seed=0, members_to_keep=2, options=OPTS, config_hash="c" * 64)


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_prior_path, world):
    """An archive of 2005-01-01..10 with days 02..04 written by the library loop (2 members kept)."""
    _, prior = tiny_prior_path
    url = str(tmp_path_factory.mktemp("arch") / "a.zarr")
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-10", members=MEMBERS, members_to_keep=2)
    assert lib.create_archive(url, spec, {"config_hash": "c" * 64, "model_checksum": prior.checksum(),
                                          "catalog": {"fields": "fields"}}) == "created"
    days = ["2005-01-02", "2005-01-03", "2005-01-04"]
    out = assimilate_days(prior, world.obs, days, _settings(url))
    assert out == days
    return url, spec, prior


def test_template_is_presized_one_day_chunks_with_cf_and_provenance(written):
    url, spec, prior = written
    ds = lib.open_archive(url)
    assert ds.sizes["time"] == 10 and ds.sizes["member"] == 2
    assert str(ds.time.values[0])[:10] == "2005-01-01" and str(ds.time.values[-1])[:10] == "2005-01-10"
    for name, var in ds.data_vars.items():
        assert "time" in var.dims
        assert var.encoding["chunks"][var.dims.index("time")] == 1, name
        for d in ("lat", "lon", "member", lib.HASH_DIM):
            if d in var.dims:
                assert var.encoding["chunks"][var.dims.index(d)] == ds.sizes[d], (name, d)
    v = spec.variables[0]
    assert ds[v].attrs["units"] and ds[v].attrs["standard_name"] == prior.var_attrs[v]["standard_name"]
    assert "units" in ds[f"{v}_spread"].attrs and ds.lat.attrs["units"] == "degrees_north"
    a = ds.attrs
    for key in ("latentda:version", "latentda:git_sha", "latentda:model_checksum", "latentda:config_hash",
                "latentda:created", "latentda:catalog", "latentda:members"):
        assert key in a, key
    assert a["latentda:model_checksum"] == prior.checksum()
    assert json.loads(a["latentda:catalog"]) == {"fields": "fields"}
    # undone days: no chunk of data written (metadata-only template), fill values read back
    assert not os.path.exists(os.path.join(url, v, "c", "0", "0", "0"))
    assert np.isnan(ds[v].isel(time=0).values).all() and int(ds[lib.DONE].isel(time=0)) == 0


def test_written_days_done_with_per_day_provenance(written, world):
    url, spec, prior = written
    ds = lib.open_archive(url)
    done = ds[lib.DONE].values
    assert list(done) == [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert lib.missing_days(url, "2005-01-01", "2005-01-05") == [pd.Timestamp("2005-01-01"),
                                                                  pd.Timestamp("2005-01-05")]
    assert lib.hexdigest(ds.model_sha256.values[1]) == prior.checksum()
    assert lib.hexdigest(ds.config_sha256.values[1]) == "c" * 64
    obs_day = observations_for_day(world.obs, "2005-01-02")
    assert lib.hexdigest(ds.obs_sha256.values[1]) == table_hash(obs_day)
    assert lib.hexdigest(ds.model_sha256.values[0]) == ""
    assert (ds.obs_used.values[1:4] > 0).all()
    assert np.isfinite(ds[spec.variables[0]].values[1:4]).all()
    rep = lib.validate_archive(url, spec=spec)
    assert rep["done"] == 3 and rep["missing"] == 7 and rep["problems"] == []


def test_rerun_rewrites_identical_bytes_and_crash_before_flag_leaves_day_not_done(written, world, monkeypatch):
    url, spec, prior = written
    before = _zarr_json_bytes(url)
    assimilate_days(prior, world.obs, ["2005-01-03"], _settings(url))
    assert _zarr_json_bytes(url) == before  # every file, metadata and chunks, byte for byte

    # a crash after the data and before the done flag: the day stays "not done"
    def crash(*a, **k):
        raise KeyboardInterrupt("killed before the done flag")

    monkeypatch.setattr(lib, "_write_done", crash)
    with pytest.raises(KeyboardInterrupt):
        assimilate_days(prior, world.obs, ["2005-01-05"], _settings(url))
    monkeypatch.undo()
    assert pd.Timestamp("2005-01-05") in lib.missing_days(url, "2005-01-01", "2005-01-10")
    lib.validate_archive(url)  # a not-done day with data is fine
    # resume: skip_done leaves done days alone and completes the missing one
    w = assimilate_days(prior, world.obs, ["2005-01-04", "2005-01-05"], _settings(url), skip_done=True)
    assert w == ["2005-01-05"]
    assert lib.missing_days(url, "2005-01-05", "2005-01-05") == []


def test_done_flag_without_data_fails_validation(tmp_path, tiny_prior_path):
    _, prior = tiny_prior_path
    url = str(tmp_path / "a.zarr")
    lib.create_archive(url, lib.archive_spec(prior, "2005-01-01", "2005-01-03", members=MEMBERS))
    lib._write_done(url, None, 1)  # what a write order bug would leave behind
    with pytest.raises(lib.ArchiveError, match="non-finite values on done day"):
        lib.validate_archive(url)


def test_flags_read_only_stored_chunks_same_values(tmp_path, tiny_prior_path):
    """day_states / day_status over more than LIST_FLAGS_ABOVE days read the flags of the days whose chunk is
    stored (one listing; none for a fresh archive) and give what a read of every chunk gives: a stored 0 (a flag
    unset before a rewrite) is not done."""
    import zarr

    from latentda import archive_read

    _, prior = tiny_prior_path
    url = str(tmp_path / "a.zarr")
    lib.create_archive(url, lib.archive_spec(prior, "2005-01-01", "2005-03-31", members=MEMBERS))
    assert not lib.day_states(url)["done"].any()
    lib._write_done(url, None, 1)
    lib._write_done(url, None, 3)
    lib._write_done(url, None, 3, 0)
    lib._write_done(url, None, 40)
    g = zarr.open_group(url, mode="r", zarr_format=3)
    states = lib.day_states(url, start="2005-01-02", end="2005-03-01")
    assert len(states) > archive_read.LIST_FLAGS_ABOVE
    assert list(states["done"]) == list(np.asarray(g[lib.DONE][1:60]).astype(bool))
    assert list(states["status"]) == list(np.asarray(g[lib.STATUS][1:60]))
    assert list(np.nonzero(lib.day_status(url).to_numpy())[0]) == [1, 40]
    assert lib.missing_days(url, "2005-01-01", "2005-03-31") == [d for i, d in enumerate(
        pd.date_range("2005-01-01", "2005-03-31")) if i not in (1, 40)]


def test_mismatched_store_refused_and_untouched(written, tmp_path):
    url, spec, prior = written
    before = _zarr_json_bytes(url)
    g = spec.grid
    cases = {
        "grid": lib.ArchiveSpec(spec.variables, Grid.regular(8, 16), spec.start, spec.end, MEMBERS, 2),
        "variables": lib.ArchiveSpec(spec.variables[:1], g, spec.start, spec.end, MEMBERS, 2),
        "period": lib.ArchiveSpec(spec.variables, g, spec.start, "2005-01-31", MEMBERS, 2),
        "members": lib.ArchiveSpec(spec.variables, g, spec.start, spec.end, 8, 2),
        "members kept": lib.ArchiveSpec(spec.variables, g, spec.start, spec.end, MEMBERS, 0),
    }
    for what, other in cases.items():
        with pytest.raises(lib.ArchiveMismatchError, match=rf"(?s)does not match.*{what}:.*left untouched"):
            lib.create_archive(url, other, {"config_hash": "d" * 64})
    assert lib.create_archive(url, spec) == "exists"
    assert _zarr_json_bytes(url) == before
    # something that is not an archive is refused too, and kept
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(lib.ArchiveMismatchError, match="not a readable Zarr archive"):
        lib.create_archive(str(junk), spec)
    assert (junk / "notes.txt").read_text() == "mine"


def test_write_outside_period_and_wrong_grid_refused(written, tiny_prior_path):
    url, spec, prior = written
    from latentda.testing import synthetic_fields

    fields = synthetic_fields(ntime=1, variables=spec.variables, start="2005-02-01")
    ana = xr.Dataset({v: fields[v] for v in spec.variables} | {f"{v}_spread": fields[v] for v in spec.variables})
    with pytest.raises(lib.ArchiveError, match="outside the archive period"):
        lib.write_day(url, ana)
    small = synthetic_fields(ntime=1, nlat=8, nlon=16, variables=spec.variables, start="2005-01-06")
    ana = xr.Dataset({v: small[v] for v in spec.variables} | {f"{v}_spread": small[v] for v in spec.variables})
    with pytest.raises(lib.ArchiveError, match="grid"):
        lib.write_day(url, ana)


def test_provenance_refuses_credentials(tmp_path, tiny_prior_path):
    _, prior = tiny_prior_path
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-02", members=MEMBERS)
    with pytest.raises(ValueError, match="credentials"):
        lib.create_archive(str(tmp_path / "a.zarr"), spec, {"storage_options": {"secret": "x"}})
    assert not (tmp_path / "a.zarr").exists()


def test_output_catalog_opens_archive_lazily_with_intake(written, tmp_path):
    import intake
    import dask.array as dsa
    from tasks.catalog import ZarrEntry, register_zarr_source

    url, spec, _ = written
    cat_path = tmp_path / "cats" / "reanalysis.yaml"
    register_zarr_source(cat_path, ZarrEntry("rean", url, storage_options={}, description="test",
                                             metadata={"x": 1}))
    # a second entry with secrets in its storage options: written without them
    register_zarr_source(cat_path, ZarrEntry("remote", "s3://bucket/r.zarr",
                                             storage_options={"endpoint_url": "http://127.0.0.1:1",
                                                              "key": "AKIA-LEAK", "secret": "SHOULD-NOT-LEAK"}))
    text = cat_path.read_text()
    assert "SHOULD-NOT-LEAK" not in text and "AKIA-LEAK" not in text and "endpoint_url" in text
    cat = intake.open_catalog(str(cat_path))
    assert {"rean", "remote"} <= set(cat)
    ds = cat["rean"].to_dask()
    v = spec.variables[0]
    assert isinstance(ds[v].data, dsa.Array)  # lazy
    assert ds[v].data.chunksize[0] == 1
    ref = lib.open_archive(url)
    np.testing.assert_array_equal(ds[v].isel(time=slice(1, 4)).values, ref[v].isel(time=slice(1, 4)).values)


def test_evaluation_and_quicklook(written, world, tmp_path):
    from latentda import evaluation as ev
    from latentda.quicklook import quicklook
    from latentda.normalization import fit_climatology

    url, spec, _ = written
    ds = lib.open_archive(url).isel(time=[1, 2, 3]).load()
    clim = fit_climatology(world.fields.sel(time=slice("2004-01-01", "2004-12-31")), spec.variables, 0)
    table = ev.skill_vs_truth(ds, world.fields, spec.variables, climatology=clim, members=MEMBERS)
    assert set(table.index) == set(spec.variables)
    assert (table["rmse"] > 0).all() and (table["rmse_clim"] > 0).all() and table["days"].eq(3).all()
    assert "| variable |" in ev.markdown_table(table)
    held = ev.heldout_stations(world.obs["station_id"].unique(), 0.3, seed=0)
    assert 0 < len(held) < world.obs["station_id"].nunique()
    assert held == ev.heldout_stations(world.obs["station_id"].unique(), 0.3, seed=0)
    st = ev.skill_vs_stations(ds, world.obs[world.obs.station_id.isin(held)], spec.variables)
    assert (st["n"] > 0).all() and (st["rms"] > 0).all()
    png = quicklook(ds.isel(time=[0]), spec.variables[0], tmp_path / "q.png",
                    observations=observations_for_day(world.obs, "2005-01-02"), truth=world.fields)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preliminary_day_is_upgraded_once_its_observations_arrive(tiny_prior_path, world, tmp_path):
    """A day written before the observation record reaches the end of its window is preliminary; the next run
    after its observations arrived rewrites it as final; a further run changes nothing (day prior: window 0)."""
    from latentda import backfill

    _, prior = tiny_prior_path
    url = str(tmp_path / "a.zarr")
    lib.create_archive(url, lib.archive_spec(prior, "2005-01-01", "2005-01-10", members=MEMBERS))
    settings = DaySettings(url=url, members=MEMBERS, seed=0, options=OPTS, config_hash="c" * 64)
    t = pd.to_datetime(world.obs["time"]).dt.normalize()
    early = world.obs[(t <= "2005-01-04").values]  # the record so far ends on the 4th
    days = ["2005-01-04", "2005-01-05"]
    assert assimilate_days(prior, early, days, settings, skip_done=True) == days
    st = lib.day_states(url, None, "2005-01-04", "2005-01-05")
    assert list(st["status"]) == [lib.FINAL, lib.PRELIMINARY] and st["done"].all()
    ds = lib.open_archive(url)
    assert int(ds[lib.WINDOW_OBSERVED].sel(time="2005-01-04")) == 1
    assert int(ds[lib.WINDOW_OBSERVED].sel(time="2005-01-05")) == 0
    # nothing new: the preliminary day's window is still open, the final one is done: no work
    assert backfill.days_needing_work(url, days, 0, backfill.record_end(early)) == []
    cfg = types.SimpleNamespace(archive_url=url, archive=types.SimpleNamespace(storage_options={}))
    todo, missing = backfill.plan_days(cfg, "2005-01-03", "2005-01-05", 0, backfill.record_end(early))
    assert [str(d.date()) for d in todo] == ["2005-01-03"]  # the 4th is final, the 5th preliminary and still open
    assert [str(d.date()) for d in missing] == [f"2005-01-{i:02d}" for i in (1, 2, 3, 6, 7, 8, 9, 10)]
    with pytest.raises(lib.ArchiveError, match="2005-01-11 is outside the archive period"):
        backfill.plan_days(cfg, "2005-01-09", "2005-01-11", 0, None)
    assert assimilate_days(prior, early, days, settings, skip_done=True) == []
    # the observations of the 5th arrive: only the preliminary day is redone, and it is final now
    later = world.obs[(t <= "2005-01-05").values]
    before = _zarr_json_bytes(url)
    assert assimilate_days(prior, later, days, settings, skip_done=True) == ["2005-01-05"]
    st = lib.day_states(url, None, "2005-01-04", "2005-01-05")
    assert list(st["status"]) == [lib.FINAL, lib.FINAL]
    assert lib.hexdigest(lib.open_archive(url).obs_sha256.sel(time="2005-01-05").values) == \
        table_hash(observations_for_day(later, "2005-01-05"))
    after = _zarr_json_bytes(url)
    assert after != before
    # a further run changes nothing; forcing a final day rewrites the same bytes
    assert assimilate_days(prior, later, days, settings, skip_done=True) == []
    assert assimilate_days(prior, later, ["2005-01-05"], settings) == ["2005-01-05"]
    assert _zarr_json_bytes(url) == after


def test_window_rows_and_status_rule():
    from latentda import backfill

    obs = pd.DataFrame({"time": pd.to_datetime(["2005-01-01", "2005-01-02", "2005-01-03", "2005-01-05"]),
                        "station_id": ["a", "b", "c", "d"]})
    assert list(backfill.observations_for_day(obs, "2005-01-02", window=1).station_id) == ["a", "b", "c"]
    assert list(backfill.observations_for_day(obs, "2005-01-04", window=1).station_id) == ["c", "d"]
    assert list(backfill.observations_for_day(obs, "2005-01-04").station_id) == []
    end = backfill.record_end(obs)
    assert end == pd.Timestamp("2005-01-05")
    assert backfill.day_status("2005-01-03", 2, end) == lib.FINAL
    assert backfill.day_status("2005-01-04", 2, end) == lib.PRELIMINARY  # needs the 6th
    assert backfill.day_status("2005-01-04", 0, None) == lib.PRELIMINARY  # no record at all


def test_rewrite_of_a_done_day_unsets_its_flag_before_the_data(written, world, monkeypatch):
    """A crash while a done day is rewritten (upgrade, --force) leaves it not done, never done with half-new data."""
    url, spec, prior = written
    calls = []
    real = lib._write_region

    def spy(u, so, ds, i):
        calls.append(sorted(ds.data_vars))
        if lib.DONE not in ds:
            raise KeyboardInterrupt("killed while writing the data")
        return real(u, so, ds, i)

    monkeypatch.setattr(lib, "_write_region", spy)
    with pytest.raises(KeyboardInterrupt):
        assimilate_days(prior, world.obs, ["2005-01-02"], _settings(url))
    monkeypatch.undo()
    assert calls[0] == [lib.DONE]  # the flag went down first
    assert pd.Timestamp("2005-01-02") in lib.missing_days(url, "2005-01-01", "2005-01-10")
    assert assimilate_days(prior, world.obs, ["2005-01-02"], _settings(url), skip_done=True) == ["2005-01-02"]


def create_after_barrier(url: str, spec, barrier, results, engine: str = "zarr") -> None:
    """Child process: wait for the other creator, then create the same archive at the same moment (also used by
    tests/test_s3.py)."""
    barrier.wait()
    try:
        results.put(lib.create_archive(url, spec, {"config_hash": "race"}, engine=engine))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails the test with it
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.parametrize("engine", ["zarr", "icechunk"])
def test_two_processes_creating_the_same_new_archive_both_succeed(tmp_path, tiny_prior_path, engine):
    """Issue 11 finding 6: two creators at the same instant; before, ``mode="w"`` of one removed the group the
    other had opened (GroupNotFoundError). Now one gets "created", the other "exists", in every trial, and the
    store is complete and valid, with no temporary directory left. The same for an Icechunk archive (whose
    creators are serialised by the sibling commit lock; spawned: Icechunk's runtime threads do not survive a
    fork)."""
    import multiprocessing as mp

    _, prior = tiny_prior_path
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-05", members=2)
    ctx = mp.get_context("fork" if engine == "zarr" else "spawn")
    trials = 6 if engine == "zarr" else 3
    for trial in range(trials):
        url = str(tmp_path / f"race{trial}.{engine}")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=create_after_barrier, args=(url, spec, barrier, results, engine))
                 for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        got = sorted(results.get(timeout=5) for _ in procs)
        assert got == ["created", "exists"], f"trial {trial}: {got}"
        ds = lib.open_archive(url)
        assert ds.attrs["latentda:initialised"] == 1 and not ds["done"].values.any()
        assert lib.create_archive(url, spec, engine=engine) == "exists" and lib.engine_at(url) == engine
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".commit-lock")) == \
        [f"race{t}.{engine}" for t in range(trials)]


def test_quicklook_title_has_members_and_rmse_and_pressure_in_hpa(written, world, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from latentda.quicklook import display_units, quicklook, quicklook_title

    assert display_units("Pa") == ("hPa", 0.01) and display_units("K") == ("K", 1.0)
    assert quicklook_title("t on d", 16, 1.234, "hPa") == "t on d (16 members, RMSE vs truth 1.23 hPa)"
    assert quicklook_title("t on d") == "t on d"
    titles, labels = [], []
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t))
    real_colorbar = Figure.colorbar
    monkeypatch.setattr(Figure, "colorbar", lambda self, *a, **kw: (labels.append(kw.get("label")),
                                                                     real_colorbar(self, *a, **kw))[1])
    url, spec, _ = written
    v = spec.variables[0]
    ds = lib.open_archive(url).isel(time=[1]).load()
    ds[v].attrs["units"] = "Pa"  # a pressure variable: shown in hPa
    quicklook(ds, v, tmp_path / "q.png", truth=world.fields.assign({v: world.fields[v].assign_attrs(units="Pa")}),
              members=MEMBERS)
    assert titles and f"({MEMBERS} members, RMSE vs truth" in titles[0] and titles[0].endswith(" hPa)"), titles
    assert set(labels) == {"hPa"}
