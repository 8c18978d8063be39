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
prior ensemble x_m = g(z_p,m) + eta_p,m is returned with ``no_obs=1`` -- unless rows of the day were present and
all rejected and ``on_all_rejected="fail"`` (the default): then :class:`latentda.obs.qc.AllObservationsRejected`
is raised with the count per QC reason.

Outputs follow :func:`latentda.analysis.analysis_dataset`.
"""
from __future__ import annotations

import logging
import time as _time
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..analysis import analysis_dataset
from ..obs import qc as _qc
from ..obs.operator import PointOperator
from ..obs.schema import QC_OK, validate_observations
from .cost import LatentCost
from .options import AssimilationOptions, as_options
from .obs_covariance import observation_covariance
from .ensemble import STREAM_LATENT, day_ordinal, member_normals
from .rto_steps import (_check_ensemble, _strict_float32, analyse_members, draw_eta, obs_perturbations,  # noqa: F401
                        reject_gross, representation_error, run_attrs, solution_diagnostics, solve_members)

log = logging.getLogger(__name__)

METHOD = "latent_rto"
QC_SAMPLE = 32  # prior draws used for the gross-departure statistics (at least; all members if more)



def assimilate(prior, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
               keep_members: bool = False, options: AssimilationOptions | Mapping[str, Any] | None = None,
               feedback: bool = False, passive: pd.DataFrame | None = None,
               **kwargs: Any) -> xr.Dataset | tuple[xr.Dataset, pd.DataFrame]:
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
    feedback : also return the per-observation feedback (:mod:`latentda.feedback`): one row per row of
        ``observations`` (O−B, O−A, analysis spread at the observation, QC reason, status used/rejected), then one
        per row of ``passive``. The analysis is the same bytes with or without it.
    passive : rows that are never assimilated (the evaluation hold-out): schema-checked and given O−B/O−A with
        status ``held_out`` in the feedback; ignored unless ``feedback``.
    qc_threshold : k of the gross-departure check ``|y − H x̄_b| > k sqrt(sigma_o² + var_b(H x))`` (inf: off);
        x̄_b and var_b come from max(members, 32) prior draws (the ensemble's own draws first) plus the
        representation-error variance diag(G Gᵀ), var_b floored at the climatological variance H s(d)².
    max_iter, tol : L-BFGS iterations per member; tolerance on the Newton decrement (distance to the minimum in
        posterior standard deviations) or the gradient norm, see :mod:`latentda.da.solver`. The default 0.1 moves
        a member by at most ~0.1 posterior std from its exact RTO solution: ~1 % of the posterior variance, below
        the Monte-Carlo error of the ensemble (1/M); 1e-2 costs ~25 % more time for the same analysis (6 days of
        the demo data, 100 stations, 10 members: T RMSE 3.1825 vs 3.1826 K, 1.09 vs 1.33 s per day).
    default_error : observation error std dev (scalar or per variable) when the table has no ``error`` column.
    options, **kwargs : :class:`latentda.da.options.AssimilationOptions` (or a dict of its fields), with keyword
        arguments on top (``assimilate(..., max_iter=50)``); every option is validated by that one model.
        ``qc_threshold``, ``max_iter``, ``tol``, ``default_error``: as above;
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

        ``covariance_form``: how R = R_o + G Gᵀ is handled (:mod:`latentda.da.obs_covariance`): "obs" (dense
        n × n Cholesky, the original path), "grid" (Woodbury in grid space: O(n) plus one r × r Cholesky
        per channel), "auto" (default: the cheaper by a flop model, and "obs" up to 6,400 observations);
        ``covariance_rank_tol``: the grid form's cut on the smoother's singular values (default 1e-3: eigenvalues
        of S Sᵀ below 1e-6 of the largest dropped, r ≈ 0.55 npts at 48 × 96; 0: full rank, r = npts, equal to
        the dense form to round-off; :mod:`latentda.da.lowrank`).
        ``window``: None or 0 here (a k >= 1 is the windowed analysis, :mod:`latentda.da.window`, whose options
        ``repr_time_correlation`` and ``window_neighbours`` have no effect on a per-day analysis).
        ``sampler``: "rto" (default, the cost above), "laplace" (MAP + Gauss-Newton Gaussian) or "langevin"
        (preconditioned MALA from the MAP; ``langevin_steps``, ``langevin_burnin``, ``langevin_target_accept``,
        ``langevin_init`` "map" or "laplace" (each chain starts at its member's Laplace draw);
        diagnostics acceptance_rate, ess, step_size): :mod:`latentda.da.samplers`; eta is updated as for RTO.

    Cost and memory: besides the decoder passes, "obs": O(n²) memory and O(n³) time for the Cholesky factor of
    R and O(n · nlat · nlon) for Gᵀ (n used observations); "grid": O(n) + O(C r³) time, O(npts r + C r²) memory,
    independent of n (npts = nlat · nlon). "auto" follows the flop model of ``choose_form`` above 6,400
    observations (48 x 96, 4 variables, 32 members: "grid" from 6,401; never where ~5 npts·r float64 exceed 4 GB).

    Returns
    -------
    xr.Dataset from :func:`latentda.analysis.analysis_dataset` (physical units): ensemble mean, spread (ddof=1),
    optional members and diagnostics; ``no_obs=1`` and the prior ensemble when no observation is usable.
    With ``feedback=True``: ``(dataset, feedback_table)``.
    Work is float32 on ``prior.device``; on the CPU the same inputs give identical bytes.
    """
    _check_ensemble(members, seed)
    opts = as_options(options, **kwargs)
    if getattr(prior, "window", 0):
        prior.require_window("latentda.da.rto.assimilate (the per-day analysis)", window=False)
    if opts.window:
        raise ValueError(f"window={opts.window}: latentda.da.rto.assimilate is the per-day analysis; use "
                         "latentda.assimilate (latentda.da.window.assimilate_window) with a window prior")
    with _strict_float32(torch.device(prior.device)):
        ds, table, xb, xa = _assimilate(prior, observations, time, int(members), int(seed),
                                        keep_members=bool(keep_members), opts=opts)
    if not feedback:
        return ds
    return ds, _feedback(prior, table, passive, time, xb, xa, opts)


