"""Tests of the VAE prior: training, determinism, checkpoints, compatibility checks, config validation, samples."""
from __future__ import annotations

import hashlib
import io
import re
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from latentda.grid import Grid
from latentda.normalization import climatology_at
from latentda.prior import ConvVAE, PriorConfig, load_prior, remainder_std, residual_modes, train_prior
from latentda.prior.vae import choose_n_down, grid_padding, pad_sphere
from latentda.testing import TINY_PRIOR_CONFIG, synthetic_fields, synthetic_observations, tiny_prior

FAST = dict(TINY_PRIOR_CONFIG, epochs=2, kl_warmup_epochs=1)


@pytest.fixture(scope="module")
def prior():
    return tiny_prior()


@pytest.fixture(scope="module")
def saved(prior, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "prior.pt"
    sha = prior.save(str(path))
    return path, sha


# ---------------------------------------------------------------------------------------------- training quality
def test_training_lowers_validation_loss(prior):
    val = [h["val_loss"] for h in prior.history]
    assert len(val) >= 5
    assert min(val) < 0.5 * val[0], val
    assert prior.provenance["best_epoch"] == int(np.argmin(val))


def test_reconstruction_beats_climatology_on_unseen_days(prior):
    # synthetic_fields is prefix-consistent: days 400.. of a longer series were never seen in training
    unseen = synthetic_fields(ntime=460).isel(time=slice(400, None))
    x = torch.from_numpy(prior.anomalies(unseen))
    x_hat = prior.reconstruct(x).cpu()
    w = torch.as_tensor(prior.grid.weights(), dtype=torch.float32).view(1, 1, -1, 1)
    rmse_vae = torch.sqrt(((x - x_hat) ** 2 * w).mean(dim=(0, 2, 3)))
    rmse_clim = torch.sqrt((x ** 2 * w).mean(dim=(0, 2, 3)))   # climatology = zero anomaly
    assert (rmse_vae < 0.4 * rmse_clim).all(), (rmse_vae, rmse_clim)
    # recon_std is the same kind of error on the validation days
    assert prior.recon_std.shape == (2, 16, 32)
    assert 0.5 * rmse_vae.mean() < prior.recon_std.mean() < 2.0 * rmse_vae.mean()


def test_samples_have_data_variance(prior):
    day = "2000-07-15"
    s = prior.sample(400, seed=1, time=day)
    assert s.shape == (400, 2, 16, 32) and np.isfinite(s).all()
    _, std = prior.climatology_tensors(day)
    ratio = s.var(axis=0).mean(axis=(1, 2)) / (std.cpu().numpy() ** 2).mean(axis=(1, 2))
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio
    np.testing.assert_array_equal(s, prior.sample(400, seed=1, time=day))
    # a smaller batch may use another convolution algorithm: same draws up to float32 rounding
    np.testing.assert_allclose(s[:10], prior.sample(10, seed=1, time=day), rtol=1e-5, atol=1e-3)
    assert not np.allclose(s[:10], prior.sample(10, seed=2, time=day), atol=1e-2)


def test_decode_is_differentiable_and_physical_units(prior):
    z = torch.zeros(3, prior.latent_dim, requires_grad=True)
    x = prior.decode(z)
    assert x.shape == (3, 2, 16, 32) and x.device == prior.device
    x.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.model.parameters())
    day = np.datetime64("2000-03-01")
    phys = prior.to_physical(x.detach(), day)
    m, s = climatology_at(prior.climatology, "eastward_wind", [day])
    np.testing.assert_allclose(phys[:, 1].numpy(), x.detach()[:, 1].numpy() * s[0] + m[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(prior.to_anomaly(phys, day), x.detach(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="latent_dim"):
        prior.decode(torch.zeros(3, prior.latent_dim + 1))


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_weights_and_progress_bar(capsys):
    ds = synthetic_fields(ntime=160, seed=3)
    rng_before = torch.get_rng_state()
    a = train_prior(ds, FAST, progress=True)
    err = capsys.readouterr().err
    b = train_prior(ds, FAST, progress=False)
    assert capsys.readouterr().err == ""
    assert "train prior" in err
    assert torch.equal(rng_before, torch.get_rng_state()), "training must not consume the global RNG"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.provenance["data_sha256"] == b.provenance["data_sha256"]
    c = train_prior(ds, dict(FAST, seed=1), progress=False)
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_max_minutes_stops_training():
    p = train_prior(synthetic_fields(ntime=160), dict(FAST, epochs=50, max_minutes=1e-5), progress=False)
    assert p.provenance["stop_reason"] == "max_minutes"
    assert p.provenance["epochs_run"] == 1
    from latentda.prior import training_summary

    line = training_summary(p)  # what `latentda train` prints: stop reason, epochs, final validation error
    assert "stopped by the max_minutes=1e-05 time limit after 1/50 epoch(s)" in line, line
    assert "kept epoch 1 with validation loss" in line and "validation RMSE" in line, line


def test_training_summary_names_early_stopping_and_epochs(prior):
    from latentda.prior import training_summary

    line = training_summary(prior)
    reason = prior.provenance["stop_reason"]
    assert {"epochs": "the epoch limit (epochs=", "early_stopping": "early stopping"}[reason] in line, line
    assert f"after {prior.provenance['epochs_run']}/{prior.config.epochs} epoch(s)" in line
    for v in prior.variables:
        assert v in line


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(prior, saved):
    path, sha = saved
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == prior.checksum()
    loaded = load_prior(str(path), device="cpu")
    z = torch.randn(5, prior.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior.decode(z), loaded.decode(z))
    assert loaded.checksum() == sha
    assert loaded.save(str(path.parent / "again.pt")) == sha
    assert loaded.variables == prior.variables
    assert loaded.var_attrs == prior.var_attrs and loaded.var_attrs["air_temperature"]["units"] == "K"
    assert loaded.grid.matches(prior.grid) and loaded.latent_dim == prior.latent_dim
    assert loaded.config == prior.config
    np.testing.assert_array_equal(loaded.recon_std, prior.recon_std)
    xr.testing.assert_identical(loaded.climatology, prior.climatology)
    assert loaded.history == prior.history
    for key in ("version", "git_sha", "data_sha256", "seed", "created", "torch_version"):
        assert key in loaded.provenance and loaded.provenance[key] == prior.provenance[key]
    assert re.fullmatch(r"[0-9a-f]{64}", loaded.provenance["data_sha256"])
    # any fsspec URL works (memory:// stands in for s3://)
    assert prior.save("memory://ckpt/prior.pt", storage_options=None) == sha
    assert load_prior("memory://ckpt/prior.pt", device="cpu", storage_options={}).checksum() == sha
    # loadable with a plain weights_only torch.load (no latentda classes pickled)
    ckpt = torch.load(str(path), weights_only=True)
    assert ckpt["format"] == "latentda.prior"


def test_checkpoint_refused_for_grid_mismatch(prior, saved):
    loaded = load_prior(str(saved[0]), device="cpu")
    with pytest.raises(ValueError, match=r"grid mismatch.*8x16"):
        loaded.check_compatible(synthetic_fields(ntime=5, nlat=8, nlon=16))
    shifted = Grid(prior.grid.lat, prior.grid.lon + 1.0)
    with pytest.raises(ValueError, match="grid mismatch.*lon"):
        loaded.check_compatible(shifted)
    loaded.check_compatible(synthetic_fields(ntime=5))  # same grid and variables: fine


def test_checkpoint_refused_for_variable_mismatch(prior):
    ds = synthetic_fields(ntime=5)
    with pytest.raises(ValueError, match="variable mismatch.*eastward_wind"):
        prior.check_compatible(ds[["air_temperature"]])
    with pytest.raises(ValueError, match="variable mismatch.*northward_wind"):
        prior.check_compatible(ds, variables=["air_temperature", "northward_wind"])
    with pytest.raises(ValueError, match="variable mismatch.*eastward_wind"):
        prior.check_compatible(prior.grid, variables=["air_temperature"])
    bad_units = ds.copy()
    bad_units["air_temperature"] = bad_units["air_temperature"].assign_attrs(units="degC")
    with pytest.raises(ValueError, match="units mismatch.*air_temperature"):
        prior.check_compatible(bad_units)


def test_load_refuses_non_checkpoints(saved, tmp_path):
    path, _ = saved
    good = path.read_bytes()
    cases = {
        "random.pt": np.random.default_rng(0).bytes(5000),
        "truncated.pt": good[: len(good) // 2],
        "empty.pt": b"",
    }
    flipped = bytearray(good)  # corrupt bytes inside the archive (CRC of a member no longer matches)
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 64
    flipped[start:start + 16] = bytes(16)
    cases["corrupted.pt"] = bytes(flipped)
    buf = io.BytesIO()
    torch.save(ConvVAE(2, 16, 32, 8, 8).state_dict(), buf)
    cases["state_dict.pt"] = buf.getvalue()
    ckpt = torch.load(str(path), weights_only=True)
    for name, change in {"version.pt": {"format_version": 99}, "format.pt": {"format": "other"}}.items():
        buf = io.BytesIO()
        torch.save({**ckpt, **change}, buf)
        cases[name] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({k: v for k, v in ckpt.items() if k != "climatology"}, buf)
    cases["missing.pt"] = buf.getvalue()
    expected = {"random.pt": "not a torch zip", "truncated.pt": "not a torch zip", "empty.pt": "not a torch zip",
                "corrupted.pt": "CRC", "state_dict.pt": "bare state_dict", "version.pt": "format_version 99",
                "format.pt": "format is 'other'", "missing.pt": "missing keys.*climatology"}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(str(p)) + ".*" + expected[name]):
            load_prior(str(p), device="cpu")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_prior(str(tmp_path / "nope.pt"))


# ---------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("kwargs, field", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"val_fraction": 1.5}, "val_fraction"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"beta": float("nan")}, "beta"),
    ({"device": "gpu"}, "device"),
    ({"max_minutes": 0}, "max_minutes"),
    ({"latent_size": 8}, "latent_size"),   # unknown key
])
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PriorConfig(**kwargs)
    with pytest.raises(ValueError, match=field):
        train_prior(synthetic_fields(ntime=20), kwargs, progress=False)


def test_config_defaults_and_roundtrip():
    cfg = PriorConfig()
    assert (cfg.latent_dim, cfg.base_channels, cfg.beta, cfg.epochs, cfg.batch_size) == (64, 32, 1.0, 60, 32)
    assert (cfg.patience, cfg.val_fraction, cfg.seed, cfg.device, cfg.n_harmonics) == (6, 0.1, 0, "auto", 3)
    assert cfg.max_minutes is None
    assert PriorConfig.model_validate(cfg.model_dump()) == cfg


def test_n_down_choice_and_padding():
    """Grids 2**n divides keep their n (and network); others are padded to the next multiple, not refused."""
    assert choose_n_down(48, 96) == 3 and choose_n_down(16, 32) == 3 and choose_n_down(12, 24) == 2
    assert choose_n_down(73, 144) == 3 and choose_n_down(15, 30) == 3 and choose_n_down(12, 24, n_down=3) == 3
    assert grid_padding(48, 96, 3) == (0, 0, 0) and grid_padding(73, 144, 3) == (3, 4, 0)
    assert grid_padding(181, 360, 3) == (1, 2, 0) and grid_padding(19, 36, 2) == (0, 1, 0)
    with pytest.raises(ValueError, match="2x8"):
        choose_n_down(2, 8)
    m = ConvVAE(4, 48, 96, latent_dim=64, base_channels=8)
    assert m.decode(torch.zeros(2, 64)).shape == (2, 4, 48, 96)
    m = ConvVAE(2, 19, 37, latent_dim=8, base_channels=4)
    assert m.decode(torch.zeros(2, 8)).shape == (2, 2, 19, 37) and m.coarse == (3, 5)
    assert m.encode(torch.zeros(2, 2, 19, 37))[0].shape == (2, 8)


def test_spherical_padding():
    x = torch.randn(2, 3, 6, 8)
    ref = F.pad(F.pad(x, (2, 2, 0, 0), mode="circular"), (0, 0, 2, 2), mode="replicate")
    assert torch.equal(pad_sphere(x, 2), ref)


# ---------------------------------------------------------------------------------------------- testing helpers
def test_synthetic_fields_and_observations():
    ds = synthetic_fields(ntime=30, seed=5)
    assert ds["air_temperature"].dims == ("time", "lat", "lon")
    assert ds["eastward_wind"].attrs["units"] == "m s-1" and ds["air_temperature"].attrs["standard_name"]
    xr.testing.assert_identical(ds, synthetic_fields(ntime=30, seed=5))
    t = float(ds["air_temperature"].mean())
    assert 250 < t < 300
    obs = synthetic_observations(ds, n=7, seed=1, time=ds.time.values[3])
    assert len(obs) == 7 * 2 and set(obs.columns) >= {"time", "station_id", "lat", "lon", "variable", "value",
                                                      "error"}
    assert obs.equals(synthetic_observations(ds, n=7, seed=1, time=ds.time.values[3]))
    assert len(synthetic_observations(ds, n=3, error=0.5)) == 3 * 2 * 30


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_and_load_on_cuda(tmp_path):
    ds = synthetic_fields(ntime=160)
    cfg = dict(FAST, device="cuda")
    a = train_prior(ds, cfg, progress=False)
    b = train_prior(ds, cfg, progress=False)
    assert a.device.type == "cuda" and a.decode(torch.zeros(2, 8)).device.type == "cuda"
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    sha = a.save(str(tmp_path / "p.pt"))
    cpu = load_prior(str(tmp_path / "p.pt"), device="cpu")
    assert cpu.checksum() == sha
    z = torch.randn(4, 8)
    torch.testing.assert_close(cpu.decode(z), a.decode(z).cpu(), rtol=1e-4, atol=1e-4)


def test_zonal_symmetry_option():
    ds = synthetic_fields(ntime=160, seed=4)
    p = train_prior(ds, dict(FAST, epochs=1, zonal_symmetry=True), progress=False)
    mean = p.climatology["air_temperature_mean"].values
    assert np.allclose(mean, mean[:, :, :1]), "climatology must not depend on longitude"
    assert not np.allclose(p.climatology["air_temperature_var"].values[0], 0)
    q = train_prior(ds, dict(FAST, epochs=1, zonal_symmetry=True), progress=False)
    assert all(torch.equal(v, q.model.state_dict()[k]) for k, v in p.model.state_dict().items())


# ---------------------------------------------------------------------------------------------- residual modes
def test_residual_modes_are_the_residual_second_moment(prior):
    """All modes together reproduce the residuals' second moment rᵀr / T; fewer modes carry the leading part;
    the modes' signs are fixed, so the result is reproducible; remainder_std completes the variance."""
    fields = synthetic_fields(seed=0).isel(time=slice(0, 12))
    a = prior.anomalies(fields)
    r = (torch.as_tensor(a, dtype=torch.float32) - prior.reconstruct(torch.as_tensor(a, dtype=torch.float32)))
    r = r.reshape(12, -1).double().numpy()
    full, info = residual_modes(prior, a, 50)
    assert full.shape == (12, *prior.shape) and info == {"n_modes": 12, "n_days": 12, "explained_fraction": 1.0}
    m = full.reshape(12, -1).astype(np.float64)
    np.testing.assert_allclose(m.T @ m, r.T @ r / 12, atol=1e-5 * np.abs(r).max() ** 2)
    lead, info3 = residual_modes(prior, a, 3)
    np.testing.assert_array_equal(lead, full[:3])
    assert 0 < info3["explained_fraction"] < 1
    big = np.abs(m).argmax(axis=1)
    assert (m[np.arange(12), big] > 0).all()
    rest = remainder_std(prior.recon_std, lead)
    np.testing.assert_allclose(rest ** 2, np.clip(prior.recon_std.astype(np.float64) ** 2
                                                   - (lead.astype(np.float64) ** 2).sum(0), 0, None), rtol=1e-5)
    np.testing.assert_array_equal(remainder_std(prior.recon_std, None), prior.recon_std)
    with pytest.raises(ValueError, match="n_modes"):
        residual_modes(prior, a, 0)
    with pytest.raises(ValueError, match="anomalies must be"):
        residual_modes(prior, a[:, :1], 3)


def test_training_with_residual_modes_and_checkpoint_round_trip(tmp_path):
    ds = synthetic_fields(ntime=160, seed=4)
    p = train_prior(ds, dict(FAST, residual_modes=5), progress=False)
    assert p.recon_modes.shape == (5, *p.shape) and p.provenance["residual_modes"]["n_modes"] == 5
    sha = p.save(str(tmp_path / "m.pt"))
    q = load_prior(str(tmp_path / "m.pt"), device="cpu")
    np.testing.assert_array_equal(q.recon_modes, p.recon_modes)
    assert q.checksum() == sha
    again = train_prior(ds, dict(FAST, residual_modes=5), progress=False)  # deterministic (provenance has times)
    np.testing.assert_array_equal(again.recon_modes, p.recon_modes)
    plain = train_prior(ds, FAST, progress=False)
    assert plain.recon_modes is None and "recon_modes" not in plain.to_checkpoint()
    with pytest.raises(ValueError, match="recon_modes"):
        plain.__class__(plain.model, config=plain.config, variables=plain.variables, grid=plain.grid,
                        climatology=plain.climatology, var_attrs=plain.var_attrs, provenance=plain.provenance,
                        recon_std=plain.recon_std, recon_modes=np.zeros((2, 1, 3, 3)))
