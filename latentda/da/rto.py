"""Latent-space data assimilation for one day by randomise-then-optimise (RTO), batched over members.

Method (Brohan 2022 "DA by latent search", made an ensemble by RTO and calibrated for the decoder's
representation error). Model of the truth and the observations, per day::

    x = g(z) + eta,    z ~ N(0, I_d),    eta = M w_M + D_r ⊙ S w,  w ~ N(0, I)   (see latentda.da.ensemble;
                                                                         M: the prior's residual modes, if any)
    y = H x + eps_o,   eps_o ~ N(0, R_o = diag(sigma_o²))

Randomise: each member m draws z_p,m ~ N(0, I), w_p,m ~ N(0, I) and eps_o,m ~ N(0, R_o).
Optimise: the joint RTO cost over (z, w)

    J_m(z, w) = ½‖z − z_p,m‖² + ½‖w − w_p,m‖² + ½‖(y + eps_o,m − H g(z) − G w) / sigma_o‖²,   G = H D S,

is linear-Gaussian in w, so w is eliminated exactly (profile cost) and only z is searched, all members at once::

    J_m(z) = ½‖z − z_p,m‖² + ½ (ỹ_m − H g(z))ᵀ R⁻¹ (ỹ_m − H g(z)),
    R = R_o + G Gᵀ,    ỹ_m = y + eps_o,m − G w_p,m   (so ỹ_m − y ~ N(0, R))

followed by the exact conditional update of the representation error

    w_m = w_p,m + Gᵀ R⁻¹ (ỹ_m − H g(z_m)),     x_m = g(z_m) + D ⊙ S w_m.

So the likelihood carries the representation-error covariance (Cov(H eta) = G Gᵀ, whose diagonal is ≈ the
H-interpolated D² = (recon_std · s_clim)²; correlated, so a cluster of stations in one decoder "pixel" is not
counted as independent evidence), and the members carry the unresolved variability: far from observations eta
keeps its prior variance D², near observations it is pulled towards the residual. For a linear g the (z_m, w_m)
are exact samples of p(z, w | y). ``representation_error="likelihood"`` keeps R but returns x_m = g(z_m);
``"none"`` is pure latent RTO (R = R_o, x_m = g(z_m)); both for ablations (they are under-dispersive).

Solver: :func:`latentda.da.solver.minimize_batched` (one L-BFGS over the member dimension, per-member line search
and convergence). Diagnostics: ``fit_before``/``fit_after`` are the RMS of (y − H x̄)/sigma_o over the used
observations for the background (prior ensemble, eta included) mean and the analysis mean; ``cost`` is the
ensemble mean of the final J_m; ``iterations`` the largest member iteration count. With no usable observation the
prior ensemble x_m = g(z_p,m) + eta_p,m is returned with ``no_obs=1``.

Outputs follow :func:`latentda.analysis.analysis_dataset`.
"""
from __future__ import annotations

import contextlib
import logging
import numbers
import time as _time
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .. import __version__
from ..analysis import analysis_dataset, rms_departure
from ..obs import qc as _qc
from ..obs.operator import PointOperator
from ..obs.schema import QC_OK, validate_observations
from .cost import LatentCost
from ..prior.residual import remainder_std
from .ensemble import (STREAM_LATENT, STREAM_MODES, STREAM_OBS, STREAM_REPR, RepresentationError, day_ordinal,
                       default_length_scale_km, member_normals)
from .solver import minimize_batched

log = logging.getLogger(__name__)

METHOD = "latent_rto"
QC_SAMPLE = 32  # prior draws used for the gross-departure statistics (at least; all members if more)
REPR_MODES = ("augmented", "likelihood", "none")
DEFAULT_OPTIONS: dict[str, Any] = {
    "representation_error": "augmented",  # "augmented" | "likelihood" | "none"
    "repr_length_scale": None,            # km; None -> prior.recon_length_scale_km or 1.5 grid spacings
    "repr_scale": 1.0,                    # multiplies prior.recon_std (e.g. if it was measured in-sample)
    "residual_modes": True,               # use prior.recon_modes (if the prior has them) in the eta covariance
    "perturb_obs": True,                  # draw eps_o ~ N(0, R_o); False: y unperturbed (tests/ablations)
    "adam_steps": 0,                      # Adam warm-up iterations before L-BFGS
    "adam_lr": 0.05,
    "history": 10,                        # L-BFGS memory
    "ftol": 1e-7,                         # relative round-off floor of J (float64 sums of float32 decoder output)
    "max_linesearch": 10,
    "precondition": True,                 # posterior mode, Gauss-Newton H_0 there and linearised member starts
}


