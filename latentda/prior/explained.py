"""Explained variance of a prior's reconstruction on held-out days, and of the EOFs at the same dimension.

One definition for every method (issue 12): in standardised anomaly units ``x'`` (the climatology removed and
divided by its standard deviation), with the area weights ``w_i`` (cos lat, mean 1, :meth:`Grid.weights`)::

    EV = 1 - sum_{t,c,i,j} w_i (x' - x_hat')^2 / sum_{t,c,i,j} w_i x'^2

per variable (sums over that channel only) and for all variables together ("all"; every variable weighs the
same, as all are standardised). ``x_hat'`` is the prior's ``g(mu(x))`` (the decoder at the encoder mean) or the
rank-k EOF reconstruction ``m + E (E^T W E)^-1 E^T W (x' - m)`` with the area-weighted EOFs of the training days
(:func:`latentda.eof.weighted_eofs`, the best rank-k weighted least-squares fit of the training days). The
denominator is the anomalies' second moment about the climatology, so the climatology itself has EV = 0.

This is the quantity the README quoted as "60 % explained" (1 - validation MSE of g(mu) in standardised units,
which have unit variance); the "64.5 %" of 128 EOFs was the share of the *training* variance the EOFs keep
(``TSVDModel.explained_variance``, in-sample), not a held-out figure.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..eof import weighted_eofs, zonal_weighted_eofs

__all__ = ["explained_variance", "prior_reconstruction", "eof_reconstruction"]


def explained_variance(x: np.ndarray, x_hat: np.ndarray, lat_weights: np.ndarray,
                       variables: Sequence[str]) -> dict:
    """EV of the module docstring for ``x``, ``x_hat`` (T, C, nlat, nlon) standardised anomalies, ``lat_weights``
    (nlat,): ``{"per_variable": {name: EV}, "all": EV}`` (floats; C names in ``variables``)."""
    if x.shape != x_hat.shape or x.ndim != 4:
        raise ValueError(f"x {x.shape} and x_hat {x_hat.shape} must both be (time, channel, lat, lon)")
    if len(variables) != x.shape[1]:
        raise ValueError(f"{len(variables)} variable names for {x.shape[1]} channels")
    w = np.asarray(lat_weights, dtype=np.float64)[None, None, :, None]
    err = (w * (np.asarray(x, np.float64) - x_hat) ** 2).sum(axis=(0, 2, 3))
    tot = (w * np.asarray(x, np.float64) ** 2).sum(axis=(0, 2, 3))
    if np.any(tot <= 0):
        raise ValueError(f"a variable has no variance about its climatology: {dict(zip(variables, tot))}")
    return {"per_variable": {v: float(1.0 - e / t) for v, e, t in zip(variables, err, tot)},
            "all": float(1.0 - err.sum() / tot.sum())}


def prior_reconstruction(prior, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """``g(mu(x))`` of a :class:`~latentda.prior.checkpoint.Prior` for standardised anomalies ``x``
    (T, C, nlat, nlon) float32 -> same shape, float64, computed in batches on the prior's device."""
    model = prior.model
    model.eval()
    out = np.empty(x.shape, dtype=np.float64)
    with torch.no_grad():
        for k in range(0, x.shape[0], batch):
            xb = torch.as_tensor(x[k:k + batch], dtype=torch.float32, device=prior.device)
            out[k:k + batch] = model.decode(model.encode(xb)[0]).double().cpu().numpy()
    return out


def eof_reconstruction(train: np.ndarray, lat_weights: np.ndarray, k: int,
                       zonal: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """The rank-``k`` EOF reconstruction fitted on ``train`` (S, C, nlat, nlon) standardised anomalies: a function
    mapping (T, C, nlat, nlon) anomalies to ``m + E (E^T W E)^-1 E^T W (x - m)`` (same shape, float64). ``zonal``:
    the EOFs of the rotation-averaged covariance (:func:`latentda.eof.zonal_weighted_eofs`)."""
    mean, modes = (zonal_weighted_eofs if zonal else weighted_eofs)(train, lat_weights, k)
    shape = train.shape[1:]
    wv = np.broadcast_to(np.asarray(lat_weights, np.float64)[None, :, None], shape).ravel()
    proj = np.linalg.solve(modes.T @ (wv[:, None] * modes), (wv[:, None] * modes).T)   # (k, N)

    def reconstruct(x: np.ndarray) -> np.ndarray:
        d = x.reshape(x.shape[0], -1) - mean
        return (mean + (d @ proj.T) @ modes.T).reshape(x.shape)

    return reconstruct
