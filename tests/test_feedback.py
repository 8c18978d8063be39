"""Per-observation feedback (latentda.feedback): one row per input observation of each day with O−B, O−A, spread,
QC reason and status; written beside the archive before the done flag, identical bytes on rerun, registered in
the output catalog, summarised by ``latentda feedback``; kill -9 mid-backfill leaves no half day."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latentda import archive as lib
from latentda import feedback as fbk
from latentda.backfill import DaySettings, assimilate_days, observations_for_day

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
OPTS = {"max_iter": 25}
MEMBERS = 4
DAYS = [f"2005-01-{i:02d}" for i in range(1, 6)]


def _bad_rows(obs: pd.DataFrame, day: str) -> pd.DataFrame:
    """Six rows of ``day`` that QC must reject, one per reason, plus one gross departure."""
    base = obs[pd.to_datetime(obs["time"]).dt.normalize() == pd.Timestamp(day)].iloc[:6].copy()
    base = base.astype({"value": object, "error": object, "lat": object})
    base.iloc[0, base.columns.get_loc("lat")] = 95.0  # lat_out_of_range
    base.iloc[1, base.columns.get_loc("error")] = np.nan  # bad_error
    base.iloc[2, base.columns.get_loc("value")] = "282.64 K"  # non_numeric
    base.iloc[3, base.columns.get_loc("variable")] = "humidity"  # unknown_variable
    base.iloc[4, base.columns.get_loc("value")] = float(base.iloc[4]["value"]) + 500.0  # gross_departure
    base.iloc[4, base.columns.get_loc("lat")] = float(base.iloc[4]["lat"]) * 0.9  # (not a duplicate)
    base.iloc[5, base.columns.get_loc("lon")] = 900.0  # lon_out_of_range
    base["station_id"] = [f"bad{i}" for i in range(6)]
    return base


@pytest.fixture(scope="module")
def day_table(world):
    day = DAYS[0]
    rows = observations_for_day(world.obs, day)
    return day, pd.concat([rows, _bad_rows(world.obs, day)], ignore_index=True)


def test_assimilate_feedback_one_row_per_input_row_and_same_analysis(tiny_prior_path, day_table):
    import latentda

    _, prior = tiny_prior_path
    day, table = day_table
    held = table.iloc[:3].copy()
    ana, fb = latentda.assimilate(prior, table, day, members=MEMBERS, seed=0, options=OPTS, feedback=True,
                                  passive=held)
    plain = latentda.assimilate(prior, table, day, members=MEMBERS, seed=0, options=OPTS)
    for v in plain.data_vars:  # the analysis is unchanged by asking for feedback
        assert ana[v].values.tobytes() == plain[v].values.tobytes(), v
    assert list(fb.columns) == list(fbk.COLUMNS)
    assert len(fb) == len(table) + len(held)
    own = fb.iloc[:len(table)]
    assert own["station_id"].tolist() == table["station_id"].astype(str).tolist()  # input order kept
    bad = own.iloc[-6:].set_index("station_id")["qc_reason"].to_dict()
    assert bad == {"bad0": "lat_out_of_range", "bad1": "bad_error", "bad2": "non_numeric",
                   "bad3": "unknown_variable", "bad4": "gross_departure", "bad5": "lon_out_of_range"}
    assert (own.iloc[-6:]["status"] == "rejected").all() and (own.iloc[-6:]["qc_flag"] == 1).all()
    assert np.isnan(own.iloc[-6:].loc[own.iloc[-6:]["station_id"] == "bad0", "omb"]).all()  # no position
    assert np.isfinite(own.loc[own["station_id"] == "bad4", "omb"]).all()  # has a position: O−B kept
    used = own[own["status"] == "used"]
    assert len(used) == int(ana["obs_used"].values[0])
    assert (fb["status"] == "rejected").sum() == int(ana["obs_rejected"].values[0])
    assert np.isfinite(used[["omb", "oma", "spread"]].to_numpy()).all() and (used["spread"] > 0).all()
    # O−A below O−B over the used rows; the normalised O−B is the rto's own fit_before (same definition)
    assert np.sqrt(np.mean(used["oma"] ** 2)) < np.sqrt(np.mean(used["omb"] ** 2))
    fit_b = np.sqrt(np.mean((used["omb"] / used["error"]) ** 2))
    fit_a = np.sqrt(np.mean((used["oma"] / used["error"]) ** 2))
    np.testing.assert_allclose([fit_b, fit_a], [ana["fit_before"].values[0], ana["fit_after"].values[0]],
                               rtol=1e-4)
    assert (fb.iloc[len(table):]["status"] == "held_out").all() and (fb.iloc[len(table):]["qc_flag"] == 2).all()


def test_feedback_of_a_day_without_usable_observation_is_the_prior(tiny_prior_path, day_table):
    import latentda

    _, prior = tiny_prior_path
    day, table = day_table
    bad = table.assign(error=np.nan)
    ana, fb = latentda.assimilate(prior, bad, day, members=MEMBERS, seed=0,
                                  options={**OPTS, "on_all_rejected": "prior"}, feedback=True)
    assert int(ana["no_obs"].values[0]) == 1
    assert len(fb) == len(bad) and (fb["status"] == "rejected").all()
    assert set(fb["qc_reason"]) >= {"bad_error"}
    ok = np.isfinite(fb["omb"])
    np.testing.assert_allclose(fb.loc[ok, "oma"], fb.loc[ok, "omb"], rtol=1e-5)  # analysis = background


def test_write_read_rerun_identical_bytes_and_done_days_only(tmp_path):
    url = str(tmp_path / "a.zarr")
    day = pd.Timestamp("2005-01-02")
    t = pd.DataFrame({"time": [day] * 3, "lat": [0.0, 10.0, 95.0], "lon": [1.0, 2.0, 3.0],
                      "value": [1.0, 2.0, 3.0], "error": [1.0, 1.0, 1.0], "station_id": ["a", "b", "c"],
                      "variable": ["x"] * 3, "qc": ["", "gross_departure", "lat_out_of_range"]})
    fb = fbk.feedback_table(t, day, np.array([0.5, 0.0, np.nan]), np.array([0.9, 0.0, np.nan]),
                            np.array([0.1, 0.2, np.nan]))
    path = fbk.write_day_feedback(url, day, fb)
    assert path == os.path.join(url + ".feedback", "day=2005-01-02", "part.parquet")
    first = Path(path).read_bytes()
    fbk.write_day_feedback(url, day, fb)
    assert Path(path).read_bytes() == first  # a rerun rewrites the same bytes
    assert os.listdir(os.path.dirname(path)) == ["part.parquet"]  # no temporary file left
    back = fbk.read_feedback(url, done_only=False)
    pd.testing.assert_frame_equal(back, fb)
    with pytest.raises(ValueError, match="not all of day 2005-01-03"):
        fbk.write_day_feedback(url, "2005-01-03", fb)
    with pytest.raises(ValueError, match="end 2005-01-01 is before start 2005-01-02"):
        fbk.read_feedback(url, "2005-01-02", "2005-01-01", done_only=False)


def test_station_flags_bias_and_rejections():
    rng = np.random.default_rng(0)
    n = 20
    rows = []
    for sid, shift, reason in (("ok", 0.0, ""), ("biased", 3.0, ""), ("noisy", 0.0, "gross_departure")):
        for k in range(n):
            rej = reason and k % 4 != 0  # 75 % rejected
            rows.append({"station_id": sid, "variable": "T", "omb": shift + rng.normal(), "oma": 0.0,
                         "status": "rejected" if rej else "used", "qc_reason": reason if rej else ""})
    fb = pd.DataFrame(rows)
    flags = fbk.station_flags(fb).set_index("station_id")
    assert set(flags.index) == {"biased", "noisy"}
    assert flags.loc["biased", "reason"] == "bias" and flags.loc["noisy", "reason"] == "rejections"
    assert flags.loc["noisy", "reject_rate"] == pytest.approx(0.75)
    allst = fbk.station_summary(fb).set_index("station_id")
    assert allst.loc["ok", "used"] == n and allst.loc["noisy", "total"] == n
    np.testing.assert_allclose(allst.loc["biased", "omb_rms"],
                               np.sqrt(np.mean(fb.loc[fb["station_id"] == "biased", "omb"] ** 2)))
    with pytest.raises(ValueError, match="reject_rate=1.5"):
        fbk.FeedbackSummaryOptions(reject_rate=1.5)


# ------------------------------------------------------------------------------------- the day loop
def _settings(url: str, **kw) -> DaySettings:
    return DaySettings(url=url, members=MEMBERS, seed=0, options=OPTS, config_hash="c" * 64, **kw)


def _archive(prior, url: str) -> None:
    spec = lib.archive_spec(prior, DAYS[0], "2005-01-10", members=MEMBERS)
    lib.create_archive(url, spec, {"config_hash": "c" * 64, "model_checksum": prior.checksum()})


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, tiny_prior_path, world):
    """Five days by the library loop with three held-out stations and bad rows added to day 3."""
    _, prior = tiny_prior_path
    url = str(tmp_path_factory.mktemp("fb") / "a.zarr")
    _archive(prior, url)
    obs = pd.concat([world.obs, _bad_rows(world.obs, DAYS[2])], ignore_index=True)
    held = sorted(world.obs["station_id"].astype(str).unique())[:3]
    assimilate_days(prior, obs, DAYS, _settings(url, exclude_stations=held))
    return url, obs, held


def test_backfill_feedback_has_every_input_row_once(backfilled):
    url, obs, held = backfilled
    fb = fbk.read_feedback(url)
    per_day = fb.groupby(fb["day"].dt.strftime("%Y-%m-%d")).size().to_dict()
    want = {d: len(observations_for_day(obs, d)) for d in DAYS}
    assert per_day == want  # exactly one row per input observation of each day
    ds = lib.open_archive(url).sel(time=DAYS)
    used = fb[fb["status"] == "used"].groupby(fb["day"].dt.strftime("%Y-%m-%d")).size()
    assert used.tolist() == ds["obs_used"].values.tolist()
    assert set(fb.loc[fb["status"] == "held_out", "station_id"]) == set(held)
    assert (fb.loc[fb["station_id"].isin(held), "status"] == "held_out").all()
    assert set(fb.loc[fb["status"] == "rejected", "qc_reason"]) >= {"lat_out_of_range", "bad_error",
                                                                    "non_numeric", "unknown_variable"}
    u = fb[fb["status"] == "used"]
    assert np.sqrt(np.mean(u["oma"] ** 2)) < np.sqrt(np.mean(u["omb"] ** 2))
    # the held-out rows got O−B and O−A too: the independent check the hold-out exists for
    h = fb[(fb["status"] == "held_out") & (fb["qc_reason"] == "")]
    assert len(h) and np.isfinite(h[["omb", "oma", "spread"]].to_numpy()).all()


def test_backfill_feedback_rerun_same_bytes_and_analysis_unchanged(backfilled, tiny_prior_path, tmp_path):
    url, obs, held = backfilled
    _, prior = tiny_prior_path
    before = {d: Path(fbk.day_url(url, d)).read_bytes() for d in DAYS[:2]}
    assimilate_days(prior, obs, DAYS[:2], _settings(url, exclude_stations=held))
    assert {d: Path(fbk.day_url(url, d)).read_bytes() for d in DAYS[:2]} == before
    # the archive holds the same bytes as a run without feedback
    ref = str(tmp_path / "ref.zarr")
    _archive(prior, ref)
    assimilate_days(prior, obs, DAYS[:2], _settings(ref, exclude_stations=held, feedback=False))
    assert not os.path.exists(ref + ".feedback")
    a, b = lib.open_archive(url).sel(time=DAYS[:2]), lib.open_archive(ref).sel(time=DAYS[:2])
    for v in b.data_vars:
        assert a[v].values.tobytes() == b[v].values.tobytes(), v


def test_days_not_done_are_not_read(backfilled, tmp_path):
    url, obs, held = backfilled
    fb = fbk.read_feedback(url, DAYS[0], DAYS[0])
    # a feedback file of a day whose done flag is not set (a crash between the two) is left out
    extra = fb.assign(day=pd.Timestamp("2005-01-07"))
    fbk.write_day_feedback(url, "2005-01-07", extra)
    try:
        assert "2005-01-07" not in set(fbk.read_feedback(url)["day"].dt.strftime("%Y-%m-%d"))
        assert len(fbk.read_feedback(url, "2005-01-07", "2005-01-07", done_only=False)) == len(fb)
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(fbk.day_url(url, "2005-01-07")))


def test_summary_table_names_variables_and_reasons(backfilled):
    url, _, _ = backfilled
    fb = fbk.read_feedback(url)
    vs = fbk.variable_summary(fb).set_index("variable")
    assert set(vs.index) >= {"air_temperature", "eastward_wind"}
    assert (vs["rows"] == vs["used"] + vs["rejected"] + vs["held_out"]).all()
    known = vs.loc[["air_temperature", "eastward_wind"]]
    assert (known["oma_rms"] < known["omb_rms"]).all()
    assert vs.loc["humidity", "used"] == 0 and vs.loc["humidity", "rej:unknown_variable"] == 1
    text = fbk.format_summary(fb)
    assert "lat_out_of_range" in text and "air_temperature" in text and "stations flagged" in text


# --------------------------------------------------------------------------- output catalog and the CLI
@pytest.fixture(scope="module")
def run_config(backfilled, world, tmp_path_factory):
    """A run config whose archive is the backfilled one (same period and members) and its output catalog."""
    url, _, _ = backfilled
    d = tmp_path_factory.mktemp("cfg")
    return world.write_config(d, archive={"url": url, "catalog": str(d / "catalog_out.yaml")})


def test_feedback_opens_through_the_output_catalog(backfilled, run_config):
    import intake
    import yaml

    from latentda.config import load_config
    from tasks.archive import register_archive

    url, _, _ = backfilled
    cfg = load_config(run_config)
    path = register_archive.fn(cfg)
    sources = yaml.safe_load(Path(path).read_text())["sources"]
    assert set(sources) == {cfg.archive.name, f"{cfg.archive.name}_feedback"}  # the archive entry is kept
    entry = sources[f"{cfg.archive.name}_feedback"]
    assert entry["driver"] == "tasks.intake_sources.FeedbackSource"
    assert entry["metadata"]["archive_entry"] == cfg.archive.name
    fb = intake.open_catalog(path)[f"{cfg.archive.name}_feedback"].read()
    pd.testing.assert_frame_equal(fb, fbk.read_feedback(url))
    assert intake.open_catalog(path)[cfg.archive.name].to_dask().sizes["time"] == 10


def test_cli_feedback_prints_the_table(backfilled, run_config, capsys):
    from flows.cli import main

    csv = Path(run_config).parent / "stations.csv"
    assert main(["feedback", "--config", run_config, "--start", DAYS[1], "--end", DAYS[3],
                 "--stations-csv", str(csv)]) == 0
    text = capsys.readouterr().out
    st = pd.read_csv(csv)
    assert {"station_id", "variable", "used", "omb_rms", "oma_rms", "omb_t"} <= set(st.columns) and len(st) > 30
    assert f"feedback {DAYS[1]}..{DAYS[3]}: 3 day(s)" in text
    assert "air_temperature" in text and "O-B rms" in text and "lat_out_of_range 1" in text
    assert main(["feedback", "--config", run_config, "--start", DAYS[3], "--end", DAYS[1]]) == 2
    assert f"end {DAYS[1]} is before start {DAYS[3]}" in capsys.readouterr().err


def test_cli_feedback_without_archive_says_so(world, tmp_path, capsys):
    from flows.cli import main

    cfg = world.write_config(tmp_path)
    assert main(["feedback", "--config", cfg]) == 0
    assert "no archive yet" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_feedback_under_5_seconds(backfilled, run_config):
    """The must-show: `latentda feedback` (a fresh process, imports included) prints the table in under 5 s.

    On a loaded machine the CLI's start-up alone can pass 5 s, so the bound is 5 s or 1.5 x `latentda status` on
    the same archive in the same test, whichever is larger (bench/feedback.py measures both)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def run(command: str) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "flows.cli", command, "--config", run_config], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
        return time.perf_counter() - t0, r

    seconds, r = run("feedback")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "air_temperature" in r.stdout
    baseline, s = run("status")
    assert s.returncode == 0, s.stderr[-2000:]
    assert seconds < max(5.0, 1.5 * baseline), f"latentda feedback {seconds:.1f} s, status {baseline:.1f} s"