def _feedback(prior, table: pd.DataFrame, passive: pd.DataFrame | None, time, xb: torch.Tensor,
              xa: np.ndarray, opts: AssimilationOptions) -> pd.DataFrame:
    """The feedback of the assimilated rows (``table``: QC'd, in input order) and of the ``passive`` rows."""
    from ..feedback import observation_feedback

    day = pd.Timestamp(time).normalize()
    variables = list(prior.variables)
    xb_mean = xb.double().mean(0).cpu().numpy()
    parts = [observation_feedback(table, day, prior.grid, variables, xb_mean, xa)]
    if passive is not None and len(passive):
        held = validate_observations(passive, variables, default_error=opts.default_error, time=day)
        parts.append(observation_feedback(held, day, prior.grid, variables, xb_mean, xa, held_out=True))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _assimilate(prior, observations: pd.DataFrame, time, members: int, seed: int, *, keep_members: bool,
                opts: AssimilationOptions) -> tuple[xr.Dataset, pd.DataFrame, torch.Tensor, np.ndarray]:
    """The body of :func:`assimilate` (arguments already checked): the analysis dataset, the QC'd table (one row
    per input row, in order), the background ensemble xb (M, C, nlat, nlon) tensor and the analysis members
    (M, C, nlat, nlon) float32 array, physical units."""
    k_qc = opts.qc_threshold
    ordinal = day_ordinal(time)
    day = pd.Timestamp(time).normalize()
    t0 = _time.perf_counter()
    variables = list(prior.variables)
    grid = prior.grid
    dev = torch.device(prior.device)
    C, (nlat, nlon), d = len(variables), grid.shape, int(prior.latent_dim)

    table = validate_observations(observations, variables, default_error=opts.default_error, time=day)

    mode = opts.representation_error
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
        eta_p = draw_eta(rep, seed, ordinal, members, (C, nlat, nlon), dev)
        xb = xb_g + eta_p if mode == "augmented" else xb_g

    # -- gross-departure check against the prior ---------------------------------------------------------------
    if usable.size:
        usable = reject_gross(table, usable, build(usable), xg_all, std, rep, k_qc, day)

    counts = _qc.qc_counts(table)
    attrs = run_attrs(prior, members, seed, opts, rep, length_km)
    diag: dict[str, float] = {"obs_used": int(usable.size), "obs_rejected": _qc.rejected_count(table)}

    if usable.size == 0:
        present = int(np.sum(table["qc"].to_numpy(dtype=object) != "wrong_time"))
        if present and opts.on_all_rejected == "fail":
            raise _qc.AllObservationsRejected(str(day.date()), counts)
        log.info("%s: no usable observation (%s): returning the prior ensemble", day.date(), counts)
        diag.update(fit_before=np.nan, fit_after=np.nan, cost=0.0, iterations=0, converged_fraction=1.0, no_obs=1)
        xa_np = xb.cpu().numpy()
        return (analysis_dataset(xa_np, variables, grid, day, diag, METHOD, counts, var_attrs=prior.var_attrs,
                                 keep_members=keep_members, attrs=attrs), table, xb, xa_np)

    # -- the observation-space quantities of the used rows ---------------------------------------------------
    op = build(usable)
    n = usable.size
    y64 = table["value"].to_numpy(dtype=np.float64)[usable]
    sig64 = table["error"].to_numpy(dtype=np.float64)[usable]
    sigma = torch.as_tensor(sig64, dtype=torch.float32, device=dev)
    eps = obs_perturbations(seed, ordinal, members, sigma, opts.perturb_obs)
    rcov = None
    if rep is not None:
        # built from the used rows only, so rejected rows cannot change a single bit of the analysis
        rcov = observation_covariance(rep, op, sig64, members, opts.covariance_form, opts.covariance_rank_tol)
    with torch.no_grad():
        # ỹ_m = y + eps_o,m − G w_p,m (eta_p = 0 without representation error), float64
        target = (torch.as_tensor(y64, device=dev) + eps.double() - op.apply_torch(eta_p).double())

    obs_term = dict(covariance=rcov) if rcov is not None else dict(sigma=sigma)
    cost = LatentCost(prior, op, mean, std, z_p, target, **obs_term)
    xa, res, mode_iterations, _ = analyse_members(cost, eta_p, y64, opts, day, seed, diag)
    diag.update(solution_diagnostics(op, xa, xb, y64, sig64, res))
    log.info("%s: %d obs used, %d rejected, fit %.3f -> %.3f, %d iterations (%d evaluations; mode %d), %.0f%% "
             "converged, %.2f s", day.date(), n, diag["obs_rejected"], diag["fit_before"], diag["fit_after"],
             diag["iterations"], res.evaluations, mode_iterations, 100 * diag["converged_fraction"],
             _time.perf_counter() - t0)
    xa_np = xa.cpu().numpy()
    return (analysis_dataset(xa_np, variables, grid, day, diag, METHOD, counts, var_attrs=prior.var_attrs,
                             keep_members=keep_members, attrs=attrs), table, xb, xa_np)
