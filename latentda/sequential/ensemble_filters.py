"""Ensemble Kalman analysis steps, DAPPER style: pure functions of the forecast ensemble and one observation set.

Notation (Sakov & Oke 2008; DAPPER ``da_methods.ensemble``): forecast ensemble E (..., N, n) of N members (rows)
of an n-vector state, ensemble mean μ, anomalies A = E − μ, observed ensemble E Hᵀ with anomalies Y (..., N, p),
mean innovation δ = y − H μ, N₁ = N − 1. Everything is batched over leading dimensions (independent experiments),
in the dtype and on the device of ``E``. Inflation and random rotation are applied after the analysis
(:func:`inflate`, :func:`rotate`), as in DAPPER's ``post_process``.
"""
from __future__ import annotations

import math

import torch

from .checks import check_ensemble, check_inflation, check_obs, check_radius
from .localisation import gaspari_cohn


def _anomalies(E: torch.Tensor, H: torch.Tensor, y: torch.Tensor):
    mu = E.mean(-2, keepdim=True)
    A = E - mu
    Eo = E @ H.T
    Y = Eo - Eo.mean(-2, keepdim=True)
    dy = y - Eo.mean(-2)
    return mu, A, Eo, Y, dy


def enkf_pertobs(E: torch.Tensor, y: torch.Tensor, H: torch.Tensor, R: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Stochastic EnKF with perturbed observations (Burgers et al. 1998), centred perturbations:
    x_a,m = x_m + K (y − d_m − H x_m),  K = Aᵀ Y (YᵀY + N₁ R)⁻¹,  d_m ~ N(0, R) minus their member mean.

    ``E`` (..., N, n), ``y`` (..., p), ``H`` (p, n), ``R`` (p, p), ``generator`` on E's device -> (..., N, n)."""
    N, n = check_ensemble(E)
    p = check_obs(n, y, H, R)
    _, A, Eo, Y, _ = _anomalies(E, H, y)
    z = torch.randn(E.shape[:-1] + (p,), generator=generator, dtype=E.dtype, device=E.device)
    D = z @ torch.linalg.cholesky(R).T
    D = D - D.mean(-2, keepdim=True)
    C = Y.transpose(-1, -2) @ Y + (N - 1) * R                       # (..., p, p)
    innov = y[..., None, :] - D - Eo                                 # (..., N, p)
    return E + torch.linalg.solve(C, innov.transpose(-1, -2)).transpose(-1, -2) @ (Y.transpose(-1, -2) @ A)


def _transform(Yw: torch.Tensor, dyw: torch.Tensor, N: int) -> torch.Tensor:
    """Symmetric square-root ETKF weights W = 1 wᵀ + T with Yw = Y R^{-1/2} (..., N, p), dyw (..., p):
    eigh(Yw Ywᵀ + N₁ I) = V diag(d) Vᵀ, T = √N₁ V d^{-1/2} Vᵀ, w = dywᵀ Ywᵀ V d⁻¹ Vᵀ (Hunt et al. 2007)."""
    N1 = N - 1
    C = Yw @ Yw.transpose(-1, -2) + N1 * torch.eye(N, dtype=Yw.dtype, device=Yw.device)
    d, V = torch.linalg.eigh(C)
    T = (V * d[..., None, :].rsqrt()) @ V.transpose(-1, -2) * math.sqrt(N1)
    w = ((Yw @ dyw[..., :, None]).transpose(-1, -2) @ V / d[..., None, :]) @ V.transpose(-1, -2)  # (..., 1, N)
    return T + w


def etkf(E: torch.Tensor, y: torch.Tensor, H: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """ETKF, symmetric square root (Bishop et al. 2001; Hunt et al. 2007): E_a = μ + (1 wᵀ + T) A.

    ``E`` (..., N, n), ``y`` (..., p), ``H`` (p, n), ``R`` (p, p) -> (..., N, n)."""
    N, n = check_ensemble(E)
    check_obs(n, y, H, R)
    mu, A, _, Y, dy = _anomalies(E, H, y)
    L = torch.linalg.cholesky(R)
    Yw = torch.linalg.solve_triangular(L, Y.transpose(-1, -2), upper=False).transpose(-1, -2)
    dyw = torch.linalg.solve_triangular(L, dy[..., None], upper=False)[..., 0]
    return mu + _transform(Yw, dyw, N) @ A


def letkf(E: torch.Tensor, y: torch.Tensor, H: torch.Tensor, R: torch.Tensor, distances: torch.Tensor,
          radius: float) -> torch.Tensor:
    """LETKF (Hunt et al. 2007) with R-localisation: for each state variable i, the ETKF of :func:`etkf` with
    R_i⁻¹ = diag(ρ_i) R⁻¹, ρ_ij = Gaspari-Cohn(distances_ij, radius) (:mod:`.localisation`), applied to
    variable i only. ``radius`` = inf gives the ETKF.

    ``E`` (..., N, n), ``y`` (..., p), ``H`` (p, n), ``R`` (p, p) diagonal, ``distances`` (n, p) state-to-obs
    distances (grid units), ``radius`` > 0 -> (..., N, n)."""
    N, n = check_ensemble(E)
    p = check_obs(n, y, H, R)
    check_radius(radius)
    if tuple(distances.shape) != (n, p):
        raise ValueError(f"distances has shape {tuple(distances.shape)}; expected (n, p) = ({n}, {p})")
    r = torch.diagonal(R)
    if not torch.equal(R, torch.diag(r)):
        raise ValueError("LETKF R-localisation needs a diagonal observation-error covariance R")
    mu, A, _, Y, dy = _anomalies(E, H, y)
    s = (gaspari_cohn(distances, radius) / r).sqrt()                 # (n, p) sqrt of localised R⁻¹
    Yw = Y[..., None, :, :] * s[:, None, :]                           # (..., n, N, p)
    dyw = dy[..., None, :] * s                                        # (..., n, p)
    W = _transform(Yw, dyw, N)                                        # (..., n, N, N)
    return mu + torch.einsum("...imk,...ki->...mi", W, A)


def inflate(E: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiplicative inflation of the anomalies: μ + factor (E − μ); ``E`` (..., N, n)."""
    check_inflation(factor)
    mu = E.mean(-2, keepdim=True)
    return mu + factor * (E - mu)


def rotate(E: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random mean-preserving orthogonal transform of the anomalies (DAPPER ``genOG_1``): μ + Ω A with
    Ω = V diag(1, Q) Vᵀ, V orthonormal with first column 1/√N, Q Haar-distributed in O(N − 1)."""
    N, _ = check_ensemble(E)
    dt, dev = E.dtype, E.device
    batch = E.shape[:-2]
    G = torch.randn(batch + (N - 1, N - 1), generator=generator, dtype=dt, device=dev)
    Q, Rq = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(Rq, dim1=-2, dim2=-1))[..., None, :]
    u = torch.full((N,), 1 / math.sqrt(N), dtype=dt, device=dev)
    v = torch.zeros(N, dtype=dt, device=dev)
    v[0] = 1.0
    v = v - u
    V = torch.eye(N, dtype=dt, device=dev) - 2 * torch.outer(v, v) / (v @ v)  # Householder: V e₁ = u
    Om = torch.zeros(batch + (N, N), dtype=dt, device=dev)
    Om[..., 0, 0] = 1.0
    Om[..., 1:, 1:] = Q
    Om = V @ Om @ V.T
    mu = E.mean(-2, keepdim=True)
    return mu + Om @ (E - mu)