# ------------------------------------------------------------------------------------------------- kill -9
LOOP = """
import sys
import pandas as pd
import latentda
from latentda import backfill
from latentda.config import load_config

cfg = load_config(sys.argv[1])
prior = latentda.load_prior(cfg.prior_path, device="cpu")
backfill.ensure_archive(cfg, prior)
p = cfg.backfill_period()
backfill.backfill(cfg, pd.date_range(str(p.start), str(p.end)), prior=prior,
                  observations=pd.read_parquet(sys.argv[2]))
"""


def _done(url: str) -> list[str]:
    try:
        st = lib.day_status(url)
    except (FileNotFoundError, lib.ArchiveError, KeyError, ValueError, OSError):  # absent or being created
        return []
    return [str(d.date()) for d in st.index[st.values]]


@pytest.mark.failure
@pytest.mark.slow
def test_kill9_mid_backfill_leaves_no_half_day_and_rerun_is_identical(world, tmp_path):
    import latentda
    from latentda import backfill
    from latentda.config import load_config

    days = [f"2005-01-{i:02d}" for i in range(1, 9)]
    obs = pd.concat([world.obs, _bad_rows(world.obs, days[1])], ignore_index=True)
    obs_path = tmp_path / "obs.parquet"
    obs.astype({"value": str, "error": str, "lat": str}).to_parquet(obs_path, index=False)
    obs = pd.read_parquet(obs_path)
    cfg_path = world.write_config(tmp_path / "run", archive={"start": days[0], "end": days[-1]},
                                  backfill={"start": days[0], "end": days[-1]},
                                  evaluation={"holdout_fraction": 0.2})
    cfg = load_config(cfg_path)
    url = cfg.archive_url
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", LOOP, cfg_path, str(obs_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    killed_at = None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300 and proc.poll() is None:
            if len(_done(url)) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = _done(url)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert killed_at is not None, proc.stderr.read()[-3000:]
    done = _done(url)
    assert 2 <= len(done) < len(days), done
    fb = fbk.read_feedback(url)
    assert sorted(set(fb["day"].dt.strftime("%Y-%m-%d"))) == done  # done days only, each complete
    for d in done:
        assert (fb["day"] == pd.Timestamp(d)).sum() == len(observations_for_day(obs, d))
    for d in days:  # any file of a day (done or not) is a whole Parquet file
        if os.path.exists(fbk.day_url(url, d)):
            assert len(pd.read_parquet(fbk.day_url(url, d))) == len(observations_for_day(obs, d))

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _done(url) == days
    ref = str(tmp_path / "ref.zarr")
    prior = latentda.load_prior(cfg.prior_path, device="cpu")
    spec = lib.archive_spec(prior, days[0], days[-1], cfg.assimilation.members, 0, cfg.variables)
    lib.create_archive(ref, spec, {"config_hash": cfg.hash})
    settings = dataclasses.replace(backfill.DaySettings.from_config(
        cfg, exclude_stations=backfill.holdout_for(cfg, obs)), url=ref)
    assimilate_days(prior, obs, days, settings)
    for d in days:  # every day's feedback byte-identical to the uninterrupted run
        assert Path(fbk.day_url(url, d)).read_bytes() == Path(fbk.day_url(ref, d)).read_bytes(), d
    fb = fbk.read_feedback(url)
    assert len(fb) == sum(len(observations_for_day(obs, d)) for d in days)
    assert (fb["status"] == "held_out").any() and (fb["qc_reason"] == "lat_out_of_range").sum() == 1
