"""The steps of one day's latent analysis, shared by the per-day (:mod:`latentda.da.rto`) and the window
(:mod:`latentda.da.window`) analyses: argument checks, the seeded draws (eta_p, eps_o), the representation-error
model of a day, the gross-departure check, the member solve (RTO with the Gauss-Newton preconditioner, or a
sampler), the conditional eta update and the solution diagnostics. The equations are in :mod:`latentda.da.rto`'s
docstring.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..analysis import rms_departure
from ..obs import qc as _qc
from ..obs.operator import PointOperator
from ..prior.residual import remainder_std
from .cost import LatentCost
from .ensemble import (STREAM_MODES, STREAM_OBS, STREAM_REPR, RepresentationError, day_ordinal,
                       default_length_scale_km, member_normals)
from .options import AssimilationOptions
from .samplers import posterior_mode, sample_members, sampler_attrs
from .solver import minimize_batched

log = logging.getLogger("latentda.da.rto")

def _check_ensemble(members: int, seed: int) -> None:
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 1:
        raise ValueError(f"members={members!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")


@contextlib.contextmanager
def _strict_float32(device: torch.device) -> Iterator[None]:
    """On CUDA, run convolutions and matmuls in full float32 (no TF32) and restore the caller's settings after:
    TF32's 10-bit mantissa would put a noise floor on J far above float32's and stall the line searches."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _length_scale(prior, grid, opts: AssimilationOptions) -> float:
    L = opts.repr_length_scale
    if L is None:
        L = getattr(prior, "recon_length_scale_km", None)
    if L is None:
        L = default_length_scale_km(grid)
    return float(L)


def representation_error(prior, std: torch.Tensor, opts: AssimilationOptions
                         ) -> tuple[RepresentationError | None, float | None]:
    """The representation-error model eta of one day (``std``: s(d) (C, nlat, nlon) on the prior's device) and its
    length scale L in km; (None, None) for ``representation_error="none"``."""
    C, (nlat, nlon) = len(prior.variables), prior.grid.shape
    if np.shape(prior.recon_std) != (C, nlat, nlon):
        raise ValueError(f"prior.recon_std has shape {np.shape(prior.recon_std)}, expected {(C, nlat, nlon)}")
    if opts.representation_error == "none":
        return None, None
    length_km = _length_scale(prior, prior.grid, opts)
    scale = float(opts.repr_scale)
    if opts.residual_modes and getattr(prior, "recon_modes", None) is not None:
        rest_np, modes, columns = prior.residual_model()  # cached on the prior
    else:
        rest_np, modes, columns = remainder_std(prior.recon_std, None), None, None
    rest = torch.as_tensor(rest_np, dtype=torch.float32, device=std.device)
    return RepresentationError(prior.grid, scale * rest * std, length_km, modes=modes,
                               modes_scale=None if modes is None else scale * std, modes_columns=columns), length_km


def draw_eta(rep: RepresentationError | None, seed: int, ordinal: int, members: int, shape: tuple[int, int, int],
             dev: torch.device) -> torch.Tensor:
    """The members' prior representation error eta_p,m = M w_M + D ⊙ S w (members, C, nlat, nlon) from the streams
    of the day ``ordinal``; zeros for ``rep=None``."""
    if rep is None:
        return torch.zeros((members, *shape), dtype=torch.float32, device=dev)
    w_p = torch.as_tensor(member_normals(seed, ordinal, STREAM_REPR, members, shape), device=dev)
    wm_p = (torch.as_tensor(member_normals(seed, ordinal, STREAM_MODES, members, (rep.n_modes,)), device=dev)
            if rep.n_modes else None)
    return rep.sample(w_p, wm_p)


