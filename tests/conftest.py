"""Shared fixtures: an isolated Prefect home/result storage for the session, the Prefect test harness (session),
a tiny prior checkpoint, and a small synthetic "world" (input catalog with fields + observations) for flow tests.

The environment is set here, before anything imports prefect, so that Dask worker processes started by the tests
inherit the same isolated PREFECT_HOME and result storage.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="latentda-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "prefect-results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for the whole session; flows and Dask workers talk to it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_prior_path(session_tmp):
    """``latentda.testing.tiny_prior()`` saved to a checkpoint: (path, prior)."""
    from latentda.testing import tiny_prior

    prior = tiny_prior(0)
    path = session_tmp / "tiny_prior.pt"
    if not path.exists():
        prior.save(str(path))
    return str(path), prior


class World:
    """A synthetic input catalog: ``fields`` (2004-01-01 .. 2005-02-03, netCDF) and ``obs`` (Parquet, Jan 2005)."""

    def __init__(self, root: Path, variables: list[str], prior_path: str):
        from latentda.testing import synthetic_fields, synthetic_observations

        self.root = root
        self.variables = variables
        self.prior_path = prior_path
        root.mkdir(parents=True, exist_ok=True)
        fields = synthetic_fields(ntime=400, variables=variables, seed=0, start="2004-01-01")
        self.fields = fields
        fields.to_netcdf(root / "fields.nc", engine="netcdf4")
        jan = fields.sel(time=slice("2005-01-01", "2005-01-31"))
        self.obs = synthetic_observations(jan, n=30, seed=1)
        self.obs.to_parquet(root / "obs.parquet", index=False)
        self.catalog = root / "input.yaml"
        self.catalog.write_text(yaml.safe_dump({
            "metadata": {"version": 1},
            "sources": {
                "fields": {"driver": "netcdf", "args": {"urlpath": "{{ CATALOG_DIR }}/fields.nc",
                                                        "chunks": {"time": 366},
                                                        "xarray_kwargs": {"engine": "netcdf4"}},
                           "metadata": {"train_period": ["2004-01-01", "2004-12-31"]}},
                "obs": {"driver": "tasks.intake_sources.ParquetTableSource",
                        "args": {"urlpath": "{{ CATALOG_DIR }}/obs.parquet"}},
            }}, sort_keys=False))

    def config(self, d: Path, **sections) -> dict:
        """A run config dict writing under ``d``; ``sections`` replace/merge top-level sections."""
        from latentda.config import deep_merge

        base = {
            "name": "test", "workdir": str(d / "work"), "variables": list(self.variables),
            "catalog": {"path": str(self.catalog), "fields": "fields", "observations": "obs", "truth": "fields"},
            "train": {"start": "2004-01-01", "end": "2004-12-31"},
            "prior": {"path": self.prior_path, "latent_dim": 4, "base_channels": 4, "epochs": 1, "batch_size": 64,
                      "n_harmonics": 0, "device": "cpu", "max_minutes": 1, "seed": 0},
            "assimilation": {"members": 4, "seed": 0, "block_days": 3, "options": {"max_iter": 25}},
            "archive": {"url": str(d / "archive.zarr"), "start": "2005-01-01", "end": "2005-01-10",
                        "name": "test_reanalysis", "catalog": str(d / "catalog_out.yaml")},
            "backfill": {"start": "2005-01-01", "end": "2005-01-05"},
            "cluster": {"profile": "local", "n_workers": 2, "threads_per_worker": 1},
        }
        return deep_merge(base, sections)

    def write_config(self, d: Path, **sections) -> str:
        d.mkdir(parents=True, exist_ok=True)
        p = d / "run.yaml"
        p.write_text(yaml.safe_dump(self.config(d, **sections), sort_keys=False))
        return str(p)


@pytest.fixture(scope="session")
def world(session_tmp, tiny_prior_path) -> World:
    path, prior = tiny_prior_path
    return World(session_tmp / "world", list(prior.variables), path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of many tiny tensor operations (on a shared 2-core machine one thread is
    several times faster than two fighting threads); restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fields():
    """``latentda.testing.synthetic_fields(seed=0)`` (400 days, 16 x 32, two variables): the window tests' fields."""
    from latentda.testing import synthetic_fields

    return synthetic_fields(seed=0)


@pytest.fixture(scope="module")
def window_prior(fields):
    """A window prior (k = 1): the tiny day prior plus a latent transition fitted on :func:`fields`."""
    from latentda.prior import add_window
    from latentda.testing import tiny_prior

    return add_window(tiny_prior(0), fields, 1)
