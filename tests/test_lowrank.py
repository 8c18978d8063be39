"""The rank-r factor of the representation-error smoother (latentda.da.lowrank): exact at rank_tol=0, within its
stated bound when truncated, and the grid form built on it keeps the analysis and the spread of the dense form."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from latentda.da import assimilate
from latentda.da.ensemble import GaussianSmoother
from latentda.da.lowrank import RANK_TOL, LowRankSmoother, real_fourier, real_fourier_inverse
from latentda.grid import Grid
from latentda.testing import synthetic_fields, synthetic_observations, tiny_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("nlon", [16, 15])
def test_real_fourier_is_orthonormal(nlon):
    """Φᵀ keeps norms and Φ inverts it, for even and odd numbers of longitudes."""
    x = torch.randn(3, 5, nlon, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = real_fourier(x)
    assert c.shape == (3, 5, 2 * (nlon // 2 + 1))
    torch.testing.assert_close((c ** 2).sum(-1), (x ** 2).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(real_fourier_inverse(c, nlon), x, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(c[..., 1]) == 0 and (nlon % 2 or torch.count_nonzero(c[..., -1]) == 0)


@pytest.mark.parametrize("grid", [Grid.regular(8, 16), Grid.regular(9, 15, poles=True)], ids=["8x16", "9x15poles"])
def test_full_rank_factor_reproduces_the_smoother_covariance(grid):
    """rank_tol=0: Ŝ Ŝᵀ = S Sᵀ (pole rows included) to round-off; Ŝᵀ x equals the dense matrix's."""
    s = GaussianSmoother(grid, 1500.0)
    S = s.matrix()
    lr = LowRankSmoother(s, 0.0)
    shat = lr.matrix()
    torch.testing.assert_close(shat @ shat.T, S @ S.T, rtol=0, atol=1e-12)
    x = torch.randn(2, *grid.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lr.transpose_apply(x), x.reshape(2, -1) @ shat, rtol=1e-12, atol=1e-12)
    c = torch.randn(2, lr.rank, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(lr.apply(c).reshape(2, -1), c @ shat.T, rtol=1e-12, atol=1e-12)


def test_truncation_error_is_the_largest_dropped_eigenvalue():
    """Truncated at the default tolerance on a 24 x 48 grid (L = 1.5 spacings): fewer columns, and
    ‖S Sᵀ − Ŝ Ŝᵀ‖₂ equals the largest dropped eigenvalue, itself ≤ rank_tol² λ_max."""
    grid = Grid.regular(24, 48)
    s = GaussianSmoother(grid, 1.5 * 6371.0 * np.deg2rad(7.5))
    S = s.matrix()
    lr = LowRankSmoother(s, RANK_TOL)
    assert lr.rank < 0.8 * 24 * 48
    cov = S @ S.T
    lam_max = float(torch.linalg.eigvalsh(cov)[-1])
    err = float(torch.linalg.matrix_norm(cov - lr.matrix() @ lr.matrix().T, ord=2))
    assert 0 < lr.dropped_eigenvalue <= RANK_TOL ** 2 * lam_max * (1 + 1e-9)
    assert err == pytest.approx(lr.dropped_eigenvalue, rel=1e-6)


@pytest.mark.parametrize("tol", [-0.1, 1.0, float("nan")])
def test_bad_rank_tol_is_refused(tol):
    with pytest.raises(ValueError, match="rank_tol"):
        LowRankSmoother(GaussianSmoother(Grid.regular(8, 16), 1500.0), tol)


@pytest.mark.slow
def test_truncated_grid_form_keeps_analysis_and_spread():
    """assimilate with the truncated grid form (default tolerance, and a 100x coarser one) gives the dense form's
    ensemble mean, spread and cost to solver tolerance (tol=1e-3), on the same draws."""
    prior = tiny_prior(0)
    fields = synthetic_fields(ntime=420, seed=0)
    day = pd.Timestamp(fields["time"].values[409])
    obs = synthetic_observations(fields, n=80, seed=6, time=day)
    run = dict(members=6, seed=2, tol=1e-3)
    ref = assimilate(prior, obs, day, covariance_form="obs", **run)
    for tol in (RANK_TOL, 1e-1):
        out = assimilate(prior, obs, day, covariance_form="grid", covariance_rank_tol=tol, **run)
        for v in prior.variables:
            a, b = ref[v].values, out[v].values
            scale = float(np.abs(a - a.mean()).max())
            limit = 1e-3 if tol == RANK_TOL else 1e-1
            assert np.abs(a - b).max() <= limit * scale, (v, tol)
            # spread: within 0.5 % (default tolerance) of its largest value, far below the Monte-Carlo error of
            # an ensemble spread (about 1/sqrt(2 (M − 1)), 13 % at 32 members)
            sa, sb = ref[f"{v}_spread"].values, out[f"{v}_spread"].values
            assert np.abs(sa - sb).max() <= 5 * limit * float(sa.max()), (v, tol)
        assert float(out["cost"].item()) == pytest.approx(float(ref["cost"].item()), rel=limit)
    with pytest.raises(ValueError, match="covariance_rank_tol"):
        assimilate(prior, obs, day, members=2, covariance_rank_tol=1.5)
