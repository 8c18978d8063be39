"""Analysis steps with a static background covariance: climatology, optimal interpolation (OI), 3D-Var.

As in DAPPER's ``da_methods.baseline``: climatology returns the climatological mean μ_c; OI analyses μ_c itself
(no cycling) with the climatological covariance B_c; 3D-Var analyses the cycled forecast x_b with B = x_B · B_c.
Shapes: states (..., n) batched over leading dimensions, ``H`` (p, n), ``R`` (p, p), ``B`` (n, n).
"""
from __future__ import annotations

import torch

from ..da.solver import minimize_batched
from .checks import check_obs


def blue(xb: torch.Tensor, y: torch.Tensor, H: torch.Tensor, B: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Best linear unbiased estimate, gain form: x_a = x_b + B Hᵀ (H B Hᵀ + R)⁻¹ (y − H x_b).

    ``xb`` (..., n), ``y`` (..., p) -> (..., n)."""
    n = xb.shape[-1]
    check_obs(n, y, H, R)
    if tuple(B.shape) != (n, n):
        raise ValueError(f"background covariance B has shape {tuple(B.shape)}; expected ({n}, {n})")
    S = H @ B @ H.T + R
    return xb + torch.linalg.solve(S, (y - xb @ H.T)[..., None])[..., 0] @ (B @ H.T).T


def optimal_interpolation(clim_mean: torch.Tensor, y: torch.Tensor, H: torch.Tensor, B_clim: torch.Tensor,
                          R: torch.Tensor) -> torch.Tensor:
    """OI: the BLUE of :func:`blue` from the climatological mean ``clim_mean`` (n,) and covariance ``B_clim``."""
    return blue(clim_mean.expand(y.shape[:-1] + clim_mean.shape), y, H, B_clim, R)


def analysis_error_std(H: torch.Tensor, B: torch.Tensor, R: torch.Tensor) -> float:
    """sqrt(tr((I − K H) B) / n): the analysis error standard deviation a static-B method assumes."""
    S = H @ B @ H.T + R
    Pa = B - B @ H.T @ torch.linalg.solve(S, H @ B)
    return float(torch.sqrt(torch.diagonal(Pa).mean()))


def var3d(xb: torch.Tensor, y: torch.Tensor, H: torch.Tensor, B: torch.Tensor, R: torch.Tensor,
          tol: float = 1e-8, max_iter: int = 100) -> torch.Tensor:
    """3D-Var by minimising J(v) = ½‖v‖² + ½ (y − H(x_b + L v))ᵀ R⁻¹ (y − H(x_b + L v)), x = x_b + L v, B = L Lᵀ
    (control-variable transform), with :func:`latentda.da.solver.minimize_batched` (L-BFGS preconditioned by
    the Gauss-Newton inverse Hessian (I + Lᵀ Hᵀ R⁻¹ H L)⁻¹).

    ``xb`` (..., n), ``y`` (..., p) -> x_a (..., n). For a linear H this equals :func:`blue` (tests check it)."""
    n = xb.shape[-1]
    check_obs(n, y, H, R)
    if tuple(B.shape) != (n, n):
        raise ValueError(f"background covariance B has shape {tuple(B.shape)}; expected ({n}, {n})")
    batch = xb.shape[:-1]
    xb2, y2 = xb.reshape(-1, n), y.reshape(-1, y.shape[-1])
    L = torch.linalg.cholesky(B)
    Rinv = torch.linalg.inv(R)
    HL = H @ L
    h0 = torch.linalg.inv(torch.eye(n, dtype=B.dtype, device=B.device) + HL.T @ Rinv @ HL)
    h0 = 0.5 * (h0 + h0.T)

    def fun_grad(v: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = y2[idx] - xb2[idx] @ H.T - v @ HL.T          # (b, p) departures
        wd = d @ Rinv                                   # R is symmetric
        J = 0.5 * (v * v).sum(-1) + 0.5 * (d * wd).sum(-1)
        return J, v - wd @ HL

    res = minimize_batched(fun_grad, torch.zeros_like(xb2), tol=tol, max_iter=max_iter, h0=h0)
    return (xb2 + res.z @ L.T).reshape(batch + (n,))
