"""Real-shaped input through the catalog, the declared ingestion steps and the flows.

The shipped demo data are written in ERA5's shape (hourly, ``valid_time``, t2m/u10/v10/sp in degC/m s-1/hPa,
descending latitude, -180..180 longitude, 0.75 degrees) and as a GHCN-Daily-shaped station CSV (degC/hPa,
missing -9999, station list file) by ``latentda.ingest.examples``; the ``train`` and ``reanalysis`` flows run on
them with the entries of catalogs/byod.yaml and the steps of deploy/byod.yaml, and on the demo's own files with
catalogs/demo.yaml. Bad input fails with an error naming the bad value, and nothing is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from latentda import archive as lib
from latentda.config import deep_merge, load_config
from latentda.ingest import IngestError
from latentda.ingest.examples import era5_like, ghcnd_like
from latentda.training_store import training_fields
from latentda.testing import synthetic_fields

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "latentda" / "data"
INPROC = {"profile": "local", "n_workers": 1, "threads_per_worker": 1, "options": {"processes": False}}
TRAIN = ("2004-12-29", "2004-12-31")
DAYS = ("2005-01-01", "2005-01-02")


def byod_catalog(folder: Path) -> Path:
    """catalogs/byod.yaml with its example files looked for in ``folder`` (written there by the test)."""
    text = (REPO / "catalogs" / "byod.yaml").read_text().replace("{{ CATALOG_DIR }}/../out/byod", str(folder))
    path = folder / "byod.yaml"
    path.write_text(text)
    return path


def write_config(d: Path, **sections) -> str:
    """deploy/byod.yaml writing under ``d`` (in-process Dask, the test's days), ``sections`` merged in."""
    base = yaml.safe_load((REPO / "deploy" / "byod.yaml").read_text())
    base = deep_merge(base, {
        "workdir": str(d / "work"), "train": {"start": TRAIN[0], "end": TRAIN[1]},
        "archive": {"url": str(d / "archive.zarr"), "catalog": str(d / "out_catalog.yaml"),
                    "start": DAYS[0], "end": DAYS[1]},
        "backfill": {"start": DAYS[0], "end": DAYS[1]}, "cluster": INPROC})
    cfg = deep_merge(base, sections)
    if sections.get("ingest", "keep") is None:
        cfg.pop("ingest")
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(d / "run.yaml")


def written(d: Path) -> list[str]:
    """Everything the runs of config folder ``d`` wrote (the run config itself aside)."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name != "run.yaml")


def _run(cfg_path: str) -> dict:
    from flows.reanalysis import run_reanalysis
    from flows.train import run_train

    run_train(cfg_path, progress=False)
    return run_reanalysis(cfg_path, progress=False, evaluate_skill=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The ERA5-shaped hourly file and the GHCN-Daily-shaped station files, in one folder, + its catalog."""
    folder = tmp_path_factory.mktemp("byod_inputs")
    with xr.open_dataset(DATA / "heldsuarez_t31_daily.nc", engine="netcdf4") as daily:
        era5_like(daily, pd.date_range(*TRAIN, freq="D"), folder / "era5_like.nc")
    obs = pd.read_parquet(DATA / "pseudo_obs_clustered200_2005.parquet")
    ghcnd_like(obs, pd.date_range(*DAYS, freq="D"), folder)
    byod_catalog(folder)
    return folder


@pytest.mark.slow
def test_era5_and_ghcnd_shaped_inputs_give_the_demo_archive(inputs, tmp_path):
    byod = write_config(tmp_path / "byod", catalog={"path": str(inputs / "byod.yaml")})
    demo = write_config(tmp_path / "demo", ingest=None,
                        catalog={"path": str(REPO / "catalogs" / "demo.yaml"), "fields": "heldsuarez_daily",
                                 "observations": "pseudo_obs_clustered"})
    s_byod, s_demo = _run(byod), _run(demo)
    assert s_byod["written"] == s_demo["written"] == list(DAYS)
    cb, cd = load_config(byod), load_config(demo)
    # Regridding error of this fixture: each 3.75 degree cell is tiled by 5 x 5 cells of 0.75 degrees carrying
    # its value, so the conservative cell mean IS that value, and the hourly diurnal cycle averages to 0; what
    # is left is float64 rounding of the degC/hPa round trip, <= 1e-12 relative (tests/test_ingest.py measures
    # the regridding error of fields that are not piecewise constant).
    fb, fd = training_fields(cb.training_store), training_fields(cd.training_store)
    for v in cb.variables:  # float32 store: at most a few ulp of the field's magnitude
        scale = float(np.abs(fd[v]).max())
        np.testing.assert_allclose(fb[v].values, fd[v].values, rtol=1e-6, atol=1e-6 * scale, err_msg=v)
    # The station file gives the same observation table (values to 1e-13 relative) and the training stores
    # agree as above, so the same seeded training and assimilation give the same archive; float32 fields may
    # differ in the last bit where a 1e-13 difference crosses a rounding boundary: rtol 1e-5 allows ~100 ulp.
    a, b = lib.open_archive(cb.archive_url), lib.open_archive(cd.archive_url)
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for v in cb.variables + [f"{v}_spread" for v in cb.variables]:
        scale = float(np.abs(b[v]).max())
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-5, atol=1e-5 * scale, err_msg=v)
    np.testing.assert_array_equal(a["obs_used"].values, b["obs_used"].values)


