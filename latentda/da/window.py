"""Windowed latent assimilation: the day d analysed with the observations of [d − k, d + k] by randomise-then-optimise
over the latents of the whole window (a latent smoother), returning the centre day.

Model (the per-day model of :mod:`latentda.da.rto` on every day t of the window, linked in time by the window prior's
latent transition, :mod:`latentda.prior.transition`)::

    z_{d−k} = ξ_0,  z_t = A z_{t−1} + L_q ξ_t,  ξ ~ N(0, I_{T d}),  T = 2k + 1
    x_t = g(z_t) + eta_t,   eta_t the per-day model (latentda.da.ensemble) on each day, AR(1) in time per variable:
                            Cov(eta_s^c, eta_t^c) = ρ_c^|s−t| D_c,s S Sᵀ D_c,t (latentda.da.window_covariance;
                            ρ_c the window prior's, option repr_time_correlation="fitted"; "none" or ρ = 0:
                            independent between days)
    y_t = H_t x_t + eps_t,  eps_t ~ N(0, R_o,t)

Randomise: member m draws ξ_p,m (day t's block from the latent stream of day t), eta_p,t,m and eps_t,m (the streams
of day t, as the per-day analysis of day t would). Optimise over the window latent ξ (all members, all days batched
through the decoder)::

    J_m(ξ) = ½‖ξ − ξ_p,m‖² + Σ_t ½ (ỹ_t,m − H_t g(z_t(ξ)))ᵀ R_t⁻¹ (ỹ_t,m − H_t g(z_t(ξ))),   R_t = R_o,t + G_t G_tᵀ

(each observation row against its own day), i.e. :class:`~latentda.da.cost.LatentCost` of the window generator
ξ -> (g(z_{d−k}), ..., g(z_{d+k})) stacked as T·C channels with a block-diagonal R
(:class:`~latentda.da.obs_covariance.BlockCovariance`: each day's R_t in the form ``covariance_form`` picks for that
day) when the representation error is independent between days, or the dense window R of
:class:`~latentda.da.window_covariance.WindowReprCovariance` when it is AR(1) in time (where the dense form is not
allowed, :func:`~latentda.da.window_covariance.correlated_form`, the analysis falls back to independent days,
logged; the attribute ``repr_time_correlation`` says which model was used); then the exact conditional update of
every day's eta, and the centre day d is returned in the per-day layout. With k = 0 the window latent is the day
latent and every step is the per-day one (the day's own covariance object, the same helpers of
:mod:`latentda.da.rto`): the output is bit-identical to :func:`latentda.da.rto.assimilate`.

Members' solve (option ``window_neighbours``): the posterior mode ξ̂ of the unperturbed window cost is found with
every day decoded; the members are then solved with the neighbouring days' observation terms linearised at ξ̂,
H_t g(z_t) ≈ H_t g(ẑ_t) + J_t (z_t − ẑ_t) for t ≠ d, the centre day decoded (:class:`NeighboursLinearised`, the
default "linearised": one outer loop of incremental 4D-Var, exact for a linear decoder), or with every day decoded
at every evaluation ("nonlinear"). J_t is the Gauss-Newton preconditioner's own Jacobian.

Cost: the mode solve decodes T latents per evaluation; the Gauss-Newton preconditioner differentiates each day's
decoder separately (T (d + 1) decodes, not T (T d + 1)) and applies the chain's linear map ξ -> z; the members'
solve decodes one latent per member per evaluation ("linearised", as the per-day analysis) or T ("nonlinear").
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
from ..obs.window import row_days, window_coverage, window_days
from .cost import FD_CHUNK, FD_STEP, LatentCost
from .ensemble import STREAM_LATENT, day_ordinal, member_normals
from .obs_covariance import BlockCovariance, observation_covariance
from .options import AssimilationOptions, as_options
from .window_covariance import WindowReprCovariance, correlated_form, draw_window_eta, prior_rho
from .rto import (QC_SAMPLE, _check_ensemble, _strict_float32, analyse_members, draw_eta, obs_perturbations,
                  reject_gross, representation_error, run_attrs, solution_diagnostics)
from . import rto

log = logging.getLogger(__name__)

METHOD = "latent_rto_window"


class WindowGenerator:
    """ξ (B, T d) -> the T days' standardised anomalies stacked as (B, T C, nlat, nlon): g(z_t(ξ)) per day.

    ``prior``: the VAE prior; ``days``: T; ``transition``: the latent chain (None only for T = 1)."""

    def __init__(self, prior, days: int, transition=None) -> None:
        if days > 1 and transition is None:
            raise ValueError(f"a window of {days} days needs the prior's latent transition")
        self.prior, self.days, self.transition = prior, int(days), transition
        self.day_dim = int(prior.latent_dim)
        self.latent_dim = self.days * self.day_dim

    def latents(self, xi: torch.Tensor) -> torch.Tensor:
        """z (B, T, d) of the window latent ξ (B, T d)."""
        if self.days == 1:
            return xi.reshape(xi.shape[0], 1, self.day_dim)
        return self.transition.chain(xi, self.days)

    def decode(self, xi: torch.Tensor) -> torch.Tensor:
        if self.days == 1:
            return self.prior.decode(xi)
        z = self.latents(xi.to(torch.float32))
        x = self.prior.decode(z.reshape(-1, self.day_dim))
        return x.reshape(xi.shape[0], self.days * x.shape[1], *x.shape[2:])


class WindowCost(LatentCost):
    """The window cost J_m(ξ) (module docstring): a :class:`LatentCost` whose generator is a :class:`WindowGenerator`
    and whose Jacobian is built day by day through the chain's linear map.

    ``neighbours``: (centre day index c, row bounds (T + 1,) of the days' rows, the centre day's operator H_c
    reading the C channels of one day) to solve the members with the neighbouring days linearised
    (:meth:`member_cost`, option ``window_neighbours="linearised"``); None: every day decoded at every evaluation."""

    def __init__(self, *args, neighbours: tuple[int, np.ndarray, PointOperator] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.neighbours = neighbours
        self._linear_at: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def member_cost(self, z_hat: torch.Tensor) -> LatentCost:
        """The members' cost: :class:`NeighboursLinearised` at the mode ``z_hat`` (T d,) when ``neighbours`` is
        set and the window has more than one day, else this cost."""
        if self.neighbours is None or self.prior.days == 1:
            return self
        z_hat = z_hat.reshape(-1).to(torch.float32)
        if self._linear_at is None or not torch.equal(self._linear_at[0], z_hat):
            with torch.no_grad():
                self.jacobian_t(z_hat, FD_STEP, FD_CHUNK)  # as linearise(ẑ) computed it
        _, hz, jz = self._linear_at
        return NeighboursLinearised(self, z_hat, hz, jz)

    def jacobian_t(self, z0: torch.Tensor, step: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H g(z0) (n,) float64, Jᵀ (T d, n) wrt ξ); also keeps (z0, H g(z0), ∂(H g)/∂z (T d, n) float64 wrt the
        days' latents) for :meth:`member_cost`."""
        gen: WindowGenerator = self.prior
        if gen.days == 1:
            return super().jacobian_t(z0, step, chunk)
        T, d = gen.days, gen.day_dim
        C = self.mean.shape[0] // T
        z_days = gen.latents(z0[None])[0]  # (T, d)
        a0 = gen.prior.decode(z_days)  # (T, C, nlat, nlon)
        full0 = a0.reshape(1, T * C, *a0.shape[2:])
        hz0 = self.operator.apply_torch(full0 * self.std + self.mean)[0].double()
        jz = torch.zeros((T * d, self.operator.nobs), dtype=torch.float64, device=z0.device)
        eye = torch.eye(d, device=z0.device) * step
        for t in range(T):
            Z = z_days[t] + eye
            for k in range(0, d, chunk):
                diff = gen.prior.decode(Z[k:k + chunk]) - a0[t]  # (b, C, nlat, nlon)
                field = torch.zeros((diff.shape[0], T * C, *diff.shape[2:]), device=z0.device)
                field[:, t * C:(t + 1) * C] = diff * self.std[t * C:(t + 1) * C]
                jz[t * d + k:t * d + k + diff.shape[0]] = self.operator.apply_torch(field).double() / step
        self._linear_at = (z0.detach().clone(), hz0, jz)
        chain = torch.as_tensor(gen.transition.chain_matrix(T), device=z0.device)  # ∂z/∂ξ (T d, T d)
        return hz0, (chain.T @ jz).to(torch.float32)  # Jᵀ wrt ξ = (∂z/∂ξ)ᵀ Jᵀ wrt z


