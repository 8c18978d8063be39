"""Optimal interpolation (OI) with a homogeneous, isotropic correlation model fitted to the training anomalies.

Univariate, per variable, in standardised anomaly space (:mod:`latentda.baselines.common`). The background is
the climatology (``x_b' = 0``) with covariance::

    B_ij = v * rho(d_ij / L)

``d_ij`` the chordal distance between grid points ``i`` and ``j`` (km), ``v`` the variance of the standardised
training anomalies (area-weighted mean over the grid, ~1) and ``rho`` one of::

    gaussian      rho(r) = exp(-r^2 / 2)
    soar          rho(r) = (1 + r) exp(-r)          (second-order auto-regressive)
    exponential   rho(r) = exp(-r)

``L`` (and, with ``model="auto"``, the model) is fitted per variable by weighted least squares to the empirical
correlations of the training anomalies binned by distance (:func:`fit_correlation`), not guessed.

Analysis (BLUE; Gandin 1963, Lorenc 1986) with ``R = diag(sigma'^2)`` and the bilinear point operator ``H``::

    x_a' = x_b' + B H^T (H B H^T + R)^-1 (y' - H x_b')
    var_a = diag(B - B H^T (H B H^T + R)^-1 H B)

``B H^T`` (n x p) is built column block by column block from the correlation function, so the n x n matrix B is
never formed; with ``S = H B H^T + R = L L^T``, ``var_a = v - sum_k (L^-1 (B H^T)^T)_{k,i}^2``. The analysis is
returned as a mean and this analytic spread (physical units: ``x = m + s x'``, ``spread = s sqrt(var_a)``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.linalg as sla
import xarray as xr
from scipy.optimize import minimize_scalar

from ..analysis import analysis_dataset
from ..grid import Grid
from .common import (Background, chordal_distance_km, check_members, climatology_fields, climatology_to_npz,
                     clim_var_attrs, day_of, diagnostics, prepare_observations, read_model_npz, training_anomalies)

EARTH_RADIUS_KM = 6371.0

CORRELATION_MODELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gaussian": lambda r: np.exp(-0.5 * r * r),
    "soar": lambda r: (1.0 + r) * np.exp(-r),
    "exponential": lambda r: np.exp(-r),
}


def correlation(model: str, distance_km: np.ndarray, length_scale_km: float) -> np.ndarray:
    """``rho(d / L)`` of ``model`` (module docstring) for distances in km."""
    if model not in CORRELATION_MODELS:
        raise ValueError(f"correlation model {model!r} unknown; use one of {sorted(CORRELATION_MODELS)}")
    if not length_scale_km > 0:
        raise ValueError(f"length scale {length_scale_km} km must be > 0")
    return CORRELATION_MODELS[model](np.asarray(distance_km, dtype=np.float64) / length_scale_km)


@dataclasses.dataclass(frozen=True)
class EmpiricalCorrelation:
    """Binned empirical correlation of anomalies vs chordal distance: ``distance_km``, ``correlation``,
    ``count`` (area-weighted pair counts), all (nbins,)."""

    distance_km: np.ndarray
    correlation: np.ndarray
    count: np.ndarray


def empirical_correlation(anomalies: np.ndarray, grid: Grid, n_reference: int = 256, bin_km: float | None = None,
                          seed: int = 0) -> EmpiricalCorrelation:
    """Correlations between ``n_reference`` area-uniformly drawn grid points and all grid points, binned by
    chordal distance (bins of ``bin_km``, default half the meridional grid spacing). Zero distance is excluded.

    ``anomalies``: (T, nlat, nlon), one variable. Pairs are weighted by cos(lat) of the second point so that the
    estimate is an area average. Correlation of two points: Pearson over time.
    """
    x = np.asarray(anomalies, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != grid.shape:
        raise ValueError(f"anomalies must be (T, {grid.shape[0]}, {grid.shape[1]}), got {x.shape}")
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 training times to estimate correlations, got {x.shape[0]}")
    nt = x.shape[0]
    z = x.reshape(nt, -1)
    z = z - z.mean(axis=0)
    sd = z.std(axis=0)
    sd[sd == 0] = np.inf  # a constant point has no correlation with anything
    z = z / sd
    lat2d, lon2d = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    lat_f, lon_f = lat2d.ravel(), lon2d.ravel()
    w_area = np.cos(np.deg2rad(lat_f))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    n_ref = min(int(n_reference), z.shape[1])
    if n_ref < 1:
        raise ValueError(f"n_reference={n_reference} must be >= 1")
    ref = rng.choice(z.shape[1], size=n_ref, replace=False, p=w_area / w_area.sum())
    corr = (z[:, ref].T @ z) / nt  # (n_ref, n)
    dist = chordal_distance_km(lat_f[ref][:, None], lon_f[ref][:, None], lat_f[None], lon_f[None],
                               EARTH_RADIUS_KM)
    if bin_km is None:
        bin_km = 0.5 * np.deg2rad(np.median(np.diff(grid.lat))) * EARTH_RADIUS_KM
    if not bin_km > 0:
        raise ValueError(f"bin_km={bin_km} must be > 0")
    edges = np.arange(0.0, 2 * EARTH_RADIUS_KM + bin_km, bin_km)
    keep = dist > 1e-6
    b = np.digitize(dist[keep], edges) - 1
    wts = np.broadcast_to(w_area[None], dist.shape)[keep]
    cnt = np.bincount(b, weights=wts, minlength=edges.size)
    csum = np.bincount(b, weights=wts * corr[keep], minlength=edges.size)
    dsum = np.bincount(b, weights=wts * dist[keep], minlength=edges.size)
    ok = cnt > 0
    return EmpiricalCorrelation(dsum[ok] / cnt[ok], csum[ok] / cnt[ok], cnt[ok])


@dataclasses.dataclass(frozen=True)
class CorrelationFit:
    """Result of :func:`fit_correlation`: ``model``, ``length_scale_km``, weighted RMS ``misfit`` over the fitted
    bins, ``max_distance_km`` used, and the misfit of every model tried (``misfits``)."""

    model: str
    length_scale_km: float
    misfit: float
    max_distance_km: float
    misfits: dict[str, float]


def fit_correlation(emp: EmpiricalCorrelation, model: str = "auto", min_correlation: float = 0.1,
                    max_distance_km: float | None = None) -> CorrelationFit:
    """Fit ``rho(d / L)`` to binned empirical correlations by weighted least squares::

        L = argmin_L sum_b n_b (rho(d_b / L) - c_b)^2      over bins with d_b <= D

    ``D`` = ``max_distance_km`` or, by default, the first bin distance at which the empirical correlation falls
    below ``min_correlation`` (the main lobe: far-field teleconnections are not a homogeneous structure).
    ``model="auto"`` tries every model and keeps the smallest misfit.
    """
    if model != "auto" and model not in CORRELATION_MODELS:
        raise ValueError(f"correlation model {model!r} unknown; use 'auto' or one of {sorted(CORRELATION_MODELS)}")
    d, c, n = emp.distance_km, emp.correlation, emp.count
    if d.size < 2:
        raise ValueError("fewer than 2 distance bins: the grid or the training sample is too small")
    if max_distance_km is None:
        below = np.nonzero(c < min_correlation)[0]
        max_distance_km = float(d[below[0]]) if below.size else float(d[-1])
    sel = d <= max_distance_km
    if sel.sum() < 2:
        sel = np.zeros_like(d, dtype=bool)
        sel[:2] = True
    d, c, n = d[sel], c[sel], n[sel]
    w = n / n.sum()
    models = list(CORRELATION_MODELS) if model == "auto" else [model]
    results = {}
    lo, hi = np.log(1.0), np.log(4 * EARTH_RADIUS_KM)
    for m in models:
        def loss(logl, m=m):
            return float(np.sum(w * (correlation(m, d, np.exp(logl)) - c) ** 2))
        res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
        results[m] = (float(np.exp(res.x)), float(np.sqrt(res.fun)))
    best = min(results, key=lambda m: results[m][1])
    return CorrelationFit(best, results[best][0], results[best][1], float(max_distance_km),
                          {m: r[1] for m, r in results.items()})


@dataclasses.dataclass
class OIModel:
    """Fitted OI: per variable a correlation ``model``, ``length_scale_km`` and background ``variance`` (in
    standardised anomaly units), plus ``variables, grid, climatology, var_attrs``. Save/load as .npz."""

    variables: tuple[str, ...]
    grid: Grid
    climatology: xr.Dataset
    var_attrs: dict[str, dict]
    model: dict[str, str]
    length_scale_km: dict[str, float]
    variance: dict[str, float]
    fit_misfit: dict[str, float] = dataclasses.field(default_factory=dict)

    def covariance(self, variable: str, distance_km: np.ndarray) -> np.ndarray:
        """``B(d) = v rho(d / L)`` of ``variable`` (standardised units), distances in km (chordal)."""
        if variable not in self.model:
            raise KeyError(f"variable {variable!r} not in the OI model; it has {list(self.variables)}")
        return self.variance[variable] * correlation(self.model[variable], distance_km,
                                                     self.length_scale_km[variable])

    def npz_meta(self) -> dict:
        """The JSON metadata :meth:`save` writes: kind, variables, fitted parameters, CF attributes."""
        return {"kind": "OIModel", "variables": list(self.variables), "model": self.model,
                "length_scale_km": self.length_scale_km, "variance": self.variance,
                "fit_misfit": self.fit_misfit, "var_attrs": self.var_attrs}

    def save(self, path: str | Path, meta: dict | None = None, **arrays: np.ndarray) -> Path:
        """Write the model to ``path`` (.npz); ``meta`` (default :meth:`npz_meta`) and extra ``arrays``: for
        models that extend the OI (the space-time OI)."""
        path = Path(path)
        np.savez_compressed(path, meta=np.array(json.dumps(meta or self.npz_meta(), default=str)),
                            grid_lat=self.grid.lat, grid_lon=self.grid.lon,
                            **climatology_to_npz(self.climatology), **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def from_meta(cls, meta: dict, grid: Grid, clim: xr.Dataset) -> "OIModel":
        """The model of :meth:`npz_meta`'s ``meta`` on ``grid`` with climatology ``clim``."""
        return cls(tuple(meta["variables"]), grid, clim, meta["var_attrs"], meta["model"],
                   {k: float(v) for k, v in meta["length_scale_km"].items()},
                   {k: float(v) for k, v in meta["variance"].items()}, meta.get("fit_misfit", {}))

    @classmethod
    def load(cls, path: str | Path) -> "OIModel":
        """Read a model written by :meth:`save`; ValueError if the file holds something else."""
        with read_model_npz(path, "OIModel") as (_, meta, grid, clim):
            return cls.from_meta(meta, grid, clim)


