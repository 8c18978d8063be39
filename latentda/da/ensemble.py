"""Seeded ensemble draws and the representation-error model of the latent assimilation.

Draws
-----
Every random number of a day comes from ``numpy.random.SeedSequence([seed, day ordinal, stream, member])``
(PCG64, float64 normals cast to float32, generated on the CPU and then moved to the prior's device), so a member's
draws depend on nothing else: not on the ensemble size, the device or the other members.
Streams: :data:`STREAM_LATENT` (z_p ~ N(0, I)), :data:`STREAM_REPR` (white grid noise w_p ~ N(0, I)),
:data:`STREAM_OBS` (observation perturbations eps ~ N(0, R_o)), :data:`STREAM_MODES` (mode weights w_p ~ N(0, I_k)).

Representation error
--------------------
The decoder g cannot represent the truth exactly: x_true = g(z) + eta. We model, per channel c,

    eta = D ⊙ (S w),   w ~ N(0, I) white on the grid,   D = recon_std · s_clim   (physical units)

with S a normalised Gaussian smoother (diag(S Sᵀ) = 1), so Var(eta) = D² (the decoder's reconstruction error
variance, in physical units) and Corr(eta_p, eta_q) = (S Sᵀ)_pq ≈ exp(-d_pq² / (2 L²)) for great-circle distance
d_pq and length scale L; channels are independent.

With residual modes M (k, C, nlat, nlon; :mod:`latentda.prior.residual`, physical units) the model is

    eta = M w_M + D_r ⊙ (S w),   w_M ~ N(0, I_k),   D_r² = max(D² − Σ_k M_k², 0),

so B_eta = M Mᵀ + D_r S Sᵀ D_r: the modes carry the residual's coupled, anisotropic covariance (across channels
and at long range), the smoother the rest of its variance. S = A ∘ F: F smooths each latitude row along longitude with a
periodic Gaussian of std ℓ = L/√2 (in km, so wider in grid points towards the poles; applied by FFT), A smooths
along latitude with a Gaussian of std ℓ; rows are then scaled to unit variance exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..grid import Grid
from ..obs.operator import PointOperator

EARTH_RADIUS_KM = 6371.0
STREAM_LATENT, STREAM_REPR, STREAM_OBS, STREAM_MODES = 0, 1, 2, 3


def day_ordinal(time) -> int:
    """Proleptic Gregorian ordinal of the day of ``time`` (ValueError if it is not a date)."""
    try:
        ts = pd.Timestamp(time)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"time={time!r} is not a date: {exc}") from None
    if ts is pd.NaT or pd.isna(ts):
        raise ValueError(f"time={time!r} is not a date (NaT)")
    return int(ts.normalize().toordinal())


def member_normals(seed: int, ordinal: int, stream: int, members: int, shape: Sequence[int]) -> np.ndarray:
    """Standard normals (members, *shape) float32; member m from ``SeedSequence([seed, ordinal, stream, m])``."""
    out = np.empty((members, *shape), dtype=np.float32)
    for m in range(members):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, ordinal, stream, m])))
        out[m] = rng.standard_normal(tuple(shape))
    return out


def default_length_scale_km(grid: Grid) -> float:
    """Default representation-error correlation length L: 1.5 meridional grid spacings, in km.

    (The decoder residuals of ``latentda.testing.tiny_prior`` on held-out days have lag correlations 0.72, 0.41,
    0.18 at 1, 2, 3 grid spacings: a Gaussian with L ≈ 1.3-1.6 spacings.)"""
    dlat = float(np.mean(np.diff(grid.lat)))
    return 1.5 * EARTH_RADIUS_KM * math.radians(dlat)


class GaussianSmoother:
    """Normalised Gaussian smoother S on a regular lat/lon grid, acting on (..., nlat, nlon) tensors.

    ``S w`` has unit variance at every grid point for white ``w`` and correlation ≈ exp(-d²/(2 L²)).
    ``length_scale_km``: L > 0. Needs equally spaced longitudes (FFT along longitude). On a grid with pole rows
    (latitude ±90) S = Z A F with Z the zonal mean of the pole rows: the pole is one point, so S w is one value
    along a pole row (Z is the identity without pole rows).
    """

    def __init__(self, grid: Grid, length_scale_km: float, device: torch.device | str = "cpu") -> None:
        L = float(length_scale_km)
        if not math.isfinite(L) or L <= 0:
            raise ValueError(f"representation-error length scale {length_scale_km!r} km must be a positive number")
        nlat, nlon = grid.shape
        dlon = np.diff(np.concatenate([grid.lon, [grid.lon[0] + 360.0]]))
        if not np.allclose(dlon, 360.0 / nlon, rtol=0, atol=1e-6):
            raise ValueError("the representation-error smoother needs equally spaced longitudes "
                             f"({grid.describe()}); pass representation_error='none' for this grid")
        ell = L / math.sqrt(2.0)  # kernel std: S Sᵀ then has std L
        phi = np.deg2rad(grid.lat)
        # longitude filter per row: wrapped Gaussian of std sigma_j grid points -> Fourier multiplier
        dx_km = EARTH_RADIUS_KM * np.maximum(np.cos(phi), 1e-6) * (2 * np.pi / nlon)
        sig = ell / dx_km  # (nlat,)
        m = np.fft.fftfreq(nlon) * nlon  # wavenumbers, full spectrum
        kk = 2 * np.pi * m / nlon
        spec_full = np.exp(-0.5 * (sig[:, None] * kk[None, :]) ** 2)  # (nlat, nlon)
        f_norm2 = (spec_full ** 2).mean(axis=1)  # Parseval: sum_i F_j(i)^2
        # latitude filter: Gaussian in meridional distance
        dy = EARTH_RADIUS_KM * (phi[:, None] - phi[None, :])
        A = np.exp(-0.5 * (dy / ell) ** 2)
        var = (A ** 2 * f_norm2[None, :]).sum(axis=1)
        pole = np.abs(grid.lat) >= 90.0
        var[pole] = (A[pole] ** 2).sum(axis=1) / nlon  # Var(zonal mean of F_k w_k) = spec_k(0)² / nlon = 1 / nlon
        self._poles = torch.as_tensor(np.nonzero(pole)[0], device=device)
        A = A / np.sqrt(var)[:, None]
        self.grid, self.length_scale_km = grid, L
        self.nlon = nlon
        self._spec = torch.as_tensor(spec_full[:, : nlon // 2 + 1], dtype=torch.float32, device=device)
        self._A = torch.as_tensor(A, dtype=torch.float32, device=device)

    def _lon(self, x: torch.Tensor) -> torch.Tensor:
        xf = torch.fft.rfft(x, dim=-1) * self._spec
        return torch.fft.irfft(xf, n=self.nlon, dim=-1)

    def _zonal_poles(self, x: torch.Tensor, lat_dim: int = -2, lon_dim: int = -1) -> torch.Tensor:
        """Z x: the pole rows (if any) replaced by their zonal mean (Z = Zᵀ); x itself without pole rows."""
        if not self._poles.numel():
            return x
        rows = x.index_select(lat_dim, self._poles)
        return x.index_copy(lat_dim % x.ndim, self._poles, rows.mean(lon_dim, keepdim=True).expand_as(rows))

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """S w for w (..., nlat, nlon), float32 or float64 (the filter coefficients are float32 either way)."""
        return self._zonal_poles(torch.einsum("jk,...kl->...jl", self._A.to(w.dtype), self._lon(w)))

    def apply_transpose(self, v: torch.Tensor) -> torch.Tensor:
        """Sᵀ v for v (..., nlat, nlon) (F and Z are symmetric), float32 or float64."""
        return self._lon(torch.einsum("kj,...kl->...jl", self._A.to(v.dtype), self._zonal_poles(v)))

    def matrix(self) -> torch.Tensor:
        """S as a dense (npts, npts) float64 tensor acting on w.reshape(-1) (npts = nlat·nlon), built directly:
        S[(j, i), (k, l)] = A_jk f_k((i − l) mod nlon), f_k = irfft(spec_k) the kernel of row k's filter."""
        nlat, nlon = self.grid.shape
        f = torch.fft.irfft(self._spec.double(), n=nlon, dim=-1)  # (nlat, nlon)
        lag = (torch.arange(nlon)[:, None] - torch.arange(nlon)[None, :]) % nlon
        circ = f[:, lag.to(f.device)]  # (k, i, l)
        s = torch.einsum("jk,kil->jikl", self._A.double(), circ)  # (j, i, k, l)
        return self._zonal_poles(s, lat_dim=0, lon_dim=1).reshape(nlat * nlon, nlat * nlon)

    def correlation_table(self) -> np.ndarray:
        """T (nlat, nlat, nlon) float64 with (S Sᵀ)[(j, i), (j', i')] = T[j, j', (i − i') mod nlon]:
        T[j, j', Δ] = Σ_k A_jk A_j'k c_k(Δ), c_k = irfft(spec_k²) the kernel of F_k F_kᵀ."""
        spec = self._spec.double().cpu()
        c = torch.fft.irfft(spec ** 2, n=self.nlon, dim=-1)  # (nlat, nlon)
        A = self._A.double().cpu()
        table = torch.einsum("jk,ik,kd->jid", A, A, c)
        for p in self._poles.cpu().tolist():  # Z at a pole row: the lag-mean of c_k, spec_k(0)² / nlon = 1 / nlon
            table[p] = (A[p] @ A.T / self.nlon)[:, None]
            table[:, p] = (A @ A[p] / self.nlon)[:, None]
        return table.numpy()


