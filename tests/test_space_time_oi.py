"""Space-time OI baseline (latentda.baselines.space_time_oi): equals the dense BLUE of its own space-time covariance on
a toy, equals the per-day OI with window 0, recovers a known advection and time scale, saves and loads, refuses bad
input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentda import baselines
from latentda.baselines.common import chordal_distance_km
from latentda.baselines.space_time_oi import (SpaceTimeFitOptions, SpaceTimeOIModel, fit_space_time_oi,
                                               space_time_oi, zonal_shift)
from latentda.grid import Grid
from latentda.normalization import climatology_at, fit_climatology
from latentda.obs.operator import PointOperator

DAY = pd.Timestamp("2005-03-10")
VAR = "air_temperature"


def advected_fields(grid: Grid, ntime: int, drift_deg, rho: float, wind: float, seed: int = 0) -> xr.Dataset:
    """T anomalies a_t = rho shift(a_{t−1}, drift) + sqrt(1 − rho²) noise (noise zonally smooth: wavenumbers <= 4;
    ``drift_deg`` degrees per day, scalar or (nlat,)), and an eastward wind ``wind`` (m s-1) with small noise."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))

    def noise():
        spec = np.fft.rfft(rng.standard_normal(grid.shape), axis=-1)
        spec[:, 5:] = 0.0
        x = np.fft.irfft(spec, n=grid.shape[1], axis=-1)
        return x / x.std()

    a = np.empty((ntime, *grid.shape))
    a[0] = noise()
    shift = np.broadcast_to(np.asarray(drift_deg, dtype=float), (grid.shape[0],))
    for t in range(1, ntime):
        a[t] = rho * zonal_shift(a[t - 1], shift, grid.lon) + np.sqrt(1 - rho ** 2) * noise()
    time = pd.date_range("2000-01-01", periods=ntime, freq="D")
    u = wind + 0.1 * rng.standard_normal((ntime, *grid.shape))
    return xr.Dataset({VAR: (("time", "lat", "lon"), 280.0 + 4.0 * a, {"units": "K"}),
                       "eastward_wind": (("time", "lat", "lon"), u, {"units": "m s-1"})},
                      coords={"time": time, "lat": grid.lat, "lon": grid.lon})


@pytest.fixture(scope="module")
def toy():
    grid = Grid.regular(6, 12)
    ds = advected_fields(grid, 200, 0.0, 0.5, 10.0)
    clim = fit_climatology(ds, [VAR], n_harmonics=0)
    oi = baselines.OIModel((VAR,), grid, clim, {VAR: {"units": "K"}}, {VAR: "gaussian"}, {VAR: 2500.0}, {VAR: 0.8})
    drift = np.linspace(5.0, 25.0, grid.shape[0])  # degrees per day, varies with latitude
    model = SpaceTimeOIModel(oi, {VAR: "exponential"}, {VAR: 2.0}, {VAR: 1.0}, {VAR: drift})
    return grid, clim, model


