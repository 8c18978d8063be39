"""The representation error of an assimilation window, correlated in time: AR(1) per variable.

Model (per channel c, channels independent; S, D as in :mod:`latentda.da.ensemble`, D_t = D of day t)::

    Cov(eta_s^c, eta_t^c) = ρ_c^|s−t| D_c,s S Sᵀ D_c,t          (AR(1) in time, the per-day model on each day)

ρ_c is the window prior's fitted coefficient (``prior.transition.repr_rho``, :mod:`latentda.prior.repr_time`).
The residual modes part M w_M of a prior with modes stays independent between days (its weights have no model in
time). Each day's marginal is exactly the per-day model.

* **Prior draws** (:func:`draw_window_eta`): day t's white grid noise w_t comes from day t's seeded stream
  (:data:`~latentda.da.ensemble.STREAM_REPR`), as in the per-day analysis; they are mixed in time per channel by
  the Cholesky factor L_c of the T × T correlation P_c,st = ρ_c^|s−t|: w̃_t = Σ_s L_c,ts w_s, eta_t = D_t S w̃_t
  (+ M w_M,t from day t's mode stream).
* **R of the window** (:class:`WindowReprCovariance`, the dense "obs" form):
  R = R_o + (Ḡ Ḡᵀ) ∘ P + blockdiag_t(H_t M (H_t M)ᵀ), Ḡ = H D S row by row (row i with its own day's D), P_ij =
  ρ_c^|t_i − t_j| for rows of the same channel c (the Schur product of two covariances is positive definite).
* **eta update of day t**: Σ_s ρ_c^|t−s| D_t S G_{s,c}ᵀ v_s (+ M (H_t M)ᵀ v_t), for weights v = R⁻¹ (ỹ − H g(z)).

The dense window R is n × n over all rows of the window; the analysis uses it when the rows allow (see
:func:`correlated_form`) and otherwise falls back to days independent in time, which it logs and records.
"""
from __future__ import annotations

import numpy as np
import torch

from ..obs.operator import PointOperator
from .ensemble import STREAM_MODES, STREAM_REPR, RepresentationError, member_normals
from .obs_covariance import AUTO_DENSE_MAX, CholeskyCovariance, Whitened

#: "auto" builds the dense window R up to this many rows of the whole window (the per-day dense limit)
WINDOW_DENSE_MAX = AUTO_DENSE_MAX


def ar1_correlation(rho: float, days: int) -> np.ndarray:
    """P (days, days) float64 with P_st = ρ^|s−t| (ρ in [0, 1))."""
    lag = np.abs(np.subtract.outer(np.arange(days), np.arange(days)))
    return float(rho) ** lag


def time_mixing(rho: np.ndarray, days: int) -> torch.Tensor:
    """L (C, days, days) float64: the lower Cholesky factor of :func:`ar1_correlation` per channel."""
    return torch.stack([torch.linalg.cholesky(torch.as_tensor(ar1_correlation(r, days))) for r in rho])


def prior_rho(prior, mode: str, days: int) -> np.ndarray | None:
    """ρ_c (C,) of the window prior when the option ``repr_time_correlation`` (``mode``) is "fitted", the window
    has more than one day and the prior carries a fitted ρ with at least one ρ_c > 0; else None (days
    independent). ValueError if the prior's ρ does not have one value per variable."""
    transition = getattr(prior, "transition", None)
    rho = None if transition is None else getattr(transition, "repr_rho", None)
    if mode != "fitted" or days < 2 or rho is None:
        return None
    rho = np.asarray(rho, dtype=np.float64)
    if rho.shape != (len(prior.variables),):
        raise ValueError(f"the window prior's repr_rho has {rho.size} value(s) {rho.tolist()}, the prior "
                         f"{len(prior.variables)} variable(s) {list(prior.variables)}")
    return rho if (rho > 0).any() else None


