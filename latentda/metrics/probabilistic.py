"""Probabilistic skill scores of an ensemble or a Gaussian (mean + spread) analysis (WeatherBench2 definitions).

Ensembles are xarray objects with a ``member`` dimension (name configurable) besides ``lat``/``lon``; a
"Gaussian" analysis is a mean and a standard deviation (the ``<var>`` and ``<var>_spread`` of an analysis
dataset). Spatial averages use the latitude weights of :func:`latentda.metrics.deterministic.lat_weights`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from scipy.special import ndtr, ndtri

from .deterministic import SPATIAL_DIMS, XrObj, mse, spatial_mean

MEMBER = "member"


def _n_members(ensemble: XrObj, member_dim: str) -> int:
    if member_dim not in ensemble.dims:
        raise ValueError(f"ensemble has no {member_dim!r} dimension; it has {list(ensemble.dims)}")
    m = int(ensemble.sizes[member_dim])
    if m < 1:
        raise ValueError("ensemble has no member")
    return m


def _crps_ens_np(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """Pointwise ensemble CRPS, members on the last axis of ``x`` (..., M); ``y`` (...)."""
    m = x.shape[-1]
    skill = np.abs(x - y[..., None]).mean(axis=-1)
    xs = np.sort(x, axis=-1)
    k = np.arange(1, m + 1, dtype=np.float64)
    # sum_{i,j} |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k)   (x_(k): k-th order statistic)
    pair_sum = 2.0 * (xs * (2 * k - m - 1)).sum(axis=-1)
    if fair:
        if m < 2:
            return skill  # one member: no spread term (the fair estimator is undefined; equals the plain CRPS)
        return skill - pair_sum / (2.0 * m * (m - 1))
    return skill - pair_sum / (2.0 * m * m)


def crps_ensemble_pointwise(ensemble: XrObj, truth: XrObj, member_dim: str = MEMBER,
                            fair: bool = True) -> XrObj:
    """Pointwise ensemble CRPS (no spatial average).

    Fair estimator (Zamo & Naveau 2018; Ferro 2014), M members ``x_m``, observation ``y``::

        CRPS_fair = (1/M) sum_m |x_m - y| - 1/(2 M (M-1)) sum_m sum_m' |x_m - x_m'|

    ``fair=False`` gives the plain ensemble estimator (``1/(2 M^2)`` instead of ``1/(2 M (M-1))``). With M = 1
    both reduce to the absolute error. Units: those of the field.
    """
    _n_members(ensemble, member_dim)
    return xr.apply_ufunc(_crps_ens_np, ensemble, truth, kwargs={"fair": fair},
                          input_core_dims=[[member_dim], []], output_core_dims=[[]])


def crps_ensemble(ensemble: XrObj, truth: XrObj, member_dim: str = MEMBER, fair: bool = True,
                  dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted mean over ``dims`` of the pointwise fair ensemble CRPS (:func:`crps_ensemble_pointwise`)."""
    return spatial_mean(crps_ensemble_pointwise(ensemble, truth, member_dim, fair), dims)


def crps_gaussian_pointwise(mean: XrObj, std: XrObj, truth: XrObj) -> XrObj:
    """CRPS of a Gaussian ``N(mu, sigma^2)`` (Gneiting et al. 2005), pointwise::

        CRPS = sigma [ z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi) ],   z = (y - mu) / sigma

    For ``sigma = 0`` it is the absolute error ``|y - mu|``. Negative ``sigma`` raises ValueError.
    """
    def f(mu, sd, y):
        mu, sd, y = np.broadcast_arrays(np.asarray(mu, float), np.asarray(sd, float), np.asarray(y, float))
        if np.any(sd < 0):
            raise ValueError(f"standard deviation must be >= 0, got minimum {np.nanmin(sd)}")
        pos = sd > 0
        safe = np.where(pos, sd, 1.0)
        z = (y - mu) / safe
        g = safe * (z * (2 * ndtr(z) - 1) + 2 * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi))
        return np.where(pos, g, np.abs(y - mu))

    return xr.apply_ufunc(f, mean, std, truth)


