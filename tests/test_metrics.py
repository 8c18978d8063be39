"""Metrics against analytic values (WeatherBench2 definitions)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentda import metrics
from latentda.grid import Grid


def _field(values, grid: Grid, extra: dict | None = None) -> xr.DataArray:
    dims = (*(extra or {}), "lat", "lon")
    coords = {**{k: np.arange(n) for k, n in (extra or {}).items()}, "lat": grid.lat, "lon": grid.lon}
    return xr.DataArray(values, dims=dims, coords=coords)


GRID = Grid.regular(18, 36)


def test_lat_weights_mean_one_and_cosine():
    w = metrics.lat_weights(GRID.lat)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w / w[GRID.lat.size // 2], np.cos(np.deg2rad(GRID.lat))
                               / np.cos(np.deg2rad(GRID.lat[GRID.lat.size // 2])))
    with pytest.raises(ValueError, match="within"):
        metrics.lat_weights([0.0, 95.0])


def test_rmse_of_constant_offset_is_offset_and_bias_signed():
    rng = np.random.default_rng(0)
    truth = _field(rng.normal(size=GRID.shape), GRID)
    assert float(metrics.rmse(truth + 2.5, truth)) == pytest.approx(2.5)
    assert float(metrics.bias(truth - 1.5, truth)) == pytest.approx(-1.5)
    assert float(metrics.rmse(truth, truth)) == 0.0


def test_rmse_is_latitude_weighted():
    # error 1 on the equator-most row only: weighted MSE = w_row / nlat (zonal mean of ones over that row)
    err = np.zeros(GRID.shape)
    j = GRID.lat.size // 2
    err[j] = 1.0
    truth = _field(np.zeros(GRID.shape), GRID)
    w = metrics.lat_weights(GRID.lat)
    expected = np.sqrt(w[j] / GRID.lat.size)
    assert float(metrics.rmse(truth + err, truth)) == pytest.approx(expected)
    # an error near the pole counts less than the same error at the equator
    err_pole = np.zeros(GRID.shape)
    err_pole[0] = 1.0
    assert float(metrics.rmse(truth + err_pole, truth)) < expected


def test_fair_crps_two_members_by_hand():
    # members 1 and 3, truth 0: (|1|+|3|)/2 - (|1-3|+|3-1|)/(2*2*1) = 2 - 1 = 1
    ens = xr.DataArray([[1.0, 3.0]], dims=("x", "member"))
    truth = xr.DataArray([0.0], dims=("x",))
    assert float(metrics.crps_ensemble_pointwise(ens, truth).item()) == pytest.approx(1.0)
    # plain (unfair) estimator: 2 - 4/(2*4) = 1.5
    assert float(metrics.crps_ensemble_pointwise(ens, truth, fair=False).item()) == pytest.approx(1.5)
    # truth between members: (1 + 1)/2 - 4/4 = 0 for members 1, 3 and truth 2
    assert float(metrics.crps_ensemble_pointwise(ens, truth + 2).item()) == pytest.approx(0.0)


def test_fair_crps_matches_double_sum_for_many_members():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7,))
    y = 0.3
    m = x.size
    expected = np.abs(x - y).mean() - np.abs(x[:, None] - x[None]).sum() / (2 * m * (m - 1))
    got = metrics.crps_ensemble_pointwise(xr.DataArray(x, dims=("member",)), xr.DataArray(y)).item()
    assert got == pytest.approx(expected)


def test_crps_of_deterministic_forecast_is_mae():
    rng = np.random.default_rng(2)
    truth = _field(rng.normal(size=GRID.shape), GRID)
    fc = truth + _field(rng.normal(size=GRID.shape), GRID)
    mae = float(metrics.mae(fc, truth))
    ens = fc.expand_dims(member=4)  # 4 identical members: no spread term
    assert float(metrics.crps_ensemble(ens, truth)) == pytest.approx(mae)
    assert float(metrics.crps_ensemble(fc.expand_dims(member=1), truth)) == pytest.approx(mae)
    assert float(metrics.crps_gaussian(fc, xr.zeros_like(fc), truth)) == pytest.approx(mae)


def test_gaussian_crps_closed_form_at_zero():
    # CRPS(N(0, s^2), 0) = s (2 phi(0) - 1/sqrt(pi)) = s (sqrt(2/pi) - 1/sqrt(pi))
    v = metrics.crps_gaussian_pointwise(xr.DataArray(0.0), xr.DataArray(2.0), xr.DataArray(0.0)).item()
    assert v == pytest.approx(2.0 * (np.sqrt(2 / np.pi) - 1 / np.sqrt(np.pi)))
    with pytest.raises(ValueError, match=">= 0"):
        metrics.crps_gaussian_pointwise(xr.DataArray(0.0), xr.DataArray(-1.0), xr.DataArray(0.0))


def test_fair_crps_agrees_with_gaussian_for_large_calibrated_ensemble():
    rng = np.random.default_rng(3)
    n, m = 4000, 50
    truth = xr.DataArray(rng.normal(size=n), dims=("x",))
    ens = xr.DataArray(rng.normal(size=(n, m)), dims=("x", "member"))
    fair = float(metrics.crps_ensemble_pointwise(ens, truth).mean())
    gauss = float(metrics.crps_gaussian_pointwise(xr.DataArray(0.0), xr.DataArray(1.0), truth).mean())
    assert fair == pytest.approx(gauss, rel=0.03)


def _calibrated(nt: int, m: int, seed: int):
    """Truth and members i.i.d. N(mu, 1) around a random mean field: exchangeable by construction."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(nt, *GRID.shape))
    truth = _field(mu + rng.normal(size=mu.shape), GRID, {"time": nt})
    ens = xr.DataArray(mu[:, None] + rng.normal(size=(nt, m, *GRID.shape)), dims=("time", "member", "lat", "lon"),
                       coords={"time": np.arange(nt), "lat": GRID.lat, "lon": GRID.lon})
    return truth, ens, _field(mu, GRID, {"time": nt})


