"""The reanalysis archive is CF-compliant: xrlint's ``recommended`` rules (the repository's xrlint_config.yaml)
find no error in a small archive with written days, and a deliberately broken attribute is reported as one."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml
from xrlint.all import new_linter

from latentda import archive as lib
from latentda.backfill import DaySettings, assimilate_days

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "xrlint_config.yaml"
#: Rules that may still warn (see xrlint_config.yaml); every other rule must be silent.
WARN_ONLY = {"content-desc", "var-desc"}


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory, tiny_prior_path, world) -> str:
    """2005-01-01..05 with 2 of 4 members kept and days 02..03 written by the library loop."""
    _, prior = tiny_prior_path
    url = str(tmp_path_factory.mktemp("cf") / "a.zarr")
    spec = lib.archive_spec(prior, "2005-01-01", "2005-01-05", members=4, members_to_keep=2)
    lib.create_archive(url, spec, {"config_hash": "c" * 64, "model_checksum": prior.checksum()})
    days = ["2005-01-02", "2005-01-03"]
    settings = DaySettings(url=url, members=4, seed=0, members_to_keep=2, options={"max_iter": 10},
                           config_hash="c" * 64)
    assert assimilate_days(prior, world.obs, days, settings) == days
    return url


def lint(ds: xr.Dataset):
    """xrlint's result for ``ds`` under the repository's configuration."""
    return new_linter(*yaml.safe_load(CONFIG.read_text())).validate(ds, file_path="archive.zarr")


def errors(result) -> list[tuple[str, str]]:
    return [(m.rule_id, m.message) for m in result.messages if m.severity == 2]


def test_written_archive_passes_xrlint_recommended(archive_url):
    ds = lib.open_archive(archive_url)
    assert int(ds[lib.DONE].sum()) == 2
    result = lint(ds)
    assert result.error_count == 0, errors(result)
    assert {m.rule_id for m in result.messages} <= WARN_ONLY, [(m.rule_id, m.message) for m in result.messages]
    # the ensemble statistics say what they are (CF 7.3 cell_methods over the realization axis)
    v = json.loads(ds.attrs["latentda:variables"])[0]
    assert ds[v].attrs["cell_methods"].endswith("realization: mean")
    assert ds[f"{v}_spread"].attrs["cell_methods"].endswith("realization: standard_deviation")
    assert ds[f"{v}_spread"].attrs["standard_name"] == ds[v].attrs["standard_name"]
    assert ds["member"].attrs["standard_name"] == "realization"


def _no_tz(ds: xr.Dataset) -> xr.Dataset:
    ds.time.encoding["units"] = "days since 1970-01-01"
    return ds


def _lat_without_long_name(ds: xr.Dataset) -> xr.Dataset:
    del ds.lat.attrs["long_name"]
    return ds


@pytest.mark.parametrize("breakage, rule", [
    (_no_tz, "time-coordinate"),
    (_lat_without_long_name, "lat-coordinate"),
    (lambda ds: ds.drop_vars(lib.HASH_DIM), "coords-for-dims"),
])
def test_broken_attribute_is_an_error(archive_url, breakage, rule):
    result = lint(breakage(lib.open_archive(archive_url)))
    assert rule in {r for r, _ in errors(result)}, errors(result)


def test_documented_command_line(archive_url, tmp_path):
    """The README's command: exit 0 with no error (warnings allowed), exit 1 on a store with an error."""
    def xrlint(url: str) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "xrlint"), "-c", str(CONFIG), "--max-warnings", "1000",
               "--no-color", url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    done = xrlint(archive_url)
    assert done.returncode == 0 and " error" not in done.stdout, done.stdout + done.stderr
    broken = tmp_path / "broken.zarr"
    shutil.copytree(archive_url, broken)
    meta = json.loads((broken / "time" / "zarr.json").read_text())
    meta["attributes"]["units"] = "days since 1970-01-01"  # no time zone
    (broken / "time" / "zarr.json").write_text(json.dumps(meta))
    done = xrlint(str(broken))
    assert done.returncode == 1 and "time-coordinate" in done.stdout, done.stdout + done.stderr
