"""Posterior samplers (issue 12 item 3): on a linear-Gaussian toy (linear decoder, Gaussian observations) rto, laplace
and langevin reproduce the exact posterior mean and covariance within Monte-Carlo error; bad input is refused."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import latentda
from latentda.da.samplers import effective_sample_size
from latentda.obs.operator import PointOperator
from latentda.testing import linear_ar1_prior

DAY = pd.Timestamp("2000-03-01")
M = 600
SIGMA = 0.4


@pytest.fixture(scope="module")
def toy():
    """(prior, obs table, exact posterior mean (d,), covariance (d, d), patterns pinv (P, d))."""
    torch.set_num_threads(1)
    prior, _ = linear_ar1_prior(latent_dim=3, window=0, ndays=64, seed=2)
    rng = np.random.default_rng(11)
    n = 10
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(0, 360, n)
    op = PointOperator(prior.grid, lat, lon, np.zeros(n, dtype=np.int64), nchannels=1)
    with torch.no_grad():
        A = op.apply_torch(prior.decode(torch.eye(3))).double().numpy().T  # (n, d): y = A z + eps
    z_true = np.array([1.2, -0.7, 0.4])
    y = A @ z_true + SIGMA * rng.standard_normal(n)
    obs = pd.DataFrame({"time": DAY, "station_id": [f"s{i}" for i in range(n)], "lat": lat, "lon": lon,
                        "variable": "air_temperature", "value": y, "error": SIGMA})
    cov = np.linalg.inv(np.eye(3) + A.T @ A / SIGMA ** 2)
    mean = cov @ A.T @ y / SIGMA ** 2
    pinv = np.linalg.pinv(prior.patterns.double().numpy())  # x (P,) -> z (d,)
    return prior, obs, mean, cov, pinv


def _latents(ds, pinv) -> np.ndarray:
    x = ds["air_temperature_members"].values[0].reshape(M, -1).astype(np.float64)
    return x @ pinv


@pytest.mark.parametrize("sampler", ["rto", "laplace", "langevin", "langevin-from-laplace"])
def test_exact_posterior_of_linear_gaussian_toy(toy, sampler):
    prior, obs, mean, cov, pinv = toy
    init = {"langevin_init": "laplace"} if sampler == "langevin-from-laplace" else {}
    sampler = sampler.split("-")[0]
    ds = latentda.assimilate(prior, obs, DAY, members=M, seed=3, keep_members=True, sampler=sampler,
                             representation_error="none", qc_threshold=float("inf"), tol=1e-3, **init)
    z = _latents(ds, pinv)
    sd = np.sqrt(np.diag(cov))
    # Monte-Carlo standard errors of the sample mean and covariance of M independent draws; 4.5 of them
    mean_tol = 4.5 * sd / np.sqrt(M)
    cov_tol = 4.5 * np.sqrt((np.outer(sd ** 2, sd ** 2) + cov ** 2) / M)
    # the check can fail: the prior N(0, I) (the members before the analysis) is far outside these tolerances
    assert np.any(np.abs(mean) > 5 * mean_tol) and np.any(np.abs(np.eye(3) - cov) > 5 * cov_tol)
    np.testing.assert_array_less(np.abs(z.mean(0) - mean), mean_tol)
    np.testing.assert_array_less(np.abs(np.cov(z, rowvar=False) - cov), cov_tol)
    if sampler == "langevin":
        assert 0.35 < float(ds["acceptance_rate"][0]) < 0.85
        assert float(ds["ess"][0]) > 0.05 * M * 100  # 100 post-burn-in steps per chain
        assert ds.attrs["latentda:sampler"] == "langevin"
        assert ds.attrs["latentda:langevin_init"] == init.get("langevin_init", "map")
    else:
        assert "acceptance_rate" not in ds


def test_samplers_deterministic_from_the_seed(toy):
    prior, obs, *_ = toy
    kw = dict(members=8, keep_members=True, representation_error="none", sampler="langevin", langevin_steps=5,
              langevin_burnin=5)
    a = latentda.assimilate(prior, obs, DAY, seed=4, **kw)
    b = latentda.assimilate(prior, obs, DAY, seed=4, **kw)
    c = latentda.assimilate(prior, obs, DAY, seed=5, **kw)
    d = latentda.assimilate(prior, obs, DAY, seed=4, langevin_init="laplace", **kw)
    assert np.array_equal(a["air_temperature_members"].values, b["air_temperature_members"].values)
    assert not np.array_equal(a["air_temperature_members"].values, c["air_temperature_members"].values)
    assert not np.array_equal(a["air_temperature_members"].values, d["air_temperature_members"].values)


def test_bad_sampler_options_are_refused(toy):
    prior, obs, *_ = toy
    with pytest.raises(ValueError, match="sampler='gibbs' is not one of"):
        latentda.assimilate(prior, obs, DAY, members=2, sampler="gibbs")
    for steps in (0, -3):
        with pytest.raises(ValueError, match=f"langevin_steps={steps} must be >= 1"):
            latentda.assimilate(prior, obs, DAY, members=2, sampler="langevin", langevin_steps=steps)
    with pytest.raises(ValueError, match="langevin_init"):
        latentda.assimilate(prior, obs, DAY, members=2, sampler="langevin", langevin_init="prior")


def test_window_analysis_refuses_other_samplers():
    prior, _ = linear_ar1_prior(latent_dim=2, window=1, ndays=64)
    obs = pd.DataFrame({"time": DAY, "station_id": ["a"], "lat": [10.0], "lon": [20.0],
                        "variable": "air_temperature", "value": [0.3], "error": [1.0]})
    with pytest.raises(ValueError, match="sampler='laplace' is per-day only"):
        latentda.assimilate(prior, obs, DAY, members=2, sampler="laplace")


def test_effective_sample_size():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((400, 4, 2))
    ess = effective_sample_size(white)
    assert np.all(np.abs(ess / 1600 - 1) < 0.4)  # Geyer truncation noise at N = 400 steps: ~ ±20 %
    ar = np.zeros((400, 4, 2))
    for t in range(1, 400):  # AR(1) with phi = 0.9: ESS / N = (1 - phi) / (1 + phi) = 0.053
        ar[t] = 0.9 * ar[t - 1] + rng.standard_normal((4, 2))
    assert np.all(effective_sample_size(ar) / 1600 < 0.12)
    assert np.all(effective_sample_size(np.ones((10, 2, 3))) == 0)
    with pytest.raises(ValueError, match="trace must be"):
        effective_sample_size(np.zeros((1, 2, 3)))
