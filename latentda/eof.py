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
