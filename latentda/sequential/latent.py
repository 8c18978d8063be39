"""The latent route on Lorenz-96: a small VAE prior of L96 states, analysed by randomise-then-optimise (RTO)
in its latent space with the ensemble forecast as the background.

VAE (Kingma & Welling 2013): MLP encoder q(z | x) = N(μ(x), diag e^{ℓ(x)}), MLP decoder g(z), trained on states of a
free run (another seed than any truth scored) with the negative ELBO per state
    ½ ‖(x − g(z)) / (σ_c σ_r)‖² + KL(q(z | x) ‖ N(0, I)),
σ_c = 3.6 the climatological standard deviation and σ_r the assumed reconstruction error (standardised units).

Analysis (one cycle; members m = 1..N of the forecast ensemble x_b,m): encode z_b,m = μ(x_b,m); the latent
ensemble anomalies Z = infl · (z_b − z̄_b) / √(N − 1) (d, N) are the background covariance Z Zᵀ; each member keeps
its decoder residual r_m = x_b,m − g(z_b,m) (the part of the state the decoder does not represent). RTO: draw
ε_m ~ N(0, R) (centred over members); the prior draw is the member itself; minimise over w ∈ R^N

    J_m(w) = ½ ‖w‖² + ½ (y − ε_m − H x_m(w))ᵀ R⁻¹ (y − ε_m − H x_m(w)),   x_m(w) = g(z_b,m + Z w) + r_m

for all members at once with :func:`latentda.da.solver.minimize_batched` (preconditioned by the Gauss-Newton
inverse Hessian (I + Gᵀ R⁻¹ G)⁻¹, G = H (g(z̄_b + Z) − g(z̄_b)) the ensemble estimate of the observed decoder
Jacobian times Z); x_a,m = x_m(w_m). A stochastic, iterative ensemble analysis through the decoder: for an
invertible linear autoencoder it is exactly :func:`.ensemble_filters.enkf_pertobs` (same draws; tests check it).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ..da.solver import minimize_batched
from .amortised_net import CLIM_MEAN, CLIM_STD
from .checks import check_ensemble, check_inflation, check_obs
from .l96 import Lorenz96
from .twin import Twin, ensemble_spread


@dataclass(frozen=True)
class LatentPriorConfig:
    """VAE size and training budget."""

    latent: int = 32
    hidden: int = 128
    recon_std: float = 0.05          # σ_r, standardised units
    states: int = 20_000             # training states from a free run, one every ``every`` steps
    every: int = 5
    steps: int = 3000
    batch: int = 256
    lr: float = 1e-3
    seed: int = 0
    train_seed: int = 2000

    def __post_init__(self) -> None:
        for name in ("latent", "hidden", "states", "every", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"LatentPriorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.recon_std > 0:
            raise ValueError(f"LatentPriorConfig.recon_std must be > 0, got {self.recon_std}")


class L96VAE(nn.Module):
    """MLP VAE of n-variable states; ``encode`` x (B, n) -> (μ, ℓ) (B, d) each, ``decode`` z (B, d) -> x (B, n)."""

    def __init__(self, n: int, config: LatentPriorConfig):
        super().__init__()
        self.n, self.config = n, config
        h, d = config.hidden, config.latent
        self.enc = nn.Sequential(nn.Linear(n, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 2 * d))
        self.dec = nn.Sequential(nn.Linear(d, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, n))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc((x - CLIM_MEAN) / CLIM_STD).chunk(2, -1)
        return mu, logvar.clamp(-20, 5)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return CLIM_MEAN + CLIM_STD * self.dec(z)


def save_vae(vae: L96VAE, path) -> None:
    """Write the VAE's config, n and weights (read back by :func:`load_vae`)."""
    torch.save({"config": asdict(vae.config), "n": vae.n, "state": vae.state_dict()}, path)


