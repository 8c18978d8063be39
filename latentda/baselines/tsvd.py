"""3D-Var in a truncated-SVD (EOF) space of the training anomalies (Arcucci et al. 2019; Mack & Arcucci).

Multivariate, in standardised anomaly space (:mod:`latentda.baselines.common`). With the S training states
``x'_s`` (all variables stacked, N = C nlat nlon values) and their mean ``xbar``, the scaled anomaly matrix is::

    V = [x'_1 - xbar, ..., x'_S - xbar] / sqrt(S - 1)          (N x S),    B = V V^T

(the sample covariance). Its truncated SVD ``V_tau = U_tau Sigma_tau W_tau^T`` (tau leading singular triplets)
defines ``B = V_tau V_tau^T`` and the control variable transform ``dx = V_tau w`` (Parrish & Derber 1992). The
background is the training mean ``x_b' = xbar`` (the climatology). 3D-Var minimises::

    J(w) = 1/2 w^T w + 1/2 || d - H V_tau w ||^2_{R^-1},      d = y' - H x_b'

Only ``W_tau^T w`` matters, so we use ``v = W_tau^T w`` in R^tau and ``G = H U_tau Sigma_tau`` (p x tau). J is
quadratic, so the minimiser is closed form::

    P = I + G^T R^-1 G,   v_a = P^-1 G^T R^-1 d,   x_a' = x_b' + U_tau Sigma_tau v_a

and the posterior is Gaussian, ``v ~ N(v_a, P^-1)``: members ``v_m = v_a + L^-T xi_m`` (``P = L L^T``,
``xi_m ~ N(0, I)``), analytic spread ``diag(U Sigma P^-1 Sigma U^T) = colsum((L^-1 Sigma U^T)^2)``. With full
truncation this is the explicit 3D-Var / BLUE solution ``x_b + B H^T (H B H^T + R)^-1 d``.
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
from .common import (Background, EOFModel, check_members, climatology_fields, climatology_to_npz, clim_var_attrs,
                     day_of, day_seed, diagnostics, prepare_observations, read_model_npz, training_anomalies)


@dataclasses.dataclass
class TSVDModel(EOFModel):
    """Fitted TSVD background: ``modes = U_tau Sigma_tau`` (N, tau), ``mean_anomaly`` xbar (N,) in standardised
    units (N = C nlat nlon, order C, lat, lon), ``singular_values`` (tau,), ``explained_variance`` fraction of the
    total sample variance kept, ``n_samples`` S, plus ``variables, grid, climatology, var_attrs``."""

    singular_values: np.ndarray
    explained_variance: float
    n_samples: int

    @property
    def truncation(self) -> int:
        return int(self.modes.shape[1])

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (.npz; modes stored as float32)."""
        path = Path(path)
        meta = {"kind": "TSVDModel", "variables": list(self.variables), "var_attrs": self.var_attrs,
                "explained_variance": self.explained_variance, "n_samples": self.n_samples}
        np.savez_compressed(path, meta=np.array(json.dumps(meta, default=str)), grid_lat=self.grid.lat,
                            grid_lon=self.grid.lon,
                            modes=self.modes.astype(np.float32), mean_anomaly=self.mean_anomaly,
                            singular_values=self.singular_values, **climatology_to_npz(self.climatology))
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> "TSVDModel":
        """Read a model written by :meth:`save`; ValueError if the file holds something else."""
        with read_model_npz(path, "TSVDModel") as (data, meta, grid, clim):
            return cls(tuple(meta["variables"]), grid, clim, meta["var_attrs"], data["modes"].astype(np.float64),
                       data["mean_anomaly"].astype(np.float64), data["singular_values"].astype(np.float64),
                       float(meta["explained_variance"]), int(meta["n_samples"]))


def _choose_tau(sv2: np.ndarray, truncation: int | float) -> int:
    total = sv2.sum()
    if isinstance(truncation, (bool, np.bool_)):
        raise ValueError(f"truncation={truncation!r} must be an int (modes) or a float in (0, 1] (variance)")
    if isinstance(truncation, (int, np.integer)):
        if truncation < 1:
            raise ValueError(f"truncation={truncation} must be >= 1 mode")
        if truncation > sv2.size:
            raise ValueError(f"truncation={truncation} exceeds the rank bound min(S, N) = {sv2.size}")
        return int(truncation)
    frac = float(truncation)
    if not 0 < frac <= 1:
        raise ValueError(f"truncation={truncation} as a variance fraction must be in (0, 1]")
    if frac == 1.0:
        return int(np.sum(sv2 > sv2[0] * 1e-12))
    return int(np.searchsorted(np.cumsum(sv2) / total, frac) + 1)


