"""Per-variable weights of the residual modes (latentda.prior.mode_weights): the fit tells structure the modes
really carry from structure they only seem to carry, the weights keep each point's variance, and priors record and
round-trip them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentda.da.ensemble import GaussianSmoother
from latentda.grid import Grid
from latentda.prior import add_mode_weights, load_prior, remainder_std, train_prior
from latentda.prior.loading import prior_from_checkpoint
from latentda.prior.mode_weights import WeightFit, fit_mode_weights, weight_modes
from latentda.testing import TINY_PRIOR_CONFIG, synthetic_fields

GRID = Grid(np.linspace(-82.5, 82.5, 12), np.arange(24) * 15.0)
L_KM = 1200.0
FIT = WeightFit(sizes=(20, 60), networks=2, targets=40)


def _isotropic(n: int, C: int, seed: int) -> np.ndarray:
    """n fields (n, C, nlat, nlon) of the unit-variance isotropic Gaussian model S w."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((n, C, *GRID.shape), generator=g, dtype=torch.float64)
    return GaussianSmoother(GRID, L_KM).apply(w.float()).double().numpy()


def _structured(n: int, patterns: np.ndarray, seed: int) -> np.ndarray:
    """n fields sum_k w_k p_k with w ~ N(0, I): (n, *patterns.shape[1:])."""
    rng = np.random.default_rng(seed)
    return np.einsum("nk,k...->n...", rng.standard_normal((n, patterns.shape[0])), patterns)


def test_fit_keeps_true_modes_and_drops_sampling_noise():
    """Variable 0 is the span of 6 long-range patterns plus a little isotropic noise, and its modes are those
    patterns (right: weight 1); variable 1 is isotropic noise whose modes are the EOFs of 30 noisy days (spurious
    structure: weight <= 0.25)."""
    rng = np.random.default_rng(0)
    patterns = np.zeros((6, 2, *GRID.shape))
    patterns[:, 0] = rng.standard_normal((6, *GRID.shape)) * 0.4  # long-range: independent of distance
    noise = _isotropic(30, 2, seed=1)[:, 1].reshape(30, -1)
    _, s, vt = np.linalg.svd(noise / np.sqrt(30), full_matrices=False)
    spurious = np.zeros((20, 2, *GRID.shape))
    spurious[:, 1] = (s[:20, None] * vt[:20]).reshape(20, *GRID.shape)
    modes = np.concatenate([patterns, spurious])
    scale = np.array([0.1, 1.0])[:, None, None]
    val = _structured(80, patterns, seed=3) + _isotropic(80, 2, seed=4) * scale[None]
    recon_std = np.sqrt((patterns ** 2).sum(0) + scale ** 2)  # the true std (S w has unit variance)
    w, info = fit_mode_weights(modes, recon_std, val, GRID, L_KM, FIT)
    assert w[0] == 1.0 and w[1] <= 0.25, info
    # the fitted score beats the unit weights' for the noisy variable and its spread/skill moves towards 1
    assert info["score"][1] > info["score_unweighted"][1]
    assert info["sizes"] == [20, 60] and info["targets"] == 40 and info["n_days"] == 80
    ss, ss1 = info["spread_skill"]["60"][1], info["spread_skill_unweighted"]["60"][1]
    assert abs(np.log(ss)) < abs(np.log(ss1)) and ss1 < 0.9, info


def test_weights_keep_every_points_variance():
    rng = np.random.default_rng(5)
    modes = rng.standard_normal((4, 2, *GRID.shape)).astype(np.float32) * 0.3
    recon_std = np.full((2, *GRID.shape), 2.0, dtype=np.float32)
    wm = weight_modes(modes, np.array([0.25, 1.0]))
    np.testing.assert_allclose(wm[:, 0], modes[:, 0] * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(wm[:, 1], modes[:, 1])
    total = remainder_std(recon_std, wm).astype(np.float64) ** 2 + (wm.astype(np.float64) ** 2).sum(0)
    np.testing.assert_allclose(total, 4.0, rtol=1e-5)
    with pytest.raises(ValueError, match="weights must be 2 values"):
        weight_modes(modes, np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="weights must be 2 values"):
        weight_modes(modes, np.array([0.5]))


def test_bad_fit_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="candidates"):
        WeightFit(candidates=(1.0, 2.0))
    with pytest.raises(ValueError, match="networks"):
        WeightFit(networks=0)
    with pytest.raises(ValueError, match="sizes"):
        WeightFit(sizes=())
    modes = np.zeros((3, 2, *GRID.shape))
    rs = np.ones((2, *GRID.shape))
    with pytest.raises(ValueError, match="residuals must be"):
        fit_mode_weights(modes, rs, np.zeros((5, 1, *GRID.shape)), GRID, L_KM, FIT)
    with pytest.raises(ValueError, match="not positive definite"):
        fit_mode_weights(modes, np.zeros_like(rs), np.ones((5, 2, *GRID.shape)), GRID, L_KM, FIT)
    with pytest.raises(ValueError, match="non-finite"):
        fit_mode_weights(modes, rs, np.full((5, 2, *GRID.shape), np.nan), GRID, L_KM, FIT)


def test_training_fits_weights_and_old_checkpoints_load_unweighted(tmp_path):
    ds = synthetic_fields(ntime=160, seed=4)
    cfg = dict(TINY_PRIOR_CONFIG, epochs=2, kl_warmup_epochs=1, residual_modes=5)
    p = train_prior(ds, cfg, progress=False)
    info = p.provenance["residual_modes"]
    assert p.config.residual_mode_weights and len(info["weights"]) == 2 and info["n_modes"] == 5
    plain = train_prior(ds, dict(cfg, residual_mode_weights=False), progress=False)
    np.testing.assert_array_equal(p.recon_modes, weight_modes(plain.recon_modes, np.array(info["weights"])))
    assert "weights" not in plain.provenance["residual_modes"]
    # a checkpoint written before the field existed loads as unweighted, and add_mode_weights then fits the same
    ckpt = plain.to_checkpoint()
    meta = json.loads(ckpt["meta_json"])
    del meta["config"]["residual_mode_weights"]
    ckpt["meta_json"] = json.dumps(meta)
    old = prior_from_checkpoint(ckpt, device="cpu")
    assert old.config.residual_mode_weights is False
    new = add_mode_weights(old, ds)
    assert new.config.residual_mode_weights and not old.config.residual_mode_weights
    np.testing.assert_array_equal(new.recon_modes, p.recon_modes)
    assert new.provenance["residual_modes"]["weights"] == info["weights"]
    assert "weights" not in old.provenance["residual_modes"]
    new.save(str(tmp_path / "w.pt"))
    again = load_prior(str(tmp_path / "w.pt"), device="cpu")
    assert again.config.residual_mode_weights and again.provenance["residual_modes"]["weights"] == info["weights"]
    with pytest.raises(ValueError, match="already weighted"):
        add_mode_weights(again, ds)
    bare = train_prior(ds, dict(cfg, residual_modes=0, residual_mode_weights=False), progress=False)
    with pytest.raises(ValueError, match="no residual modes"):
        add_mode_weights(bare, ds)
