"""Linear smoother baseline: a VAR(1) in EOF space of the training anomalies and the window BLUE.

State of day t in standardised anomaly units (:mod:`latentda.baselines.common`), N = C nlat nlon values::

    x'_t = xbar + U a_t + e_t,      a_{t+1} = Φ a_t + q_t,   q_t ~ N(0, Q),   e_t ~ N(0, diag(v_e)) white

with U (N, r) the leading EOFs scaled so the training coefficients a have unit covariance (C_0 = I), Φ = C_1 the
lag-1 covariance of the coefficients (Yule-Walker with C_0 = I), Q = I − Φ Φᵀ (stationary: every a_t ~ N(0, I))
and v_e the variance the r EOFs leave out. The prior of the window a = (a_{d−k}, ..., a_{d+k}) is Gaussian with
Cov(a_i, a_j) = Φ^{i−j} (i ≥ j). Observations of day t: y'_t = H_t x'_t + ε, R_t = diag(σ'² + H_t v_e). The window
BLUE (Kalman smoother of the linear model) is

    P_a = (P⁻¹ + Gᵀ R⁻¹ G)⁻¹,   â = P_a Gᵀ R⁻¹ (y' − H xbar),   G = blockdiag(H_t U),

and the analysis of the centre day is xbar + U â_c with the analytic spread diag(U P_a,cc Uᵀ) + v_e; members are
posterior draws. With window 0 this is the per-day BLUE of the same EOF prior: the gain of a wider window is
measured against it (``bench/lag_smoother.py``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.linalg as sla
import xarray as xr

from ..analysis import analysis_dataset
from ..eof import scaled_eofs
from ..obs.window import window_coverage, window_days
from .common import (Background, EOFModel, check_members, climatology_fields, climatology_to_npz, clim_var_attrs,
                     day_seed, diagnostics, prepare_observations, read_model_npz, training_anomalies)


@dataclasses.dataclass
class SmootherModel(EOFModel):
    """Fitted VAR(1)-in-EOF-space model: ``modes`` U (N, r), ``mean_anomaly`` xbar (N,), ``residual_var`` v_e (N,),
    ``phi`` Φ (r, r), standardised units, plus ``variables, grid, climatology, var_attrs`` and ``one_day_r2``, the
    fraction of the coefficients' variance Φ a_t explains of a_{t+1} on the training pairs."""

    residual_var: np.ndarray
    phi: np.ndarray
    one_day_r2: float

    @property
    def rank(self) -> int:
        return int(self.modes.shape[1])

    def window_covariance(self, window: int) -> np.ndarray:
        """Prior covariance of the stacked coefficients of 2 ``window`` + 1 consecutive days, (T r, T r)."""
        r, T = self.rank, 2 * window + 1
        powers = [np.eye(r)]
        for _ in range(T - 1):
            powers.append(self.phi @ powers[-1])
        P = np.empty((T * r, T * r))
        for i in range(T):
            for j in range(T):
                block = powers[i - j] if i >= j else powers[j - i].T
                P[i * r:(i + 1) * r, j * r:(j + 1) * r] = block
        return P

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (.npz)."""
        path = Path(path)
        meta = {"kind": "SmootherModel", "variables": list(self.variables), "var_attrs": self.var_attrs,
                "one_day_r2": self.one_day_r2}
        np.savez_compressed(path, meta=np.array(json.dumps(meta, default=str)), grid_lat=self.grid.lat,
                            grid_lon=self.grid.lon, modes=self.modes.astype(np.float32),
                            mean_anomaly=self.mean_anomaly, residual_var=self.residual_var, phi=self.phi,
                            **climatology_to_npz(self.climatology))
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> "SmootherModel":
        """Read a model written by :meth:`save`; ValueError if the file holds something else."""
        with read_model_npz(path, "SmootherModel") as (data, meta, grid, clim):
            return cls(tuple(meta["variables"]), grid, clim, meta["var_attrs"], data["modes"].astype(np.float64),
                       data["mean_anomaly"], data["residual_var"], data["phi"], float(meta["one_day_r2"]))


def fit_smoother(train_fields: xr.Dataset, climatology: xr.Dataset, variables: Sequence[str],
                 rank: int = 128) -> SmootherModel:
    """Fit a :class:`SmootherModel` with ``rank`` EOFs to ``train_fields`` (time, lat, lon; physical, daily).

    Lag-1 pairs are consecutive calendar days only (gaps in the time axis are skipped)."""
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive number of EOFs")
    variables = tuple(variables)
    anom, grid = training_anomalies(train_fields, climatology, variables, dtype=np.float32)
    S = anom.shape[0]
    if rank > S - 1:
        raise ValueError(f"rank={rank} exceeds the {S - 1} EOFs that {S} training days give")
    X = anom.reshape(S, -1)
    xbar = X.mean(axis=0, dtype=np.float64)
    modes, lam = scaled_eofs(X, lambda lam: int(rank), mean=xbar, scale=1.0 / np.sqrt(S - 1))
    # coefficients with unit sample covariance: a = Σ⁻² Uᵀ (x − xbar) for modes = U Σ (per column)
    coef = ((X - xbar) @ modes) / lam[:rank]  # (S, r)
    days = np.asarray(train_fields["time"].values, dtype="datetime64[D]")
    pair = np.nonzero(np.diff(days) == np.timedelta64(1, "D"))[0]
    if pair.size < 2:
        raise ValueError("the training fields have fewer than 2 pairs of consecutive days")
    a0, a1 = coef[pair], coef[pair + 1]
    phi = (a1.T @ a0) / (pair.size - 1)
    resid = a1 - a0 @ phi.T
    r2 = 1.0 - float((resid ** 2).sum() / (a1 ** 2).sum())
    v_e = np.clip(X.var(axis=0, ddof=1, dtype=np.float64) - (modes ** 2).sum(axis=1), 0.0, None)
    return SmootherModel(variables, grid, climatology, clim_var_attrs(climatology, variables), modes, xbar, v_e,
                         phi, r2)


def linear_smoother(model: SmootherModel, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
                    window: int = 1, default_error: float | Mapping[str, float] | None = None,
                    keep_members: bool = False) -> xr.Dataset:
    """Window BLUE of the VAR(1)-EOF model (module docstring) for the day of ``time`` from the observations of
    [d − ``window``, d + ``window``]; analysis_dataset layout, physical units, analytic mean and spread.

    Rows outside the window are ignored (counted in ``obs_outside_window``); members are draws of the Gaussian
    posterior from ``SeedSequence([seed, day, method])``."""
    members = check_members(members)
    if not isinstance(model, SmootherModel):
        raise ValueError(f"model must be a SmootherModel (from fit_smoother), got {type(model).__name__}")
    days = window_days(time, window)
    centre = int(window)
    bg = Background(tuple(model.variables), model.grid, model.climatology, model.var_attrs)
    r, T = model.rank, days.size
    U, xbar = model.modes, model.mean_anomaly
    shape = (len(bg.variables), *bg.grid.shape)
    G_blocks, d_parts, rinv_parts, per_day = [], [], [], []
    for t, day in enumerate(days):
        m, s = climatology_fields(bg, day)
        obs = prepare_observations(observations, bg, day, m, s, default_error)
        per_day.append((obs, m, s))
        if obs.n_used:
            Hs = obs.H.to_sparse().tocsr()
            G_blocks.append((t, np.asarray(Hs @ U)))
            d_parts.append(obs.y_std - Hs @ xbar)
            rinv_parts.append(1.0 / (obs.sigma_std ** 2 + Hs @ model.residual_var))
    P = model.window_covariance(int(window))
    Pinv = np.linalg.inv(P + 1e-10 * np.eye(T * r))
    A = Pinv.copy()
    b = np.zeros(T * r)
    for (t, G), dd, ri in zip(G_blocks, d_parts, rinv_parts):
        sl = slice(t * r, (t + 1) * r)
        A[sl, sl] += G.T @ (G * ri[:, None])
        b[sl] += G.T @ (ri * dd)
    L = sla.cholesky(0.5 * (A + A.T), lower=True)
    a_hat = sla.cho_solve((L, True), b)
    csl = slice(centre * r, (centre + 1) * r)
    Pa_cc = sla.cho_solve((L, True), np.eye(T * r)[:, csl])[csl]  # centre block of A⁻¹
    Lc = np.linalg.cholesky(0.5 * (Pa_cc + Pa_cc.T) + 1e-12 * np.eye(r))
    obs_c, m_c, s_c = per_day[centre]
    xa = xbar + U @ a_hat[csl]
    var = np.einsum("nr,nr->n", U @ Lc, U @ Lc) + model.residual_var
    mean = m_c + s_c * xa.reshape(shape)
    spread = s_c * np.sqrt(var.reshape(shape))
    root = day_seed(seed, days[centre], "linear_smoother")
    xi = np.stack([np.random.default_rng(q).standard_normal(r + U.shape[0]) for q in root.spawn(members)])
    ens = (xa[None] + (xi[:, :r] @ Lc.T) @ U.T + xi[:, r:] * np.sqrt(model.residual_var)[None])
    ens_phys = m_c[None] + s_c[None] * ens.reshape(members, *shape)
    diag = diagnostics(obs_c, m_c + s_c * xbar.reshape(shape), mean, cost=float("nan"))
    coverage = window_coverage(observations, days)
    return analysis_dataset(ens_phys, list(bg.variables), bg.grid, days[centre], {**diag, **coverage},
                            "linear_smoother", obs_c.qc_counts, var_attrs=bg.var_attrs,
                            keep_members=keep_members, mean=mean, spread=spread,
                            attrs={"window": int(window), "rank": r, "one_day_r2": round(model.one_day_r2, 6)})

