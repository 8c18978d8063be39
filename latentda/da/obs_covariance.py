"""The observation-error covariance of the latent cost, R = R_o + G Gᵀ + U Uᵀ, in the cheaper of two exact forms.

With the representation-error model of :mod:`latentda.da.ensemble` (eta = M w_M + D ⊙ S w), the observations see

    R = R_o + G Gᵀ + U Uᵀ,   R_o = diag(σ_o²),   G = H D S (per channel, n × npts),   U = H M (n × k).

``"obs"`` form (few observations): R is formed densely, n × n, and Cholesky-factored, R = L Lᵀ: O(n² npts) to
form, O(n³) to factor, O(n²) per member and cost evaluation. This is the original path, kept bit for bit.

``"grid"`` form (many observations): Woodbury's identity in grid space, per channel c,

    (R_o + G Gᵀ)⁻¹ = R_o⁻¹ − R_o⁻¹ G P⁻¹ Gᵀ R_o⁻¹,   P = I + Sᵀ D (Hᵀ R_o⁻¹ H) D S = L_P L_Pᵀ  (npts × npts),

where Hᵀ R_o⁻¹ H is sparse (O(n) to form) and G is only ever applied as sparse H ∘ D ∘ S, so the cost is O(n)
plus a size-npts factorisation independent of n; the residual modes enter by a second Woodbury step with the
k × k capacitance C = I + Uᵀ R_b⁻¹ U, R_b = R_o + G Gᵀ.  The cost then needs the *signed* whitening

    rᵀ R⁻¹ r = ‖R_o^{-½} r‖² − ‖L_P⁻¹ Gᵀ R_o⁻¹ r‖² − ‖L_C⁻¹ Uᵀ R_b⁻¹ r‖²,

returned by :meth:`GridCovariance.whiten` as :class:`Whitened` (plus, minus). Both forms give the same R⁻¹ to
round-off (tests/test_scaling.py). :func:`choose_form` picks the form with the smaller estimated cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from ..obs.operator import PointOperator
from .ensemble import RepresentationError

FORMS = ("auto", "obs", "grid")
#: batched cost evaluations per day assumed by the flop model of :func:`choose_form` (a rough upper value)
_EVALUATIONS = 30
#: the grid form keeps about this many npts × npts float64 matrices alive while it is built
_GRID_MATRICES = 5


class Whitened(NamedTuple):
    """Signed whitening of residuals r (B, n): rᵀ R⁻¹ r = ‖plus‖² − ‖minus‖² row-wise; aᵀ R⁻¹ b likewise from the
    whitenings of a and b. ``plus`` (B, n), ``minus`` (B, m) or None, float64."""

    plus: torch.Tensor
    minus: torch.Tensor | None


def signed_quad(u: Whitened) -> torch.Tensor:
    """rᵀ R⁻¹ r (B,) from a :class:`Whitened` r."""
    q = (u.plus ** 2).sum(-1)
    return q if u.minus is None else q - (u.minus ** 2).sum(-1)


def signed_inner(a: Whitened, b: Whitened) -> torch.Tensor:
    """aᵀ R⁻¹ bᵀ (A, B) from the whitenings of a (A, n) and b (B, n)."""
    out = a.plus @ b.plus.T
    return out if a.minus is None else out - a.minus @ b.minus.T


@dataclass(frozen=True)
class FormChoice:
    """The form :func:`choose_form` picked and its estimated floating-point operations per day (both forms)."""

    form: str
    flops_obs: float
    flops_grid: float


def choose_form(n_per_channel: dict[int, int], npts: int, nlat: int, members: int, n_modes: int = 0,
                form: str = "auto", memory_bytes: float = 4e9) -> FormChoice:
    """Pick "obs" or "grid" for R (see module docstring) from a flop model of one analysed day.

    ``n_per_channel``: observations per channel; ``npts`` = nlat·nlon; ``members``; ``n_modes`` k;
    ``form``: "auto" (the cheaper), "obs" or "grid" (forced); ``memory_bytes``: the grid form is only chosen
    automatically if its ~5 npts² float64 work matrices fit.
    obs:  Σ_c 2 n_c² npts + n³/3 + 2 E M n²;   grid: C (npts³/3 + 4 nlat npts²) + 4 E M C npts²  (E = 30).
    """
    if form not in FORMS:
        raise ValueError(f"covariance form {form!r}; use one of {list(FORMS)}")
    n = sum(n_per_channel.values())
    nc = len(n_per_channel)
    f_obs = (sum(2.0 * m * m * npts for m in n_per_channel.values()) + n ** 3 / 3.0
             + 2.0 * _EVALUATIONS * members * n * n + 2.0 * n * n * n_modes)
    f_grid = (nc * (npts ** 3 / 3.0 + 4.0 * nlat * npts ** 2) + 4.0 * _EVALUATIONS * members * nc * npts ** 2
              * (2 if n_modes else 1) + 4.0 * nc * npts ** 2 * n_modes)
    if form == "auto":
        fits = _GRID_MATRICES * 8.0 * npts ** 2 <= memory_bytes
        form = "grid" if (fits and f_grid < f_obs) else "obs"
    return FormChoice(form, f_obs, f_grid)


class DiagonalCovariance:
    """R = R_o = diag(σ²): whitening r / σ. ``sigma`` (n,)."""

    form = "diagonal"

    def __init__(self, sigma: torch.Tensor) -> None:
        self.sigma = sigma.double()

    def whiten(self, r: torch.Tensor) -> Whitened:
        return Whitened(r.double() / self.sigma, None)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """R⁻¹ r for r (B, n), float64."""
        return r.double() / self.sigma ** 2


class CholeskyCovariance:
    """A dense R = L Lᵀ given by its lower Cholesky factor ``chol`` (n, n): whitening L⁻¹ r."""

    form = "obs"

    def __init__(self, chol: torch.Tensor) -> None:
        self.chol = chol.double()

    def whiten(self, r: torch.Tensor) -> Whitened:
        return Whitened(torch.linalg.solve_triangular(self.chol, r.double().T, upper=False).T, None)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """R⁻¹ r for r (B, n), float64."""
        return torch.cholesky_solve(r.double().T, self.chol).T


class DenseCovariance(CholeskyCovariance):
    """The "obs" form: R = R_o + G Gᵀ + U Uᵀ formed densely (n × n) from ``rep.at_observations(operator)``."""

    def __init__(self, rep: RepresentationError, operator: PointOperator, sigma: np.ndarray) -> None:
        self.rep = rep
        self.obs_rep = rep.at_observations(operator)
        R = self.obs_rep.cov + torch.diag(torch.as_tensor(np.asarray(sigma, dtype=np.float64) ** 2))
        super().__init__(torch.linalg.cholesky(R).to(rep.amplitude.device))

    def increment(self, v: torch.Tensor) -> torch.Tensor:
        """B_eta Hᵀ v (B, C, nlat, nlon) for weights v (B, n): the eta update (see RepresentationError.increment)."""
        return self.rep.increment(self.obs_rep, v)


class GridCovariance:
    """The "grid" form (module docstring): Woodbury per channel with P = I + Sᵀ D Hᵀ R_o⁻¹ H D S (npts × npts).

    ``rep``: the representation-error model; ``operator``: H of the used observations; ``sigma`` (n,) their
    error std (physical units). Building costs O(n) + O(C (npts³/3 + nlat npts²)); memory O(npts²), none O(n²)
    or O(n·npts). Work is float64 on ``rep.amplitude.device``.
    """

    form = "grid"

    def __init__(self, rep: RepresentationError, operator: PointOperator, sigma: np.ndarray) -> None:
        self.rep, self.operator = rep, operator
        dev = rep.amplitude.device
        nlat, nlon = rep.grid.shape
        npts = nlat * nlon
        C = rep.amplitude.shape[0]
        sig = np.array(sigma, dtype=np.float64)
        if sig.shape != (operator.nobs,) or not (np.isfinite(sig).all() and (sig > 0).all()):
            raise ValueError(f"sigma must be ({operator.nobs},) positive finite, got shape {sig.shape}")
        self.shape = (C, nlat, nlon)
        self.sigma = torch.as_tensor(sig, device=dev)
        hs = operator.to_sparse().tocsr()  # (n, C·npts)
        coo = hs.T.tocoo()  # Hᵀ (C·npts, n)
        self._ht = torch.sparse_coo_tensor(np.stack([coo.row, coo.col]), coo.data, coo.shape, dtype=torch.float64,
                                           device=dev, check_invariants=True).coalesce()
        self.channels = [int(c) for c in np.unique(operator.channel)]
        self.D = rep.amplitude.double()  # (C, nlat, nlon)
        smat = rep.smoother.matrix().cpu()  # S (npts, npts) float64
        winv = sp.diags(1.0 / sig ** 2)
        self._chol = torch.empty((len(self.channels), npts, npts), dtype=torch.float64, device=dev)
        for idx, c in enumerate(self.channels):
            hc = hs[:, c * npts:(c + 1) * npts]
            d = self.D[c].reshape(-1, 1).cpu()
            k = (hc.T @ winv @ hc).tocsr()  # Hᵀ R_o⁻¹ H (npts, npts), sparse
            y = torch.from_numpy(k @ (d * smat).numpy()).mul_(d)  # Y = D K D S
            # (Sᵀ Y)ᵀ: the smoother's transpose on the rows of Yᵀ (contiguous fields, FFT along the last axis),
            # O(nlat npts²) instead of npts³; P is symmetric, so this is P − I
            p = rep.smoother.apply_transpose(y.T.contiguous().reshape(npts, nlat, nlon).to(dev)).reshape(npts, npts)
            del y
            p.diagonal().add_(1.0)  # P = I + Sᵀ D K D S (cholesky reads its lower triangle)
            torch.linalg.cholesky(p, out=self._chol[idx])
            del p
        self._chan_idx = torch.as_tensor(self.channels, device=dev)
        self.n_modes = rep.n_modes
        if self.n_modes:
            hsc = hs @ sp.diags(rep.modes_scale.reshape(-1).double().cpu().numpy())
            self.U = torch.as_tensor(hsc @ rep.modes_columns.astype(np.float64), device=dev)  # H M (n, k)
            self._rb_u = self._solve_base(self.U.T).T  # R_b⁻¹ U (n, k)
            cap = torch.eye(self.n_modes, dtype=torch.float64, device=dev) + self.U.T @ self._rb_u
            self._chol_c = torch.linalg.cholesky(0.5 * (cap + cap.T))

    # -- sparse H ∘ D ∘ S and its transpose -------------------------------------------------------------------
    def _gt(self, v: torch.Tensor) -> torch.Tensor:
        """Gᵀ v = Sᵀ D Hᵀ v per used channel: v (B, n) -> (Cu, npts, B)."""
        C, nlat, nlon = self.shape
        hv = torch.sparse.mm(self._ht, v.T).T.reshape(-1, C, nlat, nlon)  # Hᵀ v on the grid
        t = self.rep.smoother.apply_transpose(self.D[self._chan_idx] * hv[:, self._chan_idx])
        return t.reshape(v.shape[0], len(self.channels), -1).permute(1, 2, 0)

    def _g(self, x: torch.Tensor) -> torch.Tensor:
        """G x = H D S x: x (Cu, npts, B) -> (B, n)."""
        C, nlat, nlon = self.shape
        B = x.shape[-1]
        field = torch.zeros((B, C, nlat, nlon), dtype=torch.float64, device=x.device)
        xs = x.permute(2, 0, 1).reshape(B, len(self.channels), nlat, nlon)
        field = field.index_copy(1, self._chan_idx, self.D[self._chan_idx] * self.rep.smoother.apply(xs))
        return self.operator.apply_torch(field)

    def _whiten_base(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R_o^{-½} r, L_P⁻¹ Gᵀ R_o⁻¹ r (Cu, npts, B), R_o⁻¹ r) for r (B, n) float64."""
        v = r / self.sigma ** 2
        u = torch.linalg.solve_triangular(self._chol, self._gt(v), upper=False)
        return r / self.sigma, u, v

    def _solve_base(self, r: torch.Tensor) -> torch.Tensor:
        """R_b⁻¹ r = R_o⁻¹ r − R_o⁻¹ G P⁻¹ Gᵀ R_o⁻¹ r (R_b = R_o + G Gᵀ) for r (B, n)."""
        _, u, v = self._whiten_base(r.double())
        pinv = torch.linalg.solve_triangular(self._chol.mT, u, upper=True)  # P⁻¹ Gᵀ R_o⁻¹ r
        return v - self._g(pinv) / self.sigma ** 2

    def whiten(self, r: torch.Tensor) -> Whitened:
        """Signed whitening of r (B, n): rᵀ R⁻¹ r = ‖plus‖² − ‖minus‖² (module docstring)."""
        r = r.double()
        plus, u, v = self._whiten_base(r)
        minus = u.permute(2, 0, 1).reshape(r.shape[0], -1)
        if self.n_modes:
            pinv = torch.linalg.solve_triangular(self._chol.mT, u, upper=True)
            rb = v - self._g(pinv) / self.sigma ** 2
            um = torch.linalg.solve_triangular(self._chol_c, (rb @ self.U).T, upper=False).T  # L_C⁻¹ Uᵀ R_b⁻¹ r
            minus = torch.cat([minus, um], dim=1)
        return Whitened(plus, minus)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """R⁻¹ r for r (B, n), float64."""
        rb = self._solve_base(r)
        if self.n_modes:
            rb = rb - torch.cholesky_solve((rb @ self.U).T, self._chol_c).T @ self._rb_u.T
        return rb

    def increment(self, v: torch.Tensor) -> torch.Tensor:
        """B_eta Hᵀ v = M (H M)ᵀ v + D ⊙ S Gᵀ v for weights v (B, n) -> (B, C, nlat, nlon), dtype of v."""
        C, nlat, nlon = self.shape
        B = v.shape[0]
        gt = self._gt(v.double()).permute(2, 0, 1).reshape(B, len(self.channels), nlat, nlon)
        dw = torch.zeros((B, C, nlat, nlon), dtype=v.dtype, device=v.device)
        dw[:, self._chan_idx] = gt.to(v.dtype)
        dm = None if not self.n_modes else (v.double() @ self.U).to(v.dtype)
        return self.rep.sample(dw, dm)