def obs_perturbations(seed: int, ordinal: int, members: int, sigma: torch.Tensor, perturb: bool) -> torch.Tensor:
    """eps_o,m ~ N(0, diag(sigma²)) (members, n) float32 from the observation stream of the day ``ordinal``
    (``sigma`` (n,) float32); zeros for ``perturb=False``."""
    if perturb:
        return torch.as_tensor(member_normals(seed, ordinal, STREAM_OBS, members, (sigma.shape[0],)),
                               device=sigma.device) * sigma
    return torch.zeros((members, sigma.shape[0]), dtype=torch.float32, device=sigma.device)


def run_attrs(prior, members: int, seed: int, opts: AssimilationOptions, rep: RepresentationError | None,
              length_km: float | None) -> dict[str, Any]:
    """The analysis attributes (version, prior checksum, ensemble and the options that shaped it)."""
    mode = opts.representation_error
    return {"version": __version__, "prior_checksum": prior.checksum(), "members": members, "seed": int(seed),
            "qc_threshold": opts.qc_threshold, "max_iter": int(opts.max_iter), "tol": float(opts.tol),
            "representation_error": mode, "repr_length_scale_km": length_km,
            "repr_scale": float(opts.repr_scale) if mode != "none" else None,
            "residual_modes": rep.n_modes if rep is not None else 0,
            "perturb_obs": bool(opts.perturb_obs), "adam_steps": int(opts.adam_steps),
            "precondition": bool(opts.precondition), **sampler_attrs(opts)}


def reject_gross(table: pd.DataFrame, usable: np.ndarray, op: PointOperator, xg_all: torch.Tensor, std: torch.Tensor,
                 rep: RepresentationError | None, k_qc: float, day) -> np.ndarray:
    """Gross-departure check of the ``usable`` rows (operator ``op``) of one day against the prior draws ``xg_all``
    (Q, C, nlat, nlon) physical: marks ``table`` and returns the rows that pass."""
    y = table["value"].to_numpy(dtype=np.float64)[usable]
    s2 = table["error"].to_numpy(dtype=np.float64)[usable] ** 2
    with torch.no_grad():
        hxg = op.apply_torch(xg_all).double().cpu().numpy()  # (Q, n)
        clim_var = op.apply_torch((std ** 2)[None]).double().cpu().numpy()[0]  # H s(d)², (n,)
    var_b = hxg.var(axis=0, ddof=1)
    if rep is not None:
        var_b = var_b + rep.variance_at_observations(op)
    # floor: the climatological variance, which the standardised anomalies have by construction; a VAE
    # prior is often under-dispersive and a check against its spread alone rejects good strong anomalies
    var_b = np.maximum(var_b, clim_var)
    dep = y - hxg.mean(axis=0)
    gross = _qc.gross_departure_mask(dep, s2, var_b, k_qc)
    _qc.mark(table, usable, gross, "gross_departure")
    if gross.any():
        log.info("%s: %d gross departure(s) rejected (k=%g)", pd.Timestamp(day).date(), int(gross.sum()), k_qc)
    return usable[~gross]


def solve_members(cost: LatentCost, y64: np.ndarray, opts: AssimilationOptions, day):
    """Minimise every member's cost J_m (module docstring). With ``opts.precondition``: first the posterior mode
    ẑ of the unperturbed cost (z_p = 0, ỹ = ``y64``), then the Gauss-Newton inverse Hessian at ẑ as the solver's
    H_0 and linearised member starts. Returns (:class:`~latentda.da.solver.SolverResult`, mode-solve iterations,
    the cost the members were solved with: ``cost.member_cost(ẑ)``, or ``cost`` itself without the mode)."""
    z_p = cost.z_prior
    solve = opts.solver()
    h0, z0, mode_iterations = None, z_p, 0
    if opts.precondition:
        # 1) posterior mode ẑ of the unperturbed problem (z_p = 0, ỹ = y): one cheap single-member solve
        z_hat, r0 = posterior_mode(cost, y64, opts)
        mode_iterations = int(r0.iterations[0])
        # 2) Gauss-Newton (Laplace) inverse Hessian at ẑ, shared by all members as the solver's H_0
        h0, hz_hat, w = cost.linearise(z_hat)
        if bool(torch.isfinite(h0).all()):
            # the members' cost (a window cost may linearise its neighbouring days at ẑ: LatentCost.member_cost)
            cost = cost.member_cost(z_hat)
            # 3) each member starts at its linearised RTO solution, or at z_p,m where that is better
            z_lin = cost.linearised_solution(z_hat, h0, hz_hat, w)
            with torch.no_grad():
                better = cost(z_lin) < cost(z_p)  # False where z_lin is not finite
            z0 = torch.where(better[:, None], z_lin, z_p)
        else:
            log.warning("%s: the Gauss-Newton preconditioner is not finite; plain L-BFGS from z_p",
                        pd.Timestamp(day).date())
            h0 = None
    return minimize_batched(cost.value_and_grad, z0, h0=h0, **solve), mode_iterations, cost


