"""Finn's (2019) amortised analysis network x_a = f_θ(x_b, y, ε): its configuration and its training forward pass.

A stochastic network maps a background member x_b,m (n,), the observations y (p,) and noise ε_m ~ N(0, I_p) to
an analysis member; the ensemble is made by independent noise per member, like a stochastic EnKF (Finn 2019,
slides "Adversarial variational Bayes for DA" and "Used neural network": prescribed observation operator, linear
layers). Here the network also sees the background ensemble's statistics (the flow-dependent information Finn
lists as an open question), and its output is structured as a learned local stochastic Kalman update:

    x_a,m,i = x̄ + λ (x̃_m,i − x̄_i),   x̃_m,i = x_b,m,i + Σ_{|j| ≤ w/2} K_i,j d_m,i+j,
    d_m = Hᵀ1 ⊙ (Hᵀ(y + σ_o ε_m) − x_b,m)      (perturbed-observation innovations on the grid, ε_m centred)

with a fixed multiplicative inflation λ (``infl``; a learned per-variable factor made the cycled ensembles
collapse or blow up), where the gains K_i (w,) come from one MLP applied at every variable i
(Lorenz-96 is translation invariant) to the ``window`` neighbours of [x̄_b, log s_b, corr(x_i, x_{i+1}),
corr(x_i, x_{i+2}), Hᵀy, Hᵀ1, Hᵀ1 ⊙ (Hᵀy − x̄_b)] (standardised by the climatological mean 2.3 and standard
deviation 3.6). The MLP runs once per cycle on the ensemble statistics, the members only add a windowed
weighted sum: the analysis costs O(N n w) after an MLP over n rows, whatever N.

Trained by :func:`.amortised.train_amortised`; cycled by :class:`.amortised_inference.AmortisedMethod`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

CLIM_MEAN, CLIM_STD = 2.3, 3.6  # Lorenz-96, F = 8: per-variable climatological mean and standard deviation
CORR_LAGS = (1, 2)              # ensemble correlations corr(x_i, x_{i+j}) given to the network
FEATURES = 5 + len(CORR_LAGS)   # per-variable input channels of the gain MLP


@dataclass(frozen=True)
class AmortisedConfig:
    """Network size, data and training budget of the amortised analysis (``steps`` per round bound the
    training; ``max_minutes`` is only a safety stop, logged if hit)."""

    members: int = 40
    hidden: int = 64
    layers: int = 2                  # hidden layers of the local MLP
    window: int = 9                  # neighbours seen by, and gains of, each variable's analysis (odd)
    infl: float = 1.01               # multiplicative inflation of the analysis anomalies (chosen on truth seed 77)
    data_cycles: int = 3000          # simulated cycles per data round
    rounds: int = 1                  # 1: teacher data only; >1: then the network's own cycles (DAgger)
    steps: int = 1500                # gradient steps per round
    batch: int = 8                   # cycles per gradient step (each with all members)
    unroll: int = 1                  # cycles the network runs itself per training sample (analysis, forecast)
    lr: float = 2e-3
    max_minutes: float = 4.0
    seed: int = 0
    train_seed: int = 1000           # truths for training: train_seed, train_seed + 1, ...

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError(f"amortised ensemble size must be >= 2, got members={self.members}")
        if not self.infl > 0:
            raise ValueError(f"AmortisedConfig.infl must be > 0, got infl={self.infl}")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"AmortisedConfig.window must be odd and >= 1, got {self.window}")
        for name in ("unroll", "hidden", "layers", "rounds", "steps", "batch", "data_cycles"):
            if getattr(self, name) < 1:
                raise ValueError(f"AmortisedConfig.{name} must be >= 1, got {getattr(self, name)}")


class AnalysisNet(nn.Module):
    """f_θ(x_b, y, ε) for a fixed selection operator H (p, n) and observation error std σ_o (p,); see the
    module docstring."""

    def __init__(self, config: AmortisedConfig, H: torch.Tensor, obs_std: torch.Tensor):
        super().__init__()
        self.config = config
        p, n = H.shape
        if tuple(obs_std.shape) != (p,):
            raise ValueError(f"obs_std has shape {tuple(obs_std.shape)}; expected ({p},) for H of shape {(p, n)}")
        self.n, self.p = n, p
        self.register_buffer("H", H.detach().to(torch.float32).cpu().clone())
        self.register_buffer("obs_std", obs_std.detach().to(torch.float32).cpu().clone())
        self.register_buffer("mask", self.H.sum(0).clamp(max=1.0))
        w = config.window
        self.register_buffer("idx", (torch.arange(n)[:, None] + torch.arange(w)[None, :] - w // 2) % n)
        layers: list[nn.Module] = [nn.Linear(FEATURES * w, config.hidden), nn.GELU()]
        for _ in range(config.layers - 1):
            layers += [nn.Linear(config.hidden, config.hidden), nn.GELU()]
        out = nn.Linear(config.hidden, w)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(*layers, out)

    def gains(self, xb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Local gains K (B, n, w) from the ensemble ``xb`` (B, N, n) and the observations ``y`` (B, p)."""
        xs = (xb.to(torch.float32) - CLIM_MEAN) / CLIM_STD
        mean, std = xs.mean(1), xs.std(1)
        a = (xs - mean[:, None]) / std[:, None].clamp_min(1e-6)
        corr = [(a * a.roll(-j, -1)).mean(1) for j in CORR_LAGS]
        yg = (y.to(torch.float32) @ self.H - CLIM_MEAN) / CLIM_STD * self.mask
        mask = self.mask.expand_as(mean)
        logstd = std.clamp_min(1e-6).log()
        h = torch.stack([mean, logstd, *corr, yg, mask, (yg - mean) * mask], -1)   # (B, n, FEATURES)
        return self.mlp(h[:, self.idx].flatten(-2))                                 # (B, n, w)

    def forward(self, xb: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``xb`` (B, N, n), ``y`` (B, p), ``eps`` (B, N, p) -> analysis members (B, N, n) in xb's dtype."""
        K = self.gains(xb, y)
        eps = eps.to(torch.float32)
        eps = eps - eps.mean(1, keepdim=True)
        ypert = (y.to(torch.float32)[:, None] + self.obs_std * eps) @ self.H                # (B, N, n)
        d = (ypert - xb.to(torch.float32)) * self.mask
        xt = xb.to(torch.float32) + (d[..., self.idx] * K[:, None]).sum(-1)
        mu = xt.mean(1, keepdim=True)
        return (mu + self.config.infl * (xt - mu)).to(xb.dtype)

    def noise(self, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """ε (batch, N, p) ~ N(0, I) from ``generator``."""
        return torch.randn(batch, self.config.members, self.p, generator=generator, device=device)

    def save(self, path: str | Path) -> None:
        torch.save({"config": asdict(self.config), "H": self.H, "obs_std": self.obs_std,
                    "state": self.state_dict()}, path)


def load_net(path: str | Path, device: str | torch.device = "cpu") -> AnalysisNet:
    """A network written by :meth:`AnalysisNet.save` (``weights_only=True``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = AnalysisNet(AmortisedConfig(**blob["config"]), blob["H"], blob["obs_std"])
    net.load_state_dict(blob["state"])
    return net.to(device).eval()


