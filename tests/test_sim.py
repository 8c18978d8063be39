"""The demo data generator reproduces its output exactly from recorded settings (needs the 'sim' extra)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("dinosaur", reason="the 'sim' extra (dinosaur) is not installed")
from latentda.sim.heldsuarez import SimSettings, simulate  # noqa: E402

pytestmark = [pytest.mark.sim, pytest.mark.slow]

TINY = SimSettings(truncation="T21", layers=4, dt_minutes=30.0, spinup_days=2, days=4, nlat=32, nlon=64)


def test_simulation_reproducible_and_chunking_invariant(tmp_path):
    a = simulate(TINY, tmp_path / "a.nc", chunk_days=6, progress=False)
    b = simulate(TINY, tmp_path / "b.nc", chunk_days=2, progress=False)  # resumable chunks of 2 days
    with xr.open_dataset(a) as da_, xr.open_dataset(b) as db_:
        assert da_.sizes == {"time": 4, "lat": 32, "lon": 64}
        for v in ("air_temperature", "eastward_wind", "northward_wind", "surface_air_pressure"):
            np.testing.assert_array_equal(da_[v].values, db_[v].values)
            assert np.isfinite(da_[v].values).all()
        assert SimSettings.from_attrs(da_.attrs) == TINY
        assert str(da_.time.values[0])[:10] == "2000-01-01"
        assert da_.air_temperature.attrs["standard_name"] == "air_temperature"
    assert not (tmp_path / "a.nc.partial.npz").exists()


def test_partial_checkpoint_from_other_settings_is_refused(tmp_path):
    out = tmp_path / "c.nc"
    np.savez(out.with_name("c.nc.partial.npz"), settings='{"seed": 99}', done_days=1, kept=np.zeros(0))
    with pytest.raises(ValueError, match="other settings"):
        simulate(dataclasses.replace(TINY, days=1), out, progress=False)
