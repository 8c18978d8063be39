"""latentda.ingest: ERA5-shaped gridded input and GHCN-Daily-shaped station files -> latentda's daily fields and
observation table by declared steps; every bad input is an IngestError naming the bad value.

Fields here are small (``synthetic_fields`` on 16 x 32, written ERA5-shaped on the 5x finer grid by
``latentda.ingest.examples``); tests/test_ingest_flows.py runs the shipped 48 x 96 data on 0.75 degrees through
the catalog and the flows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentda.config import ConfigError, RunConfig, config_from_dict, config_hash
from latentda.grid import Grid
from latentda.ingest import IngestError, apply_field_steps, check_global, read_station_table, regrid_conservative
from latentda.ingest.examples import Era5Grid, era5_like, ghcnd_like
from latentda.ingest.steps import FieldSteps, StationLayout
from latentda.testing import synthetic_fields, synthetic_observations

VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]
STEPS = {"variables": {"t2m": {"name": "air_temperature", "units": "K"},
                       "u10": {"name": "eastward_wind", "units": "m s-1"},
                       "v10": {"name": "northward_wind", "units": "m s-1"},
                       "sp": {"name": "surface_air_pressure", "units": "Pa"}},
         "daily": {"method": "mean"}, "grid": {"nlat": 16, "nlon": 32}}
DAYS = pd.date_range("2000-01-01", periods=2, freq="D")


@pytest.fixture(scope="module")
def daily() -> xr.Dataset:
    return synthetic_fields(ntime=2, nlat=16, nlon=32, variables=VARIABLES, seed=3, start="2000-01-01")


@pytest.fixture(scope="module")
def era5(daily, tmp_path_factory) -> xr.Dataset:
    path = era5_like(daily, DAYS, tmp_path_factory.mktemp("era5") / "era5.nc")
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def steps(**changes) -> FieldSteps:
    return FieldSteps.model_validate({**STEPS, **changes})


def test_fixture_has_era5_shape(era5):
    assert set(era5.data_vars) == {"t2m", "u10", "v10", "sp"} and era5.sizes["valid_time"] == 48
    assert era5["latitude"].values[0] > era5["latitude"].values[-1]  # descending
    assert era5["longitude"].values.min() == -180.0 and era5["longitude"].values.max() < 180
    assert era5["t2m"].attrs["units"] == "degC" and era5["sp"].attrs["units"] == "hPa"


@pytest.mark.parametrize("daily_step", [{"method": "mean"}, {"method": "at_hour", "hour": 0}])
def test_era5_shaped_hourly_gives_back_the_daily_fields(era5, daily, daily_step):
    # The fixture tiles each target cell by 5 x 5 source cells carrying its value and adds a diurnal cycle
    # whose daily mean and 00 UTC value are 0: conservative regridding (cell means) and both daily methods
    # must return the daily fields exactly, up to float64 rounding of the degC/hPa round trip (~1e-13 relative).
    out = apply_field_steps(era5, steps(daily=daily_step))
    assert list(out.data_vars) == VARIABLES and out.sizes == {"time": 2, "lat": 16, "lon": 32}
    np.testing.assert_array_equal(out["time"].values, DAYS.values)
    np.testing.assert_allclose(out["lat"].values, daily["lat"].values, atol=1e-12)
    np.testing.assert_allclose(out["lon"].values, daily["lon"].values, atol=1e-12)
    for v in VARIABLES:
        np.testing.assert_allclose(out[v].values, daily[v].values, rtol=1e-12, atol=1e-9, err_msg=v)
    assert out["air_temperature"].attrs["units"] == "K" and out["surface_air_pressure"].attrs["source_units"] == "hPa"


def test_longitudes_0_to_360_give_the_same_fields(era5):
    east = era5.assign_coords(longitude=np.mod(era5["longitude"].values, 360.0)).sortby("longitude")
    assert east["longitude"].values.min() == 0.0 and east["longitude"].values.max() > 180
    a, b = apply_field_steps(era5, steps()), apply_field_steps(east, steps())
    for v in VARIABLES:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-13, err_msg=v)


def test_at_hour_takes_that_hour():
    t = pd.date_range("2001-03-01", periods=48, freq="h")
    grid = Grid.regular(4, 8)
    hour = np.broadcast_to(t.hour.values[:, None, None].astype(float), (48, 4, 8))
    ds = xr.Dataset({"x": (("valid_time", "lat", "lon"), hour, {"units": "K"})},
                    coords={"valid_time": t, "lat": grid.lat, "lon": grid.lon})
    s = FieldSteps.model_validate({"variables": {"x": {"name": "x", "units": "K"}},
                                   "daily": {"method": "at_hour", "hour": 6}})
    out = apply_field_steps(ds, s)
    assert out.sizes["time"] == 2 and np.all(out["x"].values == 6.0)
    s_mean = FieldSteps.model_validate({"variables": {"x": {"name": "x", "units": "K"}}})
    assert np.allclose(apply_field_steps(ds, s_mean)["x"].values, 11.5)  # mean of 0..23


def _cell_mean_sinlat(grid: Grid) -> np.ndarray:
    """Exact area mean of sin(lat) over each cell of a cell-centred regular grid: (sin a + sin b) / 2."""
    d = 90.0 / grid.lat.size
    a, b = np.deg2rad(grid.lat - d), np.deg2rad(grid.lat + d)
    return (np.sin(a) + np.sin(b)) / 2


@pytest.mark.parametrize("lat", [np.linspace(90, -90, 121), 89.25 - 1.5 * np.arange(120)],
                         ids=["pole-rows", "cell-centred"])
def test_conservative_regridding_of_a_smooth_field(lat):
    # ERA5-native layout at 1.5 degrees (121 rows from 90 to -90, with pole rows) and a cell-centred one;
    # longitudes -180..178.5. Target: 3.75 degrees, not a multiple of 1.5, so every other target edge cuts a
    # source cell in half.
    lon = -180 + 1.5 * np.arange(240)
    f = np.sin(np.deg2rad(lat))[:, None] + 0 * lon[None, :]
    ds = xr.Dataset({"x": (("time", "latitude", "longitude"), f[None], {"units": "1"})},
                    coords={"time": [np.datetime64("2001-01-01")], "latitude": lat, "longitude": lon})
    grid = Grid.regular(48, 96)
    out = regrid_conservative(ds, grid)["x"].values[0]
    exact = np.broadcast_to(_cell_mean_sinlat(grid)[:, None], out.shape)
    # First-order conservative remapping takes each source cell as uniform, equal to its centre value. A
    # half cell cut off by a target edge then carries f(centre) instead of its own mean, off by |f'| ds/4,
    # with weight (ds/2)/dt: error <= |f'| ds^2 / (8 dt) = 0.0262^2 / (8 * 0.0654) = 1.31e-3 (|f'| <= 1 for
    # sin(lat), ds = 1.5 deg, dt = 3.75 deg, in radians); the whole cells add (ds^2/24)|f''| <= 3e-5.
    bound = np.deg2rad(1.5) ** 2 / (8 * np.deg2rad(3.75)) + np.deg2rad(1.5) ** 2 / 24
    err = np.abs(out - exact)
    assert err.max() <= bound
    assert err.max() > 0.5 * bound  # the bound is what this field reaches, not a loose allowance


@pytest.mark.parametrize("change, match", [
    ({"variables": {"t2m": {"name": "air_temperature", "units": "K"}, "msl": {"name": "p", "units": "Pa"}}},
     "'msl'"),
    ({"variables": {"t2m": {"name": "air_temperature", "units": "kelvinish"}}}, "unknown unit 'kelvinish'"),
    ({"variables": {"t2m": {"name": "air_temperature", "units": "Pa"}}}, "cannot convert 't2m' from 'degC' to 'Pa'"),
])
def test_bad_variables_and_units_are_named(era5, change, match):
    with pytest.raises(IngestError, match=match):
        apply_field_steps(era5, steps(**change))


def test_unknown_source_unit_is_named(era5):
    bad = era5.copy()
    bad["sp"] = bad["sp"].assign_attrs(units="hectobars_ish")
    with pytest.raises(IngestError, match="unknown unit 'hectobars_ish' of source variable 'sp'"):
        apply_field_steps(bad, steps())


@pytest.mark.parametrize("cut, match", [
    (lambda ds: ds.sel(latitude=slice(60, 30)), r"latitude 30\.\d+\.\.5\d\.\d+"),
    (lambda ds: ds.sel(longitude=slice(-20, 40)), r"longitude .* gap of 3\d\d"),
    (lambda ds: ds.isel(latitude=np.r_[0:20, 30:80]), r"latitude has a gap of 24\.75 degrees"),
], ids=["latitude-band", "longitude-sector", "latitude-gap"])
def test_regional_grid_is_refused(era5, cut, match):
    with pytest.raises(IngestError, match="does not cover the globe") as info:
        apply_field_steps(cut(era5), steps())
    assert info.match(match)


def test_duplicated_time_is_named(era5):
    dup = xr.concat([era5, era5.isel(valid_time=[5])], dim="valid_time")
    with pytest.raises(IngestError, match="duplicated time 2000-01-01 05:00:00"):
        apply_field_steps(dup, steps())


def test_incomplete_day_and_missing_hour_are_named(era5):
    part = era5.isel(valid_time=slice(0, 30))  # day 2 has 6 of 24 hours
    with pytest.raises(IngestError, match="day 2000-01-02 has 6 of 24 samples"):
        apply_field_steps(part, steps())
    no_noon = era5.isel(valid_time=[i for i in range(48) if i != 36])
    with pytest.raises(IngestError, match="day 2000-01-02 has no sample at 12:00"):
        apply_field_steps(no_noon, steps(daily={"method": "at_hour", "hour": 12}))


def test_extra_dimension_is_named(era5):
    ens = xr.concat([era5, era5], dim="number")
    with pytest.raises(IngestError, match=r"'t2m' has dims \[.*'number'.*\]; .* select or reduce \['number'\]"):
        apply_field_steps(ens, steps())


def test_cds_coordinates_are_dropped(era5, daily):
    cds = era5.assign_coords(number=0, expver=("valid_time", np.full(48, "0001")))
    out = apply_field_steps(cds, steps())
    assert set(out.coords) == {"time", "lat", "lon"}
    np.testing.assert_allclose(out["air_temperature"].values, daily["air_temperature"].values, rtol=1e-12)


def test_global_check_accepts_pole_rows_and_cell_centred_grids():
    for lat in (np.linspace(-90, 90, 721), Grid.regular(48, 96).lat):
        check_global(xr.Dataset(coords={"lat": lat, "lon": np.arange(0, 360, 0.25)}))


# ------------------------------------------------------------------------------------------------ stations
LAYOUT = {"station_column": "ID", "time_column": "DATE", "missing_values": [-9999],
          "columns": {"TAVG": {"variable": "air_temperature", "units": "degC", "to_units": "K", "error": 1.0},
                      "AWND_U": {"variable": "eastward_wind", "units": "m s-1", "to_units": "m s-1", "error": 1.5},
                      "AWND_V": {"variable": "northward_wind", "units": "m s-1", "to_units": "m s-1", "error": 1.5},
                      "PRES": {"variable": "surface_air_pressure", "units": "hPa", "to_units": "Pa",
                               "error": 100.0}},
          "stations": {"urlpath": "", "metadata_columns": {"ELEVATION": "elevation", "NAME": "station_name"}}}


@pytest.fixture(scope="module")
def stations(daily, tmp_path_factory):
    """(observation table of the demo layout, GHCN-Daily-shaped csv, station list, layout dict)."""
    obs = synthetic_observations(daily, n=12, seed=5)
    obs = obs.sort_values(["time", "variable", "station_id"], key=lambda c: c.map(VARIABLES.index)
                          if c.name == "variable" else c, kind="stable").reset_index(drop=True)
    data, slist = ghcnd_like(obs, DAYS, tmp_path_factory.mktemp("ghcnd"))
    layout = {**LAYOUT, "stations": {**LAYOUT["stations"], "urlpath": str(slist)}}
    return obs, data, slist, layout


def test_ghcnd_shaped_csv_gives_the_observation_table(stations):
    obs, data, _, layout = stations
    raw = pd.read_csv(data)
    assert (raw.loc[raw["ID"] == "DEAD0001", "TAVG"] == -9999).all()  # a station with only missing values
    table = read_station_table(str(data), layout)
    assert list(table.columns[:7]) == ["time", "station_id", "lat", "lon", "variable", "value", "error"]
    assert "DEAD0001" not in set(table["station_id"]) and len(table) == len(obs)
    pd.testing.assert_series_equal(table["station_id"], obs["station_id"].astype(str), check_dtype=False,
                                   check_categorical=False)
    np.testing.assert_allclose(table["value"], obs["value"], rtol=1e-13)  # degC/hPa -> K/Pa, float64
    np.testing.assert_allclose(table["lon"], obs["lon"], atol=1e-12)
    np.testing.assert_array_equal(table["error"], obs["variable"].map(
        {s["variable"]: s["error"] for s in LAYOUT["columns"].values()}).astype(float))
    assert table["station_name"].iloc[0] == f"STATION {table['station_id'].iloc[0]}"


def test_long_layout_with_tenths_and_parquet(stations, tmp_path):
    obs, data, slist, layout = stations
    t = obs[obs["variable"] == "air_temperature"]
    long = pd.DataFrame({"ID": t["station_id"].astype(str), "DATE": t["time"].dt.strftime("%Y%m%d"),
                         "ELEMENT": "TAVG", "DATA_VALUE": np.round((t["value"] - 273.15) * 10).astype(int),
                         "MFLAG": ""})
    long.loc[long.index[0], "DATA_VALUE"] = -9999
    path = tmp_path / "by_year.parquet"
    long.to_parquet(path, index=False)
    lay = {**layout, "element_column": "ELEMENT", "value_column": "DATA_VALUE", "ignore_columns": ["MFLAG"],
           "columns": {"TAVG": {**LAYOUT["columns"]["TAVG"], "scale": 0.1}}}
    table = read_station_table(str(path), lay)
    assert len(table) == len(t) - 1
    np.testing.assert_allclose(table["value"], t["value"].iloc[1:], atol=0.05 + 1e-9)  # tenths of a degree


def test_iso_times_and_string_missing_codes(stations, tmp_path):
    obs, data, _, layout = stations
    df = pd.read_csv(data, dtype={"ID": str})
    df["DATE"] = pd.to_datetime(df["DATE"], format="%Y%m%d").dt.strftime("%Y-%m-%dT12:00:00")
    df["PRES"] = df["PRES"].astype(object).where(df.index != 0, "NA")
    df.to_csv(tmp_path / "isd.csv", index=False)
    table = read_station_table(str(tmp_path / "isd.csv"), {**layout, "time_format": None,
                                                            "missing_values": [-9999, "NA"]})
    assert len(table) == len(obs) - 1 and (pd.DatetimeIndex(table["time"]).hour == 12).all()


@pytest.mark.parametrize("edit, match", [
    (lambda df, lay: (df.assign(SNWD=0), lay), "unknown column\\(s\\) \\['SNWD'\\]"),
    (lambda df, lay: (df, {**lay, "columns": {**lay["columns"], "TAVG": {**lay["columns"]["TAVG"],
                                                                         "units": "degQ"}}}), "unknown unit 'degQ'"),
    (lambda df, lay: (df.assign(TAVG=df["TAVG"].astype(str).where(df.index != 3, "M")), lay),
     "column 'TAVG' holds 'M'"),
    (lambda df, lay: (df.assign(ID=df["ID"].where(df.index != 2, "XX999")), lay), "XX999"),
    (lambda df, lay: (df.drop(columns="PRES"), lay), "lacks declared column\\(s\\) \\['PRES'\\]"),
])
def test_bad_station_files_are_named(stations, tmp_path, edit, match):
    _, data, _, layout = stations
    df, lay = edit(pd.read_csv(data, dtype={"ID": str}), layout)
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(IngestError, match=match):
        read_station_table(str(path), lay)


# ------------------------------------------------------------------------------------------------ run config
def _cfg(**extra) -> dict:
    return {"variables": ["air_temperature"], "archive": {"start": "2005-01-01", "end": "2005-01-02"}, **extra}


def test_run_config_ingest_section(tmp_path):
    cfg = config_from_dict(_cfg(ingest={"fields": STEPS}), base_dir=tmp_path)
    assert cfg.ingest.fields.names == VARIABLES and cfg.ingest.fields.grid.nlat == 16
    assert cfg.hash != config_from_dict(_cfg(), base_dir=tmp_path).hash
    # a config without ingestion steps keeps the hash it had before the section existed
    plain = RunConfig.model_validate(_cfg())
    assert config_hash(plain) == config_hash({k: v for k, v in plain.model_dump(mode="json").items()
                                              if k != "ingest"})
    with pytest.raises(ConfigError, match="ingest.fields.daily.hour"):
        config_from_dict(_cfg(ingest={"fields": {**STEPS, "daily": {"method": "at_hour", "hour": 24}}}))
    with pytest.raises(ConfigError, match="ingest.fields.regrid: unknown key"):
        config_from_dict(_cfg(ingest={"fields": {**STEPS, "regrid": {}}}))
    with pytest.raises(ValueError, match="air_temperature"):  # two sources onto one name
        FieldSteps.model_validate({"variables": {"a": {"name": "air_temperature", "units": "K"},
                                                 "b": {"name": "air_temperature", "units": "K"}}})
    with pytest.raises(ValueError, match="element_column and value_column"):
        StationLayout.model_validate({**LAYOUT, "element_column": "ELEMENT",
                                      "stations": {"urlpath": "stations.csv"}})


def test_training_store_key_follows_the_steps(tmp_path):
    from latentda.config import config_from_dict
    from tasks.ingest import ingest_key

    cat = tmp_path / "cat.yaml"
    cat.write_text("sources: {}\n")

    def key(steps):
        cfg = config_from_dict({"variables": VARIABLES, "catalog": {"path": str(cat), "fields": "fields"},
                                "prior": {"n_harmonics": 0}, "archive": {"start": "2005-01-01", "end": "2005-01-02"},
                                **({"ingest": {"fields": steps}} if steps is not None else {})})
        return ingest_key(cfg, "2004-12-29", "2004-12-31")

    plain = key(None)
    with_steps = key(STEPS)
    assert with_steps != plain  # no steps: the key of a store made before is unchanged; steps change it
    other = {**STEPS, "daily": {"method": "at_hour", "hour": 0}}
    assert key(other) != with_steps  # another declared step: the store is made again