def crps_gaussian(mean: XrObj, std: XrObj, truth: XrObj, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted mean over ``dims`` of :func:`crps_gaussian_pointwise`."""
    return spatial_mean(crps_gaussian_pointwise(mean, std, truth), dims)


def ensemble_variance(ensemble: XrObj, member_dim: str = MEMBER, dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Latitude-weighted mean over ``dims`` of the unbiased ensemble variance ``s^2 = sum_m (x_m - xbar)^2/(M-1)``."""
    m = _n_members(ensemble, member_dim)
    if m < 2:
        raise ValueError("ensemble variance needs at least 2 members")
    return spatial_mean(ensemble.var(member_dim, ddof=1), dims)


def spread_skill_ratio(ensemble: XrObj, truth: XrObj, member_dim: str = MEMBER,
                       dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Spread/skill ratio (WeatherBench2; Fortin et al. 2014 finite-ensemble correction)::

        SSR = sqrt( mean(s^2) (M + 1) / M ) / RMSE(xbar, y)

    with ``s^2`` the unbiased ensemble variance and ``xbar`` the ensemble mean, both spatial means weighted by
    latitude over ``dims`` (include ``time`` in ``dims`` to pool days). ~1 for exchangeable members and truth.
    """
    m = _n_members(ensemble, member_dim)
    var = ensemble_variance(ensemble, member_dim, dims)
    err = mse(ensemble.mean(member_dim), truth, dims)
    return np.sqrt(var * (m + 1) / m) / np.sqrt(err)


def spread_skill_ratio_gaussian(mean: XrObj, std: XrObj, truth: XrObj, n_members: int | None = None,
                                dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Spread/skill ratio of a mean + spread output: ``sqrt(mean(sigma^2) c) / RMSE(mu, y)``.

    ``c = (M + 1) / M`` when the spread is the (unbiased) standard deviation of ``n_members`` members, ``c = 1``
    for an analytic posterior spread (``n_members=None``, the M -> infinity limit).
    """
    if n_members is not None and n_members < 1:
        raise ValueError(f"n_members={n_members} must be >= 1 or None")
    c = 1.0 if n_members is None else (n_members + 1) / n_members
    return np.sqrt(spatial_mean(std ** 2, dims) * c) / np.sqrt(mse(mean, truth, dims))


def interval_coverage(ensemble: XrObj, truth: XrObj, level: float = 0.9, member_dim: str = MEMBER,
                      dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Fraction (latitude-weighted over ``dims``) of truth inside the central ``level`` interval of the members.

    Interval: ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the M members with Weibull plotting positions (the k-th
    smallest member is the ``k/(M+1)`` quantile, interpolated linearly between ranks; numpy ``method="weibull"``).
    A truth exchangeable with the members falls below the k-th member with probability ``k/(M+1)``, so a
    calibrated ensemble has expected coverage ``level`` as long as ``(1-level)/2 (M+1) >= 1`` (M >= 19 for 90 %);
    smaller ensembles cannot reach it (the interval is clamped to [min, max], coverage ``(M-1)/(M+1)``).
    """
    if not 0 < level < 1:
        raise ValueError(f"interval level {level} must be in (0, 1)")
    _n_members(ensemble, member_dim)
    lo = ensemble.quantile((1 - level) / 2, dim=member_dim, method="weibull").drop_vars("quantile")
    hi = ensemble.quantile((1 + level) / 2, dim=member_dim, method="weibull").drop_vars("quantile")
    inside = ((truth >= lo) & (truth <= hi)).astype(np.float64)
    return spatial_mean(inside, dims)


def interval_coverage_gaussian(mean: XrObj, std: XrObj, truth: XrObj, level: float = 0.9,
                               dims: Sequence[str] = SPATIAL_DIMS) -> XrObj:
    """Fraction of truth inside the central Gaussian interval ``mu +- z sigma``, ``z = Phi^-1((1+level)/2)``
    (1.645 for 90 %), latitude-weighted over ``dims``."""
    if not 0 < level < 1:
        raise ValueError(f"interval level {level} must be in (0, 1)")
    z = float(ndtri((1 + level) / 2))
    inside = (np.abs(truth - mean) <= z * std).astype(np.float64)
    return spatial_mean(inside, dims)


def rank_histogram(ensemble: XrObj, truth: XrObj, member_dim: str = MEMBER) -> np.ndarray:
    """Rank (Talagrand) histogram: counts (M + 1,) int64 of the rank of the truth among the M members at every
    point, rank = #{m : x_m < y} (0 .. M). Points where the truth or any member is not finite are skipped. A truth
    exchangeable with the members gives a flat histogram in expectation."""
    m = _n_members(ensemble, member_dim)
    x = np.moveaxis(np.asarray(ensemble.transpose(member_dim, ...).values, dtype=np.float64), 0, -1)
    y = np.broadcast_to(np.asarray(truth.values, dtype=np.float64), x.shape[:-1])
    ok = np.isfinite(y) & np.isfinite(x).all(axis=-1)
    ranks = (x[ok] < y[ok][:, None]).sum(axis=-1)
    return np.bincount(ranks, minlength=m + 1).astype(np.int64)


def rank_histogram_chi2(counts: np.ndarray) -> tuple[float, float]:
    """Flatness of a rank histogram ``counts`` (K,): (chi2, chi2 / N). Pearson's statistic against the flat
    histogram, ``chi2 = sum_k (n_k - N/K)^2 / (N/K)``, N = sum_k n_k (K - 1 degrees of freedom for independent
    points), and ``chi2 / N = K sum_k (f_k - 1/K)^2`` (f_k = n_k / N), which does not grow with the number of
    points: 0 for a flat histogram, K - 1 when every truth falls into one bin."""
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size < 2 or np.any(n < 0):
        raise ValueError(f"counts must be a 1-D array of >= 2 non-negative bin counts, got {n!r}")
    total = n.sum()
    if total <= 0:
        raise ValueError("rank histogram is empty (no counted points)")
    expected = total / n.size
    chi2 = float(((n - expected) ** 2).sum() / expected)
    return chi2, chi2 / float(total)