def fit_oi(train_fields: xr.Dataset, climatology: xr.Dataset, variables: Sequence[str], model: str = "auto",
           n_reference: int = 256, min_correlation: float = 0.1, max_distance_km: float | None = None,
           seed: int = 0) -> OIModel:
    """Fit an :class:`OIModel` to ``train_fields`` (time, lat, lon; physical units) given their ``climatology``.

    Per variable: standardised anomalies ``x'``; ``v`` = area-weighted mean of the temporal variance of ``x'``;
    correlation model and ``L`` from :func:`empirical_correlation` + :func:`fit_correlation`.
    """
    variables = tuple(variables)
    anom, grid = training_anomalies(train_fields, climatology, variables)
    w = np.cos(np.deg2rad(grid.lat))[:, None] * np.ones(grid.shape[1])[None]
    models, scales, variances, misfits = {}, {}, {}, {}
    for k, v in enumerate(variables):
        emp = empirical_correlation(anom[:, k], grid, n_reference=n_reference, seed=seed + k)
        fit = fit_correlation(emp, model=model, min_correlation=min_correlation, max_distance_km=max_distance_km)
        models[v], scales[v], misfits[v] = fit.model, fit.length_scale_km, fit.misfit
        variances[v] = float(np.sum(w * anom[:, k].var(axis=0)) / w.sum())
    return OIModel(variables, grid, climatology, clim_var_attrs(climatology, variables), models, scales, variances,
                   misfits)