def window_obs(k: int, seed: int = 3, per_day: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for lag in range(-k, k + 1):
        rows.append(pd.DataFrame({"time": DAY + pd.Timedelta(days=lag) + pd.Timedelta(hours=6),
                                  "lat": rng.uniform(-70, 70, per_day), "lon": rng.uniform(0, 355, per_day),
                                  "value": 280.0 + 3.0 * rng.standard_normal(per_day), "variable": VAR,
                                  "error": rng.uniform(0.5, 2.0, per_day)}))
    return pd.concat(rows, ignore_index=True)


def test_equals_the_dense_blue_of_its_space_time_covariance(toy):
    """Build B over (3 days x grid) explicitly from the module's formula and solve the BLUE densely."""
    grid, clim, model = toy
    k, v, L, tau = 1, 0.8, 2500.0, 2.0
    obs = window_obs(k)
    out = space_time_oi(model, obs, DAY, window=k)
    lat2d, lon2d = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    la, lo = lat2d.ravel(), lon2d.ravel()
    drift = np.repeat(model.zonal_drift[VAR], grid.shape[1])
    lags = np.arange(-k, k + 1)
    pts_lat = np.concatenate([la] * lags.size)
    pts_lon = np.concatenate([lo - drift * t for t in lags])
    pts_t = np.repeat(lags, la.size)
    d = chordal_distance_km(pts_lat[:, None], pts_lon[:, None], pts_lat[None], pts_lon[None])
    B = v * np.exp(-0.5 * (d / L) ** 2) * np.exp(-np.abs(pts_t[:, None] - pts_t[None]) / tau)
    n = la.size
    H = np.zeros((len(obs), lags.size * n))
    day_of_row = (obs["time"].dt.normalize() - DAY).dt.days.to_numpy()
    m, s = (a[0].ravel() for a in climatology_at(clim, VAR, [np.datetime64(DAY)]))  # no harmonics: same every day
    for i, t in enumerate(day_of_row):
        h = PointOperator(grid, obs["lat"].values[i:i + 1], obs["lon"].values[i:i + 1], np.zeros(1, int),
                          nchannels=1).to_sparse().toarray()[0]
        H[i, (t + k) * n:(t + k + 1) * n] = h
    Hn = np.stack([H[:, j * n:(j + 1) * n] for j in range(lags.size)]).sum(axis=0)  # the row's weights on the grid
    y = (obs["value"].values - Hn @ m) / (Hn @ s)
    sig = obs["error"].values / (Hn @ s)
    S = H @ B @ H.T + np.diag(sig ** 2)
    centre = slice(k * n, (k + 1) * n)
    gain = B[centre] @ H.T @ np.linalg.inv(S)
    mean = m + s * (gain @ y)
    var = v - np.einsum("ij,ji->i", gain, H @ B[:, centre])
    np.testing.assert_allclose(out[VAR].values[0].ravel(), mean, rtol=1e-5)
    np.testing.assert_allclose(out[f"{VAR}_spread"].values[0].ravel(), s * np.sqrt(var), rtol=1e-4)
    assert int(out["window_days_observed"].item()) == 3 and int(out["obs_used"].item()) == 5


def test_window_zero_is_the_per_day_oi(toy):
    _, _, model = toy
    obs = window_obs(1)
    day_obs = obs[obs["time"].dt.normalize() == DAY]
    st = space_time_oi(model, day_obs, DAY, window=0)
    oi = baselines.optimal_interpolation(model.oi, day_obs, DAY)
    for name in (VAR, f"{VAR}_spread", "obs_used", "fit_before", "fit_after", "cost"):
        np.testing.assert_array_equal(st[name].values, oi[name].values)
    # the neighbouring days move the analysis, with a window of 1 but not of 0
    wide = space_time_oi(model, obs, DAY, window=1)
    assert not np.allclose(wide[VAR].values, st[VAR].values)
    assert (wide[f"{VAR}_spread"].values <= st[f"{VAR}_spread"].values * (1 + 1e-6)).all()
    assert int(space_time_oi(model, obs, DAY, window=0)["obs_outside_window"].item()) == 10


def test_fit_recovers_the_advection_factor_and_time_scale(tmp_path):
    grid = Grid.regular(8, 32)
    wind = 30.0  # m s-1: base drift U / (R cos phi) in degrees per day
    base = np.rad2deg(wind * 86400.0 / (6.371e6 * np.cos(np.deg2rad(grid.lat))))
    rho = 0.7
    ds = advected_fields(grid, 600, 0.5 * base, rho, wind, seed=1)  # drift: half the mean-flow drift
    clim = fit_climatology(ds, [VAR], n_harmonics=0)
    fitted = fit_space_time_oi(ds, clim, [VAR], options=SpaceTimeFitOptions(time_model="exponential"))
    assert fitted.advection_factor[VAR] == pytest.approx(0.5)
    assert fitted.lag_correlation[VAR][0] == pytest.approx(rho, abs=0.08)
    assert fitted.time_scale_days[VAR] == pytest.approx(-1 / np.log(rho), rel=0.25)
    back = SpaceTimeOIModel.load(fitted.save(tmp_path / "st"))
    assert back.time_scale_days == fitted.time_scale_days and back.advection_factor == fitted.advection_factor
    np.testing.assert_array_equal(back.zonal_drift[VAR], fitted.zonal_drift[VAR])
    assert back.oi.length_scale_km == fitted.oi.length_scale_km and back.grid.matches(fitted.grid)
    with pytest.raises(ValueError, match="not a SpaceTimeOIModel"):
        SpaceTimeOIModel.load(fitted.oi.save(tmp_path / "oi.npz"))
    still = fit_space_time_oi(ds, clim, [VAR], oi=fitted.oi, options=SpaceTimeFitOptions(advection=False))
    assert still.advection_factor[VAR] == 0.0 and not still.zonal_drift[VAR].any()
    assert still.lag_correlation[VAR][0] < fitted.lag_correlation[VAR][0] - 0.05


def test_bad_input_is_refused(toy):
    grid, clim, model = toy
    obs = window_obs(0)
    with pytest.raises(ValueError, match="keep_members"):
        space_time_oi(model, obs, DAY, keep_members=True)
    with pytest.raises(ValueError, match="SpaceTimeOIModel"):
        space_time_oi(model.oi, obs, DAY)
    with pytest.raises(ValueError, match="window=-1"):
        space_time_oi(model, obs, DAY, window=-1)
    with pytest.raises(ValueError, match="max_lag"):
        SpaceTimeFitOptions(max_lag=0)
    ds = advected_fields(grid, 40, 0.0, 0.5, 10.0)
    with pytest.raises(ValueError, match="'northward_wind'"):
        fit_space_time_oi(ds, clim, [VAR], oi=model.oi, options=SpaceTimeFitOptions(wind_variable="northward_wind"))
    with pytest.raises(ValueError, match="consecutive daily"):
        fit_space_time_oi(ds.isel(time=[0, 1, 2, 5, 6, 7, 8, 9]), clim, [VAR], oi=model.oi)