class MembersAnalysis(NamedTuple):
    """What :func:`analyse_members` returns: the members' fields x_m (M, C', nlat, nlon) physical, the solver
    result, the mode solve's iterations, and the cost the members were solved with (``cost.member_cost(ẑ)`` for
    RTO with the mode, e.g. a window cost's neighbouring days linearised; the given cost otherwise)."""

    fields: torch.Tensor
    result: Any
    mode_iterations: int
    cost: LatentCost


def analyse_members(cost: LatentCost, eta_p: torch.Tensor, y64: np.ndarray, opts: AssimilationOptions, day,
                    seed: int = 0, extra: dict | None = None) -> MembersAnalysis:
    """The members' latents by ``opts.sampler`` (RTO: :func:`solve_members`; "laplace", "langevin":
    :mod:`latentda.da.samplers`, random numbers from ``seed`` and the day, diagnostics into ``extra``), then their
    fields x_m = g(z_m), plus for ``representation_error="augmented"`` the conditional eta update x_m = g(z_m) +
    eta_p,m + B_eta Hᵀ R⁻¹ (ỹ_m − H g(z_m)) with R = ``cost.covariance`` (for every sampler: a draw of eta given
    z_m and y). Returns a :class:`MembersAnalysis`."""
    if opts.sampler == "rto":
        res, mode_iterations, cost = solve_members(cost, y64, opts, day)
    else:
        res, mode_iterations = sample_members(cost, y64, opts, seed, day_ordinal(day), extra)
    with torch.no_grad():
        xa = cost.fields(res.z)
        if opts.representation_error == "augmented":
            resid = cost.target - cost.observed(res.z, xa).double()  # ỹ_m − H g(z_m), the members' cost's model
            v = cost.covariance.solve(resid).float()  # R⁻¹ (ỹ_m − H g(z_m))
            xa = xa + eta_p + cost.covariance.increment(v)
    return MembersAnalysis(xa, res, mode_iterations, cost)


def solution_diagnostics(op: PointOperator, xa: torch.Tensor, xb: torch.Tensor, y64: np.ndarray, sig64: np.ndarray,
                         res) -> dict[str, float]:
    """fit_before/fit_after (RMS of (y − H x̄)/sigma for the background and analysis means xb, xa (M, C', nlat,
    nlon)), cost, iterations and converged_fraction of the solver result ``res``."""
    with torch.no_grad():
        hxa_mean = op.apply_torch(xa.mean(0, keepdim=True)).double().cpu().numpy()[0]
        hxb_mean = op.apply_torch(xb.mean(0, keepdim=True)).double().cpu().numpy()[0]
    return dict(fit_before=rms_departure(y64, hxb_mean, sig64), fit_after=rms_departure(y64, hxa_mean, sig64),
                cost=float(res.cost.double().mean()), iterations=int(res.iterations.max(initial=0)),
                converged_fraction=float(res.converged.mean()), no_obs=0)
