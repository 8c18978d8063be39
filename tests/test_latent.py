"""latentda.sequential.latent: the L96 VAE prior and latent randomise-then-optimise with an ensemble background."""
from __future__ import annotations

import pytest
import torch

from latentda.sequential import Lorenz96, enkf_pertobs
from latentda.sequential.latent import LatentPriorConfig, latent_rto, train_vae

F64 = torch.float64


class _LinearAutoencoder:
    """x -> z = Pᵀ(x − c), z -> c + P z with P orthogonal: an exact, linear 'VAE' mean map."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.P = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
        self.c = torch.randn(n, generator=g, dtype=F64)

    def encode(self, x):
        return (x - self.c) @ self.P, torch.zeros_like(x)

    def decode(self, z):
        return self.c + z @ self.P.T


def test_latent_rto_with_a_linear_autoencoder_is_the_perturbed_obs_enkf():
    g = torch.Generator().manual_seed(0)
    n, p, N = 8, 5, 6
    H = torch.randn(p, n, generator=g, dtype=F64)
    R = torch.diag(0.3 + torch.rand(p, generator=g, dtype=F64))
    E = torch.randn(N, n, generator=g, dtype=F64) * 2
    y = torch.randn(p, generator=g, dtype=F64)
    Ea = latent_rto(E, y, H, R, _LinearAutoencoder(n, 1), torch.Generator().manual_seed(5), tol=1e-10)
    ref = enkf_pertobs(E, y, H, R, torch.Generator().manual_seed(5))
    assert torch.allclose(Ea, ref, atol=1e-7), (Ea - ref).abs().max()


def test_latent_rto_bad_input():
    ae = _LinearAutoencoder(4, 2)
    E = torch.randn(1, 4, dtype=F64)
    with pytest.raises(ValueError, match="N=1"):
        latent_rto(E, torch.zeros(4, dtype=F64), torch.eye(4, dtype=F64), torch.eye(4, dtype=F64), ae,
                   torch.Generator())
    with pytest.raises(ValueError, match=r"H has shape \(4, 3\)"):
        latent_rto(torch.randn(3, 4, dtype=F64), torch.zeros(4, dtype=F64), torch.eye(4, 3, dtype=F64),
                   torch.eye(4, dtype=F64), ae, torch.Generator())


@pytest.mark.slow
def test_vae_learns_l96_states_and_training_is_deterministic():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = LatentPriorConfig(latent=8, hidden=32, states=1000, steps=300, batch=64, lr=3e-3)
        model = Lorenz96(n=12)
        vae, info = train_vae(model, cfg, log=lambda m: None)
        short = LatentPriorConfig(latent=8, hidden=32, states=200, steps=20, batch=64, lr=3e-3)
        vae1, _ = train_vae(model, short, log=lambda m: None)
        vae2, _ = train_vae(model, short, log=lambda m: None)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(vae1.state_dict().values(), vae2.state_dict().values()):
        assert torch.equal(a, b)
    assert info["recon_rmse"] < 0.7 * 3.6, info  # below the climatological std 3.6 (untrained: above it)