@pytest.fixture(scope="module")
def small_era5(tmp_path_factory) -> Path:
    """A small ERA5-shaped file (16 x 32 fields on the 5x finer grid, 2 days) for the bad-input cases."""
    folder = tmp_path_factory.mktemp("small_era5")
    daily = synthetic_fields(ntime=2, nlat=16, nlon=32, seed=1, start="2004-12-30",
                             variables=["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"])
    era5_like(daily, pd.date_range("2004-12-30", periods=2, freq="D"), folder / "era5_like.nc")
    return folder


def _bad_fields(folder: Path, case: str) -> Path:
    """``folder``'s ERA5-shaped file spoilt as ``case`` says, in a new folder with its own catalog."""
    out = folder / case
    out.mkdir(exist_ok=True)
    with xr.open_dataset(folder / "era5_like.nc", engine="netcdf4") as ds:
        ds = ds.load()
    if case == "regional":
        ds = ds.sel(latitude=slice(70, 20))
    elif case == "duplicated":
        ds = xr.concat([ds, ds.isel(valid_time=[30])], dim="valid_time")
    elif case == "unit":
        ds["sp"].attrs["units"] = "hPascal_typo"
    ds.to_netcdf(out / "era5_like.nc", engine="netcdf4")
    return byod_catalog(out)


@pytest.mark.slow
@pytest.mark.parametrize("case, match", [
    ("missing", r"variable\(s\) \['msl'\] declared in ingest.fields.variables are not in the source"),
    ("unit", "unknown unit 'hPascal_typo' of source variable 'sp'"),
    ("regional", r"does not cover the globe: latitude 2\d\.\d+\.\.6\d\.\d+"),
    ("duplicated", "duplicated time 2004-12-31 06:00:00"),
])
def test_bad_fields_fail_the_train_flow_and_write_nothing(small_era5, tmp_path, case, match):
    from flows.train import run_train

    steps = {"fields": {"grid": {"nlat": 16, "nlon": 32}}}
    if case == "missing":
        steps["fields"]["variables"] = {"msl": {"name": "air_pressure_at_mean_sea_level", "units": "Pa"}}
    cfg = write_config(tmp_path, ingest=steps, train={"start": "2004-12-30", "end": "2004-12-31"},
                       catalog={"path": str(_bad_fields(small_era5, case))})
    with pytest.raises(IngestError, match=match):
        run_train(cfg, progress=False)
    assert written(tmp_path) == []  # no training store, no prior, no archive


@pytest.mark.slow
def test_station_file_with_unknown_column_fails_the_backfill_and_writes_nothing(inputs, tmp_path):
    from flows.reanalysis import run_reanalysis

    bad = tmp_path / "inputs"
    bad.mkdir()
    df = pd.read_csv(inputs / "ghcnd.csv", dtype={"ID": str})
    df.insert(3, "WSF2", 12.5)
    df.to_csv(bad / "ghcnd.csv", index=False)
    (bad / "stations.csv").write_bytes((inputs / "stations.csv").read_bytes())
    cfg = write_config(tmp_path / "run", catalog={"path": str(byod_catalog(bad))})
    with pytest.raises(IngestError, match=r"unknown column\(s\) \['WSF2'\]"):
        run_reanalysis(cfg, progress=False, evaluate_skill=False)
    assert written(tmp_path / "run") == []