class NeighboursLinearised(WindowCost):
    """The window cost with the neighbouring days' observation terms linearised at the window's posterior mode ξ̂
    (one outer loop of incremental 4D-Var; exact for a linear decoder)::

        H_t g(z_t) ≈ H_t g(ẑ_t) + J_t (z_t − ẑ_t)   (t ≠ c),     H_c g(z_c) decoded   (c the centre day)

    J_t = ∂(H_t g)/∂z_t at ẑ_t, the forward differences of :meth:`WindowCost.jacobian_t` (the Gauss-Newton
    preconditioner's own). Each evaluation decodes the centre latent only (B latents, not T B); the prior term and R
    (block-diagonal or the dense AR(1) window R) are the window cost's. ``fields`` still decodes every day (the
    analysis of each day of the window for the eta update and the diagnostics)."""

    def __init__(self, cost: WindowCost, z_hat: torch.Tensor, hz: torch.Tensor, jz: torch.Tensor) -> None:
        self.__dict__.update(cost.__dict__)
        gen: WindowGenerator = cost.prior
        T, d = gen.days, gen.day_dim
        self.centre, bounds, self.centre_operator = cost.neighbours
        self.bounds = [int(b) for b in bounds]
        if len(self.bounds) != T + 1 or self.bounds[-1] != self.operator.nobs:
            raise ValueError(f"row bounds {self.bounds} do not cover the window's {self.operator.nobs} rows in {T} "
                             "days")
        self.z_hat = gen.latents(z_hat[None])[0].double()  # ẑ_t (T, d)
        self.hz, self.jz, self.day_dim = hz, jz, d
        C = self.mean.shape[0] // T
        self.centre_mean = self.mean[self.centre * C:(self.centre + 1) * C]
        self.centre_std = self.std[self.centre * C:(self.centre + 1) * C]

    def observe(self, xi: torch.Tensor) -> torch.Tensor:
        """H g of the window's rows (B, n) float64: the centre day's decoded, the others' linearised."""
        gen: WindowGenerator = self.prior
        z = gen.latents(xi.to(torch.float32))  # (B, T, d)
        d, parts = self.day_dim, []
        for t in range(gen.days):
            lo, hi = self.bounds[t], self.bounds[t + 1]
            if hi == lo:
                continue
            if t == self.centre:
                x = gen.prior.decode(z[:, t]) * self.centre_std + self.centre_mean
                parts.append(self.centre_operator.apply_torch(x).double())
            else:
                dz = z[:, t].double() - self.z_hat[t]
                parts.append(self.hz[lo:hi] + dz @ self.jz[t * d:(t + 1) * d, lo:hi])
        return torch.cat(parts, dim=1)

    def observed(self, z: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        return self.observe(z)

    def member_cost(self, z_hat: torch.Tensor) -> LatentCost:
        return self


def window_operator(grid, lat, lon, channel, day_index, nchannels: int, days: int) -> PointOperator:
    """H of the window: row i reads variable ``channel[i]`` of day ``day_index[i]`` (0 = d − k) of the window field
    (T C, nlat, nlon), i.e. channel ``day_index[i] · C + channel[i]``. ``day_index=None``: all rows of one day."""
    channel = np.asarray(channel, dtype=np.int64)
    if day_index is not None:
        day_index = np.asarray(day_index, dtype=np.int64)
        if day_index.shape != channel.shape or (day_index.size and (day_index.min() < 0 or day_index.max() >= days)):
            raise ValueError(f"day_index must be ({channel.size},) in [0, {days}), got {day_index}")
        channel = channel + day_index * nchannels
    return PointOperator(grid, lat, lon, channel, nchannels=nchannels * days)


def assimilate(prior, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
               keep_members: bool = False, options: AssimilationOptions | Mapping[str, Any] | None = None,
               feedback: bool = False, passive: pd.DataFrame | None = None,
               **kwargs: Any) -> xr.Dataset | tuple[xr.Dataset, pd.DataFrame]:
    """``latentda.assimilate``: the windowed analysis (:func:`assimilate_window`) for a window prior, the per-day
    analysis (:func:`latentda.da.rto.assimilate`) for a day prior; same arguments and output layout. An explicit
    option ``window=k`` goes to :func:`assimilate_window` (which refuses k >= 1 with a day prior).
    ``feedback``/``passive``: also return the per-observation feedback (:mod:`latentda.feedback`); for the windowed
    analysis it holds the rows of the centre day (see :func:`assimilate_window`)."""
    opts = as_options(options, **kwargs)
    if getattr(prior, "window", 0) or opts.window is not None:
        return assimilate_window(prior, observations, time, members, seed, keep_members=keep_members, options=opts,
                                 feedback=feedback, passive=passive)
    return rto.assimilate(prior, observations, time, members, seed, keep_members=keep_members, options=opts,
                          feedback=feedback, passive=passive)


def assimilate_window(prior, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
                      keep_members: bool = False, options: AssimilationOptions | Mapping[str, Any] | None = None,
                      feedback: bool = False, passive: pd.DataFrame | None = None,
                      **kwargs: Any) -> xr.Dataset | tuple[xr.Dataset, pd.DataFrame]:
    """Analyse the day of ``time`` with the observations of [d − k, d + k] (module docstring), k = the option
    ``window`` (default: the prior's ``window``; 0 is the per-day analysis). Arguments, options
    (:class:`~latentda.da.options.AssimilationOptions`) and output as :func:`latentda.da.rto.assimilate`, plus the
    diagnostics ``window_days_observed`` (days of the window with at least one observation row) and
    ``obs_outside_window`` (rows ignored because their day is outside the window; they get QC reason
    ``wrong_time``) and the attribute ``window``. ``obs_used``, ``fit_before`` and ``fit_after`` cover the used rows
    of the whole window. A k >= 1 needs a window prior (ValueError naming the prior otherwise).

    ``feedback=True``: ``(dataset, feedback_table)``, the feedback (:mod:`latentda.feedback`) of the rows of the
    centre day d only (of ``observations`` and of the held-out ``passive`` rows), each row's O−B and O−A against
    day d's background and analysis in the window; the rows of the neighbouring days are assimilated but get their
    feedback in their own day's table, when that day is the centre (so every input row has one feedback row, in
    its own day's table)."""
    _check_ensemble(members, seed)
    opts = as_options(options, **kwargs)
    k = getattr(prior, "window", 0) if opts.window is None else opts.window
    if k:
        prior.require_window(f"assimilate_window(window={k})", window=True)
        if opts.sampler != "rto":
            raise ValueError(f"sampler={opts.sampler!r} is per-day only; the window analysis (window={k}) samples "
                             "by RTO (sampler='rto')")
    with _strict_float32(torch.device(prior.device)):
        ds, table, xb, xa = _assimilate_window(prior, observations, time, int(k), int(members), int(seed),
                                               keep_members=bool(keep_members), opts=opts)
    if not feedback:
        return ds
    day = window_days(time, int(k))[int(k)]
    return ds, rto._feedback(prior, _day_rows(table, day), None if passive is None else _day_rows(passive, day),
                             day, xb, xa, opts)


def _day_rows(table: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    """The rows of ``table`` whose time falls on ``day`` (:func:`latentda.obs.window.row_days`), in order."""
    return table[(row_days(table, strict=False) == day).to_numpy()].reset_index(drop=True)


def _prior_eta(reps, ordinals, seed: int, members: int, shape, dev, rho: np.ndarray | None) -> torch.Tensor:
    """eta_p (members, T C, nlat, nlon) from the streams of each window day: independent between days
    (``rho=None``) or AR(1) in time (:func:`latentda.da.window_covariance.draw_window_eta`)."""
    if rho is None:
        return torch.cat([draw_eta(rep, seed, o, members, shape, dev) for rep, o in zip(reps, ordinals)], dim=1)
    return draw_window_eta(reps, seed, ordinals, members, shape, dev, rho)


def _assimilate_window(prior, observations: pd.DataFrame, time, k: int, members: int, seed: int, *,
                       keep_members: bool, opts: AssimilationOptions
                       ) -> tuple[xr.Dataset, pd.DataFrame, torch.Tensor, np.ndarray]:
    """The body of :func:`assimilate_window` (arguments checked): the analysis dataset, the QC'd table of the
    window (one row per input row, in order), and the centre day's background ensemble (M, C, nlat, nlon) tensor
    and analysis members (M, C, nlat, nlon) array, physical units."""
    t_start = _time.perf_counter()
    days = window_days(time, k)
    T, centre = days.size, k
    day = days[centre]
    ordinals = [day_ordinal(t) for t in days]
    variables, grid, dev = list(prior.variables), prior.grid, torch.device(prior.device)
    C = len(variables)
    mode = opts.representation_error
    gen = WindowGenerator(prior, T, prior.transition if T > 1 else None)
    method = METHOD if k else rto.METHOD

    table = validate_observations(observations, variables, default_error=opts.default_error, time=list(days))
    clim = [prior.climatology_tensors(t) for t in days]
    means = [m.to(dev, torch.float32) for m, _ in clim]
    stds = [s.to(dev, torch.float32) for _, s in clim]
    reps_len = [representation_error(prior, s, opts) for s in stds]
    reps, length_km = [r for r, _ in reps_len], reps_len[0][1]

    usable = np.nonzero(table["qc"].to_numpy() == QC_OK)[0]
    row_day = table["time"].dt.normalize().to_numpy()
    chan_of = {v: i for i, v in enumerate(variables)}
    chan = table["variable"].map(chan_of).to_numpy()

    def build(rows, day_index=None):
        return window_operator(grid, table["lat"].to_numpy()[rows], table["lon"].to_numpy()[rows],
                               chan[rows].astype(np.int64), day_index, C, T if day_index is not None else 1)

    q = max(members, QC_SAMPLE) if usable.size else members
    xi_all = torch.cat([torch.as_tensor(member_normals(seed, o, STREAM_LATENT, q, (int(prior.latent_dim),)),
                                        device=dev) for o in ordinals], dim=1)  # ξ_p (q, T d)
    xi_p = xi_all[:members]
    mean_w, std_w = torch.cat(means), torch.cat(stds)  # (T C, nlat, nlon)
    with torch.no_grad():
        xg_all = gen.decode(xi_all) * std_w + mean_w  # (Q, T C, nlat, nlon) physical
        xb_g = xg_all[:members]

    # -- per-day rows, gross-departure check of each day against its own prior draws ----------------------------
    rows_by_day = []
    for t, dt in enumerate(days):
        rows = usable[row_day[usable] == np.datetime64(dt)]
        if rows.size:
            rows = reject_gross(table, rows, build(rows), xg_all[:, t * C:(t + 1) * C], stds[t], reps[t],
                                opts.qc_threshold, dt)
        rows_by_day.append(rows)
    used = np.concatenate(rows_by_day)

    # -- the representation error in time: AR(1) with the prior's ρ where the dense window R can be built --------
    rho = prior_rho(prior, opts.repr_time_correlation, T) if mode != "none" else None
    time_model = "ar1" if rho is not None else "independent"
    if rho is not None and used.size:
        dense, why = correlated_form(int(used.size), opts.covariance_form)
        if not dense:
            log.info("%s: representation error independent between days (not AR(1) in time): %s", day.date(), why)
            rho, time_model = None, f"independent (fallback: {why})"
    with torch.no_grad():
        eta_p = _prior_eta(reps, ordinals, seed, members, (C, *grid.shape), dev, rho)
        xb = xb_g + eta_p if mode == "augmented" else xb_g

    counts = _qc.qc_counts(table)
    attrs = {**run_attrs(prior, members, seed, opts, reps[0], length_km), "window": int(k)}
    if k:
        attrs.update(window_neighbours="nonlinear", repr_time_correlation=time_model,
                     repr_time_rho=None if rho is None else dict(zip(variables, map(float, rho))))
    diag: dict[str, float] = {"obs_used": int(used.size), "obs_rejected": _qc.rejected_count(table),
                              **window_coverage(observations, days)}
    csl = slice(centre * C, (centre + 1) * C)
    if used.size == 0:
        log.info("%s: no usable observation in the %d-day window (%s): returning the prior ensemble", day.date(), T,
                 counts)
        diag.update(fit_before=np.nan, fit_after=np.nan, cost=0.0, iterations=0, converged_fraction=1.0, no_obs=1)
        xa_c = xb[:, csl].cpu().numpy()
        return (analysis_dataset(xa_c, variables, grid, day, diag, method, counts, var_attrs=prior.var_attrs,
                                 keep_members=keep_members, attrs=attrs), table, xb[:, csl], xa_c)

    # -- stacked observation operator (row of day t reads channels t C .. t C + C − 1), targets and R --------------
    op = build(used, np.concatenate([np.full(r.size, t, dtype=np.int64) for t, r in enumerate(rows_by_day)]))
    y64 = table["value"].to_numpy(dtype=np.float64)[used]
    sig64 = table["error"].to_numpy(dtype=np.float64)[used]
    sigma = torch.as_tensor(sig64, dtype=torch.float32, device=dev)
    bounds = np.cumsum([0] + [r.size for r in rows_by_day])
    sls = [slice(bounds[t], bounds[t + 1]) for t in range(T)]
    eps = torch.cat([obs_perturbations(seed, ordinals[t], members, sigma[sl], opts.perturb_obs)
                     for t, sl in enumerate(sls)], dim=1)
    rcov = None
    if rho is not None:  # the dense window R with the AR(1) representation error (used rows only)
        rcov = WindowReprCovariance(reps, [build(rows) if rows.size else None for rows in rows_by_day], sig64,
                                    bounds, rho)
    elif mode != "none":
        # each day's R_t from its used rows only (rejected rows cannot change a bit), in that day's cheaper form
        blocks = [observation_covariance(reps[t], build(rows), sig64[sls[t]], members, opts.covariance_form)
                  if rows.size else None for t, rows in enumerate(rows_by_day)]
        rcov = blocks[0] if T == 1 else BlockCovariance(blocks, bounds, C)
    with torch.no_grad():
        target = torch.as_tensor(y64, device=dev) + eps.double() - op.apply_torch(eta_p).double()

    obs_term = dict(covariance=rcov) if rcov is not None else dict(sigma=sigma)
    neighbours = None  # the members' solve with the neighbouring days linearised at the mode (WindowCost)
    if T > 1 and opts.window_neighbours != "nonlinear" and opts.precondition:
        neighbours = (centre, bounds, build(rows_by_day[centre]) if rows_by_day[centre].size else None)
    cost = WindowCost(gen, op, mean_w, std_w, xi_p, target, neighbours=neighbours, **obs_term)
    xa, res, mode_iterations, member_cost = analyse_members(cost, eta_p, y64, opts, day)  # every day's eta updated
    if isinstance(member_cost, NeighboursLinearised):
        attrs["window_neighbours"] = "linearised"
    diag.update(solution_diagnostics(op, xa, xb, y64, sig64, res))
    log.info("%s: window ±%d, %d obs used on %d day(s) (representation error %s in time), %d rejected, fit %.3f "
             "-> %.3f, %d iterations (%d evaluations; mode %d), %.0f%% converged, %.2f s", day.date(), k, used.size,
             sum(r.size > 0 for r in rows_by_day), time_model, diag["obs_rejected"], diag["fit_before"],
             diag["fit_after"], diag["iterations"], res.evaluations, mode_iterations, 100 * diag["converged_fraction"],
             _time.perf_counter() - t_start)
    xa_c = xa[:, csl].cpu().numpy()
    return (analysis_dataset(xa_c, variables, grid, day, diag, method, counts, var_attrs=prior.var_attrs,
                             keep_members=keep_members, attrs=attrs), table, xb[:, csl], xa_c)
