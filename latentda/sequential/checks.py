"""Input checks shared by the analysis functions: clear ValueErrors that name the offending value."""
from __future__ import annotations

import torch


def check_ensemble(E: torch.Tensor) -> tuple[int, int]:
    """``E`` (..., N, n) with N >= 2 members; returns (N, n)."""
    if E.dim() < 2:
        raise ValueError(f"ensemble must have shape (..., N, n), got shape {tuple(E.shape)}")
    N, n = E.shape[-2], E.shape[-1]
    if N < 2:
        raise ValueError(f"ensemble size N={N} is smaller than 2: anomalies and covariances need N >= 2")
    return N, n


def check_obs(n: int, y: torch.Tensor, H: torch.Tensor, R: torch.Tensor) -> int:
    """Observation operator ``H`` (p, n) for a state of n variables, ``y`` (..., p), ``R`` (p, p); returns p."""
    if H.dim() != 2 or H.shape[1] != n:
        raise ValueError(f"observation operator H has shape {tuple(H.shape)}; expected (p, n) with n={n} "
                         f"state variables")
    p = H.shape[0]
    if y.shape[-1] != p:
        raise ValueError(f"observations y have {y.shape[-1]} values but H has p={p} rows (H shape "
                         f"{tuple(H.shape)})")
    if tuple(R.shape) != (p, p):
        raise ValueError(f"observation-error covariance R has shape {tuple(R.shape)}; expected ({p}, {p})")
    return p


def check_radius(radius: float) -> None:
    """A localisation radius must be a positive number (grid units); inf means no localisation."""
    if not radius > 0:
        raise ValueError(f"localisation radius must be > 0 (grid units; inf for none), got radius={radius}")


def check_inflation(factor: float) -> None:
    """Multiplicative inflation factors are positive (1 = none)."""
    if not factor > 0:
        raise ValueError(f"inflation factor must be > 0 (1 for none), got infl={factor}")
