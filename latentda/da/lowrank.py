"""A low-rank factor of the representation-error smoother, S S̃ᵀ ≈ S Sᵀ, from its block structure in longitude.

The smoother of :class:`latentda.da.ensemble.GaussianSmoother` is S = Z A F: F multiplies longitude wavenumber m
of latitude row k by spec_k(m), A mixes rows (nlat × nlat), Z keeps only wavenumber 0 on pole rows. None of them
mixes wavenumbers, so in the orthonormal real Fourier basis Φ of each row (coefficient q: cosine or sine part of
wavenumber m(q) = (q + 1) // 2) S is block diagonal,

    S = Φ (⊕_q B_m(q)) Φᵀ,   B_m = Z_m A diag(spec_·(m))  (nlat × nlat),   B_m = U_m Σ_m V_mᵀ (SVD).

Dropping the singular values below ``rank_tol`` · σ_max (σ_max the largest over all m) gives the truncated
smoother S̃ = Ŝ Q with

    Ŝ = Φ ⊕_q U_m Σ_m   (npts × r),   Q = ⊕_q V_mᵀ Φᵀ   (r × npts, orthonormal rows),   S̃ S̃ᵀ = Ŝ Ŝᵀ,

and ‖S Sᵀ − Ŝ Ŝᵀ‖₂ ≤ (rank_tol · σ_max)² (the largest dropped eigenvalue of S Sᵀ, which has unit diagonal).
Ŝ and Ŝᵀ are applied in O(nlat · npts) per field (an FFT and one nlat × nlat product per coefficient).
"""
from __future__ import annotations

import numpy as np
import torch

#: default relative singular-value cut of S: eigenvalues of S Sᵀ below 1e-6 of the largest are dropped
RANK_TOL = 1e-3


def real_fourier(x: torch.Tensor) -> torch.Tensor:
    """Φᵀ x: orthonormal real Fourier coefficients along the last axis, (..., nlon) -> (..., nlon).

    Order: [Re X_0, √2 Re X_1, √2 Im X_1, …, Re X_{nlon/2} (even nlon)], X = rfft(x, norm="ortho")."""
    nlon = x.shape[-1]
    xf = torch.fft.rfft(x, dim=-1, norm="ortho")
    inner = xf[..., 1:(nlon + 1) // 2] * np.sqrt(2.0)  # wavenumbers with a cosine and a sine part
    parts = [xf[..., :1].real, torch.stack([inner.real, inner.imag], dim=-1).flatten(-2)]
    if nlon % 2 == 0:
        parts.append(xf[..., -1:].real)
    return torch.cat(parts, dim=-1)


def real_fourier_inverse(c: torch.Tensor) -> torch.Tensor:
    """Φ c: the inverse (= transpose) of :func:`real_fourier`, (..., nlon) -> (..., nlon)."""
    nlon = c.shape[-1]
    pairs = c[..., 1:1 + 2 * ((nlon - 1) // 2)].unflatten(-1, (-1, 2)) / np.sqrt(2.0)
    xf = [torch.complex(c[..., :1], torch.zeros_like(c[..., :1])), torch.complex(pairs[..., 0], pairs[..., 1])]
    if nlon % 2 == 0:
        xf.append(torch.complex(c[..., -1:], torch.zeros_like(c[..., -1:])))
    return torch.fft.irfft(torch.cat(xf, dim=-1), n=nlon, dim=-1, norm="ortho")


class LowRankSmoother:
    """Ŝ (npts × r) of the truncated smoother (module docstring) for a ``GaussianSmoother``, float64.

    ``rank_tol``: relative singular-value cut in [0, 1); 0 keeps every nonzero singular value (S̃ = S to
    round-off, rank npts minus the dropped pole-row coefficients)."""

    def __init__(self, smoother, rank_tol: float = RANK_TOL) -> None:
        tol = float(rank_tol)
        if not (0.0 <= tol < 1.0):
            raise ValueError(f"rank_tol={rank_tol!r} must be in [0, 1)")
        nlat, nlon = smoother.grid.shape
        dev = smoother._A.device
        A = smoother._A.double().cpu().numpy()
        spec = smoother._spec.double().cpu().numpy()  # (nlat, nlon // 2 + 1)
        poles = smoother._poles.cpu().numpy()
        m_of_q = (np.arange(nlon) + 1) // 2
        u = np.zeros((nlon, nlat, nlat))  # U_m Σ_m per coefficient q, columns of dropped values zero
        sv = np.zeros((nlon, nlat))
        for m in np.unique(m_of_q):
            block = A * spec[:, m][None, :]
            if m > 0:
                block[poles] = 0.0  # Z: a pole row keeps wavenumber 0 only
            um, sm, _ = np.linalg.svd(block)
            u[m_of_q == m] = um * sm[None, :]
            sv[m_of_q == m] = sm
        keep = sv > max(tol * sv.max(), 0.0)
        u[~keep[:, None, :].repeat(nlat, axis=1)] = 0.0
        self.grid, self.rank_tol, self.shape = smoother.grid, tol, (nlat, nlon)
        self.rank = int(keep.sum())
        #: the largest dropped eigenvalue of S Sᵀ: the bound on ‖S Sᵀ − Ŝ Ŝᵀ‖₂
        self.dropped_eigenvalue = float((sv[~keep] ** 2).max(initial=0.0))
        self._u = torch.as_tensor(u, device=dev)  # (q, j, i)
        self._keep = torch.as_tensor(keep, device=dev)  # (q, i)

    def transpose_apply(self, x: torch.Tensor) -> torch.Tensor:
        """Ŝᵀ x for fields x (..., nlat, nlon) -> (..., r), float64."""
        c = real_fourier(x.double())  # (..., j, q)
        t = torch.einsum("qji,...jq->...qi", self._u, c)
        return t[..., self._keep]

    def apply(self, c: torch.Tensor) -> torch.Tensor:
        """Ŝ c for coefficients c (..., r) -> fields (..., nlat, nlon), float64."""
        nlat, nlon = self.shape
        t = torch.zeros((*c.shape[:-1], nlon, nlat), dtype=torch.float64, device=c.device)
        t[..., self._keep] = c.double()
        return real_fourier_inverse(torch.einsum("qji,...qi->...jq", self._u, t))

    def matrix(self) -> torch.Tensor:
        """Ŝ as a dense (npts, r) float64 tensor (columns are fields flattened row-major)."""
        eye = torch.eye(self.rank, dtype=torch.float64, device=self._u.device)
        return self.apply(eye).reshape(self.rank, -1).T