def load_oi(path: str | Path) -> OIModel:
    """Shorthand for :meth:`OIModel.load`."""
    return OIModel.load(path)


def _bht(oi: OIModel, variable: str, Hc, chunk: int, grid_lon: np.ndarray | None = None,
         obs_lon: np.ndarray | None = None, factor: float = 1.0, rows: np.ndarray | None = None) -> np.ndarray:
    """``B H^T`` (n, p) for a (p, n) CSR operator of one variable, built in blocks of ``chunk`` observations.

    ``grid_lon`` / ``obs_lon`` (n,): the longitudes (degrees) the grid points take on the analysed side and on the
    side ``Hc`` reads (default: the grid's own; the space-time OI passes the advected ones); ``factor`` multiplies
    B (the space-time OI's temporal correlation); ``rows``: only these grid points on the analysed side
    (len(rows), p)."""
    lat2d, lon2d = np.meshgrid(oi.grid.lat, oi.grid.lon, indexing="ij")
    lat_f, lon_f = lat2d.ravel(), lon2d.ravel()
    lon_a = lon_f if grid_lon is None else grid_lon
    lon_b = lon_f if obs_lon is None else obs_lon
    lat_a = lat_f
    if rows is not None:
        lat_a, lon_a = lat_f[rows], lon_a[rows]
    n, p = lat_a.size, Hc.shape[0]
    out = np.empty((n, p))
    for j0 in range(0, p, chunk):
        sub = Hc[j0:j0 + chunk]
        cols = np.unique(sub.indices)
        d = chordal_distance_km(lat_a[:, None], lon_a[:, None], lat_f[cols][None], lon_b[cols][None],
                                EARTH_RADIUS_KM)
        cov = oi.covariance(variable, d)
        if factor != 1.0:
            cov = cov * factor
        out[:, j0:j0 + chunk] = cov @ sub[:, cols].T.toarray()
    return out


