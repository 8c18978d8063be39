"""Distance-based covariance localisation: periodic distances and the Gaspari-Cohn taper.

Radius convention of DAPPER (``dapper.tools.localization.dist2coeff``): the Gaspari & Cohn (1999, eq. 4.10)
fifth-order piecewise rational function with half-width c = radius · sqrt(10/3), so that the taper equals
exp(−½) at distance = radius (like a Gaussian of standard deviation ``radius``) and vanishes beyond 2c.
"""
from __future__ import annotations

import math

import torch

from .checks import check_radius

GC_SCALE = math.sqrt(10.0 / 3.0)  # DAPPER rounds it to 1.82


def periodic_distances(state_pos: torch.Tensor, obs_pos: torch.Tensor, period: float) -> torch.Tensor:
    """Distance on a ring of length ``period`` between state positions (n,) and observation positions (p,):
    (n, p), in grid units."""
    d = (state_pos[:, None] - obs_pos[None, :]).abs() % period
    return torch.minimum(d, period - d)


def gaspari_cohn(dist: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaspari-Cohn (1999) eq. 4.10 taper of ``dist`` (any shape, same units as ``radius``); radius = inf -> 1."""
    check_radius(radius)
    if math.isinf(radius):
        return torch.ones_like(dist)
    r = dist / (radius * GC_SCALE)
    inner = 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 1 / 2 * r**4 - 1 / 4 * r**5
    rs = torch.where(r > 0, r, torch.ones_like(r))  # avoid 1/0 in the unused branch
    outer = 4 - 5 * rs + 5 / 3 * rs**2 + 5 / 8 * rs**3 - 1 / 2 * rs**4 + 1 / 12 * rs**5 - 2 / (3 * rs)
    return torch.where(r <= 1, inner, torch.where(r <= 2, outer, torch.zeros_like(r)))
