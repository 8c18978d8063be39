"""The shipped demo dataset and pseudo-observations, opened through catalogs/demo.yaml as users do."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentda.fields import check_variables
from latentda.sim.heldsuarez import SimSettings
from latentda.sim.stations import demo_observations
from tasks.catalog import entry, open_catalog, read_fields, read_table

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "catalogs" / "demo.yaml"
VARIABLES = ["air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"]


@pytest.fixture(scope="module")
def fields():
    return read_fields(CATALOG, "heldsuarez_daily")


def test_shipped_fields_through_catalog(fields):
    assert fields.sizes["lat"] == 48 and fields.sizes["lon"] == 96
    assert fields.sizes["time"] >= 6 * 365
    times = pd.DatetimeIndex(fields.time.values)
    assert times[0] == pd.Timestamp("2000-01-01") and (np.diff(times.values) == np.timedelta64(1, "D")).all()
    for v in VARIABLES:
        da = fields[v]
        assert da.dims == ("time", "lat", "lon")
        assert {"units", "standard_name", "long_name"} <= set(da.attrs), v
        vals = da.values
        assert np.isfinite(vals).all(), f"{v} has NaN"
        assert vals.std() > 0
    t = fields.air_temperature.mean(("time", "lon")).values
    assert 250 < t.min() and t.max() < 320 and t[24] > t[0] + 20  # warm tropics, cold poles
    u = fields.eastward_wind.mean(("time", "lon")).values
    assert u[(fields.lat.values > 30) & (fields.lat.values < 60)].max() > 3  # mid-latitude surface westerlies
    # mass: the global mean surface pressure stays at the initial 1000 hPa over the six years
    w = np.cos(np.deg2rad(fields.lat))
    ps = fields.surface_air_pressure.weighted(w).mean(("lat", "lon")).values
    assert 99500 < ps.mean() < 100500 and np.ptp(ps) < 50


def test_shipped_fields_provenance_and_size(fields):
    a = fields.attrs
    for key in ("latentda:generator", "latentda:resolution", "latentda:step_minutes", "latentda:seed",
                "latentda:spinup_days", "latentda:created", "source", "comment", "Conventions"):
        assert key in a, key
    assert "no seasons" in a["comment"]
    # the recorded settings are the generator defaults: `latentda simulate` reproduces the file
    assert SimSettings.from_attrs(a) == SimSettings()
    path = ROOT / "latentda" / "data" / "heldsuarez_t31_daily.nc"
    assert path.stat().st_size <= 45 * 2**20


def test_pseudo_observations_through_catalog_reproducible(fields):
    obs = read_table(CATALOG, "pseudo_obs_clustered")
    assert {"time", "lat", "lon", "value", "error", "station_id", "variable"} <= set(obs.columns)
    assert obs.station_id.nunique() == 200 and set(obs.variable.astype(str)) == set(VARIABLES)
    assert pd.Timestamp(obs.time.min()) == pd.Timestamp("2005-01-01")
    again = demo_observations(fields, start="2005-01-01", end="2005-01-03")
    first = obs[obs.time <= pd.Timestamp("2005-01-03")].reset_index(drop=True)
    np.testing.assert_array_equal(first.value.values, again.value.values)


def test_bad_catalog_entry_and_variable_errors():
    with pytest.raises(KeyError, match="no_such_entry.*available entries"):
        entry(open_catalog(CATALOG), "no_such_entry")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        open_catalog(ROOT / "catalogs" / "nope.yaml")
    ds = read_fields(CATALOG, "heldsuarez_daily")
    with pytest.raises(KeyError, match="precipitation"):
        check_variables(ds, ["air_temperature", "precipitation"])
