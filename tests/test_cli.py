"""The ``latentda`` command line: every subcommand parses (--help), status reports done/missing days, config
errors exit 2 naming the key, quicklook draws a PNG, and a tiny end-to-end ``demo``."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from flows.cli import PASS_THROUGH, build_parser, main
from latentda import archive as lib
from latentda.backfill import DaySettings, assimilate_days

COMMANDS = ["demo", "train", "backfill", "daily", "status", "evaluate", "quicklook"]
INPROC = {"profile": "local", "n_workers": 2, "threads_per_worker": 1, "options": {"processes": False}}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out


def test_top_level_help_lists_all_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in [*COMMANDS, *PASS_THROUGH]:
        assert cmd in out


def test_range_and_run_options_parse():
    a = build_parser().parse_args(["backfill", "--start", "2005-01-01", "--end", "2005-01-31", "--members", "8",
                                   "--workers", "3", "--config", "x.yaml"])
    assert (a.start, a.end, a.members, a.workers, a.config) == ("2005-01-01", "2005-01-31", 8, 3, "x.yaml")
    a = build_parser().parse_args(["demo"])
    assert a.config == "deploy/demo.yaml" and a.start is None
    a = build_parser().parse_args(["daily", "--date", "2005-02-01", "--force"])
    assert a.date == "2005-02-01" and a.force
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quicklook"])  # --date is required


@pytest.mark.parametrize("cmd", sorted(PASS_THROUGH))
def test_pass_through_commands_dispatch(cmd, capsys):
    mod_name, fn = PASS_THROUGH[cmd]
    mod = importlib.import_module(mod_name)
    if not hasattr(mod, fn):
        assert main([cmd, "--help"]) == 2
        assert "not available" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"variables": ["x"], "archive": {"start": "2005-01-01", "end": "2005-01-02",
                                                                "chunks": {"time": 3}}}))
    assert main(["status", "--config", str(p)]) == 2
    assert "archive.chunks.time" in capsys.readouterr().err
    assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parametrize("engine", ["zarr", "icechunk"])
def test_status_reports_done_and_missing_days(tmp_path, world, tiny_prior_path, capsys, engine):
    _, prior = tiny_prior_path
    url = str(tmp_path / f"archive.{engine}")
    cfg_path = world.write_config(tmp_path, archive={"url": url, "engine": engine})
    assert main(["status", "--config", cfg_path]) == 0
    assert "not created yet" in capsys.readouterr().out
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-10", members=4)
    lib.create_archive(url, spec, engine=engine)
    assimilate_days(prior, world.obs, ["2005-01-02", "2005-01-03", "2005-01-06"],
                    DaySettings(url=url, members=4, seed=0, options={"max_iter": 10}))
    assert main(["status", "--config", cfg_path]) == 0
    out = capsys.readouterr().out
    assert "range    2005-01-01..2005-01-10 (10 days)" in out
    assert "done     3 days: 2005-01-02..2005-01-03, 2005-01-06" in out
    assert "missing  7 days: 2005-01-01, 2005-01-04..2005-01-05, 2005-01-07..2005-01-10" in out
    assert main(["status", "--config", cfg_path, "--start", "2005-01-02", "--end", "2005-01-03"]) == 0
    assert "missing  0 days: none" in capsys.readouterr().out
    # quicklook of a done day; a day not done is refused
    png = tmp_path / "q.png"
    assert main(["quicklook", "--config", cfg_path, "--date", "2005-01-02", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["quicklook", "--config", cfg_path, "--date", "2005-01-04"]) == 2
    assert "not done" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_tiny_demo_end_to_end(tmp_path, world, capsys):
    cfg_path = world.write_config(tmp_path, cluster=INPROC, prior={"path": str(tmp_path / "work" / "prior.pt")},
                                  evaluation={"quicklook_variable": world.variables[0]})
    assert main(["demo", "--config", cfg_path, "--start", "2005-01-01", "--end", "2005-01-03", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[1/3]" in out and "[3/3]" in out
    assert "3 day(s) written" in out
    assert "skill vs truth" in out and "fit to obs" in out and "quicklook" in out
    assert f"entry 'test_reanalysis_feedback' of the catalog (`latentda feedback --config {cfg_path}`" in out, out
    png = next(Path(tmp_path / "work" / "quicklooks").glob("*.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the demo again: nothing to redo
    assert main(["demo", "--config", cfg_path, "--start", "2005-01-01", "--end", "2005-01-03", "--no-progress"]) == 0
    assert "0 day(s) written" in capsys.readouterr().out


def test_simulate_help_shows_its_own_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: latentda simulate") and "number of kept daily snapshots (default 2192)" in out
