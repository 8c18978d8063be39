"""Batched minimisation over the member dimension: optional Adam warm-up, then L-BFGS with a per-member
two-loop recursion, per-member Armijo backtracking and a per-member convergence test.

The objective is a sum of independent member costs J_m(z_m), so one batched decoder pass evaluates all members;
each member keeps its own curvature history, step length and stopping state, and members that have stopped are
no longer evaluated. Everything is torch on the caller's device; the result is deterministic on the CPU.

Convergence of member m: the Newton decrement sqrt(∇Jᵀ H_k ∇J) = sqrt(−∇Jᵀp), p the quasi-Newton step, is
≤ ``tol`` (H_k ≈ the inverse Hessian of J, i.e. the posterior covariance, so this is ≈ the distance to the minimum
in posterior standard deviations); or ‖∇J_m‖ ≤ ``tol`` (J's Hessian is I + (obs term) ⪰ I, so this bounds the
Euclidean distance to the minimum by ``tol``). Because J has round-off (``fun_grad`` should sum it in float64, see
:mod:`latentda.da.cost`), a member also stops as converged when the decrease still to be had, or that of its last
step, is below ``ftol · max(|J_m|, 1)``, or when a rejected trial step predicted less than 10 such units. It stops
as *not* converged when the line search fails or ``max_iter`` is reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

FunGrad = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SolverResult:
    """``z`` (M, d) minimisers; ``cost`` (M,) final J; ``grad_norm`` (M,); ``iterations`` (M,) int;
    ``converged`` (M,) bool; ``evaluations``: batched function evaluations (each over the active members)."""

    z: torch.Tensor
    cost: torch.Tensor
    grad_norm: torch.Tensor
    iterations: np.ndarray
    converged: np.ndarray
    evaluations: int


def _two_loop(g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, rho: torch.Tensor,
              nh: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """L-BFGS direction -H_k g per member; history newest first in S, Y (b, m, d); nh (b,) valid pairs.

    The initial inverse Hessian is ``h0`` (d, d) if given, else the usual scaling gamma I, gamma = sᵀy / yᵀy."""
    b, m, _ = S.shape
    q = g.clone()
    alpha = torch.zeros((b, m), dtype=g.dtype, device=g.device)
    valid = torch.arange(m, device=g.device)[None, :] < nh[:, None]  # (b, m)
    for i in range(m):
        a = torch.where(valid[:, i], rho[:, i] * (S[:, i] * q).sum(-1), torch.zeros_like(rho[:, i]))
        alpha[:, i] = a
        q = q - a[:, None] * Y[:, i]
    if h0 is not None:
        r = q @ h0  # h0 symmetric
    else:
        yy = (Y[:, 0] * Y[:, 0]).sum(-1)
        gamma = torch.where(nh > 0, (S[:, 0] * Y[:, 0]).sum(-1) / yy.clamp_min(1e-30), torch.ones_like(yy))
        r = gamma[:, None] * q
    for i in reversed(range(m)):
        beta = torch.where(valid[:, i], rho[:, i] * (Y[:, i] * r).sum(-1), torch.zeros_like(rho[:, i]))
        r = r + (alpha[:, i] - beta)[:, None] * S[:, i]
    return -r


def minimize_batched(fun_grad: FunGrad, z0: torch.Tensor, *, max_iter: int = 200, tol: float = 1e-2,
                     ftol: float = 1e-7, history: int = 10, max_linesearch: int = 10, adam_steps: int = 0,
                     adam_lr: float = 0.05, c1: float = 1e-4, h0: torch.Tensor | None = None) -> SolverResult:
    """Minimise Σ_m J_m(z_m) from ``z0`` (M, d); ``fun_grad(z, idx)`` returns (J (b,), ∇J (b, d)) for members idx.

    ``adam_steps`` Adam iterations (learning rate ``adam_lr``) on the members not yet converged precede L-BFGS
    (``history`` curvature pairs, Armijo constant ``c1``, at most ``max_linesearch`` trial steps per iteration).
    ``h0`` (d, d), symmetric positive definite: initial inverse-Hessian (preconditioner) shared by all members,
    e.g. the Gauss-Newton (I + Jᵀ R⁻¹ J)⁻¹ of the cost; without it L-BFGS starts from gamma I.
    """
    M, d = z0.shape
    dev, dt = z0.device, z0.dtype
    z = z0.detach().clone()
    all_idx = torch.arange(M, device=dev)
    f, g = fun_grad(z, all_idx)
    nevals = 1
    gn = g.norm(dim=-1)
    active = (gn > tol) & torch.isfinite(f)
    converged = gn <= tol
    iters = torch.zeros(M, dtype=torch.long, device=dev)

    # -- Adam warm-up (elementwise, hence independent per member) ------------------------------------------
    if adam_steps > 0 and bool(active.any()):
        m1 = torch.zeros_like(z)
        m2 = torch.zeros_like(z)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for step in range(1, adam_steps + 1):
            act = torch.nonzero(active).squeeze(1)
            if act.numel() == 0:
                break
            ga = g[act]
            m1[act] = b1 * m1[act] + (1 - b1) * ga
            m2[act] = b2 * m2[act] + (1 - b2) * ga * ga
            upd = adam_lr * (m1[act] / (1 - b1 ** step)) / ((m2[act] / (1 - b2 ** step)).sqrt() + eps)
            z[act] = z[act] - upd
            fa, gaa = fun_grad(z[act], act)
            nevals += 1
            f[act], g[act] = fa, gaa
            iters[act] += 1
            gn_a = gaa.norm(dim=-1)
            done = gn_a <= tol
            converged[act[done]] = True
            active[act[done]] = False

    # -- L-BFGS ----------------------------------------------------------------------------------------------
    S = torch.zeros((M, history, d), dtype=dt, device=dev)
    Y = torch.zeros_like(S)
    rho = torch.zeros((M, history), dtype=dt, device=dev)
    nh = torch.zeros(M, dtype=torch.long, device=dev)
    for _ in range(max_iter):
        act = torch.nonzero(active).squeeze(1)
        if act.numel() == 0:
            break
        za, fa, ga = z[act], f[act], g[act]
        p = _two_loop(ga, S[act], Y[act], rho[act], nh[act], h0)
        gd = (ga * p).sum(-1)
        bad = ~(gd < 0) | ~torch.isfinite(gd)
        if bool(bad.any()):  # not a descent direction: restart from steepest descent
            p[bad] = -ga[bad]
            gd[bad] = -(ga[bad] * ga[bad]).sum(-1)
            nh[act[bad]] = 0
        # stop before searching where the Newton decrement sqrt(gᵀ H⁻¹ g) = sqrt(−gᵀp) (the distance to the
        # minimum in the cost's own metric) is within tol, or the decrease it predicts is below J's round-off
        noise = ftol * torch.clamp(fa.abs(), min=1.0)
        near = (torch.sqrt(-gd) <= tol) | (ga.norm(dim=-1) <= tol) | (-0.5 * gd <= noise)
        if bool(near.any()):
            converged[act[near]] = True
            active[act[near]] = False
            keep = ~near
            act, za, fa, ga, p, gd, noise = act[keep], za[keep], fa[keep], ga[keep], p[keep], gd[keep], noise[keep]
            if act.numel() == 0:
                break
        t = torch.ones(act.numel(), dtype=dt, device=dev)
        accepted = torch.zeros(act.numel(), dtype=torch.bool, device=dev)
        stopped = torch.zeros_like(accepted)
        f_new, g_new = fa.clone(), ga.clone()
        for _ls in range(max_linesearch):
            pend = torch.nonzero(~accepted & ~stopped).squeeze(1)
            if pend.numel() == 0:
                break
            zt = za[pend] + t[pend, None] * p[pend]
            ft, gt = fun_grad(zt, act[pend])
            nevals += 1
            ok = torch.isfinite(ft) & (ft <= fa[pend] + c1 * t[pend] * gd[pend])
            okp = pend[ok]
            f_new[okp], g_new[okp] = ft[ok], gt[ok]
            accepted[okp] = True
            # a step predicting a decrease of a few round-off units cannot be checked: converged, stop searching
            floor = pend[~ok & (-t[pend] * gd[pend] <= 10 * noise[pend])]
            if floor.numel():
                converged[act[floor]] = True
                active[act[floor]] = False
                stopped[floor] = True
            # quadratic-interpolation backtracking for the rest, step cut to [0.1, 0.5] of the last one
            nok = pend[~ok]
            if nok.numel():
                tn, fn, gdn, f0 = t[nok], ft[~ok], gd[nok], fa[nok]
                denom = 2 * (fn - f0 - gdn * tn)
                tq = torch.where(torch.isfinite(fn) & (denom > 0), -gdn * tn * tn / denom, 0.1 * tn)
                t[nok] = torch.minimum(torch.maximum(tq.to(tn.dtype), 0.1 * tn), 0.5 * tn)
        # members whose line search failed stop (not converged)
        failed = act[~accepted & ~stopped]
        active[failed] = False
        acc = torch.nonzero(accepted).squeeze(1)
        ia = act[acc]
        if ia.numel() == 0:
            continue
        s = t[acc, None] * p[acc]
        yv = g_new[acc] - ga[acc]
        sy = (s * yv).sum(-1)
        z[ia] = za[acc] + s
        f_old = fa[acc]
        f[ia], g[ia] = f_new[acc], g_new[acc]
        iters[ia] += 1
        # curvature pairs (newest first) only where sᵀy > 0
        good = sy > 1e-10 * s.norm(dim=-1) * yv.norm(dim=-1)
        ig = ia[good]
        if ig.numel():
            S[ig] = torch.roll(S[ig], 1, dims=1)
            Y[ig] = torch.roll(Y[ig], 1, dims=1)
            rho[ig] = torch.roll(rho[ig], 1, dims=1)
            S[ig, 0], Y[ig, 0], rho[ig, 0] = s[good], yv[good], 1.0 / sy[good]
            nh[ig] = torch.clamp(nh[ig] + 1, max=history)
        gnew = g[ia].norm(dim=-1)
        small_step = (f_old - f[ia]) <= ftol * torch.maximum(torch.maximum(f_old.abs(), f[ia].abs()),
                                                             torch.ones_like(f_old))
        done = (gnew <= tol) | small_step
        converged[ia[done]] = True
        active[ia[done]] = False
    gn = g.norm(dim=-1)
    return SolverResult(z=z, cost=f, grad_norm=gn, iterations=iters.cpu().numpy(),
                        converged=converged.cpu().numpy(), evaluations=nevals)