def correlated_form(n_rows: int, form: str) -> tuple[bool, str]:
    """Whether the dense window R of ``n_rows`` rows is built for the covariance ``form`` option, and why not:
    "grid" (forced) never, "obs" (forced) always, "auto" up to :data:`WINDOW_DENSE_MAX` rows."""
    if form == "grid":
        return False, "covariance_form='grid' (the correlated window R is dense)"
    if form == "auto" and n_rows > WINDOW_DENSE_MAX:
        return False, f"{n_rows} rows in the window > {WINDOW_DENSE_MAX} (the dense window R is too large)"
    return True, ""


def draw_window_eta(reps: list[RepresentationError], seed: int, ordinals: list[int], members: int,
                    shape: tuple[int, int, int], dev: torch.device, rho: np.ndarray) -> torch.Tensor:
    """The members' prior eta of the window (members, T C, nlat, nlon) float32, AR(1) in time (module docstring):
    day t's white noise from day t's stream (``ordinals[t]``), mixed per channel by L_c, then day t's model."""
    T = len(reps)
    white = torch.stack([torch.as_tensor(member_normals(seed, o, STREAM_REPR, members, shape)) for o in ordinals],
                        dim=1).double()  # (M, T, C, nlat, nlon)
    mixed = torch.einsum("cts,mscij->mtcij", time_mixing(rho, T), white).float().to(dev)
    out = []
    for t, (rep, o) in enumerate(zip(reps, ordinals)):
        wm = (torch.as_tensor(member_normals(seed, o, STREAM_MODES, members, (rep.n_modes,)), device=dev)
              if rep.n_modes else None)
        out.append(rep.sample(mixed[:, t], wm))
    return torch.cat(out, dim=1)


