"""Empirical orthogonal functions (EOFs) by the method of snapshots, shared by the TSVD baseline and the prior's
residual modes.

For samples X (S, N), V = (X − mean) · scale. With S ≤ N the eigen-decomposition of the Gram matrix
V Vᵀ = W Λ Wᵀ (S × S) gives the EOFs scaled by their singular values, Vᵀ W = U Σ (N, S); with S > N that of
Vᵀ V = U Λ Uᵀ gives U Λ^½. Either way Σ_k m_k m_kᵀ over all modes is Vᵀ V. Accumulated in column blocks so a
float32 X is never copied whole in float64.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def scaled_eofs(X: np.ndarray, count: Callable[[np.ndarray], int], *, mean: np.ndarray | None = None,
                scale: float = 1.0, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The leading EOFs of ``X`` (S, N) times their singular values: ``modes`` (N, tau) float64 and every
    eigenvalue ``lam`` of V Vᵀ (or Vᵀ V), descending and clipped at 0; ``tau = count(lam)``.

    ``mean`` (N,) is subtracted first (None: not centred); ``scale`` multiplies the centred samples.
    """
    S, N = X.shape
    centre = (lambda j: X[:, j:j + block] - mean[j:j + block]) if mean is not None else (lambda j: X[:, j:j + block])
    if S <= N:
        G = np.zeros((S, S))
        for j in range(0, N, block):
            Vb = centre(j) * scale
            G += Vb @ Vb.T
        lam, W = np.linalg.eigh(G)
        order = np.argsort(lam)[::-1]
        lam, W = np.clip(lam[order], 0, None), W[:, order]
        tau = count(lam)
        modes = np.empty((N, tau))
        for j in range(0, N, block):
            modes[j:j + block] = (centre(j) * scale).T @ W[:, :tau]  # V^T W = U Sigma
    else:
        V = (X - mean if mean is not None else X) * scale
        lam, U = np.linalg.eigh(V.T @ V)
        order = np.argsort(lam)[::-1]
        lam, U = np.clip(lam[order], 0, None), U[:, order]
        tau = count(lam)
        modes = U[:, :tau] * np.sqrt(lam[:tau])
    return modes, lam


def weighted_eofs(X: np.ndarray, lat_weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` leading EOFs of samples ``X`` (S, C, nlat, nlon) under the area-weighted inner product
    ``<a, b> = sum w_i a b`` (``lat_weights`` w (nlat,)): ``mean`` (N,) and ``modes`` (N, k) float64, N = C nlat nlon,
    each mode ``e_k = W^-1/2 u_k sigma_k`` with u_k the k-th EOF of ``W^1/2 (x - mean) / sqrt(S - 1)``, so the
    coefficients ``(E^T W E)^-1 E^T W (x - mean)`` of the training samples have unit variance and
    ``mean + E coeffs`` is the weighted least-squares best rank-k reconstruction of the training samples."""
    S = X.shape[0]
    if not 1 <= k <= min(S - 1, int(np.prod(X.shape[1:]))):
        raise ValueError(f"k={k} EOFs impossible from {S} samples of {int(np.prod(X.shape[1:]))} values")
    sw = np.broadcast_to(np.sqrt(np.asarray(lat_weights, dtype=np.float64))[None, :, None], X.shape[1:]).ravel()
    flat = X.reshape(S, -1)
    mean = flat.mean(axis=0, dtype=np.float64)
    modes, _ = scaled_eofs((flat * sw).astype(np.float32, copy=False), lambda lam: k, mean=mean * sw,
                           scale=1.0 / np.sqrt(S - 1))
    return mean, modes / sw[:, None]


def zonal_weighted_eofs(X: np.ndarray, lat_weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weighted_eofs` for zonally symmetric statistics: the EOFs of the covariance averaged over all
    ``nlon`` longitude rotations of the samples ``X`` (S, C, nlat, nlon), i.e. ``C_sym = (1/nlon) sum_r R_r C R_r^T``.

    ``C_sym`` commutes with the rotations, so its eigenvectors are zonal Fourier modes: for every wavenumber m the
    Hermitian (C nlat) x (C nlat) cross-spectral matrix ``B_m = F_m^T conj(F_m) / (nlon (S - 1))`` (F_m the
    unnormalised longitude DFT of the weighted anomalies at m) is diagonalised; an eigenvector v with eigenvalue
    mu gives the eigenvector ``v e^{i m lon}`` of C_sym with eigenvalue mu, so for m >= 1 the two real modes ``Re(v e^{i m lon})`` and ``Im(...)`` (equal variance).
    The mean is zonally uniform. Same scaling and return values as :func:`weighted_eofs`: ``mean`` (N,),
    ``modes`` (N, k), the k modes of largest variance (a cos/sin pair may be split at the k-th mode).
    """
    S, C, nlat, nlon = X.shape
    if not 1 <= k <= min(S - 1, C * nlat * nlon):
        raise ValueError(f"k={k} EOFs impossible from {S} samples of {C * nlat * nlon} values")
    sw = np.sqrt(np.asarray(lat_weights, dtype=np.float64))[None, :, None]
    mean = np.broadcast_to(X.mean(axis=(0, 3), dtype=np.float64)[:, :, None], (C, nlat, nlon))
    spec = np.fft.rfft((X - mean) * sw, axis=-1) / nlon                          # (S, C, nlat, M)
    lon = np.arange(nlon) * 2 * np.pi / nlon
    cands = []                                                                  # (variance, m, part, vector)
    for m in range(spec.shape[-1]):
        f = spec[..., m].reshape(S, C * nlat)
        lam, vec = np.linalg.eigh(f.T @ f.conj() / (S - 1))                    # Hermitian, ascending
        real = m == 0 or 2 * m == nlon
        for j in range(1, min(k, lam.size) + 1):
            var = lam[-j] * nlon                                                # variance of each real mode
            parts = ("re",) if real else ("re", "im")
            cands += [(var, m, part, vec[:, -j]) for part in parts]
    cands.sort(key=lambda c: -c[0])
    modes = np.empty((C * nlat * nlon, k))
    for i, (var, m, part, v) in enumerate(cands[:k]):
        phase = np.exp(1j * m * lon)[None, :] * v[:, None]                     # (C nlat, nlon)
        shape = (phase.real if part == "re" else phase.imag).reshape(C, nlat, nlon)
        unit = shape / np.sqrt((shape ** 2).sum())                              # unit norm, weighted space
        modes[:, i] = (unit * np.sqrt(max(var, 0.0)) / sw).ravel()
    return mean.ravel(), modes