def load_vae(path, device: str | torch.device = "cpu") -> L96VAE:
    """A VAE written by :func:`save_vae` (``weights_only=True``), float64, eval mode."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    vae = L96VAE(blob["n"], LatentPriorConfig(**blob["config"])).double()
    vae.load_state_dict(blob["state"])
    return vae.to(device).eval()


def train_vae(model: Lorenz96, config: LatentPriorConfig = LatentPriorConfig(),
              log: Callable[[str], None] = print) -> tuple[L96VAE, dict]:
    """Train :class:`L96VAE` (float64) on a free run of ``model``; returns it (eval mode) and a summary with the
    reconstruction RMSE (physical units) on held-out states of another free run."""
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()

    def states(seed: int, count: int) -> torch.Tensor:
        x = model.on_attractor(seed)
        out = []
        for _ in range(count):
            x = model.step(x, config.every)
            out.append(x)
        return torch.stack(out)

    X, X_val = states(config.train_seed, config.states), states(config.train_seed + 1, min(2000, config.states))
    vae = L96VAE(model.n, config).double()
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed + 1)
    for s in range(config.steps):
        for pg in opt.param_groups:
            pg["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * s / config.steps))
        x = X[torch.randint(len(X), (config.batch,), generator=g)]
        mu, logvar = vae.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g, dtype=mu.dtype)
        rec = 0.5 * (((x - vae.decode(z)) / (CLIM_STD * config.recon_std)) ** 2).sum(-1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
        loss = (rec + kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        rmse = float(((vae.decode(vae.encode(X_val)[0]) - X_val) ** 2).mean().sqrt())
    info = {"recon_rmse": rmse, "minutes": (time.perf_counter() - t0) / 60, "final_loss": float(loss.detach())}
    log(f"latent prior: {info}")
    return vae, info


def latent_rto(E: torch.Tensor, y: torch.Tensor, H: torch.Tensor, R: torch.Tensor, vae: L96VAE,
               generator: torch.Generator, infl: float = 1.0, tol: float = 1e-3,
               max_iter: int = 50) -> torch.Tensor:
    """One latent RTO analysis (module docstring): ``E`` (N, n) float64, ``y`` (p,), ``H`` (p, n), ``R`` (p, p)
    -> analysis ensemble (N, n)."""
    N, n = check_ensemble(E)
    check_obs(n, y, H, R)
    check_inflation(infl)
    with torch.no_grad():
        zb = vae.encode(E)[0]                                     # (N, d)
        resid = E - vae.decode(zb)
        Z = infl * (zb - zb.mean(0)).T / math.sqrt(N - 1)         # (d, N)
        zbar = zb.mean(0, keepdim=True)
        G = (vae.decode(zbar + Z.T) - vae.decode(zbar)) @ H.T    # (N, p): rows = columns of H J Z
        Rinv = torch.linalg.inv(R)
        h0 = torch.linalg.inv(torch.eye(N, dtype=E.dtype, device=E.device) + G @ Rinv @ G.T)
        h0 = 0.5 * (h0 + h0.T)
        z = torch.randn(N, y.shape[-1], generator=generator, dtype=E.dtype, device=E.device)
        eps = z @ torch.linalg.cholesky(R).T
        target = y - (eps - eps.mean(0))                          # (N, p) perturbed observations, as enkf_pertobs

    def state(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return vae.decode(zb[idx] + w @ Z.T) + resid[idx]

    def fun_grad(w: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            d = target[idx] - state(w, idx) @ H.T
            J = 0.5 * (w * w).sum(-1) + 0.5 * ((d @ Rinv) * d).sum(-1)
            (grad,) = torch.autograd.grad(J.sum(), w)
        return J.detach(), grad

    w0 = torch.zeros(N, N, dtype=E.dtype, device=E.device)
    res = minimize_batched(fun_grad, w0, tol=tol, max_iter=max_iter, h0=h0)
    with torch.no_grad():
        return state(res.z, torch.arange(N))


@dataclass
class LatentRTO:
    """Cycling wrapper of :func:`latent_rto` for :func:`.twin.run_twin`, with post-analysis inflation."""

    vae: L96VAE
    members: int = 20
    infl: float = 1.04

    def analyse(self, E, y, twin: Twin, generator):
        Ea = latent_rto(E, y, twin.H, twin.R, self.vae, generator, infl=1.0)
        mu = Ea.mean(0, keepdim=True)
        return mu + self.infl * (Ea - mu)

    def spread(self, E) -> float:
        return ensemble_spread(E)


__all__ = ["L96VAE", "LatentPriorConfig", "LatentRTO", "latent_rto", "load_vae", "save_vae", "train_vae"]
