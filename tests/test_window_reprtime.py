"""The representation error of the window analysis, AR(1) in time (issue 9): the fit of ρ, the option, the
correlated prior draws and window R, the exact Gaussian conditional on a linear toy, the fallback and checkpoints."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import latentda
from latentda.da.ensemble import GaussianSmoother, RepresentationError, default_length_scale_km
from latentda.da.window import assimilate_window, window_operator
from latentda.da.window_covariance import (WINDOW_DENSE_MAX, WindowReprCovariance, ar1_correlation, correlated_form,
                                           draw_window_eta)
from latentda.grid import Grid
from latentda.obs.operator import PointOperator
from latentda.obs.window import window_days
from latentda.prior import load_prior
from latentda.prior.repr_time import RHO_MAX, fit_repr_time_correlation, lag_pairs
from latentda.prior.transition import LatentTransition
from latentda.testing import linear_ar1_prior, synthetic_observations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digest(ds) -> str:
    h = hashlib.sha256()
    for v in sorted(ds.data_vars):
        h.update(v.encode())
        h.update(np.ascontiguousarray(ds[v].values).tobytes())
    return h.hexdigest()


def _with_rho(prior, rho):
    """A copy of the window prior ``prior`` whose transition carries ``rho`` (None: a checkpoint without it)."""
    tr = prior.transition
    return prior.with_parts(prior.config, transition=LatentTransition(tr.A, tr.q_chol, tr.info, repr_rho=rho))


def test_fit_recovers_the_rho_of_an_ar1_residual():
    """A decoder that misses everything (g = 0): the residual is the field, AR(1) per grid point with ρ = 0.6
    (channel 0), 0.2 (channel 1), −0.3 (channel 2, clipped to 0) and 0.99 (channel 3, clipped to RHO_MAX)."""
    rng = np.random.default_rng(0)
    ndays, rho = 2400, np.array([0.6, 0.2, -0.3, 0.99])
    x = np.empty((ndays, 4, 6, 12))
    x[0] = rng.standard_normal((4, 6, 12))
    for t in range(1, ndays):
        x[t] = rho[:, None, None] * x[t - 1] + np.sqrt(1 - rho[:, None, None] ** 2) * rng.standard_normal(x[0].shape)
    times = pd.date_range("2000-01-01", periods=ndays, freq="D").values
    train = np.setdiff1d(np.arange(ndays), np.arange(500, 520))  # a gap: no pair across it
    assert lag_pairs(times, train, 1).size == ndays - 1 - 21 and lag_pairs(times, train, 2).size == ndays - 2 - 22

    def encode(xx):
        return torch.zeros((xx.shape[0], 2)), torch.zeros((xx.shape[0], 2))

    def decode(z):
        return torch.zeros((z.shape[0], 4, 6, 12))

    fitted, info = fit_repr_time_correlation(encode, decode, torch.as_tensor(x, dtype=torch.float32), times, train,
                                             np.linspace(-75, 75, 6), ["a", "b", "c", "d"])
    np.testing.assert_allclose(fitted, [0.6, 0.2, 0.0, RHO_MAX], atol=0.02)
    np.testing.assert_allclose(info["lag1"][:3], rho[:3], atol=0.02)
    np.testing.assert_allclose(info["lag2"][:3], rho[:3] ** 2, atol=0.02)  # AR(1): lag 2 is ρ²
    assert info["variables"] == ["a", "b", "c", "d"] and info["pairs_lag1"] == ndays - 1 - 21
    with pytest.raises(ValueError, match="consecutive training days"):
        fit_repr_time_correlation(encode, decode, torch.zeros((4, 4, 6, 12)), times[:4], np.array([0, 2]),
                                  np.linspace(-75, 75, 6), ["a", "b", "c", "d"])


def test_option_is_typed_and_none_is_todays_window_analysis(fields, window_prior):
    """"none", a prior without ρ (an old checkpoint) and "fitted" with ρ = 0 are the same bytes: today's window
    analysis with days independent; "fitted" with ρ > 0 is another analysis, and says so."""
    with pytest.raises(ValueError, match="repr_time_correlation='fited'"):
        latentda.assimilate(window_prior, synthetic_observations(fields, n=2, time=fields.time.values[50]),
                            fields.time.values[50], repr_time_correlation="fited")
    assert window_prior.transition.repr_rho is not None and (window_prior.transition.repr_rho > 0).all()
    day = fields.time.values[120]
    obs = synthetic_observations(fields, n=12, seed=4, time=fields.time.values[119:122])
    run = dict(members=4, seed=2, keep_members=True, max_iter=20)
    none = latentda.assimilate(window_prior, obs, day, repr_time_correlation="none", **run)
    old = latentda.assimilate(_with_rho(window_prior, None), obs, day, **run)
    zero = latentda.assimilate(_with_rho(window_prior, np.zeros(2)), obs, day, **run)
    fitted = latentda.assimilate(window_prior, obs, day, **run)
    assert _digest(none) == _digest(old) == _digest(zero) != _digest(fitted)
    assert none.attrs["latentda:repr_time_correlation"] == "independent"
    assert none.attrs["latentda:repr_time_rho"] == "null"
    assert fitted.attrs["latentda:repr_time_correlation"] == "ar1"
    assert '"air_temperature": 0.' in fitted.attrs["latentda:repr_time_rho"]


def test_correlated_prior_draws_have_the_per_day_marginal_and_ar1_lags():
    grid = Grid.regular(4, 8)
    M, rho = 4000, np.array([0.7, 0.0])
    reps = [RepresentationError(grid, torch.full((2, 4, 8), s), 1500.0) for s in (1.0, 2.0, 3.0)]
    eta = draw_window_eta(reps, 0, [10, 11, 12], M, (2, 4, 8), torch.device("cpu"), rho).double().numpy()
    eta = eta.reshape(M, 3, 2, 4, 8)
    for t, s in enumerate((1.0, 2.0, 3.0)):
        np.testing.assert_allclose(eta[:, t].var(0).mean(axis=(-1, -2)), [s ** 2, s ** 2], rtol=0.06)

    def corr(a, b):
        return float(np.mean([np.corrcoef(a[:, i, j], b[:, i, j])[0, 1] for i in range(4) for j in range(8)]))

    assert abs(corr(eta[:, 0, 0], eta[:, 1, 0]) - 0.7) < 0.03 and abs(corr(eta[:, 0, 0], eta[:, 2, 0]) - 0.49) < 0.03
    assert abs(corr(eta[:, 0, 1], eta[:, 1, 1])) < 0.03  # ρ = 0: independent
    # each day's white noise is that day's stream: day 0 of the window is the per-day draw of day 0
    from latentda.da.rto import draw_eta

    np.testing.assert_array_equal(eta[:, 0], draw_eta(reps[0], 0, 10, M, (2, 4, 8), torch.device("cpu")).numpy())


def test_a_neighbours_observation_reaches_the_centre_days_eta_only_when_rho_is_positive():
    grid = Grid.regular(4, 8)
    reps = [RepresentationError(grid, torch.ones((1, 4, 8)), 2000.0) for _ in range(3)]
    ops = [PointOperator(grid, np.array([10.0, -20.0]), np.array([40.0, 200.0]), np.zeros(2, np.int64), 1),
           None, None]  # rows on day d − 1 only
    bounds = np.array([0, 2, 2, 2])
    v = torch.tensor([[1.0, -0.5]])
    for rho, moved in ((0.0, False), (0.6, True)):
        inc = WindowReprCovariance(reps, ops, np.ones(2), bounds, np.array([rho])).increment(v)
        assert inc.shape == (1, 3, 4, 8) and bool(inc[:, 0].abs().max() > 0)
        assert bool(inc[:, 1].abs().max() > 0) == moved and bool(inc[:, 2].abs().max() > 0) == moved
        if moved:  # AR(1): the update decays as ρ^|t − s| away from the observed day
            torch.testing.assert_close(inc[:, 1], rho * inc[:, 0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(inc[:, 2], rho ** 2 * inc[:, 0], rtol=1e-5, atol=1e-6)


def test_linear_toy_window_rto_is_the_exact_gaussian_conditional_of_z_and_eta():
    """Linear decoder, tiny grid, time-correlated eta (ρ = 0.8): the window RTO members of the centre day have the
    mean and variance of the exact Gaussian conditional of the joint (z, eta) of the window, built explicitly."""
    prior, _ = linear_ar1_prior(rho=0.8, window=1, seed=0)
    rho, amp = 0.8, 0.6
    prior.recon_std = np.full((1, *prior.grid.shape), amp, dtype=np.float32)
    tr = prior.transition
    prior.transition = LatentTransition(tr.A, tr.q_chol, tr.info, repr_rho=np.array([rho]))
    rng = np.random.default_rng(7)
    day, T, n, sig, M = pd.Timestamp("2001-06-01"), 3, 4, 0.5, 400
    rows = [dict(time=t, lat=rng.uniform(-60, 60), lon=rng.uniform(0, 360), value=rng.normal(0, 1.5), error=sig,
                 station_id=f"s{i}", variable="air_temperature") for t in window_days(day, 1) for i in range(n)]
    obs = pd.DataFrame(rows)
    out = assimilate_window(prior, obs, day, members=M, seed=1, tol=1e-4, keep_members=True)
    assert out.attrs["latentda:repr_time_correlation"] == "ar1"
    # the joint covariance of the window's fields x_t = Pᵀ z_t + eta_t, t = 0 .. T − 1
    d, P = prior.latent_dim, prior.patterns.double().numpy()  # P (d, npts)
    npts = P.shape[1]
    Cm = prior.transition.chain_matrix(T)
    Pz = Cm @ Cm.T
    S = GaussianSmoother(prior.grid, default_length_scale_km(prior.grid)).matrix().numpy()
    B_eta = amp ** 2 * S @ S.T
    Sx = np.zeros((T * npts, T * npts))
    for s in range(T):
        for t in range(T):
            Sx[s * npts:(s + 1) * npts, t * npts:(t + 1) * npts] = (P.T @ Pz[s * d:(s + 1) * d, t * d:(t + 1) * d] @ P
                                                                    + ar1_correlation(rho, T)[s, t] * B_eta)
    op = window_operator(prior.grid, obs.lat.values, obs.lon.values, np.zeros(len(obs), int),
                         np.repeat(np.arange(T), n), 1, T)
    H = op.to_sparse().toarray()
    K = Sx @ H.T @ np.linalg.inv(H @ Sx @ H.T + sig ** 2 * np.eye(len(obs)))
    mean, cov = K @ obs.value.values, Sx - K @ H @ Sx
    c = slice(npts, 2 * npts)
    ens = out["air_temperature_members"].values[0].reshape(M, -1).astype(np.float64)
    var = np.diag(cov)[c]
    z = (ens.mean(0) - mean[c]) / np.sqrt(var / M)
    assert np.abs(z).max() < 4.5
    ratio = ens.var(0, ddof=1) / var
    assert np.abs(ratio - 1).max() < 4.5 * np.sqrt(2 / (M - 1))
    # with eta independent between days the same ensemble is measurably different (the test can fail)
    ind = assimilate_window(prior, obs, day, members=M, seed=1, tol=1e-4, keep_members=True,
                            repr_time_correlation="none")
    z_ind = (ind["air_temperature_members"].values[0].reshape(M, -1).mean(0) - mean[c]) / np.sqrt(var / M)
    assert np.abs(z_ind).max() > 4.5 or np.abs(ind["air_temperature_members"].values[0].reshape(M, -1).var(
        0, ddof=1) / var - 1).max() > 4.5 * np.sqrt(2 / (M - 1))


def test_fallback_to_independent_days_is_logged_and_recorded(fields, window_prior, caplog):
    assert correlated_form(WINDOW_DENSE_MAX, "auto")[0] and not correlated_form(WINDOW_DENSE_MAX + 1, "auto")[0]
    assert correlated_form(WINDOW_DENSE_MAX + 1, "obs")[0] and not correlated_form(3, "grid")[0]
    day = fields.time.values[120]
    obs = synthetic_observations(fields, n=10, seed=5, time=fields.time.values[119:122])
    run = dict(members=3, seed=0, keep_members=True, max_iter=15, covariance_form="grid")
    with caplog.at_level(logging.INFO, logger="latentda.da.window"):
        grid = latentda.assimilate(window_prior, obs, day, **run)
    assert "(not AR(1) in time): covariance_form='grid'" in caplog.text
    assert grid.attrs["latentda:repr_time_correlation"].startswith("independent (fallback: covariance_form='grid'")
    assert _digest(grid) == _digest(latentda.assimilate(window_prior, obs, day, repr_time_correlation="none", **run))


def test_window_checkpoints_keep_rho_and_old_ones_load_with_rho_zero(tmp_path, window_prior, caplog):
    info = window_prior.transition.info["repr_time"]
    assert info["variables"] == list(window_prior.variables) and len(info["lag2"]) == 2
    np.testing.assert_array_equal(window_prior.transition.repr_rho, np.clip(info["lag1"], 0, RHO_MAX))
    path = tmp_path / "w.pt"
    sha = window_prior.save(str(path))
    back = load_prior(str(path), device="cpu")
    assert back.checksum() == sha
    np.testing.assert_array_equal(back.transition.repr_rho, window_prior.transition.repr_rho)
    ckpt = torch.load(str(path), weights_only=True)
    del ckpt["transition"]["repr_rho"]  # a window checkpoint written before ρ was fitted
    torch.save(ckpt, str(path))
    with caplog.at_level(logging.INFO, logger="latentda.prior.loading"):
        old = load_prior(str(path), device="cpu")
    assert old.transition.repr_rho is None and "rho = 0" in caplog.text
    with pytest.raises(ValueError, match=r"repr_rho \[1.2\] must be in \[0, 1\)"):
        LatentTransition(old.transition.A, old.transition.q_chol, repr_rho=[1.2])


def test_window_r_is_the_schur_product_with_per_day_mode_blocks():
    """R = R_o + (Ḡ Ḡᵀ) ∘ P + blockdiag(H_t M (H_t M)ᵀ): with ρ = 0 the per-day dense R_t on the diagonal and zero
    between days; with ρ > 0 the smoother part between days is ρ^|s−t| times the same-day cross covariance, while
    the residual modes stay within their day."""
    from latentda.da.obs_covariance import DenseCovariance

    grid = Grid.regular(4, 8)
    rng = np.random.default_rng(3)
    modes = torch.as_tensor(rng.standard_normal((3, 2, 4, 8)) * 0.3, dtype=torch.float32)
    reps = [RepresentationError(grid, torch.full((2, 4, 8), 1.0 + 0.1 * t), 2000.0, modes=modes) for t in range(3)]
    lat, lon, ch = np.array([10.0, -30.0, 50.0]), np.array([20.0, 100.0, 300.0]), np.array([0, 1, 0])
    ops = [PointOperator(grid, lat, lon, ch, 2) for _ in range(3)]
    sig = np.full(9, 0.5)
    bounds = np.array([0, 3, 6, 9])
    R = {r: (lambda c: c.chol @ c.chol.T)(WindowReprCovariance(reps, ops, sig, bounds, np.array([r, r])))
         for r in (0.0, 0.5)}
    day = [DenseCovariance(reps[t], ops[t], sig[:3]) for t in range(3)]
    for t in range(3):
        sl = slice(3 * t, 3 * t + 3)
        torch.testing.assert_close(R[0.0][sl, sl], day[t].chol @ day[t].chol.T, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(R[0.5][sl, sl], R[0.0][sl, sl], rtol=1e-9, atol=1e-9)
    assert float(R[0.0][:3, 3:].abs().max()) < 1e-12
    g = [reps[t].at_observations(ops[t], covariance=False) for t in range(3)]
    for s, t in ((0, 1), (0, 2), (1, 2)):
        cross = torch.zeros((3, 3), dtype=torch.float64)
        for c, rows in g[s].rows.items():  # same channel only, no modes between days
            cross[rows[:, None], g[t].rows[c][None, :]] = g[s].gt[c].double() @ g[t].gt[c].double().T
        torch.testing.assert_close(R[0.5][3 * s:3 * s + 3, 3 * t:3 * t + 3], 0.5 ** (t - s) * cross,
                                   rtol=1e-6, atol=1e-9)


def test_window_r_without_modes_is_factored_channel_by_channel():
    """Without residual modes R couples only rows of the same variable: the channel-by-channel factorisation gives
    the same R⁻¹ r and the same quadratic forms (a R⁻¹ b through the whitening) as the dense n × n R, rows in any
    order of channels and days."""
    grid = Grid.regular(6, 12)
    reps = [RepresentationError(grid, torch.full((2, 6, 12), 1.0 + 0.2 * t), 1500.0) for t in range(3)]
    rng = np.random.default_rng(11)
    ops, sig, bounds = [], [], [0]
    for t, n in enumerate((4, 0, 5)):  # the middle day has no rows
        ch = rng.integers(0, 2, n)
        ops.append(PointOperator(grid, rng.uniform(-60, 60, n), rng.uniform(0, 360, n), ch, 2) if n else None)
        sig.append(rng.uniform(0.3, 1.0, n))
        bounds.append(bounds[-1] + n)
    sig, bounds, rho = np.concatenate(sig), np.array(bounds), np.array([0.6, 0.3])
    cov = WindowReprCovariance(reps, ops, sig, bounds, rho)
    assert cov.channel_blocks is not None
    n = int(bounds[-1])
    R = torch.diag(torch.as_tensor(sig ** 2))
    g = [None if op is None else reps[t].at_observations(op, covariance=False) for t, op in enumerate(ops)]
    for s in range(3):
        for t in range(3):
            if g[s] is None or g[t] is None:
                continue
            for c, rows_s in g[s].rows.items():
                if c in g[t].rows:
                    i, j = rows_s + int(bounds[s]), g[t].rows[c] + int(bounds[t])
                    R[i[:, None], j[None, :]] += rho[c] ** abs(s - t) * (g[s].gt[c].double() @ g[t].gt[c].double().T)
    a, b = torch.randn(3, n, dtype=torch.float64), torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(cov.solve(a), torch.linalg.solve(R, a.T).T, rtol=1e-9, atol=1e-9)
    wa, wb = cov.whiten(a).plus, cov.whiten(b).plus
    torch.testing.assert_close((wa * wb).sum(-1), (a * torch.linalg.solve(R, b.T).T).sum(-1), rtol=1e-9, atol=1e-9)