class WindowReprCovariance(CholeskyCovariance):
    """The R of a window with the AR(1) representation error (module docstring), formed densely: n × n, or one
    block per variable without residual modes (below).

    ``reps``: day t's model (T,); ``operators``: day t's H of its used rows (None for a day without rows), rows of
    day t are ``bounds[t]:bounds[t + 1]`` of the window's rows; ``sigma`` (n,) observation error std (physical
    units); ``rho`` (C,) ρ_c. Building costs Σ_c 2 N_c² npts + its Cholesky (N_c rows of channel c over the window).

    Without residual modes (no day's model has them) R couples only rows of the same variable, so it is
    block-diagonal over the channels: it is factored block by block (Σ_c N_c³/3 instead of n³/3, and whitening
    Σ_c N_c² instead of n² per member), the whitened vector ordered channel by channel. With modes, whose per-day
    blocks couple the variables, the whole n × n R is factored."""

    form = "obs_window_ar1"

    def __init__(self, reps: list[RepresentationError], operators: list[PointOperator | None], sigma: np.ndarray,
                 bounds: np.ndarray, rho: np.ndarray) -> None:
        if not (len(reps) == len(operators) == len(bounds) - 1):
            raise ValueError(f"{len(reps)} day models, {len(operators)} operators and {len(bounds)} row bounds "
                             "do not describe one window")
        self.reps, self.rho = reps, np.asarray(rho, dtype=np.float64)
        self.days, self.nchannels = len(reps), int(reps[0].amplitude.shape[0])
        if self.rho.shape != (self.nchannels,):
            raise ValueError(f"rho has shape {self.rho.shape}, expected ({self.nchannels},)")
        self.bounds = np.asarray(bounds, dtype=np.int64)
        n = int(self.bounds[-1])
        dev = reps[0].amplitude.device
        self.obs_reps = [None if op is None else rep.at_observations(op, covariance=False)
                         for rep, op in zip(reps, operators)]
        var_o = torch.as_tensor(np.asarray(sigma, dtype=np.float64) ** 2)
        blocks = []  # (rows of channel c over the window (N_c,), its block of R (N_c, N_c)) per observed channel
        for c in range(self.nchannels):
            parts = [(t, o.rows[c].cpu() + int(self.bounds[t]), o.gt[c]) for t, o in enumerate(self.obs_reps)
                     if o is not None and c in o.rows]
            if not parts:
                continue
            rows = torch.cat([r for _, r, _ in parts])
            at = np.cumsum([0] + [int(r.numel()) for _, r, _ in parts])
            g = [gt.double() for _, _, gt in parts]
            block = torch.empty((int(at[-1]), int(at[-1])), dtype=torch.float64)
            for i, (s, _, _) in enumerate(parts):  # ρ^|s−t| G_s G_tᵀ, each pair of days once (symmetric)
                for j in range(i, len(parts)):
                    b = (g[i] @ g[j].T).cpu() * float(self.rho[c] ** abs(parts[j][0] - s))
                    block[at[i]:at[i + 1], at[j]:at[j + 1]] = b
                    if j > i:
                        block[at[j]:at[j + 1], at[i]:at[i + 1]] = b.T
            blocks.append((rows, block))
        with_modes = any(o is not None and o.hm is not None for o in self.obs_reps)
        if with_modes:
            R = torch.zeros((n, n), dtype=torch.float64)
            for rows, block in blocks:
                R[rows[:, None], rows[None, :]] = block
            for t, o in enumerate(self.obs_reps):
                if o is not None and o.hm is not None:
                    sl = slice(int(self.bounds[t]), int(self.bounds[t + 1]))
                    hd = o.hm.double().cpu()
                    R[sl, sl] += hd @ hd.T
            R += torch.diag(var_o)
            self.channel_blocks = None
            super().__init__(torch.linalg.cholesky(R).to(dev))
        else:
            if sum(int(rows.numel()) for rows, _ in blocks) != n:
                raise ValueError(f"the channels' rows ({sum(int(r.numel()) for r, _ in blocks)}) do not cover the "
                                 f"window's {n} rows")
            self.channel_blocks = [(rows.to(dev), torch.linalg.cholesky(block + torch.diag(var_o[rows])).to(dev))
                                   for rows, block in blocks]

    def whiten(self, r: torch.Tensor) -> Whitened:
        """L⁻¹ r for r (B, n) float64 (channel by channel when R is block-diagonal over channels)."""
        if self.channel_blocks is None:
            return super().whiten(r)
        r = r.double()
        return Whitened(torch.cat([torch.linalg.solve_triangular(L, r[:, rows].T, upper=False).T
                                   for rows, L in self.channel_blocks], dim=1), None)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """R⁻¹ r for r (B, n), float64, in the rows' order."""
        if self.channel_blocks is None:
            return super().solve(r)
        r = r.double()
        out = torch.empty_like(r)
        for rows, L in self.channel_blocks:
            out[:, rows] = torch.cholesky_solve(r[:, rows].T, L).T
        return out

    def increment(self, v: torch.Tensor) -> torch.Tensor:
        """Cov(eta, H eta) v for weights v (B, n) -> (B, T C, nlat, nlon), dtype of v: day t gets
        Σ_s ρ_c^|t−s| D_t S G_{s,c}ᵀ v_s per channel plus M (H_t M)ᵀ v_t."""
        B, C = v.shape[0], self.nchannels
        nlat, nlon = self.reps[0].grid.shape
        # Gᵀ v of each (day s, channel c), (B, npts)
        proj = {(s, c): v[:, self.bounds[s] + r] @ o.gt[c] for s, o in enumerate(self.obs_reps) if o is not None
                for c, r in o.rows.items()}
        out = []
        for t, rep in enumerate(self.reps):
            dw = torch.zeros((B, C, nlat * nlon), dtype=v.dtype, device=v.device)
            for (s, c), u in proj.items():
                dw[:, c] += float(self.rho[c] ** abs(t - s)) * u
            dm = None
            if rep.n_modes:
                o = self.obs_reps[t]
                dm = (v[:, self.bounds[t]:self.bounds[t + 1]] @ o.hm.to(v.dtype) if o is not None
                      else torch.zeros((B, rep.n_modes), dtype=v.dtype, device=v.device))
            out.append(rep.sample(dw.reshape(B, C, nlat, nlon), dm))
        return torch.cat(out, dim=1)