def blue_update(bht: np.ndarray, hbht: np.ndarray, innovation: np.ndarray, sigma: np.ndarray,
                prior_variance: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The BLUE of one variable in standardised units (module docstring), x_b' = 0:
    ``x_a' = B H^T (H B H^T + R)^-1 y'``, ``var_a = v - diag(B H^T S^-1 H B)``, ``J(x_a)``.

    ``bht`` (n, p), ``hbht`` (p, p), ``innovation`` y' (p,), ``sigma`` sigma' (p,), ``prior_variance`` v.
    Returns (x_a' (n,), var_a (n,), cost)."""
    hbht = 0.5 * (hbht + hbht.T)
    S = hbht + np.diag(sigma ** 2)
    L = sla.cholesky(S, lower=True)
    w = sla.cho_solve((L, True), innovation)
    xa = bht @ w
    K = sla.solve_triangular(L, bht.T, lower=True)  # (p, n)
    var = np.maximum(prior_variance - np.einsum("pn,pn->n", K, K), 0.0)
    resid = innovation - hbht @ w
    cost = 0.5 * float(w @ hbht @ w) + 0.5 * float(np.sum((resid / sigma) ** 2))
    return xa, var, cost


def optimal_interpolation(oi_model: OIModel, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
                          default_error: float | Mapping[str, float] | None = None, keep_members: bool = False,
                          chunk: int = 256) -> xr.Dataset:
    """OI analysis of the day of ``time`` (module docstring) in the analysis_dataset layout, physical units.

    ``oi_model``: from :func:`fit_oi`. ``observations``: table validated with the same QC as the latent
    assimilation; the error column (or ``default_error``) is the observation error standard deviation.
    The output is the BLUE mean and its analytic posterior spread; ``members``/``seed`` are accepted for the
    common signature (OI has no ensemble: ``keep_members=True`` raises ValueError). Diagnostics: ``cost`` is
    ``J(x_a) = 1/2 (x_a - x_b)' B^-1 (x_a - x_b) + 1/2 |y' - H x_a'|^2_R^-1`` summed over variables.
    """
    check_members(members)
    if keep_members:
        raise ValueError("optimal interpolation returns a mean and an analytic spread, no members; "
                         "use keep_members=False")
    if not isinstance(oi_model, OIModel):
        raise ValueError(f"oi_model must be an OIModel (from fit_oi or OIModel.load), got {type(oi_model).__name__}")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    bg = Background(tuple(oi_model.variables), oi_model.grid, oi_model.climatology, oi_model.var_attrs)
    clim_mean, clim_std = climatology_fields(bg, time)
    obs = prepare_observations(observations, bg, time, clim_mean, clim_std, default_error)
    C = len(bg.variables)
    n = bg.grid.shape[0] * bg.grid.shape[1]
    xa = np.zeros((C, n))
    var = np.empty((C, n))
    cost = 0.0
    Hs = obs.H.to_sparse().tocsr() if obs.n_used else None
    for c, v in enumerate(bg.variables):
        var[c] = oi_model.variance[v]
        idx = np.nonzero(obs.channel == c)[0]
        if idx.size == 0:
            continue
        Hc = Hs[idx][:, c * n:(c + 1) * n].tocsr()
        bht = _bht(oi_model, v, Hc, chunk)  # (n, p)
        xa[c], var[c], cost_c = blue_update(bht, Hc @ bht, obs.y_std[idx], obs.sigma_std[idx], var[c])
        cost += cost_c
    shape = (C, *bg.grid.shape)
    mean = clim_mean + clim_std * xa.reshape(shape)
    spread = clim_std * np.sqrt(var.reshape(shape))
    diag = diagnostics(obs, clim_mean, mean, cost=cost)
    return analysis_dataset(mean[None], list(bg.variables), bg.grid, day_of(time), diag, "optimal_interpolation",
                            obs.qc_counts, var_attrs=bg.var_attrs, mean=mean, spread=spread,
                            attrs={"correlation_model": dict(oi_model.model),
                                   "length_scale_km": dict(oi_model.length_scale_km)})