def _check_options(members: int, seed: int, max_iter: int, tol: float, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown assimilate option(s) {unknown}; valid options are {sorted(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 1:
        raise ValueError(f"members={members!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter={max_iter!r} must be a non-negative integer")
    if not (_is_real(tol) and np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol={tol!r} must be a positive number (Newton decrement in posterior standard deviations)")
    if opts["representation_error"] not in REPR_MODES:
        raise ValueError(f"representation_error={opts['representation_error']!r}; use one of {list(REPR_MODES)}")
    for k in ("perturb_obs", "precondition", "residual_modes"):
        if not isinstance(opts[k], (bool, np.bool_)):
            raise ValueError(f"option {k}={opts[k]!r} must be True or False")
    for k in ("adam_steps", "history", "max_linesearch"):
        v = opts[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if k == "adam_steps" else 1):
            raise ValueError(f"option {k}={v!r} must be an integer >= {0 if k == 'adam_steps' else 1}")
    for k in ("adam_lr", "ftol", "repr_scale"):
        v = opts[k]
        if not (_is_real(v) and np.isfinite(v) and v >= 0):
            raise ValueError(f"option {k}={v!r} must be a non-negative number")
    L = opts["repr_length_scale"]
    if L is not None and not (_is_real(L) and np.isfinite(L) and L > 0):
        raise ValueError(f"option repr_length_scale={L!r} must be a positive number of km (or None for the default)")
    return opts


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


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


def _length_scale(prior, grid, opts) -> float:
    L = opts["repr_length_scale"]
    if L is None:
        L = getattr(prior, "recon_length_scale_km", None)
    if L is None:
        L = default_length_scale_km(grid)
    return float(L)


def representation_error(prior, std: torch.Tensor, opts: dict[str, Any]
                         ) -> tuple[RepresentationError | None, float | None]:
    """The representation-error model eta of one day (``std``: s(d) (C, nlat, nlon) on the prior's device) and its
    length scale L in km; (None, None) for ``representation_error="none"``."""
    C, (nlat, nlon) = len(prior.variables), prior.grid.shape
    if np.shape(prior.recon_std) != (C, nlat, nlon):
        raise ValueError(f"prior.recon_std has shape {np.shape(prior.recon_std)}, expected {(C, nlat, nlon)}")
    if opts["representation_error"] == "none":
        return None, None
    length_km = _length_scale(prior, prior.grid, opts)
    scale = float(opts["repr_scale"])
    if opts["residual_modes"] and getattr(prior, "recon_modes", None) is not None:
        rest_np, modes, columns = prior.residual_model()  # cached on the prior
    else:
        rest_np, modes, columns = remainder_std(prior.recon_std, None), None, None
    rest = torch.as_tensor(rest_np, dtype=torch.float32, device=std.device)
    return RepresentationError(prior.grid, scale * rest * std, length_km, modes=modes,
                               modes_scale=None if modes is None else scale * std, modes_columns=columns), length_km


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


def solve_members(cost: LatentCost, y64: np.ndarray, max_iter: int, tol: float, opts: dict[str, Any], day):
    """Minimise every member's cost J_m (module docstring). With ``opts["precondition"]``: first the posterior mode
    ẑ of the unperturbed cost (z_p = 0, ỹ = ``y64``), then the Gauss-Newton inverse Hessian at ẑ as the solver's
    H_0 and linearised member starts. Returns (:class:`~latentda.da.solver.SolverResult`, mode-solve iterations)."""
    z_p, dev = cost.z_prior, cost.z_prior.device
    solve = dict(max_iter=int(max_iter), tol=float(tol), ftol=opts["ftol"], history=opts["history"],
                 max_linesearch=opts["max_linesearch"], adam_steps=opts["adam_steps"], adam_lr=opts["adam_lr"])
    h0, z0, mode_iterations = None, z_p, 0
    if opts["precondition"]:
        # 1) posterior mode ẑ of the unperturbed problem (z_p = 0, ỹ = y): one cheap single-member solve
        zero = torch.zeros((1, z_p.shape[1]), device=dev)
        cost0 = cost.with_members(zero, torch.as_tensor(y64[None], device=dev))
        r0 = minimize_batched(cost0.value_and_grad, zero, **solve)
        z_hat, mode_iterations = r0.z[0], int(r0.iterations[0])
        # 2) Gauss-Newton (Laplace) inverse Hessian at ẑ, shared by all members as the solver's H_0
        h0, hz_hat, w = cost.linearise(z_hat)
        if bool(torch.isfinite(h0).all()):
            # 3) each member starts at its linearised RTO solution, or at z_p,m where that is better
            z_lin = cost.linearised_solution(z_hat, h0, hz_hat, w)
            with torch.no_grad():
                better = cost(z_lin) < cost(z_p)  # False where z_lin is not finite
            z0 = torch.where(better[:, None], z_lin, z_p)
        else:
            log.warning("%s: the Gauss-Newton preconditioner is not finite; plain L-BFGS from z_p",
                        pd.Timestamp(day).date())
            h0 = None
    return minimize_batched(cost.value_and_grad, z0, h0=h0, **solve), mode_iterations


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


def assimilate(prior, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
               keep_members: bool = False, qc_threshold: float = 5.0, max_iter: int = 200, tol: float = 0.1,
               default_error: float | dict | None = None, **options) -> xr.Dataset:
    """Analyse one day with an ensemble of ``members`` latent RTO solves (see the module docstring for J).

    Parameters
    ----------
    prior : the VAE prior (``decode``: (B, d) -> (B, C, nlat, nlon) standardised anomalies; ``climatology_tensors``,
        ``recon_std`` (C, nlat, nlon), ``variables``, ``grid``, ``var_attrs``, ``device``, ``checksum()``).
    observations : table with columns time, lat, lon, value, error (std dev, units of value), station_id, variable.
        Rows of other days get QC reason ``wrong_time``; invalid rows get their reason (schema.validate_observations)
        and departures beyond ``qc_threshold`` background standard deviations get ``gross_departure``.
    time : the day (anything ``pandas.Timestamp`` accepts; normalised to midnight).
    members, seed : ensemble size and base seed; draws come from ``SeedSequence([seed, day ordinal, stream, m])``.
    keep_members : also return ``<var>_members`` (time, member, lat, lon).
    qc_threshold : k of the gross-departure check ``|y − H x̄_b| > k sqrt(sigma_o² + var_b(H x))`` (inf: off);
        x̄_b and var_b come from max(members, 32) prior draws (the ensemble's own draws first) plus the
        representation-error variance diag(G Gᵀ), var_b floored at the climatological variance H s(d)².
    max_iter, tol : L-BFGS iterations per member; tolerance on the Newton decrement (distance to the minimum in
        posterior standard deviations) or the gradient norm, see :mod:`latentda.da.solver`. The default 0.1 moves
        a member by at most ~0.1 posterior std from its exact RTO solution: ~1 % of the posterior variance, below
        the Monte-Carlo error of the ensemble (1/M); 1e-2 costs ~25 % more time for the same analysis (6 days of
        the demo data, 100 stations, 10 members: T RMSE 3.1825 vs 3.1826 K, 1.09 vs 1.33 s per day).
    default_error : observation error std dev (scalar or per variable) when the table has no ``error`` column.
    **options :
        ``representation_error``: "augmented" (default: R = R_o + G Gᵀ and members x_m = g(z_m) + eta_m),
        "likelihood" (same R, members g(z_m)) or "none" (pure latent RTO: R = R_o, members g(z_m));
        ``repr_length_scale``: L in km (default ``prior.recon_length_scale_km`` if the prior has it, else 1.5
        meridional grid spacings); ``repr_scale``: factor on ``prior.recon_std`` (default 1);
        ``residual_modes``: use the prior's residual modes (``prior.recon_modes``, if any) in the covariance of
        eta (default True; False: the isotropic model alone, for ablations);
        ``perturb_obs``: draw eps_o (default True; False leaves y unperturbed, for tests/ablations);
        ``adam_steps`` (default 0), ``adam_lr``: Adam warm-up before L-BFGS; ``history`` (L-BFGS memory, 10),
        ``ftol`` (1e-7, relative round-off floor of J), ``max_linesearch`` (10), ``precondition`` (default True:
        first the posterior mode ẑ of the unperturbed cost by a single-member solve, then the Gauss-Newton /
        Laplace inverse Hessian P = (I + Jᵀ R⁻¹ J)⁻¹ at ẑ (d + 1 forward differences) as every member's initial
        inverse Hessian, and each member started at its linearised solution ẑ + P[(z_p,m − ẑ) + Jᵀ R⁻¹ (ỹ_m − H g(ẑ))]
        when that lowers its cost; ~5x fewer batched evaluations than plain L-BFGS from z_p,m, same minima).
        Unknown options raise ValueError.

    Cost and memory: besides the decoder passes, O(n²) memory and O(n³) time for the Cholesky factor of R and
    O(n · nlat · nlon) for Gᵀ (n used observations): fine for thousands of observations per day.

    Returns
    -------
    xr.Dataset from :func:`latentda.analysis.analysis_dataset` (physical units): ensemble mean, spread (ddof=1),
    optional members and diagnostics; ``no_obs=1`` and the prior ensemble when no observation is usable.
    Work is float32 on ``prior.device``; on the CPU the same inputs give identical bytes.
    """
    if getattr(prior, "window", 0):
        prior.require_window("latentda.da.rto.assimilate (the per-day analysis)", window=False)
    opts = _check_options(members, seed, max_iter, tol, options)
    with _strict_float32(torch.device(prior.device)):
        return _assimilate(prior, observations, time, int(members), int(seed), keep_members=bool(keep_members),
                           k_qc=_qc.check_threshold(qc_threshold), max_iter=int(max_iter), tol=float(tol),
                           default_error=default_error, opts=opts)


def _assimilate(prior, observations: pd.DataFrame, time, members: int, seed: int, *, keep_members: bool,
                k_qc: float, max_iter: int, tol: float, default_error, opts: dict[str, Any]) -> xr.Dataset:
    """The body of :func:`assimilate` (arguments already checked)."""
    ordinal = day_ordinal(time)
    day = pd.Timestamp(time).normalize()
    t0 = _time.perf_counter()
    variables = list(prior.variables)
    grid = prior.grid
    dev = torch.device(prior.device)
    C, (nlat, nlon), d = len(variables), grid.shape, int(prior.latent_dim)

    table = validate_observations(observations, variables, default_error=default_error, time=day)

    mode = opts["representation_error"]
    mean, std = prior.climatology_tensors(day)
    mean = mean.to(dev, torch.float32)
    std = std.to(dev, torch.float32)
    rep, length_km = representation_error(prior, std, opts)

    # -- observations usable after schema QC ------------------------------------------------------------------
    usable = np.nonzero(table["qc"].to_numpy() == QC_OK)[0]
    chan_of = {v: k for k, v in enumerate(variables)}

    def build(rows):
        return PointOperator(grid, table["lat"].to_numpy()[rows], table["lon"].to_numpy()[rows],
                             table["variable"].map(chan_of).to_numpy()[rows].astype(np.int64), nchannels=C)

    # prior draws: the M members, plus more (same streams, members M..Q-1) for the QC statistics: a small
    # ensemble's sample variance is too noisy for a 5-sigma test
    q = max(members, QC_SAMPLE) if usable.size else members
    # (draws: CPU numpy with member-wise seeds, see latentda.da.ensemble)
    z_all = torch.as_tensor(member_normals(seed, ordinal, STREAM_LATENT, q, (d,)), device=dev)
    z_p = z_all[:members]
    with torch.no_grad():
        xg_all = prior.decode(z_all) * std + mean  # (Q, C, nlat, nlon) physical
        xb_g = xg_all[:members]
        if rep is not None:
            w_p = torch.as_tensor(member_normals(seed, ordinal, STREAM_REPR, members, (C, nlat, nlon)), device=dev)
            wm_p = (torch.as_tensor(member_normals(seed, ordinal, STREAM_MODES, members, (rep.n_modes,)), device=dev)
                    if rep.n_modes else None)
            eta_p = rep.sample(w_p, wm_p)
        else:
            eta_p = torch.zeros_like(xb_g)
        xb = xb_g + eta_p if mode == "augmented" else xb_g

    # -- gross-departure check against the prior ---------------------------------------------------------------
    if usable.size:
        usable = reject_gross(table, usable, build(usable), xg_all, std, rep, k_qc, day)

    counts = _qc.qc_counts(table)
    attrs = {"version": __version__, "prior_checksum": prior.checksum(), "members": members, "seed": int(seed),
             "qc_threshold": k_qc, "max_iter": int(max_iter), "tol": float(tol),
             "representation_error": mode, "repr_length_scale_km": length_km,
             "repr_scale": float(opts["repr_scale"]) if mode != "none" else None,
             "residual_modes": rep.n_modes if rep is not None else 0,
             "perturb_obs": bool(opts["perturb_obs"]), "adam_steps": int(opts["adam_steps"]),
             "precondition": bool(opts["precondition"])}
    diag: dict[str, float] = {"obs_used": int(usable.size), "obs_rejected": _qc.rejected_count(table)}

    if usable.size == 0:
        log.info("%s: no usable observation (%s): returning the prior ensemble", day.date(), counts)
        diag.update(fit_before=np.nan, fit_after=np.nan, cost=0.0, iterations=0, converged_fraction=1.0, no_obs=1)
        return analysis_dataset(xb.cpu().numpy(), variables, grid, day, diag, METHOD, counts,
                                var_attrs=prior.var_attrs, keep_members=keep_members, attrs=attrs)

    # -- the observation-space quantities of the used rows ---------------------------------------------------
    op = build(usable)
    n = usable.size
    y64 = table["value"].to_numpy(dtype=np.float64)[usable]
    sig64 = table["error"].to_numpy(dtype=np.float64)[usable]
    sigma = torch.as_tensor(sig64, dtype=torch.float32, device=dev)
    if opts["perturb_obs"]:
        eps = torch.as_tensor(member_normals(seed, ordinal, STREAM_OBS, members, (n,)), device=dev) * sigma
    else:
        eps = torch.zeros((members, n), dtype=torch.float32, device=dev)
    chol = obs_rep = None
    if rep is not None:
        # built from the used rows only, so rejected rows cannot change a single bit of the analysis
        obs_rep = rep.at_observations(op)
        R = obs_rep.cov + torch.diag(torch.as_tensor(sig64 ** 2))
        chol = torch.linalg.cholesky(R).to(dev)  # float64
    with torch.no_grad():
        # ỹ_m = y + eps_o,m − G w_p,m (eta_p = 0 without representation error), float64
        target = (torch.as_tensor(y64, device=dev) + eps.double() - op.apply_torch(eta_p).double())

    cost = LatentCost(prior, op, mean, std, z_p, target, sigma=None if chol is not None else sigma, chol=chol)
    res, mode_iterations = solve_members(cost, y64, max_iter, tol, opts, day)

    with torch.no_grad():
        xa = cost.fields(res.z)
        if mode == "augmented":
            resid = target - op.apply_torch(xa).double()  # ỹ_m − H g(z_m)
            v = torch.cholesky_solve(resid.T, chol).T.float()  # R⁻¹ (ỹ_m − H g(z_m))
            xa = xa + eta_p + rep.increment(obs_rep, v)
    diag.update(solution_diagnostics(op, xa, xb, y64, sig64, res))
    log.info("%s: %d obs used, %d rejected, fit %.3f -> %.3f, %d iterations (%d evaluations; mode %d), %.0f%% "
             "converged, %.2f s", day.date(), n, diag["obs_rejected"], diag["fit_before"], diag["fit_after"],
             diag["iterations"], res.evaluations, mode_iterations, 100 * diag["converged_fraction"],
             _time.perf_counter() - t0)
    return analysis_dataset(xa.cpu().numpy(), variables, grid, day, diag, METHOD, counts,
                            var_attrs=prior.var_attrs, keep_members=keep_members, attrs=attrs)
