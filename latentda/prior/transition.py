"""The latent transition of a window prior: a stationary linear-Gaussian Markov chain in the VAE latent space.

Model (one line): ``z_{t+1} = A z_t + q_t,  q_t ~ N(0, Q),  Q = I − A Aᵀ``, so every z_t ~ N(0, I): the chain's
marginal is the per-day prior N(0, I) that the decoder g and the per-day analysis use, and a window prior of
2k + 1 days is the Gaussian p(z_{d−k}, ..., z_{d+k}) = N(0, I) Π_t N(z_{t+1}; A z_t, Q).

Parametrised by white innovations ξ_t ~ N(0, I_d) (the window latent of the assimilation)::

    z_0 = ξ_0,    z_t = A z_{t−1} + L_q ξ_t   (t = 1 .. 2k),   Q = L_q L_qᵀ

so the window prior term is ½‖ξ − ξ_p‖² exactly as in the per-day cost, and with k = 0 the window latent is the
day latent (z_0 = ξ_0, no arithmetic).

Fitting (:func:`fit_transition`): pairs of consecutive days are encoded as posterior samples z = μ + σ ε (the
aggregate posterior the decoder was trained on), whitened by their sample covariance C_0 (so the chain state has
unit covariance like the per-day prior), and A is the lag-1 regression of the whitened samples
(Yule-Walker: A = C_1 C_0⁻¹ with C_0 = I). ``one_day_r2`` is the transition's one-day skill in latent space,
1 − Σ‖u_{t+1} − A u_t‖² / Σ‖u_{t+1}‖², on held-out pairs (the prior's validation blocks).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

#: Floor on the eigenvalues of Q = I − A Aᵀ (a sample A can have singular values at or slightly above 1).
Q_FLOOR = 1e-3


@dataclasses.dataclass
class LatentTransition:
    """``A`` (d, d) and ``q_chol`` L_q (d, d) lower triangular, float64; ``info``: fit statistics (JSON-able);
    ``repr_rho``: ρ_c (C,) float64 in [0, 1), the AR(1) coefficient in time of the representation error per
    variable (:mod:`latentda.prior.repr_time`), or None (not fitted: the window analysis takes ρ = 0)."""

    A: np.ndarray
    q_chol: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    repr_rho: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.A = np.asarray(self.A, dtype=np.float64)
        self.q_chol = np.asarray(self.q_chol, dtype=np.float64)
        d = self.A.shape[0] if self.A.ndim == 2 else -1
        if self.A.shape != (d, d) or self.q_chol.shape != (d, d):
            raise ValueError(f"transition A {self.A.shape} and q_chol {self.q_chol.shape} must be square and equal")
        if not (np.isfinite(self.A).all() and np.isfinite(self.q_chol).all()):
            raise ValueError("transition A and q_chol must be finite")
        if self.repr_rho is not None:
            self.repr_rho = np.asarray(self.repr_rho, dtype=np.float64).reshape(-1)
            if not (np.isfinite(self.repr_rho).all() and (self.repr_rho >= 0).all() and (self.repr_rho < 1).all()):
                raise ValueError(f"repr_rho {self.repr_rho.tolist()} must be in [0, 1) per variable")
        self._torch: dict = {}

    @property
    def latent_dim(self) -> int:
        return int(self.A.shape[0])

    @classmethod
    def from_matrix(cls, A: np.ndarray, info: dict | None = None) -> "LatentTransition":
        """The stationary chain of ``A``: L_q = chol(I − A Aᵀ), eigenvalues floored at :data:`Q_FLOOR`."""
        A = np.asarray(A, dtype=np.float64)
        Q = np.eye(A.shape[0]) - A @ A.T
        lam, V = np.linalg.eigh(0.5 * (Q + Q.T))
        Q = (V * np.maximum(lam, Q_FLOOR)) @ V.T
        return cls(A, np.linalg.cholesky(0.5 * (Q + Q.T)), dict(info or {}, q_eig_min=float(lam.min())))

    def _mats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._torch:
            self._torch[key] = (torch.as_tensor(self.A.T, dtype=torch.float32, device=device).contiguous(),
                                torch.as_tensor(self.q_chol.T, dtype=torch.float32, device=device).contiguous())
        return self._torch[key]

    def chain(self, xi: torch.Tensor, days: int) -> torch.Tensor:
        """z (B, days, d) from white innovations ξ (B, days · d): z_0 = ξ_0, z_t = A z_{t−1} + L_q ξ_t."""
        d = self.latent_dim
        if xi.ndim != 2 or xi.shape[1] != days * d:
            raise ValueError(f"window latent has shape {tuple(xi.shape)}; expected (B, {days} x {d})")
        x = xi.reshape(xi.shape[0], days, d)
        if days == 1:
            return x
        At, Lt = self._mats(xi.device)
        z = [x[:, 0]]
        for t in range(1, days):
            z.append(z[-1] @ At + x[:, t] @ Lt)
        return torch.stack(z, dim=1)

    def chain_matrix(self, days: int) -> np.ndarray:
        """The linear map ξ -> z of :meth:`chain` as a (days · d, days · d) float64 matrix (block lower triangular)."""
        d = self.latent_dim
        C = np.zeros((days * d, days * d))
        for t in range(days):
            for j in range(t + 1):
                block = np.eye(d) if j == 0 else self.q_chol
                C[t * d:(t + 1) * d, j * d:(j + 1) * d] = np.linalg.matrix_power(self.A, t - j) @ block
        return C

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint form: {"A", "q_chol"} and, if fitted, "repr_rho" (C,): float64 CPU tensors."""
        out = {"A": torch.tensor(self.A), "q_chol": torch.tensor(self.q_chol)}
        if self.repr_rho is not None:
            out["repr_rho"] = torch.tensor(self.repr_rho)
        return out


