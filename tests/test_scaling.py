"""The two exact forms of the observation covariance R = R_o + G Gᵀ + U Uᵀ (latentda.da.obs_covariance) agree,
the O(n) representation-error variance equals the O(n·npts) one, and the form is chosen by the flop model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from latentda.da import assimilate
from latentda.da.cost import LatentCost
from latentda.da.ensemble import RepresentationError
from latentda.da.lowrank import RANK_TOL
from latentda.da.obs_covariance import (DenseCovariance, GridCovariance, choose_form, observation_covariance,
                                        signed_inner, signed_quad)
from latentda.grid import Grid
from latentda.obs.operator import PointOperator
from latentda.testing import synthetic_fields, synthetic_observations, tiny_prior


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(n_modes: int, n: int = 60, poles: bool = True):
    """A 2-channel 8 x 16 representation-error model and n observations (some poleward of the outer rows)."""
    grid = Grid.regular(8, 16)
    g = torch.Generator().manual_seed(5)
    amp = 0.5 + torch.rand(2, 8, 16, generator=g)
    modes = torch.randn(n_modes, 2, 8, 16, generator=g) * 0.3 if n_modes else None
    rep = RepresentationError(grid, amp, 2500.0, modes=modes)
    rng = np.random.default_rng(1)
    lat = rng.uniform(-89.9, 89.9, n)
    if poles:
        lat[:3] = [89.5, -89.0, 88.9]  # poleward of the outermost rows (+-78.75): the zonal-mean pole rows
    op = PointOperator(grid, lat, rng.uniform(0, 360, n), rng.integers(0, 2, n), nchannels=2)
    sigma = rng.uniform(0.3, 1.5, n)
    return grid, rep, op, sigma


@pytest.mark.parametrize("n_modes,rank_tol", [(0, 0.0), (4, 0.0), (0, RANK_TOL), (4, RANK_TOL)])
def test_grid_woodbury_equals_dense_cholesky(n_modes, rank_tol):
    """R⁻¹ r, rᵀ R⁻¹ r, aᵀ R⁻¹ b and the eta increment of the grid (Woodbury) form equal those of a float64
    reference of its own model (full rank: S Sᵀ; truncated: Ŝ Ŝᵀ) to round-off, and the dense form's to 1e-4."""
    _, rep, op, sigma = _setup(n_modes)
    dense, grid = DenseCovariance(rep, op, sigma), GridCovariance(rep, op, sigma, rank_tol)
    assert grid.lowrank.rank < 8 * 16 if rank_tol else grid.lowrank.rank == 8 * 16
    # float64 reference R = R_o + H (D S Sᵀ D + M Mᵀ) Hᵀ from the dense (full or truncated) smoother matrix
    S = grid.lowrank.matrix()
    DS = torch.block_diag(*[rep.amplitude[c].double().reshape(-1, 1) * S for c in range(2)])
    B = DS @ DS.T
    if n_modes:
        M = (rep.modes * rep.modes_scale).reshape(n_modes, -1).double()
        B = B + M.T @ M
    Hm = torch.as_tensor(op.to_sparse().toarray())
    R = Hm @ B @ Hm.T + torch.diag(torch.as_tensor(sigma) ** 2)
    rng = np.random.default_rng(2)
    r = torch.as_tensor(rng.standard_normal((3, op.nobs)) * 2.0)
    exact = torch.linalg.solve(R, r.T).T
    # the grid form is float64 throughout: agrees with the reference to float64 round-off; the dense form builds
    # G in float32 (its original precision), so it agrees to float32 round-off
    torch.testing.assert_close(grid.solve(r), exact, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(dense.solve(r), exact, rtol=1e-4, atol=1e-5)
    ud, ug = dense.whiten(r), grid.whiten(r)
    assert ud.minus is None and ug.minus is not None
    quad = (r * exact).sum(-1)
    torch.testing.assert_close(signed_quad(ug), quad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(signed_quad(ud), quad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(signed_inner(ug, ug), r @ exact.T, rtol=1e-10, atol=1e-10)
    v = dense.solve(r).float()
    torch.testing.assert_close(grid.increment(v), dense.increment(v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_modes", [0, 3])
def test_variance_from_table_equals_rows_of_g(n_modes):
    """diag(G Gᵀ + U Uᵀ) in O(n) from the correlation table of S equals the row sums of the dense G (pole rows
    included)."""
    _, rep, op, _ = _setup(n_modes)
    dense = np.diag(rep.at_observations(op).cov.numpy())
    np.testing.assert_allclose(rep.variance_from_table(op), dense, rtol=1e-5)


def test_choose_form_follows_the_flop_model():
    """Few observations: dense; many: grid (its cost does not grow with n); forced forms win; bad forms refused."""
    few = choose_form({0: 100, 1: 100}, 48 * 96, 48, 32)
    many = choose_form({c: 6400 for c in range(4)}, 48 * 96, 48, 32)
    assert few.form == "obs" and many.form == "grid"
    more = choose_form({c: 64000 for c in range(4)}, 48 * 96, 48, 32)
    assert more.flops_grid == many.flops_grid and more.flops_obs > 50 * many.flops_obs
    assert choose_form({0: 100}, 48 * 96, 48, 32, form="grid").form == "grid"
    assert choose_form({0: 100}, 181 * 360, 181, 32, form="auto", memory_bytes=1e9).form == "obs"
    with pytest.raises(ValueError, match="'sparse'"):
        choose_form({0: 100}, 100, 10, 8, form="sparse")
    _, rep, op, sigma = _setup(0)
    assert isinstance(observation_covariance(rep, op, sigma, 8, "grid"), GridCovariance)
    assert isinstance(observation_covariance(rep, op, sigma, 8, "obs"), DenseCovariance)


def test_latent_cost_and_gradient_agree_between_forms():
    """The latent cost J and ∇J built on either form agree to round-off."""
    prior = tiny_prior(0)
    fields = synthetic_fields(ntime=420, seed=0)
    day = pd.Timestamp(fields["time"].values[405])
    obs = synthetic_observations(fields, n=40, seed=3, time=day)
    chan = {v: k for k, v in enumerate(prior.variables)}
    op = PointOperator(prior.grid, obs["lat"], obs["lon"], np.array(obs["variable"].map(chan)), nchannels=2)
    mean, std = prior.climatology_tensors(day)
    rep = RepresentationError(prior.grid, torch.as_tensor(prior.recon_std) * std, 1500.0)
    sigma = obs["error"].to_numpy()
    g = torch.Generator().manual_seed(0)
    zp = torch.randn(3, prior.latent_dim, generator=g)
    target = torch.tensor(obs["value"].to_numpy())[None].repeat(3, 1)
    costs = [LatentCost(prior, op, mean, std, zp, target, covariance=cov)
             for cov in (DenseCovariance(rep, op, sigma), GridCovariance(rep, op, sigma))]
    z = torch.randn(3, prior.latent_dim, generator=g) * 0.5
    (fd, gd), (fg, gg) = (c.value_and_grad(z) for c in costs)
    # to the dense form's float32 round-off in G (see test_grid_woodbury_equals_dense_cholesky)
    torch.testing.assert_close(fg, fd, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gg, gd, rtol=1e-5, atol=1e-5)
    (pd_, hd, wd), (pg, hg, wg) = (c.linearise(torch.zeros(prior.latent_dim)) for c in costs)
    torch.testing.assert_close(pg, pd_, rtol=1e-5, atol=1e-6)
    zl = [c.linearised_solution(torch.zeros(prior.latent_dim), p, h, w)
          for c, p, h, w in ((costs[0], pd_, hd, wd), (costs[1], pg, hg, wg))]
    torch.testing.assert_close(zl[1], zl[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_modes", [0, 2])
def test_assimilate_same_analysis_in_both_forms(n_modes):
    """assimilate with covariance_form="grid" gives the "obs" analysis to solver tolerance (same draws, same QC)."""
    prior = tiny_prior(0)
    fields = synthetic_fields(ntime=420, seed=0)
    day = pd.Timestamp(fields["time"].values[407])
    obs = synthetic_observations(fields, n=60, seed=4, time=day)
    if n_modes:
        g = np.random.default_rng(0)
        prior = _with_modes(prior, g.standard_normal((n_modes, *prior.shape)).astype(np.float32) * 0.1)
    out = {form: assimilate(prior, obs, day, members=4, seed=1, covariance_form=form, tol=1e-3)
           for form in ("obs", "grid")}
    for v in prior.variables:
        a, b = out["obs"][v].values, out["grid"][v].values
        scale = float(np.abs(a - a.mean()).max())
        assert np.abs(a - b).max() <= 1e-3 * scale, v
    assert int(out["obs"]["obs_used"].item()) == int(out["grid"]["obs_used"].item()) > 0
    with pytest.raises(ValueError, match="covariance_form"):
        assimilate(prior, obs, day, members=2, covariance_form="sparse")


def _with_modes(prior, modes: np.ndarray):
    """A shallow copy of ``prior`` with residual modes (recon_std raised so the modes fit under it)."""
    import copy

    p = copy.copy(prior)
    p.__dict__.pop("_derived_cache", None)
    p.recon_modes = modes
    p.recon_std = np.sqrt(prior.recon_std ** 2 + (modes ** 2).sum(0)).astype(np.float32)
    return p


def test_grid_form_with_unobserved_channels():
    """Observations of one channel out of three (with residual modes coupling the channels): the grid form
    factorises only that channel and still equals the dense form; the increment reaches the other channels
    through the modes only."""
    grid = Grid.regular(8, 16)
    rep = RepresentationError(grid, 0.5 + torch.rand(3, 8, 16, generator=torch.Generator().manual_seed(0)), 2000.0,
                              modes=torch.randn(2, 3, 8, 16, generator=torch.Generator().manual_seed(1)) * 0.2)
    rng = np.random.default_rng(0)
    n = 30
    op = PointOperator(grid, rng.uniform(-80, 80, n), rng.uniform(0, 360, n), np.full(n, 1), nchannels=3)
    sigma = rng.uniform(0.5, 1.0, n)
    dense, gridf = DenseCovariance(rep, op, sigma), GridCovariance(rep, op, sigma)
    assert gridf.channels == [1] and gridf._chol.shape[0] == 1
    r = torch.as_tensor(rng.standard_normal((2, n)))
    torch.testing.assert_close(gridf.solve(r), dense.solve(r), rtol=1e-5, atol=1e-6)
    v = dense.solve(r).float()
    inc = gridf.increment(v)
    torch.testing.assert_close(inc, dense.increment(v), rtol=1e-4, atol=1e-5)
    no_modes = RepresentationError(grid, rep.amplitude, 2000.0)
    assert torch.count_nonzero(GridCovariance(no_modes, op, sigma).increment(v)[:, [0, 2]]) == 0