def test_spread_skill_near_one_for_exchangeable_members():
    truth, ens, _ = _calibrated(nt=40, m=5, seed=4)
    ssr = float(metrics.spread_skill_ratio(ens, truth, dims=("time", "lat", "lon")))
    assert ssr == pytest.approx(1.0, abs=0.03)
    # an under-dispersive ensemble (members shrunk towards their mean) scores clearly below 1
    shrunk = ens.mean("member") + 0.5 * (ens - ens.mean("member"))
    assert float(metrics.spread_skill_ratio(shrunk, truth, dims=("time", "lat", "lon"))) < 0.7


def test_spread_skill_gaussian_analytic_spread():
    truth, _, mu = _calibrated(nt=40, m=2, seed=5)
    ssr = float(metrics.spread_skill_ratio_gaussian(mu, xr.ones_like(mu), truth, dims=("time", "lat", "lon")))
    assert ssr == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="n_members"):
        metrics.spread_skill_ratio_gaussian(mu, xr.ones_like(mu), truth, n_members=0)


def test_coverage_of_calibrated_gaussian_is_090():
    truth, ens, mu = _calibrated(nt=8, m=39, seed=6)
    cov_g = float(metrics.interval_coverage_gaussian(mu, xr.ones_like(mu), truth, dims=("time", "lat", "lon")))
    assert cov_g == pytest.approx(0.9, abs=0.01)
    # 39 members: the 5 % and 95 % Weibull quantiles are exactly the 2nd and 38th members, coverage 36/40 = 0.9
    cov_e = float(metrics.interval_coverage(ens, truth, dims=("time", "lat", "lon")))
    assert cov_e == pytest.approx(0.9, abs=0.015)
    # a tiny ensemble cannot reach 90 %: 5 members cover at most (M-1)/(M+1) = 2/3
    cov_5 = float(metrics.interval_coverage(ens.isel(member=slice(0, 5)), truth, dims=("time", "lat", "lon")))
    assert cov_5 == pytest.approx(4 / 6, abs=0.02)
    # half the spread: far too few inside
    assert float(metrics.interval_coverage_gaussian(mu, 0.5 * xr.ones_like(mu), truth,
                                                    dims=("time", "lat", "lon"))) < 0.7
    with pytest.raises(ValueError, match="level"):
        metrics.interval_coverage(ens, truth, level=1.5)