def lag_pairs(times: np.ndarray, idx: np.ndarray, lag: int) -> np.ndarray:
    """Indices t (into ``times``) with t and t + ``lag`` both in ``idx`` and exactly ``lag`` calendar days apart."""
    lag = int(lag)
    if lag < 1:
        raise ValueError(f"lag={lag} must be >= 1")
    days = np.asarray(times, dtype="datetime64[D]")
    ok = np.zeros(len(days), dtype=bool)
    ok[np.asarray(idx, dtype=np.int64)] = True
    t = np.arange(max(len(days) - lag, 0))
    return t[ok[t] & ok[t + lag] & ((days[t + lag] - days[t]) == np.timedelta64(lag, "D"))]


def fit_transition(encode, anomalies: torch.Tensor, times: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                   seed: int, samples: int = 4, rotations: int = 1, batch: int = 256) -> LatentTransition:
    """Fit the latent transition (module docstring) on consecutive training days.

    ``encode``: (B, C, nlat, nlon) standardised anomalies -> (mu, logvar) (B, d); ``anomalies`` (T, C, nlat, nlon)
    in time order; ``times`` (T,) datetime64; ``train_idx``/``val_idx``: the prior's split (pairs within each);
    ``samples`` posterior draws per day (seeded with ``seed``); ``rotations`` > 1 adds that many evenly spaced
    longitude rotations of both days of every pair (for zonally symmetric data: more pairs, same dynamics).
    """
    tr, va = lag_pairs(times, train_idx, 1), lag_pairs(times, val_idx, 1)
    if tr.size < 2:
        raise ValueError(f"only {tr.size} pair(s) of consecutive training days: a window prior needs daily data")
    gen = torch.Generator().manual_seed(int(seed) + 101)
    nlon = anomalies.shape[-1]
    shifts = [int(round(k * nlon / rotations)) for k in range(max(1, int(rotations)))]

    def sample_pairs(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z0, z1 = [], []
        with torch.no_grad():
            for shift in shifts:
                for k in range(0, first.size, batch):
                    t = torch.as_tensor(first[k:k + batch])
                    both = torch.cat([anomalies[t], anomalies[t + 1]]).roll(shift, dims=-1)
                    mu, logvar = encode(both)
                    mu, sd = mu.double().cpu(), torch.exp(0.5 * logvar).double().cpu()
                    for _ in range(samples):
                        z = mu + sd * torch.randn(mu.shape, generator=gen, dtype=torch.float64)
                        z0.append(z[:t.numel()].numpy())
                        z1.append(z[t.numel():].numpy())
        return np.concatenate(z0), np.concatenate(z1)

    z0, z1 = sample_pairs(tr)
    allz = np.concatenate([z0, z1])
    C0 = np.cov(allz, rowvar=False)
    lam, V = np.linalg.eigh(0.5 * (C0 + C0.T))
    W = (V / np.sqrt(np.maximum(lam, 1e-8))) @ V.T  # C0^{-1/2}
    u0, u1 = z0 @ W, z1 @ W
    A = np.linalg.solve(u0.T @ u0, u0.T @ u1).T  # least squares u1 ≈ A u0
    info = {"pairs_train": int(tr.size), "pairs_val": int(va.size), "samples": int(samples),
            "rotations": len(shifts), "encoded_cov_eig_min": float(lam.min()), "encoded_cov_eig_max": float(lam.max()),
            "encoded_cov_mean_var": float(lam.mean()), "a_spectral_norm": float(np.linalg.norm(A, 2)),
            "one_day_r2_train": _r2(u0, u1, A)}
    if va.size:
        v0, v1 = sample_pairs(va)
        info["one_day_r2"] = _r2(v0 @ W, v1 @ W, A)
    else:
        info["one_day_r2"] = float("nan")
    return LatentTransition.from_matrix(A, info)


def _r2(u0: np.ndarray, u1: np.ndarray, A: np.ndarray) -> float:
    """1 − Σ‖u1 − A u0‖² / Σ‖u1‖² (u rows are samples)."""
    return float(1.0 - ((u1 - u0 @ A.T) ** 2).sum() / (u1 ** 2).sum())
