"""Tests of the prior's levers (issue 12 item 1): explained variance, the EOF linear path, beta = 0, depth and
dropout, zonal symmetry from the data's attributes, old checkpoints, and bench/prior_variance.py --quick."""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentda.eof import weighted_eofs
from latentda.grid import Grid
from latentda.prior import ConvVAE, PriorConfig, load_prior, train_prior
from latentda.prior.explained import eof_reconstruction, explained_variance, prior_reconstruction
from latentda.prior.zonal import data_zonal_symmetry
from latentda.testing import TINY_PRIOR_CONFIG, synthetic_fields

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(TINY_PRIOR_CONFIG, epochs=2, kl_warmup_epochs=1, n_harmonics=0)


def _flat_fields(ntime: int = 200, seed: int = 3):
    return synthetic_fields(ntime=ntime, seasonal=False, seed=seed)


def _low_rank(seed: int = 0) -> np.ndarray:
    """(120, 2, 16, 32) samples: 3 random patterns with random amplitudes plus unit white noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(3, 2, 16, 32))
    amps = rng.normal(size=(120, 3)) * np.array([3.0, 2.0, 1.0])
    return (np.einsum("sk,kcij->scij", amps, patterns) + rng.normal(size=(120, 2, 16, 32))).astype(np.float32)


def test_explained_variance_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 2, 4, 8))
    w = Grid.regular(4, 8).weights()
    assert explained_variance(x, x, w, ["a", "b"])["all"] == 1.0
    assert explained_variance(x, np.zeros_like(x), w, ["a", "b"])["all"] == 0.0
    half = x.copy()
    half[:, 1] = 0.0          # a perfect, b not reconstructed at all
    ev = explained_variance(x, half, w, ["a", "b"])
    wx2 = (w[None, None, :, None] * x ** 2).sum(axis=(0, 2, 3))
    assert ev["per_variable"] == {"a": 1.0, "b": 0.0}
    assert ev["all"] == pytest.approx(wx2[0] / wx2.sum())
    with pytest.raises(ValueError, match="3 variable names"):
        explained_variance(x, x, w, ["a", "b", "c"])


def test_weighted_eofs_are_the_best_weighted_rank_k_fit():
    x = _low_rank()
    w = Grid.regular(16, 32).weights()
    ev = {k: explained_variance(x, eof_reconstruction(x, w, k)(x), w, ["a", "b"])["all"] for k in (1, 2, 3, 10)}
    assert ev[1] < ev[2] < ev[3] < ev[10] < 1.0
    # any other rank-3 projection (here: the unweighted EOFs) fits the training samples worse under the weights
    flat = x.reshape(120, -1) - x.reshape(120, -1).mean(0)
    u = np.linalg.svd(flat, full_matrices=False)[2][:3].T
    other = (x.reshape(120, -1).mean(0) + flat @ u @ u.T).reshape(x.shape)
    assert explained_variance(x, other, w, ["a", "b"])["all"] < ev[3]
    mean, modes = weighted_eofs(x, w, 3)
    assert mean.shape == (2 * 16 * 32,) and modes.shape == (2 * 16 * 32, 3)
    with pytest.raises(ValueError, match="k=200"):
        weighted_eofs(x, w, 200)


def test_zonal_eofs_are_the_eofs_of_all_rotations():
    """The EOFs of the rotation-averaged covariance equal the plain weighted EOFs of the sample set extended by all
    longitude rotations (same variances up to the (S nlon - 1) / (nlon (S - 1)) divisor, same leading subspace)."""
    from latentda.eof import zonal_weighted_eofs

    rng = np.random.default_rng(0)
    S, C, nlat, nlon = 200, 2, 8, 16
    w = Grid.regular(nlat, nlon).weights()
    X = np.einsum("sk,kcij->scij", rng.normal(size=(S, 30)) * np.linspace(3, 0.1, 30),
                  rng.normal(size=(30, C, nlat, nlon)))
    rotated = np.concatenate([np.roll(X, r, axis=-1) for r in range(nlon)])
    m1, e1 = zonal_weighted_eofs(X, w, 8)
    m2, e2 = weighted_eofs(rotated, w, 8)
    wv = np.broadcast_to(w[None, :, None], (C, nlat, nlon)).ravel()
    np.testing.assert_allclose(m1, m2, atol=1e-12)
    np.testing.assert_allclose((e1 ** 2 * wv[:, None]).sum(0),
                               (e2 ** 2 * wv[:, None]).sum(0) * (S * nlon - 1) / (nlon * (S - 1)), rtol=1e-6)

    def projector(e):
        q = np.linalg.qr(e * np.sqrt(wv)[:, None])[0]
        return q @ q.T
    np.testing.assert_allclose(projector(e1), projector(e2), atol=1e-6)


def test_linear_path_starts_at_the_eofs():
    x = _low_rank()
    w = Grid.regular(16, 32).weights()
    model = ConvVAE(2, 16, 32, latent_dim=3, base_channels=4, linear_path=True)
    mean, modes = weighted_eofs(x, w, 3)
    model.init_linear_path(torch.tensor(mean, dtype=torch.float32), torch.tensor(modes, dtype=torch.float32),
                           torch.tensor(w, dtype=torch.float32))
    with torch.no_grad():
        mu, logvar = model.encode(torch.tensor(x))
        x_hat = model.decode(mu).numpy()
    np.testing.assert_allclose(mu.std(0).numpy(), 1.0, rtol=1e-3)          # unit-variance coefficients
    np.testing.assert_allclose(x_hat, eof_reconstruction(x, w, 3)(x), atol=2e-4)
    assert torch.all(logvar < 0)                                          # probabilistic-PCA posterior variance
    with pytest.raises(ValueError, match="linear_path=True"):
        ConvVAE(2, 16, 32, latent_dim=3, base_channels=4).init_linear_path(
            torch.zeros(1024), torch.zeros(1024, 3), torch.ones(16))


def test_linear_path_prior_keeps_its_eof_start_on_validation(tmp_path):
    """The state before the first epoch is a candidate (history epoch -1): the kept state is never worse on the
    validation loss than the EOF start; the checkpoint round-trips bit-identically."""
    p = train_prior(_flat_fields(), dict(FAST, epochs=2, beta=0.0, linear_path=True, learning_rate=0.05),
                    progress=False)
    hist = p.history
    assert hist[0]["epoch"] == -1 and p.provenance["epochs_run"] == 2
    assert p.provenance["best_val_loss"] == min(h["val_loss"] for h in hist) <= hist[0]["val_loss"]
    from latentda.prior.train import _param_groups    # the EOF matrices learn at a rate relative to their entries
    groups = _param_groups(p.model, 1e-3)
    assert len(groups) == 3 and all(0 < g["lr"] < 1e-3 for g in groups[1:])
    assert sum(len(g["params"]) for g in groups) == len(list(p.model.parameters()))
    sha = p.save(str(tmp_path / "lin.pt"))
    q = load_prior(str(tmp_path / "lin.pt"), device="cpu")
    assert q.checksum() == sha and q.model.arch()["linear_path"] is True
    z = torch.randn(3, q.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(p.decode(z), q.decode(z))


def test_beta_zero_is_a_deterministic_autoencoder():
    p = train_prior(_flat_fields(), dict(FAST, beta=0.0), progress=False)
    for h in p.history:       # no noise, no KL in the loss: the validation loss is half the reconstruction MSE
        assert h["val_loss"] == pytest.approx(0.5 * h["val_mse"], rel=1e-5)


def test_depth_and_dropout_train_and_round_trip(tmp_path):
    p = train_prior(_flat_fields(), dict(FAST, res_blocks=1, dropout=0.2), progress=False)
    arch = p.model.arch()
    assert arch["res_blocks"] == 1 and arch["dropout"] == 0.2
    assert any(k.startswith("enc_res") for k in p.model.state_dict())
    sha = p.save(str(tmp_path / "deep.pt"))
    q = load_prior(str(tmp_path / "deep.pt"), device="cpu")
    x = torch.as_tensor(p.anomalies(_flat_fields().isel(time=slice(0, 4))))
    assert q.checksum() == sha
    with torch.no_grad():      # eval mode: dropout off, so encoding is deterministic
        torch.testing.assert_close(q.model.encode(x)[0], p.model.encode(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="dropout"):
        PriorConfig(dropout=1.0)
    with pytest.raises(ValueError, match="res_blocks"):
        PriorConfig(res_blocks=-1)


def test_default_network_keeps_its_old_arch_and_old_checkpoints_load(tmp_path):
    """A network without the new options has the arch, modules and bits of before; a checkpoint written before the
    new PriorConfig fields existed (no dropout/res_blocks/linear_path, zonal_symmetry False) loads with the old
    behaviour."""
    model = ConvVAE(2, 16, 32, latent_dim=8, base_channels=8)
    assert set(model.arch()) == {"in_channels", "nlat", "nlon", "latent_dim", "base_channels", "n_down", "max_mult"}
    assert not any(k.startswith(("enc_res", "dec_res", "lin_")) for k in model.state_dict())
    p = train_prior(_flat_fields(), dict(FAST, zonal_symmetry=False), progress=False)
    path = tmp_path / "new.pt"
    p.save(str(path))
    ckpt = torch.load(str(path), weights_only=True)
    meta = json.loads(ckpt["meta_json"])
    for key in ("dropout", "res_blocks", "linear_path"):
        del meta["config"][key]
    ckpt["meta_json"] = json.dumps(meta)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    old = load_prior(str(tmp_path / "old.pt"), device="cpu")
    cfg = old.config
    assert (cfg.dropout, cfg.res_blocks, cfg.linear_path, cfg.zonal_symmetry) == (0.0, 0, False, False)
    z = torch.randn(4, old.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(old.decode(z), p.decode(z))


def test_zonal_symmetry_from_the_data_attributes():
    ds = _flat_fields(ntime=120)
    assert data_zonal_symmetry(ds) is False
    hs = ds.assign_attrs({"latentda:generator": "latentda.sim.heldsuarez"})
    assert data_zonal_symmetry(hs) is True
    assert data_zonal_symmetry(hs.assign_attrs({"latentda:zonally_symmetric": 0})) is False
    assert data_zonal_symmetry(ds.assign_attrs({"latentda:zonally_symmetric": 1})) is True
    p = train_prior(hs, dict(FAST, epochs=1), progress=False)   # zonal_symmetry=None (default): from the data
    assert p.config.zonal_symmetry is True and p.climatology.attrs.get("zonal_symmetry") == 1
    q = train_prior(ds, dict(FAST, epochs=1), progress=False)
    assert q.config.zonal_symmetry is False and "zonal_symmetry" not in q.climatology.attrs
    r = train_prior(hs, dict(FAST, epochs=1, zonal_symmetry=False), progress=False)   # explicit value wins
    assert r.config.zonal_symmetry is False


def test_bench_prior_variance_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_prior_variance", ROOT / "bench" / "prior_variance.py")
    prior_variance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prior_variance)
    out = tmp_path / "pv.json"
    assert prior_variance.main(["--quick", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"eof", "vae", "ae_linear"} and all(r["dim"] == 4 for r in res["rows"])
    for r in rows.values():
        assert set(r["heldout"]["per_variable"]) == {"air_temperature", "eastward_wind"}
        assert 0.0 < r["heldout"]["all"] < 1.0
    assert rows["vae"]["stop_reason"] in {"epochs", "early_stopping", "max_minutes"}
    # the EOF-initialised autoencoder starts at (nearly) the EOFs' skill and is far above a 3-epoch VAE
    assert rows["ae_linear"]["heldout"]["all"] > rows["eof"]["heldout"]["all"] - 0.02
    assert rows["ae_linear"]["heldout"]["all"] > rows["vae"]["heldout"]["all"] + 0.1
    table = prior_variance.table([str(out)])
    assert table.splitlines()[2].startswith("| 4 | eof |") and "ae_linear" in table


def test_prior_reconstruction_matches_the_model(tmp_path):
    p = train_prior(_flat_fields(), dict(FAST, epochs=1), progress=False)
    x = p.anomalies(_flat_fields().isel(time=slice(0, 3)))
    with torch.no_grad():
        ref = p.model.decode(p.model.encode(torch.as_tensor(x))[0]).double().numpy()
    np.testing.assert_allclose(prior_reconstruction(p, x, batch=2), ref, atol=1e-5)   # batching: float32 rounding
