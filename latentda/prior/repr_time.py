"""Persistence in time of the representation error of a window prior: the AR(1) coefficient ρ_c per variable.

The representation error r_t = x_t − g(μ(x_t)) (standardised anomaly units, what the decoder of the encoded mean
misses) persists from day to day. A window prior models it, per variable c, as AR(1) in time with the per-day
model on each day (:mod:`latentda.da.window_covariance`)::

    Cov(eta_s^c, eta_t^c) = ρ_c^|s−t| D_c,s S Sᵀ D_c,t

ρ_c is fitted here (:func:`fit_repr_time_correlation`) as the area-weighted mean over grid points of the lag-1
correlation of r over the pairs of consecutive training days (the prior's block split: validation days are never
used), clipped to [0, :data:`RHO_MAX`]. The lag-2 correlation is recorded beside it, so whether AR(1) (ρ²) fits
can be read off the checkpoint (``transition.info["repr_time"]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .transition import LatentTransition, fit_transition, lag_pairs

__all__ = ["RHO_MAX", "lag_pairs", "lag_correlation", "representation_residual", "fit_repr_time_correlation",
           "TrainingDays", "fit_window_parts"]

#: upper clip of the fitted ρ (a window covariance with ρ → 1 is singular in time)
RHO_MAX = 0.95


def lag_correlation(a: np.ndarray, first: np.ndarray, lag: int, lat: np.ndarray) -> list[float]:
    """Area-weighted (cos lat) mean over grid points of the correlation between ``a[t]`` and ``a[t + lag]`` over
    t in ``first``, per channel: ``a`` (T, C, nlat, nlon) -> C floats (NaN with fewer than 2 pairs)."""
    first = np.asarray(first, dtype=np.int64)
    if first.size < 2:
        return [float("nan")] * a.shape[1]
    x0, x1 = a[first].astype(np.float64), a[first + lag].astype(np.float64)
    x0, x1 = x0 - x0.mean(0), x1 - x1.mean(0)
    den = np.sqrt((x0 ** 2).sum(0) * (x1 ** 2).sum(0))
    r = np.where(den > 0, (x0 * x1).sum(0) / np.where(den > 0, den, 1.0), 0.0)  # (C, nlat, nlon)
    w = np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))[:, None] * np.ones(a.shape[-1])[None]
    return [float((w * r[c]).sum() / w.sum()) for c in range(a.shape[1])]


def representation_residual(encode: Callable, decode: Callable, anomalies: torch.Tensor, batch: int = 64
                            ) -> np.ndarray:
    """r = x − g(μ(x)) (T, C, nlat, nlon) float32 for standardised ``anomalies`` (T, C, nlat, nlon)."""
    out = []
    with torch.no_grad():
        for k in range(0, anomalies.shape[0], batch):
            x = anomalies[k:k + batch]
            mu, _ = encode(x)
            out.append((x - decode(mu)).float().cpu().numpy())
    return np.concatenate(out)


def fit_repr_time_correlation(encode: Callable, decode: Callable, anomalies: torch.Tensor, times: np.ndarray,
                              train_idx: np.ndarray, lat: np.ndarray, variables: list[str]
                              ) -> tuple[np.ndarray, dict]:
    """Fit ρ_c (module docstring) on the consecutive training days of ``anomalies`` (T, C, nlat, nlon),
    standardised, in time order (``times`` (T,) datetime64; ``train_idx`` the prior's training days; ``lat``
    (nlat,) degrees). Returns (ρ (C,) float64 in [0, RHO_MAX], info) with info = {"variables", "lag1", "lag2"
    (unclipped correlations), "pairs_lag1", "pairs_lag2", "rho_max"} (JSON-able). ValueError with fewer than 2
    pairs of consecutive training days."""
    p1, p2 = lag_pairs(times, train_idx, 1), lag_pairs(times, train_idx, 2)
    if p1.size < 2:
        raise ValueError(f"only {p1.size} pair(s) of consecutive training days: the representation error's "
                         "correlation in time needs daily data")
    resid = representation_residual(encode, decode, anomalies)
    lag1 = lag_correlation(resid, p1, 1, lat)
    lag2 = lag_correlation(resid, p2, 2, lat)
    rho = np.clip(np.nan_to_num(np.asarray(lag1, dtype=np.float64), nan=0.0), 0.0, RHO_MAX)
    info = {"variables": list(variables), "lag1": lag1, "lag2": lag2, "pairs_lag1": int(p1.size),
            "pairs_lag2": int(p2.size), "rho_max": RHO_MAX}
    return rho, info


@dataclass(frozen=True)
class TrainingDays:
    """The days a prior is fitted on: standardised ``anomalies`` (T, C, nlat, nlon) in time order, their ``times``
    (T,) datetime64, the block split's ``train_idx`` and ``val_idx`` (day indices), the grid's ``lat`` (nlat,)
    degrees and the C ``variables``."""

    anomalies: torch.Tensor
    times: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    lat: np.ndarray
    variables: list[str]


def fit_window_parts(autoencoder, days: TrainingDays, seed: int, rotations: int) -> LatentTransition:
    """What a window prior adds to a day prior, fitted on ``days`` with ``autoencoder`` (anything with
    ``encode(x) -> (mu, logvar)`` and ``decode(z)``: the VAE, or a Prior): the latent transition
    (:func:`~latentda.prior.transition.fit_transition`, ``seed``, ``rotations``) with the representation error's ρ_c
    (:func:`fit_repr_time_correlation`, training pairs only) as its ``repr_rho`` and the lag-1/lag-2 correlations
    in ``info["repr_time"]``."""
    enc, dec = autoencoder.encode, autoencoder.decode
    transition = fit_transition(enc, days.anomalies, days.times, days.train_idx, days.val_idx, seed,
                                rotations=rotations)
    rho, info = fit_repr_time_correlation(enc, dec, days.anomalies, days.times, days.train_idx, days.lat,
                                          list(days.variables))
    return LatentTransition(transition.A, transition.q_chol, dict(transition.info, repr_time=info), repr_rho=rho)
