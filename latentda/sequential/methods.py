"""The analysis methods of the Lorenz-96 benchmark as cycling objects for :func:`.twin.run_twin`.

Each wraps one pure analysis function (:mod:`.static`, :mod:`.ensemble_filters`) with its settings; the
ensemble methods apply inflation and, optionally, a random mean-preserving rotation after the analysis (DAPPER's
``post_process``). Deterministic methods run one member and report the static analysis-error standard deviation
they assume as their spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .ensemble_filters import enkf_pertobs, etkf, inflate, letkf, rotate
from .static import analysis_error_std, optimal_interpolation, var3d
from .twin import Twin, ensemble_spread


@dataclass
class Climatology:
    """x_a = μ_c, the climatological mean (n,); spread sqrt(mean diag B_c)."""

    mean: torch.Tensor
    cov: torch.Tensor
    members: int = 1

    def analyse(self, E, y, twin: Twin, generator):
        return self.mean.expand_as(E).clone()

    def spread(self, E) -> float:
        return float(torch.diagonal(self.cov).mean().sqrt())


@dataclass
class OptimalInterpolation:
    """x_a = μ_c + B_c Hᵀ (H B_c Hᵀ + R)⁻¹ (y − H μ_c): no memory of the previous analysis (DAPPER OptInterp)."""

    mean: torch.Tensor
    cov: torch.Tensor
    members: int = 1
    _spread: float | None = field(default=None, init=False, repr=False)

    def analyse(self, E, y, twin: Twin, generator):
        if self._spread is None:
            self._spread = analysis_error_std(twin.H, self.cov, twin.R)
        return optimal_interpolation(self.mean, y[None], twin.H, self.cov, twin.R).expand_as(E).clone()

    def spread(self, E) -> float:
        return float(self._spread)


@dataclass
class Var3D:
    """3D-Var of the cycled forecast with B = x_B · B_c (DAPPER Var3D, x_B = 0.02 for sakov2008)."""

    cov: torch.Tensor
    xB: float = 0.02
    members: int = 1
    _spread: float | None = field(default=None, init=False, repr=False)

    def analyse(self, E, y, twin: Twin, generator):
        B = self.xB * self.cov
        if self._spread is None:
            self._spread = analysis_error_std(twin.H, B, twin.R)
        return var3d(E, y.expand(E.shape[0], -1), twin.H, B, twin.R)

    def spread(self, E) -> float:
        return float(self._spread)


@dataclass
class EnsembleSettings:
    """Ensemble size ``members`` >= 2, post-analysis multiplicative inflation ``infl``, random rotation ``rot``."""

    members: int
    infl: float = 1.0
    rot: bool = False

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError(f"ensemble size must be >= 2, got members={self.members}")
        if not self.infl > 0:
            raise ValueError(f"inflation must be > 0, got infl={self.infl}")

    def post(self, E: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.infl != 1.0:
            E = inflate(E, self.infl)
        return rotate(E, generator) if self.rot else E

    def spread(self, E) -> float:
        return ensemble_spread(E)


@dataclass
class EnKFPertObs(EnsembleSettings):
    """Stochastic EnKF (:func:`.ensemble_filters.enkf_pertobs`)."""

    def analyse(self, E, y, twin: Twin, generator):
        return self.post(enkf_pertobs(E, y, twin.H, twin.R, generator), generator)


@dataclass
class EnKFSqrt(EnsembleSettings):
    """ETKF, symmetric square root (:func:`.ensemble_filters.etkf`)."""

    def analyse(self, E, y, twin: Twin, generator):
        return self.post(etkf(E, y, twin.H, twin.R), generator)


@dataclass
class LETKF(EnsembleSettings):
    """LETKF with Gaspari-Cohn R-localisation of radius ``radius`` grid points (:func:`.ensemble_filters.letkf`)."""

    radius: float = math.inf

    def analyse(self, E, y, twin: Twin, generator):
        return self.post(letkf(E, y, twin.H, twin.R, twin.distances, self.radius), generator)