def observation_covariance(rep: RepresentationError, operator: PointOperator, sigma: np.ndarray, members: int,
                           form: str = "auto") -> DenseCovariance | GridCovariance:
    """R for ``operator``'s observations with error std ``sigma`` (n,), in the form :func:`choose_form` picks."""
    nlat, nlon = rep.grid.shape
    counts = {int(c): int(k) for c, k in zip(*np.unique(operator.channel, return_counts=True))}
    choice = choose_form(counts, nlat * nlon, nlat, members, rep.n_modes, form)
    if choice.form == "grid":
        return GridCovariance(rep, operator, sigma)
    return DenseCovariance(rep, operator, sigma)


class BlockCovariance:
    """Block-diagonal R = diag(R_0, ..., R_{T−1}) of an assimilation window (:mod:`latentda.da.window`): day t's
    observations are rows ``bounds[t]:bounds[t + 1]`` and ``blocks[t]`` is that day's covariance object (from
    :func:`observation_covariance`; None for a day without rows). Days are independent in R, so whitening, R⁻¹ and
    the eta update work block by block; the update of day t lands in its channels t C .. t C + C − 1 of the window
    field (T C, nlat, nlon)."""

    form = "block"

    def __init__(self, blocks: list, bounds: np.ndarray, nchannels: int) -> None:
        if len(bounds) != len(blocks) + 1:
            raise ValueError(f"{len(blocks)} blocks need {len(blocks) + 1} row bounds, got {len(bounds)}")
        self.blocks, self.nchannels = blocks, int(nchannels)
        self.slices = [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        for t, (b, sl) in enumerate(zip(blocks, self.slices)):
            if (b is None) != (sl.stop == sl.start):
                raise ValueError(f"day {t} of the window has {sl.stop - sl.start} rows but "
                                 f"{'no' if b is None else 'a'} covariance block")

    def _used(self):
        return [(t, b, sl) for t, (b, sl) in enumerate(zip(self.blocks, self.slices)) if b is not None]

    def whiten(self, r: torch.Tensor) -> Whitened:
        """Signed whitening of r (B, n), block by block (rᵀ R⁻¹ r = Σ_t r_tᵀ R_t⁻¹ r_t)."""
        parts = [b.whiten(r[:, sl]) for _, b, sl in self._used()]
        minus = [p.minus for p in parts if p.minus is not None]
        return Whitened(torch.cat([p.plus for p in parts], dim=1), torch.cat(minus, dim=1) if minus else None)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """R⁻¹ r for r (B, n), float64."""
        return torch.cat([b.solve(r[:, sl]) for _, b, sl in self._used()], dim=1)

    def increment(self, v: torch.Tensor) -> torch.Tensor:
        """B_eta Hᵀ v per day for weights v (B, n) -> (B, T C, nlat, nlon), dtype of v (zero on unobserved days)."""
        C, out = self.nchannels, None
        for t, b, sl in self._used():
            inc = b.increment(v[:, sl])
            if out is None:
                out = torch.zeros((v.shape[0], len(self.blocks) * C, *inc.shape[2:]), dtype=inc.dtype,
                                  device=inc.device)
            out[:, t * C:(t + 1) * C] = inc
        return out
