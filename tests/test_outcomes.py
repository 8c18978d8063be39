"""Loud, honest outcomes of a backfill (issue 11 item 2) with the issue's bad-observation files: every row rejected
(error NaN, latitude 95, values with units) fails the days with the QC reasons counted and exit code 1, nothing
marked done; half the rows at latitude 95 are counted by reason in the summary; ``on_all_rejected: prior`` writes
the days from the prior alone and says so; after a partial failure the count of days "written and kept" is right.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.cli import main
from latentda import archive as lib

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

INPROC = {"profile": "local", "n_workers": 2, "threads_per_worker": 1, "options": {"processes": False}}
DAYS = ["2005-01-01", "2005-01-02", "2005-01-03"]


def _config(tmp_path, world, obs: pd.DataFrame, **sections) -> str:
    """A run config over DAYS whose observation entry is ``obs`` (written next to a copy of the catalog)."""
    obs.to_parquet(tmp_path / "obs.parquet", index=False)
    cat = yaml.safe_load(world.catalog.read_text())
    cat["sources"]["obs"]["args"]["urlpath"] = str(tmp_path / "obs.parquet")
    cat["sources"]["fields"]["args"]["urlpath"] = str(world.root / "fields.nc")
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(cat))
    base = {"catalog": {"path": str(tmp_path / "input.yaml")}, "cluster": INPROC,
            "backfill": {"start": DAYS[0], "end": DAYS[-1]},
            "assimilation": {"members": 2, "options": {"max_iter": 5}}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return world.write_config(tmp_path, **base)


def _obs(world) -> pd.DataFrame:
    t = pd.to_datetime(world.obs["time"]).dt.normalize()
    return world.obs[t.isin(pd.to_datetime(DAYS))].reset_index(drop=True)


def _done(tmp_path) -> list[str]:
    st = lib.day_status(str(tmp_path / "archive.zarr"))
    return [str(d.date()) for d in st.index[st.values]]


BAD = {"error_nan": (lambda o: o.assign(error=np.nan), "bad_error"),
       "lat_95": (lambda o: o.assign(lat=95.0), "lat_out_of_range"),
       "value_units": (lambda o: o.assign(value=[f"{v:.2f} K" for v in o["value"]]), "non_numeric")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_all_rows_rejected_fails_the_days_with_reasons_counted(tmp_path, world, capsys, case):
    make, reason = BAD[case]
    obs = _obs(world)
    cfg = _config(tmp_path, world, make(obs))
    assert main(["backfill", "--config", cfg, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "3 of 3 day(s) failed" in err and "rejected by QC" in err, err
    assert f"QC rejections over the range: {reason}: {len(obs)}" in err, err
    assert "0 day(s) were written and kept" in err
    assert _done(tmp_path) == []  # nothing reported done that did not happen


def test_half_the_rows_rejected_are_counted_by_reason_in_the_summary(tmp_path, world, capsys):
    obs = _obs(world)
    half = obs.index % 2 == 0
    bad = obs.assign(lat=np.where(half, 95.0, obs["lat"]))
    cfg = _config(tmp_path, world, bad)
    assert main(["backfill", "--config", cfg, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{int((~half).sum())} observation(s) used; rejected by reason: lat_out_of_range: {int(half.sum())}" \
        in out, out
    assert "PRIOR ONLY" not in out and _done(tmp_path) == DAYS


def test_policy_prior_writes_prior_only_days_and_says_so(tmp_path, world, capsys):
    obs = _obs(world)
    cfg = _config(tmp_path, world, obs.assign(lat=95.0), assimilation={"options": {"max_iter": 5,
                                                                                   "on_all_rejected": "prior"}})
    assert main(["backfill", "--config", cfg, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PRIOR ONLY     3 day(s) analysed from the prior alone" in out and "2005-01-01..2005-01-03" in out, out
    assert f"lat_out_of_range: {len(obs)}" in out
    ds = lib.open_archive(str(tmp_path / "archive.zarr"))
    assert ds["no_obs"].sel(time=slice(DAYS[0], DAYS[-1])).values.tolist() == [1, 1, 1]


def test_partial_failure_counts_the_days_written_and_kept(tmp_path, world, capsys):
    """One bad day among three: the other two are written, kept, and counted as such."""
    obs = _obs(world)
    day2 = pd.to_datetime(obs["time"]).dt.normalize() == pd.Timestamp(DAYS[1])
    cfg = _config(tmp_path, world, obs.assign(error=np.where(day2, np.nan, obs["error"])))
    assert main(["backfill", "--config", cfg, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 day(s) failed (first: 2005-01-02" in err and "2 day(s) were written and kept" in err, err
    assert _done(tmp_path) == [DAYS[0], DAYS[2]]


def test_a_block_failing_as_a_whole_counts_what_the_archive_kept(tmp_path, world, capsys, monkeypatch):
    """A block that raises after writing one of its days (a lost worker, an outage): the count of days "written
    and kept" comes from the archive's done flags, not from the block's lost return value."""
    import tasks.assimilate as ta

    real = ta.map_days

    def first_then_crash(config, days, force=False):
        real(config, days[:1], force)
        raise RuntimeError("injected: lost the Dask worker")

    monkeypatch.setattr(ta, "map_days", first_then_crash)
    cfg = _config(tmp_path, world, _obs(world))
    assert main(["backfill", "--config", cfg, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 day(s) failed" in err and "lost the Dask worker" in err, err
    assert "1 day(s) were written and kept" in err, err
    assert _done(tmp_path) == [DAYS[0]]
