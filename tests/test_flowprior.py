"""The flow prior (issue 12 item 2): the latent flow's density, its checkpoint, g∘f, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latentda.prior import PriorConfig, add_flow, load_prior
from latentda.prior.flow import FlowSettings, LatentFlow, fit_flow
from latentda.prior.loading import checkpoint_from_bytes, prior_from_checkpoint
from latentda.testing import synthetic_fields, tiny_prior

SMALL = dict(flow_hidden=16, flow_epochs=8, flow_transforms=2)


@pytest.fixture(scope="module")
def flow_prior():
    torch.set_num_threads(1)
    return add_flow(tiny_prior(0), synthetic_fields(seed=0), **SMALL)


def _banana(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    b = 0.5 * a ** 2 - 1.0 + 0.4 * torch.randn(n, generator=g)
    return torch.stack([a, b], 1)


def test_log_density_integrates_to_one_on_a_2d_toy():
    torch.set_num_threads(1)
    flow = fit_flow(_banana(1024, 1), _banana(256, 2), FlowSettings(hidden=32, epochs=25, transforms=3,
                                                                     batch_size=128), seed=3)
    assert flow.fit_info["val_nll"] < flow.fit_info["val_nll_gaussian"] - 0.05  # it learnt the banana
    # trapezoid quadrature of p(z) on a grid covering the data and the Gaussian tails
    a = torch.linspace(-7, 7, 281, dtype=torch.float32)
    b = torch.linspace(-7, 11, 361, dtype=torch.float32)
    A, B = torch.meshgrid(a, b, indexing="ij")
    with torch.no_grad():
        p = torch.exp(flow.log_prob(torch.stack([A.reshape(-1), B.reshape(-1)], 1)).double()).reshape(A.shape)
    total = np.trapezoid(np.trapezoid(p.numpy(), b.numpy(), axis=1), a.numpy())
    assert abs(total - 1.0) < 5e-3, total
    # and f is a bijection: f⁻¹(f(u)) = u
    u = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(flow.inverse(flow(u)), u, atol=1e-4)


def test_flow_prior_round_trips_bit_identically(flow_prior, tmp_path):
    assert flow_prior.config.flow_prior and flow_prior.flow is not None
    u = torch.randn(5, flow_prior.latent_dim, generator=torch.Generator().manual_seed(1))
    x = flow_prior.decode(u)
    with torch.no_grad():
        assert torch.equal(x, flow_prior.model.decode(flow_prior.flow(u)))   # decode is g∘f
        assert not torch.equal(x, flow_prior.model.decode(u))                # ... not g
    sha = flow_prior.save(str(tmp_path / "flow.pt"))
    back = load_prior(str(tmp_path / "flow.pt"), device="cpu")
    assert torch.equal(back.decode(u), x)
    assert back.checksum() == sha and back.to_bytes() == flow_prior.to_bytes()
    assert back.flow.info()["format_version"] == 1
    # the reconstruction (recon_std, residual modes) stays the VAE's own g(mu(x))
    xs = torch.as_tensor(back.anomalies(synthetic_fields(seed=0).isel(time=slice(0, 3))))
    assert torch.equal(back.reconstruct(xs), tiny_prior(0).reconstruct(xs))


def test_flow_is_deterministic_from_the_seed(flow_prior):
    again = add_flow(tiny_prior(0), synthetic_fields(seed=0), **SMALL)
    a, b = again.flow.to_tensors(), flow_prior.flow.to_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flow_of_wrong_latent_size_is_refused(flow_prior):
    ckpt = checkpoint_from_bytes(flow_prior.to_bytes())
    other = LatentFlow(3, transforms=2, hidden=16)
    ckpt["flow"] = other.to_tensors()
    import json

    meta = json.loads(ckpt["meta_json"])
    meta["flow_info"] = other.info()
    ckpt["meta_json"] = json.dumps(meta)
    with pytest.raises(ValueError, match="flow is 3-dimensional.*VAE latent 8-dimensional"):
        prior_from_checkpoint(ckpt, device="cpu")
    meta["flow_info"]["format_version"] = 99
    ckpt["meta_json"] = json.dumps(meta)
    with pytest.raises(ValueError, match="flow format_version 99"):
        prior_from_checkpoint(ckpt, device="cpu")


def test_flow_and_window_refused():
    with pytest.raises(ValueError, match="flow_prior=True with window=1"):
        PriorConfig(flow_prior=True, window=1)
    with pytest.raises(ValueError, match=r"add_flow takes PriorConfig flow_\* options only.*latent_dim"):
        add_flow(tiny_prior(0), synthetic_fields(seed=0), latent_dim=4)
    with pytest.raises(ValueError, match="fit_on='median'"):
        FlowSettings(fit_on="median")


def test_assimilation_with_a_flow_prior_keeps_the_layout(flow_prior):
    import latentda
    from latentda.testing import synthetic_observations

    fields = synthetic_fields(seed=0)
    day = fields.time.values[7]
    obs = synthetic_observations(fields, n=30, seed=2, time=day)
    vae = latentda.assimilate(tiny_prior(0), obs, day, members=6, seed=1)
    pae = latentda.assimilate(flow_prior, obs, day, members=6, seed=1)
    assert set(pae.data_vars) == set(vae.data_vars) and pae.attrs.keys() == vae.attrs.keys()
    assert pae.attrs["latentda:prior_checksum"] == flow_prior.checksum() != vae.attrs["latentda:prior_checksum"]
    truth = fields["air_temperature"].sel(time=day).values
    err = float(np.sqrt(((pae["air_temperature"].values[0] - truth) ** 2).mean()))
    prior_err = float(np.sqrt(((fields["air_temperature"].mean("time").values - truth) ** 2).mean()))
    assert err < prior_err  # the observations pulled the analysis towards the truth


def test_train_prior_with_flow_prior_fits_the_flow_after_the_vae():
    from latentda.prior import train_prior
    from latentda.testing import TINY_PRIOR_CONFIG

    prior = train_prior(synthetic_fields(seed=0), dict(TINY_PRIOR_CONFIG, seed=0, flow_prior=True, **SMALL),
                        progress=False)
    assert prior.flow is not None and prior.flow.fit_info["n_train"] > 0
    vae = tiny_prior(0).model.state_dict()
    assert all(torch.equal(t, vae[k]) for k, t in prior.model.state_dict().items())  # same VAE, flow on top


def test_flow_rotations_by_default_only_for_zonally_symmetric_priors():
    torch.set_num_threads(1)
    base = tiny_prior(0)
    fields = synthetic_fields(seed=0)
    for symmetric, expected in ((True, PriorConfig().flow_rotations), (False, 1)):
        cfg = PriorConfig.model_validate({**base.config.model_dump(), "zonal_symmetry": symmetric})
        pae = add_flow(base.with_parts(cfg), fields, flow_hidden=8, flow_epochs=1, flow_transforms=1)
        assert pae.flow.fit_info["rotations"] == expected
    assert PriorConfig().flow_rotations > 1