def test_missing_dimension_is_named():
    ens = xr.DataArray(np.zeros((3, 4)), dims=("x", "y"))
    with pytest.raises(ValueError, match="member"):
        metrics.crps_ensemble(ens, ens.isel(y=0))
    with pytest.raises(ValueError, match="lat"):
        metrics.rmse(ens, ens)


def test_obs_space_departure_stats():
    grid = Grid.regular(18, 36)
    bg_vals = np.zeros(grid.shape)
    an_vals = np.full(grid.shape, 1.0)
    bg = xr.Dataset({"t": (("lat", "lon"), bg_vals)}, coords={"lat": grid.lat, "lon": grid.lon})
    an = xr.Dataset({"t": (("lat", "lon"), an_vals)}, coords={"lat": grid.lat, "lon": grid.lon})
    obs = pd.DataFrame({"lat": [10.0, -20.0, 33.0, 5.0], "lon": [5.0, 100.0, 359.0, 0.0],
                        "value": [1.0, 3.0, -1.0, 99.0], "variable": "t", "error": 2.0,
                        "qc": ["", "", "", "gross_departure"]})
    table = metrics.omb_oma(obs, bg, an)
    row = table.loc["t"]
    d = np.array([1.0, 3.0, -1.0])
    assert row["omb_n"] == 3
    assert row["omb_mean"] == pytest.approx(d.mean())
    assert row["omb_std"] == pytest.approx(d.std())
    assert row["omb_rms"] == pytest.approx(np.sqrt(np.mean(d ** 2)))
    assert row["oma_mean"] == pytest.approx(d.mean() - 1.0)
    norm = metrics.departure_stats(obs, metrics.departures(bg, obs), normalised=True)
    assert norm.loc["t", "rms"] == pytest.approx(np.sqrt(np.mean((d / 2) ** 2)))


def test_crps_against_properscoring_plain_and_fair():
    properscoring = pytest.importorskip("properscoring")
    rng = np.random.default_rng(7)
    m = 9
    ens = rng.normal(size=(50, m))
    y = rng.normal(size=50)
    plain = metrics.crps_ensemble_pointwise(xr.DataArray(ens, dims=("x", "member")), xr.DataArray(y, dims=("x",)),
                                            fair=False).values
    ref = properscoring.crps_ensemble(y, ens)  # properscoring is the plain (non-fair) estimator
    np.testing.assert_allclose(plain, ref, rtol=1e-12, atol=1e-12)
    fair = metrics.crps_ensemble_pointwise(xr.DataArray(ens, dims=("x", "member")), xr.DataArray(y, dims=("x",))).values
    pair = np.abs(ens[:, :, None] - ens[:, None, :]).sum(axis=(1, 2))
    np.testing.assert_allclose(fair, ref - pair / (2 * m * m * (m - 1)), rtol=1e-12, atol=1e-12)
    assert np.all(fair < ref)


def test_rank_histogram_and_its_flatness():
    rng = np.random.default_rng(3)
    m, n = 9, 20000
    ens = xr.DataArray(rng.normal(size=(m, n)), dims=("member", "x"))
    calibrated = metrics.rank_histogram(ens, xr.DataArray(rng.normal(size=n), dims=("x",)))
    assert calibrated.shape == (m + 1,) and calibrated.sum() == n
    chi2, per_point = metrics.rank_histogram_chi2(calibrated)
    assert chi2 < 30.0  # chi-square with 9 dof: P(> 30) < 0.001
    wide = metrics.rank_histogram(ens, xr.DataArray(3.0 * rng.normal(size=n), dims=("x",)))  # under-dispersive
    assert metrics.rank_histogram_chi2(wide)[1] > 20 * per_point
    assert wide[0] > n / (m + 1) * 2 and wide[-1] > n / (m + 1) * 2  # U shape
    # by hand: truth 2.5 among members 1, 2, 3 is rank 2
    assert metrics.rank_histogram(xr.DataArray([[1.0], [2.0], [3.0]], dims=("member", "x")),
                                  xr.DataArray([2.5], dims=("x",))).tolist() == [0, 0, 1, 0]
    assert metrics.rank_histogram_chi2(np.array([0, 0, 4, 0])) == (12.0, 3.0)
    with pytest.raises(ValueError, match="empty"):
        metrics.rank_histogram_chi2(np.zeros(4))