def fit_tsvd(train_fields: xr.Dataset, climatology: xr.Dataset, variables: Sequence[str],
             truncation: int | float, block: int = 4096) -> TSVDModel:
    """Fit a :class:`TSVDModel` to ``train_fields`` (time, lat, lon; physical) with their ``climatology``.

    ``truncation``: number of modes tau (int, 1 <= tau <= min(S, N)) or the fraction of the sample variance to
    keep (float in (0, 1]; 1.0 keeps every non-null mode). The SVD is computed from the S x S Gram matrix
    ``V V^T`` (eigendecomposition) when S <= N, else from ``V^T V``, accumulated in column blocks of ``block``.
    """
    variables = tuple(variables)
    anom, grid = training_anomalies(train_fields, climatology, variables, dtype=np.float32)
    S = anom.shape[0]
    X = anom.reshape(S, -1)
    xbar = X.mean(axis=0, dtype=np.float64)
    scale = 1.0 / np.sqrt(S - 1)
    modes, lam = scaled_eofs(X, lambda lam: _choose_tau(lam, truncation), mean=xbar, scale=scale, block=block)
    tau = modes.shape[1]
    return TSVDModel(variables, grid, climatology, clim_var_attrs(climatology, variables), modes, xbar,
                     np.sqrt(lam[:tau]), float(lam[:tau].sum() / lam.sum()), int(S))


def load_tsvd(path: str | Path) -> TSVDModel:
    """Shorthand for :meth:`TSVDModel.load`."""
    return TSVDModel.load(path)


def tsvd_3dvar(tsvd_model: TSVDModel, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
               default_error: float | Mapping[str, float] | None = None, keep_members: bool = False,
               analytic: bool = True) -> xr.Dataset:
    """TSVD 3D-Var analysis of the day of ``time`` (module docstring), analysis_dataset layout, physical units.

    ``members`` posterior samples are drawn with ``SeedSequence([seed, day, method]).spawn(members)`` (one stream
    per member). ``analytic=True``: the dataset's mean/spread are the exact posterior mean and standard deviation;
    ``False``: the statistics of the members. ``keep_members`` stores the members. ``cost`` = J(v_a).
    """
    members = check_members(members)
    if not isinstance(tsvd_model, TSVDModel):
        raise ValueError(f"tsvd_model must be a TSVDModel (from fit_tsvd or TSVDModel.load), "
                         f"got {type(tsvd_model).__name__}")
    if not analytic and members < 2:
        raise ValueError("analytic=False needs members >= 2 to estimate a spread")
    bg = Background(tuple(tsvd_model.variables), tsvd_model.grid, tsvd_model.climatology, tsvd_model.var_attrs)
    clim_mean, clim_std = climatology_fields(bg, time)
    obs = prepare_observations(observations, bg, time, clim_mean, clim_std, default_error)
    Lm = tsvd_model.modes  # (N, tau)
    tau = Lm.shape[1]
    xb = tsvd_model.mean_anomaly
    shape = (len(bg.variables), *bg.grid.shape)
    if obs.n_used:
        Hs = obs.H.to_sparse().tocsr()
        G = np.asarray(Hs @ Lm)  # (p, tau)
        rinv = 1.0 / obs.sigma_std ** 2
        d = obs.y_std - Hs @ xb
        P = np.eye(tau) + G.T @ (G * rinv[:, None])
    else:
        G, rinv, d, P = np.zeros((0, tau)), np.zeros(0), np.zeros(0), np.eye(tau)
    Lp = sla.cholesky(P, lower=True)
    va = sla.cho_solve((Lp, True), G.T @ (rinv * d))
    cost = 0.5 * float(va @ va) + 0.5 * float(np.sum(rinv * (d - G @ va) ** 2))
    xa = xb + Lm @ va
    rng_root = day_seed(seed, time, "tsvd_3dvar")
    xi = np.stack([np.random.default_rng(s).standard_normal(tau) for s in rng_root.spawn(members)])  # (M, tau)
    vm = va[None] + sla.solve_triangular(Lp.T, xi.T, lower=False).T  # cov L^-T L^-1 = P^-1
    ens = (xb[None] + vm @ Lm.T).reshape(members, *shape)
    ens_phys = clim_mean[None] + clim_std[None] * ens
    if analytic:
        K = sla.solve_triangular(Lp, Lm.T, lower=True)  # (tau, N)
        var = np.einsum("tn,tn->n", K, K)
        mean = clim_mean + clim_std * xa.reshape(shape)
        spread = clim_std * np.sqrt(var.reshape(shape))
    else:
        mean, spread = None, None
    diag = diagnostics(obs, clim_mean + clim_std * xb.reshape(shape),
                       mean if mean is not None else ens_phys.mean(axis=0), cost=cost)
    return analysis_dataset(ens_phys, list(bg.variables), bg.grid, day_of(time), diag, "tsvd_3dvar",
                            obs.qc_counts, var_attrs=bg.var_attrs, keep_members=keep_members, mean=mean,
                            spread=spread, attrs={"truncation": tau, "explained_variance":
                                                  round(tsvd_model.explained_variance, 6)})
