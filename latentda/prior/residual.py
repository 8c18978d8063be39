"""Residual modes of the generator: the leading EOFs of its reconstruction residual.

The decoder cannot represent the truth exactly, ``x = g(z) + eta``. The assimilation (:mod:`latentda.da.ensemble`)
models eta as Gaussian with covariance, in standardised anomaly units,

    B_eta = M Mᵀ + diag(D_r) S Sᵀ diag(D_r),      D_r² = max(recon_std² − diag(M Mᵀ), 0),

``M`` (P, k) the k leading modes of the residuals r_t = x_t − g(mu(x_t)) over the training days (P = C·nlat·nlon,
channels coupled: a pressure observation informs the temperature residual through M), and ``S Sᵀ`` the isotropic
Gaussian correlation that carries the rest of the residual variance, so diag(B_eta) = recon_std² wherever the modes
do not exceed it. This is the TSVD / EOF covariance of Arcucci et al. applied to what the VAE leaves unexplained.

Modes by the method of snapshots (:func:`latentda.eof.scaled_eofs` of r / sqrt(T), r (T, P)): ‖m_k‖² = lambda_k and
Σ_k m_k m_kᵀ (all k) = rᵀ r / T, the residuals' sample second moment (the residual is modelled with mean zero, so
it is not centred).
"""
from __future__ import annotations

import numpy as np
import torch

from ..eof import scaled_eofs


def residual_modes(prior, anomalies: np.ndarray, n_modes: int, batch: int = 128) -> tuple[np.ndarray, dict]:
    """The ``n_modes`` leading residual modes of ``prior`` on ``anomalies``.

    ``anomalies``: (T, C, nlat, nlon) standardised anomalies of the days to learn from (the training days).
    Returns ``modes`` float32 (k, C, nlat, nlon), k = min(n_modes, T), each scaled by sqrt(lambda_k) (standardised
    units), and ``info`` {"n_modes", "n_days", "explained_fraction"} (the share of the residuals' total second
    moment the k modes carry).
    """
    a = np.asarray(anomalies)
    if a.ndim != 4 or a.shape[1:] != tuple(prior.shape):
        raise ValueError(f"anomalies must be (time, {', '.join(map(str, prior.shape))}), got {a.shape}")
    if isinstance(n_modes, bool) or not isinstance(n_modes, (int, np.integer)) or n_modes < 1:
        raise ValueError(f"n_modes={n_modes!r} must be a positive integer")
    T = a.shape[0]
    if T < 2:
        raise ValueError(f"need at least 2 days to estimate residual modes, got {T}")
    if not np.isfinite(a).all():
        raise ValueError("anomalies hold non-finite values")
    dev = torch.device(prior.device)
    r = np.empty((T, int(np.prod(a.shape[1:]))), dtype=np.float64)
    for k in range(0, T, batch):
        x = torch.as_tensor(a[k:k + batch], dtype=torch.float32, device=dev)
        r[k:k + batch] = (x - prior.reconstruct(x)).reshape(x.shape[0], -1).double().cpu().numpy()
    modes, lam = scaled_eofs(r, lambda lam: int(min(n_modes, lam.size)), scale=1.0 / np.sqrt(T))
    modes, k = modes.T, modes.shape[1]  # (k, P), ‖m_k‖² = lambda_k
    # fix each mode's sign (largest |component| positive): samples sum_k w_k m_k then do not depend on the
    # eigensolver's arbitrary signs
    big = modes[np.arange(k), np.abs(modes).argmax(axis=1)]
    modes *= np.where(big < 0, -1.0, 1.0)[:, None]
    total = float(lam.sum())
    info = {"n_modes": k, "n_days": int(T),
            "explained_fraction": float(lam[:k].sum() / total) if total > 0 else 1.0}
    return modes.reshape(k, *a.shape[1:]).astype(np.float32), info


def remainder_std(recon_std: np.ndarray, modes: np.ndarray | None) -> np.ndarray:
    """D_r = sqrt(max(recon_std² − Σ_k m_k², 0)) (C, nlat, nlon): the residual std the modes leave to the isotropic
    part (``recon_std`` itself without modes)."""
    rs = np.asarray(recon_std, dtype=np.float64)
    if modes is None:
        return rs.astype(np.float32)
    return np.sqrt(np.clip(rs ** 2 - (np.asarray(modes, dtype=np.float64) ** 2).sum(0), 0.0, None)).astype(np.float32)