@dataclass
class ObsRepresentation:
    """Representation error seen at the observations: G = H D S per channel.

    ``cov``: Cov(H eta) = G Gᵀ (nobs, nobs) float64 CPU (in obs order);
    ``rows``: per channel, the observation indices of that channel; ``gt``: per channel, Gᵀ rows (n_c, nlat*nlon)
    of the smoother part; ``hm``: H M (nobs, k) of the residual modes, or None.
    """

    cov: torch.Tensor
    rows: dict[int, torch.Tensor]
    gt: dict[int, torch.Tensor]
    hm: torch.Tensor | None = None


class RepresentationError:
    """eta = M w_M + D ⊙ S w with D = ``amplitude`` (C, nlat, nlon) and optional residual modes
    M = ``modes`` ⊙ ``modes_scale`` (modes (k, C, nlat, nlon), scale (C, nlat, nlon), default 1), physical units
    (``amplitude`` is then the remainder D_r); see the module docstring. ``modes_columns``: optionally the same
    ``modes`` as a C-contiguous (C·nlat·nlon, k) float32 numpy array (H M is then one sparse product; a cached
    copy saves transposing k fields every day)."""

    def __init__(self, grid: Grid, amplitude: torch.Tensor, length_scale_km: float,
                 modes: torch.Tensor | None = None, modes_scale: torch.Tensor | None = None,
                 modes_columns: np.ndarray | None = None) -> None:
        self.amplitude = amplitude
        self.smoother = GaussianSmoother(grid, length_scale_km, amplitude.device)
        self.grid = grid
        if modes is not None and (modes.ndim != 4 or modes.shape[1:] != amplitude.shape):
            raise ValueError(f"modes must be (k, {', '.join(map(str, amplitude.shape))}), got {tuple(modes.shape)}")
        self.modes = modes
        if modes is not None:
            self.modes_scale = (torch.ones_like(amplitude) if modes_scale is None
                                else modes_scale.to(amplitude.device, amplitude.dtype))
            if modes_columns is None:
                modes_columns = np.ascontiguousarray(modes.reshape(modes.shape[0], -1).T.cpu().numpy())
            if modes_columns.shape != (amplitude.numel(), modes.shape[0]):
                raise ValueError(f"modes_columns must be {(amplitude.numel(), modes.shape[0])}, "
                                 f"got {modes_columns.shape}")
            self.modes_columns = modes_columns

    @property
    def n_modes(self) -> int:
        """k, the number of residual modes (0 without)."""
        return 0 if self.modes is None else int(self.modes.shape[0])

    def sample(self, white: torch.Tensor, white_modes: torch.Tensor | None = None) -> torch.Tensor:
        """eta (B, C, nlat, nlon) from white noise w (B, C, nlat, nlon) and, with modes, w_M (B, k)."""
        eta = self.amplitude * self.smoother.apply(white)
        if self.modes is not None:
            if white_modes is None or white_modes.shape != (white.shape[0], self.n_modes):
                raise ValueError(f"white_modes must be ({white.shape[0]}, {self.n_modes}) with residual modes, got "
                                 f"{None if white_modes is None else tuple(white_modes.shape)}")
            eta = eta + self.modes_field(white_modes)
        return eta

    def modes_field(self, white_modes: torch.Tensor) -> torch.Tensor:
        """M w_M (B, C, nlat, nlon) for mode weights w_M (B, k), in the dtype of the modes."""
        return torch.einsum("bk,kcij->bcij", white_modes.to(self.modes.dtype), self.modes) * self.modes_scale

    def at_observations(self, operator: PointOperator, covariance: bool = True) -> ObsRepresentation:
        """G = H D S for ``operator`` (exact, pole rows included, via ``operator.to_sparse()``).

        ``covariance=False`` skips G Gᵀ (``cov`` is then empty), e.g. when only the diagonal is needed.
        """
        nlat, nlon = self.grid.shape
        npts = nlat * nlon
        dev = self.amplitude.device
        hs = operator.to_sparse()
        nc = operator.nobs if covariance else 0
        cov = torch.zeros((nc, nc), dtype=torch.float64)
        rows: dict[int, torch.Tensor] = {}
        gt: dict[int, torch.Tensor] = {}
        for c in np.unique(operator.channel):
            r = np.nonzero(operator.channel == c)[0]
            block = hs[r][:, c * npts:(c + 1) * npts].toarray().astype(np.float32)  # (n_c, npts)
            x = torch.as_tensor(block, device=dev).reshape(-1, nlat, nlon) * self.amplitude[int(c)]
            g = self.smoother.apply_transpose(x).reshape(len(r), npts)
            ri = torch.as_tensor(r, dtype=torch.long)
            if covariance:
                gd = g.double()
                cov[ri[:, None], ri[None, :]] = (gd @ gd.T).cpu()
            rows[int(c)], gt[int(c)] = ri.to(dev), g
        hm = None
        if self.modes is not None:
            # H M = (H diag(scale)) modes (nobs, k): one sparse product with the column copy of the modes
            hsc = (hs @ sp.diags(self.modes_scale.reshape(-1).double().cpu().numpy())).astype(np.float32)
            hm = torch.as_tensor(hsc @ self.modes_columns, device=dev)  # float32 x float32: no upcast copy
            if covariance:
                hd = hm.double()
                cov += (hd @ hd.T).cpu()
        return ObsRepresentation(cov=cov, rows=rows, gt=gt, hm=hm)

    def variance_at_observations(self, operator: PointOperator) -> np.ndarray:
        """Var(H eta) = diag(G Gᵀ) at each observation, (nobs,) float64 (squared physical units).

        Up to nlat·nlon observations from the rows of G (O(n·npts)); beyond, from the correlation table of S
        (:meth:`variance_from_table`, O(n), equal to round-off)."""
        if operator.nobs > self.amplitude[0].numel():
            return self.variance_from_table(operator)
        rep = self.at_observations(operator, covariance=False)
        var = np.zeros(operator.nobs)
        for c, r in rep.rows.items():
            var[r.cpu().numpy()] = (rep.gt[c].double() ** 2).sum(-1).cpu().numpy()
        if rep.hm is not None:
            var += (rep.hm.double() ** 2).sum(-1).cpu().numpy()
        return var

    def variance_from_table(self, operator: PointOperator) -> np.ndarray:
        """diag(G Gᵀ + U Uᵀ) in O(n): var_i = Σ_ab h_ia h_ib D_a D_b (S Sᵀ)_ab over the pairs of grid points a, b
        that observation i reads (4 inside the grid, the whole outermost row poleward of it), with (S Sᵀ)_ab from
        :meth:`GaussianSmoother.correlation_table`; plus Σ_k (H M)_ik². (nobs,) float64."""
        nlat, nlon = self.grid.shape
        hs = operator.to_sparse().tocsr()
        cnt = np.diff(hs.indptr)
        row = np.repeat(np.arange(operator.nobs), cnt)  # observation of each nonzero
        reps = cnt[row]
        a = np.repeat(np.arange(hs.nnz), reps)  # each nonzero paired with every nonzero of its row
        start = np.repeat(np.cumsum(reps) - reps, reps)
        b = hs.indptr[row[a]] + (np.arange(a.size) - start)
        table = self.smoother.correlation_table()
        dflat = self.amplitude.double().reshape(-1).cpu().numpy()
        col = hs.indices
        j, i = (col % (nlat * nlon)) // nlon, col % nlon
        contrib = (hs.data[a] * hs.data[b] * dflat[col[a]] * dflat[col[b]]
                   * table[j[a], j[b], (i[a] - i[b]) % nlon])
        var = np.bincount(row[a], weights=contrib, minlength=operator.nobs)
        if self.modes is not None:
            hsc = hs @ sp.diags(self.modes_scale.reshape(-1).double().cpu().numpy())
            var += ((hsc @ self.modes_columns.astype(np.float64)) ** 2).sum(-1)
        return var

    def increment(self, rep: ObsRepresentation, weights: torch.Tensor) -> torch.Tensor:
        """B_eta Hᵀ v = M (H M)ᵀ v + D ⊙ S Gᵀ v for weights v (B, nobs) -> (B, C, nlat, nlon): the eta update for
        obs weights v."""
        nlat, nlon = self.grid.shape
        B, C = weights.shape[0], self.amplitude.shape[0]
        dw = torch.zeros((B, C, nlat * nlon), dtype=weights.dtype, device=weights.device)
        for c, r in rep.rows.items():
            dw[:, c] = weights[:, r] @ rep.gt[c]
        dm = None if rep.hm is None else weights @ rep.hm.to(weights.dtype)  # (B, k)
        return self.sample(dw.reshape(B, C, nlat, nlon), dm)
