"""A low-rank factor of the representation-error smoother, S S̃ᵀ ≈ S Sᵀ, from its block structure in longitude.

The smoother of :class:`latentda.da.ensemble.GaussianSmoother` is S = Z A F: F multiplies longitude wavenumber m
of latitude row k by spec_k(m), A mixes rows (nlat × nlat), Z keeps only wavenumber 0 on pole rows. None of them
mixes wavenumbers, so in the orthonormal real Fourier basis Φ of each row (coefficient q: cosine or sine part of
wavenumber m(q) = q // 2) S is block diagonal,

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


def _scale(nlon: int, device) -> torch.Tensor:
    """√2 on the cosine and sine parts of the wavenumbers 0 < m < nlon/2, 1 on m = 0 and m = nlon/2."""
    m = np.arange(nlon // 2 + 1)
    w = np.where((m > 0) & (2 * m < nlon), np.sqrt(2.0), 1.0)
    return torch.as_tensor(np.repeat(w, 2), dtype=torch.float64, device=device)


def _raw(x: torch.Tensor) -> torch.Tensor:
    """[Re X_0, Im X_0, Re X_1, Im X_1, …], X = rfft(x, norm="ortho") along the last axis (a view, no copy)."""
    return torch.view_as_real(torch.fft.rfft(x, dim=-1, norm="ortho")).flatten(-2)


def _raw_inverse(c: torch.Tensor, nlon: int) -> torch.Tensor:
    """The inverse of :func:`_raw`: (..., 2 (nlon // 2 + 1)) -> (..., nlon)."""
    return torch.fft.irfft(torch.view_as_complex(c.unflatten(-1, (-1, 2)).contiguous()), n=nlon, dim=-1,
                           norm="ortho")


def real_fourier(x: torch.Tensor) -> torch.Tensor:
    """Φᵀ x: orthonormal real Fourier coefficients along the last axis, (..., nlon) -> (..., 2 (nlon // 2 + 1)).

    Layout [Re X_0, Im X_0, √2 Re X_1, √2 Im X_1, …], X = rfft(x, norm="ortho"): the coefficients Im X_0 and,
    for even nlon, Im X_{nlon/2} are identically zero (two unused slots, so no copy is needed to drop them)."""
    return _raw(x) * _scale(x.shape[-1], x.device)


def real_fourier_inverse(c: torch.Tensor, nlon: int) -> torch.Tensor:
    """Φ c: the inverse (= transpose, on the used slots) of :func:`real_fourier`, (..., 2 (nlon // 2 + 1)) ->
    (..., nlon)."""
    return _raw_inverse(c / _scale(nlon, c.device), nlon)


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
        nq = 2 * (nlon // 2 + 1)
        m_of_q = np.arange(nq) // 2
        u = np.zeros((nq, nlat, nlat))  # U_m Σ_m per coefficient q, columns of dropped values zero
        sv = np.zeros((nq, nlat))
        for m in np.unique(m_of_q):
            block = A * spec[:, m][None, :]
            if m > 0:
                block[poles] = 0.0  # Z: a pole row keeps wavenumber 0 only
            um, sm, _ = np.linalg.svd(block)
            u[m_of_q == m] = um * sm[None, :]
            sv[m_of_q == m] = sm
        sv[1] = 0.0  # Im X_0 and (even nlon) Im X_{nlon/2}: unused slots of the coefficient layout
        if nlon % 2 == 0:
            sv[-1] = 0.0
        keep = sv > max(tol * sv.max(), 0.0)
        u[~keep[:, None, :].repeat(nlat, axis=1)] = 0.0
        self.grid, self.rank_tol, self.shape = smoother.grid, tol, (nlat, nlon)
        self.rank = int(keep.sum())
        #: the largest dropped eigenvalue of S Sᵀ: the bound on ‖S Sᵀ − Ŝ Ŝᵀ‖₂
        self.dropped_eigenvalue = float((sv[~keep] ** 2).max(initial=0.0))
        scale = _scale(nlon, "cpu").numpy()[:, None, None]
        # Φ's scale folded into U: Ŝᵀ x = (scale_q U_q)ᵀ raw_q(x), Ŝ c = raw⁻¹((U_q / scale_q) c_q)
        self._ut = torch.as_tensor(u * scale, device=dev)  # (q, j, i)
        self._u = torch.as_tensor(u / scale, device=dev)
        self._keep = torch.as_tensor(keep, device=dev)  # (q, i)

    def transpose_apply(self, x: torch.Tensor) -> torch.Tensor:
        """Ŝᵀ x for fields x (..., nlat, nlon) -> (..., r), float64."""
        t = torch.einsum("qji,...jq->...qi", self._ut, _raw(x.double()))
        return t[..., self._keep]

    def apply(self, c: torch.Tensor) -> torch.Tensor:
        """Ŝ c for coefficients c (..., r) -> fields (..., nlat, nlon), float64."""
        nlat, nlon = self.shape
        t = torch.zeros((*c.shape[:-1], self._u.shape[0], nlat), dtype=torch.float64, device=c.device)
        t[..., self._keep] = c.double()
        return _raw_inverse(torch.einsum("qji,...qi->...jq", self._u, t), nlon)

    def matrix(self) -> torch.Tensor:
        """Ŝ as a dense (npts, r) float64 tensor (columns are fields flattened row-major), C-contiguous."""
        eye = torch.eye(self.rank, dtype=torch.float64, device=self._u.device)
        return self.apply(eye).reshape(self.rank, -1).T.contiguous()
