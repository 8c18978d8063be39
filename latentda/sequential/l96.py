"""The Lorenz (1996) model with N variables on a ring, integrated by the classical fourth-order Runge-Kutta scheme.

    dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F,   i = 0..N−1 periodic        (Lorenz 1996, eq. 1)

Units are model time units (1 MTU ≈ 5 atmospheric days); with F = 8 the largest Lyapunov exponent is ≈ 1.67 /MTU
(doubling time ≈ 0.42 MTU) and the climatological mean and variance per variable are ≈ 2.3 and ≈ 13. All states
are torch float64 tensors of shape (..., N): any leading dimensions (ensemble members, experiments) are batched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def tendency(x: torch.Tensor, forcing: float | torch.Tensor) -> torch.Tensor:
    """dx/dt of Lorenz-96, eq. (1) above; ``x`` (..., N), ``forcing`` a float or a tensor broadcasting to x
    (e.g. (M, 1) for one forcing per member)."""
    return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + forcing


def rk4_step(x: torch.Tensor, dt: float, forcing: float | torch.Tensor) -> torch.Tensor:
    """One classical RK4 step x(t) -> x(t + dt) of :func:`tendency`; ``x`` (..., N)."""
    k1 = tendency(x, forcing)
    k2 = tendency(x + 0.5 * dt * k1, forcing)
    k3 = tendency(x + 0.5 * dt * k2, forcing)
    k4 = tendency(x + dt * k3, forcing)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@dataclass(frozen=True)
class Lorenz96:
    """Lorenz-96 with ``n`` variables, forcing ``forcing``, RK4 time step ``dt`` (MTU)."""

    n: int = 40
    forcing: float = 8.0
    dt: float = 0.05

    def __post_init__(self) -> None:
        if self.n < 4:
            raise ValueError(f"Lorenz96 needs n >= 4 variables, got n={self.n}")
        if not self.dt > 0:
            raise ValueError(f"Lorenz96 time step must be > 0, got dt={self.dt}")

    def step(self, x: torch.Tensor, steps: int = 1, forcing: float | torch.Tensor | None = None) -> torch.Tensor:
        """Integrate ``x`` (..., n) forward by ``steps`` RK4 steps; ``forcing`` overrides F (float or tensor
        broadcasting to x, e.g. (M, 1) for perturbed-forcing ensembles)."""
        if x.shape[-1] != self.n:
            raise ValueError(f"state has {x.shape[-1]} variables, the model has n={self.n}")
        f = self.forcing if forcing is None else forcing
        for _ in range(steps):
            x = rk4_step(x, self.dt, f)
        return x

    def trajectory(self, x0: torch.Tensor, steps: int) -> torch.Tensor:
        """States x0, x1, ..., x_steps: (steps + 1, ..., n)."""
        out = [x0]
        x = x0
        for _ in range(steps):
            x = rk4_step(x, self.dt, self.forcing)
            out.append(x)
        return torch.stack(out)

    def on_attractor(self, seed: int, spinup_steps: int = 2000, device: str | torch.device = "cpu") -> torch.Tensor:
        """A state (n,) on the attractor: F plus a seeded N(0, 0.01) perturbation, run ``spinup_steps`` steps."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = self.forcing + 0.1 * torch.randn(self.n, generator=g, dtype=torch.float64)
        return self.step(x.to(device), spinup_steps)


def energy(x: torch.Tensor) -> torch.Tensor:
    """Mean kinetic-like energy ½ mean_i x_i² over the last dimension: (...,)."""
    return 0.5 * (x * x).mean(-1)


def leading_lyapunov(model: Lorenz96, x0: torch.Tensor, steps: int = 4000, eps: float = 1e-8,
                     seed: int = 0) -> float:
    """Largest Lyapunov exponent (1/MTU) by Benettin's renormalised twin trajectory from ``x0`` (n,)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    d = torch.randn(model.n, generator=g, dtype=torch.float64).to(x0.device)
    x, y = x0, x0 + eps * d / d.norm()
    total = 0.0
    for _ in range(steps):
        x, y = model.step(x), model.step(y)
        dist = (y - x).norm()
        total += float(torch.log(dist / eps))
        y = x + (y - x) * (eps / dist)
    return total / (steps * model.dt)
