"""Twin experiments: a truth run of the model, noisy observations of it, and cycling of an analysis method.

One cycle = forecast every member ``obs_every`` model steps, then analyse the observations valid then. Scores
per cycle k (after the analysis): error e_k = sqrt(mean_i (x̄_a,i − x_t,i)²) (spatial RMS of the ensemble-mean
error) and spread s_k = sqrt(mean_i var_i) (member variance, ddof 1); the first ``spinup`` cycles are discarded
and the rest averaged in time (DAPPER's ``rmse.a`` and ``rmv.a``). The 95 % confidence interval of the time mean
corrects the variance of the mean for the lag correlation of the error series with an AR(1) fit (DAPPER
``tools.series.mean_with_conf``). Everything is deterministic given the seed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .l96 import Lorenz96
from .localisation import periodic_distances


@dataclass(frozen=True)
class TwinConfig:
    """A Lorenz-96 twin experiment. Defaults: DAPPER ``mods/Lorenz96/sakov2008.py`` (Sakov & Oke 2008)."""

    n: int = 40
    forcing: float = 8.0                 # truth forcing F
    dt: float = 0.05                     # MTU per RK4 step
    obs_every: int = 1                   # model steps per analysis cycle
    obs_stride: int = 1                  # observe variables 0, stride, 2·stride, ...
    obs_std: float = 1.0                 # observation error standard deviation (R = obs_std² I)
    cycles: int = 10_000                 # scored analysis cycles (after the spin-up)
    spinup: int = 500                    # analysis cycles run first and not scored
    init_std: float = 1.0                # initial ensemble = truth₀ + N(0, init_std²)
    member_forcing_std: float = 0.0      # ensemble forcing F_m ~ N(forcing, std²) per member (Finn 2019)
    seed: int = 3000

    def __post_init__(self) -> None:
        for name in ("obs_every", "obs_stride", "cycles"):
            if getattr(self, name) < 1:
                raise ValueError(f"TwinConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.spinup < 0:
            raise ValueError(f"TwinConfig.spinup must be >= 0, got {self.spinup}")
        if not self.obs_std > 0:
            raise ValueError(f"TwinConfig.obs_std must be > 0, got {self.obs_std}")

    @property
    def model(self) -> Lorenz96:
        return Lorenz96(self.n, self.forcing, self.dt)


# Finn (2019), slide "Experiment": 20 observations every 8 steps, error variance 0.25, ensemble forcing
# N(8, 0.25) (variance), initial ensemble truth + N(0, 4) (variance).
FINN2019 = TwinConfig(obs_every=8, obs_stride=2, obs_std=0.5, init_std=2.0, member_forcing_std=0.5)


@dataclass
class Twin:
    """Truth (K + 1, n) at the analysis times (index 0 = initial state), observations (K, p), H (p, n), R (p, p),
    state-to-observation distances (n, p) on the ring."""

    config: TwinConfig
    truth: torch.Tensor
    obs: torch.Tensor
    H: torch.Tensor
    R: torch.Tensor
    distances: torch.Tensor


def make_twin(cfg: TwinConfig, device: str | torch.device = "cpu") -> Twin:
    """Truth run from a seeded state on the attractor and observations y_k = H x_k + N(0, R)."""
    model = cfg.model
    K = cfg.spinup + cfg.cycles
    x = model.on_attractor(cfg.seed, device=device)
    truth = [x]
    for _ in range(K):
        x = model.step(x, cfg.obs_every)
        truth.append(x)
    truth_t = torch.stack(truth)
    idx = torch.arange(0, cfg.n, cfg.obs_stride, device=device)
    H = torch.eye(cfg.n, dtype=torch.float64, device=device)[idx]
    R = cfg.obs_std**2 * torch.eye(len(idx), dtype=torch.float64, device=device)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    noise = cfg.obs_std * torch.randn(K, len(idx), generator=g, dtype=torch.float64).to(device)
    obs = truth_t[1:] @ H.T + noise
    pos = torch.arange(cfg.n, dtype=torch.float64, device=device)
    return Twin(cfg, truth_t, obs, H, R, periodic_distances(pos, pos[idx], float(cfg.n)))


def climatology(model: Lorenz96, seed: int, steps: int = 50_000, every: int = 5,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Climatological mean (n,) and covariance (n, n) from a free run of ``steps`` steps (sampled every
    ``every``) that is independent of the truth (its own ``seed``)."""
    x = model.on_attractor(seed, device=device)
    xs = []
    for _ in range(steps // every):
        x = model.step(x, every)
        xs.append(x)
    X = torch.stack(xs)
    return X.mean(0), torch.cov(X.T)


class Method(Protocol):
    """An analysis method for :func:`run_twin`: ``members`` (1 for deterministic methods), ``analyse``."""

    members: int

    def analyse(self, E: torch.Tensor, y: torch.Tensor, twin: Twin, generator: torch.Generator) -> torch.Tensor:
        """Forecast ensemble ``E`` (N, n), observations ``y`` (p,) -> analysis ensemble (N, n)."""
        ...

    def spread(self, E: torch.Tensor) -> float:
        """The analysis spread the method assumes: the ensemble's for ensembles, a static value otherwise."""
        ...


def ensemble_spread(E: torch.Tensor) -> float:
    """sqrt(mean_i var_i) of ``E`` (N, n), ddof 1."""
    return float(E.var(0, unbiased=True).mean().sqrt())


def mean_with_ci(series: np.ndarray) -> tuple[float, float]:
    """Time mean of ``series`` (K,) and the half-width of its 95 % confidence interval, the variance of the mean
    corrected for an AR(1) lag correlation a: var/K · (1 + 2/K Σ_{k<K} (K − k) a^k)."""
    x = np.asarray(series, dtype=float)
    K = len(x)
    mu = float(x.mean())
    if K <= 5 or not np.isfinite(mu):
        return mu, float("nan")
    d = x - mu
    var = float(d @ d) / K
    if var == 0:
        return mu, 0.0
    a = float(np.clip((d[1:] @ d[:-1]) / (K * var), 0.0, 0.999))
    c = ((K - 1) * a - K * a**2 + a ** (K + 1)) / (1 - a) ** 2
    return mu, 1.96 * math.sqrt(var / K * (1 + 2 / K * c))


@dataclass
class TwinResult:
    """Per scored cycle: ``error`` (K,), ``spread`` (K,); time means with 95 % half-widths; wall seconds per
    cycle for the whole cycle and for the analysis step alone; ``diverged``: a non-finite state stopped the run."""

    error: np.ndarray
    spread: np.ndarray
    rmse: float
    rmse_ci: float
    mean_spread: float
    s_per_cycle: float
    s_analysis: float
    diverged: bool = False
    extra: dict = field(default_factory=dict)


def run_twin(method: Method, twin: Twin, seed: int) -> TwinResult:
    """Cycle ``method`` through ``twin``: returns scores over the cycles after ``twin.config.spinup``."""
    cfg = twin.config
    dev = twin.truth.device
    model = cfg.model
    N = method.members
    g = torch.Generator(device="cpu").manual_seed(seed)
    gd = torch.Generator(device=dev).manual_seed(seed + 7)
    E = twin.truth[0] + cfg.init_std * torch.randn(N, cfg.n, generator=g, dtype=torch.float64).to(dev)
    forcing: float | torch.Tensor = cfg.forcing
    if cfg.member_forcing_std > 0:
        forcing = cfg.forcing + cfg.member_forcing_std * torch.randn(N, 1, generator=g,
                                                                     dtype=torch.float64).to(dev)
    K = cfg.spinup + cfg.cycles
    err = np.full(K, np.nan)
    spr = np.full(K, np.nan)
    t_an = 0.0
    t0 = time.perf_counter()
    diverged = False
    for k in range(K):
        E = model.step(E, cfg.obs_every, forcing)
        ta = time.perf_counter()
        E = method.analyse(E, twin.obs[k], twin, gd)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_an += time.perf_counter() - ta
        e = E.mean(0) - twin.truth[k + 1]
        err[k] = float((e * e).mean().sqrt())
        if not math.isfinite(err[k]):
            diverged = True
            break
        spr[k] = method.spread(E)
    wall = time.perf_counter() - t0
    done = k + 1
    s_err, s_spr = err[cfg.spinup:], spr[cfg.spinup:]
    rmse, ci = mean_with_ci(s_err) if not diverged else (float("inf"), float("nan"))
    return TwinResult(error=s_err, spread=s_spr, rmse=rmse, rmse_ci=ci,
                      mean_spread=float(np.nanmean(s_spr)) if not diverged else float("nan"),
                      s_per_cycle=wall / done, s_analysis=t_an / done, diverged=diverged)
