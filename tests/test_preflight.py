"""Validate before anything starts (issue 11 item 3): a config typo, a reversed range or a missing catalog entry
fails in under 2 s with one line and exit code 2 and creates nothing (no Prefect database, no store); status,
evaluate and the observation range give clear errors instead of crashes or silent successes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.cli import main

REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run ``python -m flows.cli ARGS`` in a fresh process with its own PREFECT_HOME; (rc, stderr, seconds)."""
    env = dict(os.environ, PREFECT_HOME=str(cwd / "prefect-home"), PYTHONPATH=str(REPO))
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stderr, time.perf_counter() - t0


def _created(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name not in ("run.yaml", "bad.yaml"))


@pytest.mark.parametrize("case", ["config_typo", "reversed_range", "missing_entry"])
def test_input_errors_fail_fast_with_one_line_and_create_nothing(tmp_path, world, case):
    cfg = world.config(tmp_path)
    args = ["backfill", "--config", str(tmp_path / "run.yaml")]
    expect = {"config_typo": "membrs", "reversed_range": "end 2005-01-01 is before start 2005-01-04",
              "missing_entry": "catalog.observations: entry 'obz' does not exist"}[case]
    if case == "config_typo":
        cfg["assimilation"]["membrs"] = cfg["assimilation"].pop("members")
    elif case == "reversed_range":
        args += ["--start", "2005-01-04", "--end", "2005-01-01"]
    else:
        cfg["catalog"]["observations"] = "obz"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    rc, err, seconds = _cli(args, tmp_path)
    assert rc == 2, err
    assert expect in err and "Traceback" not in err, err
    assert seconds < 2.0, f"{case}: {seconds:.2f} s"
    assert _created(tmp_path) == []  # no Prefect home/database, no archive, no workdir


def test_debug_shows_the_traceback(tmp_path, world):
    world.write_config(tmp_path)
    rc, err, _ = _cli(["status", "--config", str(tmp_path / "run.yaml"), "--start", "2005-01-03", "--end",
                       "2005-01-01", "--debug"], tmp_path)
    assert rc == 1 and "Traceback" in err and "before start" in err


def test_status_reversed_range_and_regular_file(tmp_path, world, capsys):
    cfg_path = world.write_config(tmp_path)
    assert main(["status", "--config", cfg_path, "--start", "2005-01-05", "--end", "2005-01-02"]) == 2
    assert "end 2005-01-02 is before start 2005-01-05" in capsys.readouterr().err
    assert main(["status", "--config", cfg_path, "--start", "2004-12-30"]) == 2
    assert "outside the archive period" in capsys.readouterr().err
    (tmp_path / "archive.zarr").write_text("not a store")
    assert main(["status", "--config", cfg_path]) == 2
    assert "is a regular file, not a Zarr store" in capsys.readouterr().err


def test_evaluate_without_a_done_day_exits_nonzero(tmp_path, world, tiny_prior_path, capsys):
    from latentda import archive as lib

    cfg_path = world.write_config(tmp_path)
    assert main(["evaluate", "--config", cfg_path]) == 2
    assert "does not exist yet" in capsys.readouterr().err
    _, prior = tiny_prior_path
    lib.create_archive(str(tmp_path / "archive.zarr"), lib.archive_spec(prior, "2005-01-01", "2005-01-10", 4))
    assert main(["evaluate", "--config", cfg_path]) == 2
    assert "no day of 2005-01-01..2005-01-05 is done" in capsys.readouterr().err


def test_observations_all_dated_another_day_refused_before_anything(tmp_path, world):
    """The issue's bad file "all rows dated another day": no row in the range -> exit 2 before any store."""
    obs = world.obs.assign(time=pd.Timestamp("2004-06-01"))
    obs.to_parquet(tmp_path / "obs.parquet", index=False)
    cat = yaml.safe_load(world.catalog.read_text())
    cat["sources"]["obs"]["args"]["urlpath"] = str(tmp_path / "obs.parquet")
    cat["sources"]["fields"]["args"]["urlpath"] = str(world.root / "fields.nc")
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(cat))
    cfg_path = world.write_config(tmp_path, catalog={"path": str(tmp_path / "input.yaml")})
    rc = main(["backfill", "--config", cfg_path])
    assert rc == 2
    assert not (tmp_path / "archive.zarr").exists()


def test_prior_on_another_grid_refused_before_anything(tmp_path, world, tiny_prior_path, capsys):
    import dataclasses

    from latentda import archive as lib
    from latentda.grid import Grid

    _, prior = tiny_prior_path
    g = prior.grid
    other = Grid(g.lat[::2], g.lon[::2])  # the same kind of grid at half the resolution
    url = tmp_path / "archive.zarr"
    lib.create_archive(str(url), dataclasses.replace(lib.archive_spec(prior, "2005-01-01", "2005-01-10", 4),
                                                     grid=other))
    cfg_path = world.write_config(tmp_path)
    before = sorted(p.name for p in url.rglob("*"))
    assert main(["backfill", "--config", cfg_path, "--no-progress"]) == 2
    assert "lat" in capsys.readouterr().err
    assert sorted(p.name for p in url.rglob("*")) == before


@pytest.mark.parametrize("err,retry", [(FileNotFoundError("no such file"), False), (PermissionError("denied"), False),
                                       (IsADirectoryError("dir"), False), (ValueError("bad config"), False),
                                       (KeyError("entry"), False), (ConnectionError("reset"), True),
                                       (TimeoutError("slow"), True), (OSError("SlowDown: reduce your rate"), True)])
def test_only_transient_errors_are_retried_with_jitter(err, retry):
    from tasks.archive import RETRY_IO, init_archive, retry_on_io

    class Failed:
        def result(self):
            raise err

    assert retry_on_io(None, None, Failed()) is retry
    assert init_archive.retries == RETRY_IO["retries"] and init_archive.retry_jitter_factor > 0


def test_an_object_store_error_names_the_bucket(tmp_path, world, monkeypatch, capsys):
    from latentda.storage import bucket_of, name_buckets

    import flows.cli

    assert bucket_of("s3://my-bucket/run/a.zarr") == "my-bucket" and bucket_of(str(tmp_path)) is None
    assert bucket_of("simplecache::s3://b2/x") == "b2"
    assert name_buckets("NoSuchBucket: my-bucket", {"archive": "s3://my-bucket/a.zarr"}) == "NoSuchBucket: my-bucket"
    cfg_path = world.write_config(tmp_path, archive={"url": "s3://my-bucket/run/a.zarr"})

    def denied(args, cfg):
        raise PermissionError("Access Denied")  # what s3fs raises for a 403, without the bucket

    monkeypatch.setattr(flows.cli, "_dispatch", denied)
    assert main(["status", "--config", cfg_path]) == 2
    err = capsys.readouterr().err
    assert "Access Denied [object store: bucket 'my-bucket' (archive s3://my-bucket/run/a.zarr)]" in err, err
