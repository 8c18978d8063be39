"""Production pieces of the windowed analysis (issue 9): per-observation feedback of a day analysed with a window
prior (the centre day's rows, each against its own day in the window), and the one time rule that selects a day's or
a window's observations (time zones converted, unreadable times refused naming the value)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import latentda
from latentda import archive
from latentda import feedback as fbk
from latentda.backfill import DaySettings, assimilate_days, observations_for_day, record_end
from latentda.da import rto
from latentda.da.window import assimilate_window
from latentda.obs.schema import parse_times, validate_observations
from latentda.obs.window import row_days, window_table
from latentda.testing import synthetic_observations, tiny_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTS = {"max_iter": 10}


def test_window_feedback_holds_the_centre_days_rows_against_that_days_analysis(fields, window_prior):
    day = pd.Timestamp(fields.time.values[120])
    obs = synthetic_observations(fields, n=6, seed=5, time=fields.time.values[119:122])
    is_centre = (row_days(obs) == day).to_numpy()
    obs.loc[obs.index[np.nonzero(is_centre)[0][1]], "value"] = np.nan  # a rejected row of the centre day
    held = synthetic_observations(fields, n=2, seed=6, time=fields.time.values[119:122])
    ds, fb = latentda.assimilate(window_prior, obs, day, members=4, seed=1, keep_members=True, feedback=True,
                                 passive=held, **OPTS)
    plain = latentda.assimilate(window_prior, obs, day, members=4, seed=1, keep_members=True, **OPTS)
    np.testing.assert_array_equal(ds["air_temperature"].values, plain["air_temperature"].values)
    centre = obs[is_centre]
    p = len(centre)
    n_held = int((row_days(held) == day).sum())
    assert p == 12 and n_held == 4 and len(fb) == p + n_held and (fb["day"] == day).all()
    assert list(fb["status"]) == ["used", "rejected"] + ["used"] * (p - 2) + ["held_out"] * n_held
    np.testing.assert_array_equal(fb["value"].to_numpy()[:p], centre["value"].to_numpy())
    # O−A of every row against the centre day's analysis members (not a neighbour's)
    table = validate_observations(centre, window_prior.variables, time=day)
    members = np.stack([ds[f"{v}_members"].values[0] for v in window_prior.variables], axis=1)
    ref = fbk.observation_feedback(table, day, window_prior.grid, list(window_prior.variables),
                                   members.mean(axis=0), members)
    used = fb["status"].to_numpy()[:p] == "used"
    np.testing.assert_allclose(fb["oma"].to_numpy()[:p][used], ref["oma"].to_numpy()[used], rtol=1e-5, atol=1e-4)
    assert np.abs(fb["oma"][:p][used]).mean() < np.abs(fb["omb"][:p][used]).mean()
    assert np.isfinite(fb["omb"].to_numpy()[p:]).all()


def test_an_unreadable_time_inside_the_analysis_is_flagged_not_fatal(fields, window_prior):
    day = pd.Timestamp(fields.time.values[120])
    obs = synthetic_observations(fields, n=3, seed=7, time=fields.time.values[120]).astype({"time": object})
    obs.loc[obs.index[0], "time"] = "not a time"
    ds = latentda.assimilate(window_prior, obs, day, members=2, seed=0, **OPTS)
    assert int(ds["obs_outside_window"][0]) == 1 and int(ds["obs_used"][0]) == len(obs) - 1
    assert '"wrong_time": 1' in ds.attrs["latentda:qc"]
    with pytest.raises(ValueError, match="'not a time' \\(row 0\\)"):
        observations_for_day(obs, day)


def test_window_zero_feedback_is_the_per_day_feedback(fields):
    prior = tiny_prior(0)
    day = fields.time.values[101]
    obs = synthetic_observations(fields, n=10, seed=1, time=fields.time.values[100:103])
    _, per_day = rto.assimilate(prior, obs[row_days(obs) == pd.Timestamp(day)], day, members=3, seed=2,
                                feedback=True, **OPTS)
    _, windowed = assimilate_window(prior, obs, day, members=3, seed=2, window=0, feedback=True, **OPTS)
    pd.testing.assert_frame_equal(windowed, per_day)


def test_day_loop_writes_one_feedback_row_per_observation_of_each_day(fields, window_prior, tmp_path):
    days = fields.time.values[130:133]
    obs = synthetic_observations(fields, n=8, seed=3, time=fields.time.values[129:134])
    out_station = str(obs["station_id"].iloc[0])
    url = str(tmp_path / "fb.zarr")
    archive.create_archive(url, archive.archive_spec(window_prior, str(days[0])[:10], str(days[-1])[:10], 3))
    settings = DaySettings(url=url, members=3, seed=0, options=OPTS, exclude_stations=(out_station,))
    assimilate_days(window_prior, obs, days, settings)
    fb = fbk.read_feedback(url)
    for d in days:
        rows = fb[fb["day"] == pd.Timestamp(d)]
        assert len(rows) == len(observations_for_day(obs, d)) == 16  # the day's rows only, held-out ones included
        assert list(rows["status"]).count("held_out") == 2  # the held-out station's two variables
        assert (pd.to_datetime(rows["time"]).dt.normalize() == pd.Timestamp(d)).all()


def test_one_time_rule_for_days_and_windows():
    obs = pd.DataFrame({"time": ["2005-01-02T23:30:00-02:00", "2005-01-02T12:00:00Z", "2005-01-03 06:00", None],
                        "lat": 0.0, "lon": 0.0, "value": 1.0, "error": 1.0, "variable": "air_temperature"})
    days = row_days(obs)
    assert list(days[:3]) == [pd.Timestamp("2005-01-03"), pd.Timestamp("2005-01-02"), pd.Timestamp("2005-01-03")]
    assert pd.isna(days.iloc[3])
    picked = observations_for_day(obs, "2005-01-03")
    assert list(picked["time"]) == [obs["time"][0], obs["time"][2]] and list(picked.index) == [0, 1]
    pd.testing.assert_frame_equal(observations_for_day(obs, "2005-01-03", window=1),
                                  window_table(obs, "2005-01-03", 1).reset_index(drop=True))
    assert record_end(obs) == pd.Timestamp("2005-01-03")
    # validation applies the same rule: the row at 23:30 -02:00 is a row of 3 January (UTC)
    qc = validate_observations(obs.iloc[:3], ["air_temperature"], time="2005-01-03")["qc"]
    assert list(qc) == ["", "wrong_time", ""]
    bad = obs.copy()
    bad.loc[2, "time"] = "yesterday-ish"
    for call in (lambda: observations_for_day(bad, "2005-01-03"), lambda: window_table(bad, "2005-01-03", 1),
                 lambda: record_end(bad)):
        with pytest.raises(ValueError, match="'yesterday-ish' \\(row 2\\)"):
            call()
    assert parse_times(bad["time"], strict=False).isna().sum() == 2  # validation flags such rows instead
    with pytest.raises(ValueError, match="no 'time' column"):
        observations_for_day(obs.drop(columns="time"), "2005-01-03")
