"""The latent cost function, batched over ensemble members.

For member m with prior draw z_p,m ∈ R^d and perturbed observations ỹ_m ∈ R^n (physical units)::

    J_m(z) = ½ ‖z − z_p,m‖² + ½ (ỹ_m − H g(z))ᵀ R⁻¹ (ỹ_m − H g(z))
           = ½ ‖z − z_p,m‖² + ½ ‖L⁻¹ (ỹ_m − H g(z))‖²,      R = L Lᵀ

with g(z) = prior.to_physical(prior.decode(z), time) = decode(z) · s_clim + m_clim (C, nlat, nlon) and H the
bilinear :class:`~latentda.obs.operator.PointOperator` reading the channel of each observation's variable. With a
diagonal R = diag(σ²) this is the issue's ``½‖z − z_p‖² + ½ Σ ((y + ε − H(g(z))) / σ)²``; with representation error
R = R_o + Cov(H eta) is a full matrix and L its Cholesky factor (see :mod:`latentda.da.ensemble`), or, with many
observations, a Woodbury form whose whitening is signed, rᵀ R⁻¹ r = ‖u₊‖² − ‖u₋‖²
(:mod:`latentda.da.obs_covariance`).
"""
from __future__ import annotations

import copy

import torch

from ..obs.operator import PointOperator
from .obs_covariance import CholeskyCovariance, DiagonalCovariance, Whitened, signed_inner, signed_quad

#: Forward-difference step and perturbed latents per decoder batch of the Gauss-Newton Jacobian
#: (:meth:`LatentCost.linearise`; the window cost's members' linearisation uses the same)
FD_STEP, FD_CHUNK = 1e-2, 32


class LatentCost:
    """J(z) for a batch of members, on the prior's device.

    ``z_prior``: (M, d) prior draws; ``target``: (M, n) perturbed observations ỹ_m (physical units);
    ``mean``/``std``: (C, nlat, nlon) climatology of the day; exactly one of ``sigma`` (n,) for a diagonal R,
    ``chol`` (n, n) lower Cholesky factor of a full R, or ``covariance``: an object of
    :mod:`latentda.da.obs_covariance` (``whiten(r)`` -> :class:`Whitened`, ``solve(r)`` -> R⁻¹ r).

    Precision: z, the decoder and H g(z) are float32; the residual, its whitening and the sums of J are float64
    (``target``, ``sigma`` and ``chol`` are kept as float64). A float32 triangular solve and sum over n ~ 10³
    observations would leave J with round-off of order 10⁻²: enough to stall the line searches near the minimum.
    J and ∇J are then float64 (b,) and float32 (b, d).
    """

    def __init__(self, prior, operator: PointOperator, mean: torch.Tensor, std: torch.Tensor,
                 z_prior: torch.Tensor, target: torch.Tensor, *, sigma: torch.Tensor | None = None,
                 chol: torch.Tensor | None = None, covariance=None) -> None:
        if sum(x is not None for x in (sigma, chol, covariance)) != 1:
            raise ValueError("give exactly one of sigma (diagonal R), chol (Cholesky factor of R) or covariance")
        if target.shape != (z_prior.shape[0], operator.nobs):
            raise ValueError(f"target must be (members, nobs) = ({z_prior.shape[0]}, {operator.nobs}), "
                             f"got {tuple(target.shape)}")
        self.prior, self.operator = prior, operator
        self.mean, self.std = mean, std
        self.z_prior, self.target = z_prior, target.double()
        self.sigma = None if sigma is None else sigma.double()
        self.chol = None if chol is None else chol.double()
        if covariance is None:
            covariance = DiagonalCovariance(sigma) if sigma is not None else CholeskyCovariance(chol)
        self.covariance = covariance

    def with_members(self, z_prior: torch.Tensor, target: torch.Tensor) -> "LatentCost":
        """The same cost (generator, operator, R) for other prior draws ``z_prior`` (b, d) and targets (b, n)."""
        if target.shape != (z_prior.shape[0], self.operator.nobs):
            raise ValueError(f"target must be (members, nobs) = ({z_prior.shape[0]}, {self.operator.nobs}), "
                             f"got {tuple(target.shape)}")
        out = copy.copy(self)
        out.z_prior, out.target = z_prior, target.double()
        return out

    def fields(self, z: torch.Tensor) -> torch.Tensor:
        """g(z): (B, d) -> (B, C, nlat, nlon) physical units."""
        return self.prior.decode(z) * self.std + self.mean

    def observe(self, z: torch.Tensor) -> torch.Tensor:
        """H g(z): (B, d) -> (B, n)."""
        return self.operator.apply_torch(self.fields(z))

    def observed(self, z: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """H g(z) (B, n) given ``fields`` = g(z) (B, C, nlat, nlon) already computed (a partially linearised cost
        overrides this to use its own model of H g)."""
        return self.operator.apply_torch(fields)

    def member_cost(self, z_hat: torch.Tensor) -> "LatentCost":
        """The cost the members are solved with once the posterior mode ``z_hat`` (d,) and its Gauss-Newton
        linearisation (:meth:`linearise`) are known: this cost itself (a window cost may linearise part of it)."""
        return self

    def whiten(self, r: torch.Tensor) -> torch.Tensor | Whitened:
        """L⁻¹ r for residuals r (B, n) -> (B, n), float64; a signed :class:`Whitened` for a Woodbury R."""
        u = self.covariance.whiten(r)
        return u.plus if u.minus is None else u

    def __call__(self, z: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """J_m(z_m) for members ``idx`` (default all): z (b, d) -> (b,)."""
        if idx is None:
            idx = torch.arange(z.shape[0], device=z.device)
        u = self.covariance.whiten(self.target[idx] - self.observe(z).double())
        return 0.5 * ((z - self.z_prior[idx]).double() ** 2).sum(-1) + 0.5 * signed_quad(u)

    def linearise(self, z0: torch.Tensor | None = None, step: float = FD_STEP,
                  chunk: int = FD_CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | Whitened]:
        """Gauss-Newton linearisation of the observation term at ``z0`` (d,) (default 0, the prior mean).

        Returns ``P = (I + Jᵀ R⁻¹ J)⁻¹`` (d, d) float32, ``H g(z0)`` (n,) float64 and ``W = (L⁻¹ J)ᵀ`` (d, n)
        float64 (a signed :class:`Whitened` for a Woodbury R), with J = ∂(H g)/∂z at z0 from :meth:`jacobian_t`
        (forward differences of step ``step``: d + 1 decoder evaluations, no gradients, ``chunk`` perturbed latents
        per decoder batch: 32 is the fastest on CPUs; the O(step) error is immaterial for a preconditioner and a
        warm start). P is the inverse
        Gauss-Newton Hessian (at a mode: the Laplace posterior covariance of Böhm & Seljak's MAP + Laplace), shared
        by all members, whose costs differ only by z_p,m and ỹ_m.
        """
        d = self.z_prior.shape[1]
        dev = self.z_prior.device
        z0 = torch.zeros(d, device=dev) if z0 is None else z0.reshape(d).to(dev, torch.float32)
        with torch.no_grad():
            hz0, jt = self.jacobian_t(z0, step, chunk)
            w = self.covariance.whiten(jt)  # rows: (L⁻¹ J e_i)ᵀ -> (d, n)
        a = torch.eye(d, dtype=torch.float64, device=dev) + signed_inner(w, w)
        p = torch.linalg.inv(a)
        return (0.5 * (p + p.T)).to(torch.float32), hz0, (w.plus if w.minus is None else w)

    def jacobian_t(self, z0: torch.Tensor, step: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H g(z0) (n,) float64, Jᵀ (d, n)) with J = ∂(H g)/∂z at ``z0`` (d,) by forward differences (no grad)."""
        d = z0.shape[0]
        Z = z0 + torch.eye(d, device=z0.device) * step
        a0 = self.prior.decode(z0[None])
        hz0 = self.operator.apply_torch(a0 * self.std + self.mean)[0].double()
        # differences of standardised anomalies (no cancellation of the climatological mean), then H(s ⊙ ·)
        jt = torch.cat([self.operator.apply_torch((self.prior.decode(Z[k:k + chunk]) - a0) * self.std)
                        for k in range(0, d, chunk)]) / step  # Jᵀ (d, n)
        return hz0, jt

    def gauss_newton_preconditioner(self, z0: torch.Tensor | None = None, step: float = 1e-2) -> torch.Tensor:
        """P = (I + Jᵀ R⁻¹ J)⁻¹ (d, d) at ``z0`` (default 0); see :meth:`linearise`."""
        return self.linearise(z0, step)[0]

    def linearised_solution(self, z_hat: torch.Tensor, P: torch.Tensor, hz_hat: torch.Tensor,
                            w: torch.Tensor | Whitened) -> torch.Tensor:
        """Minimisers (M, d) of every member's cost with H g linearised at ``z_hat``::

            z_m = ẑ + P [(z_p,m − ẑ) + Jᵀ R⁻¹ (ỹ_m − H g(ẑ))]

        (``P``, ``hz_hat``, ``w`` from :meth:`linearise` at ẑ): exact for a linear decoder, a warm start otherwise.
        """
        u = self.covariance.whiten(self.target - hz_hat)  # (M, n) float64
        w = w if isinstance(w, Whitened) else Whitened(w, None)
        rhs = (self.z_prior - z_hat).double() + signed_inner(u, w)
        return (z_hat.double() + rhs @ P.double()).to(torch.float32)

    def value_and_grad(self, z: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(J (b,), ∇J (b, d)) by autograd; members are independent so ∇ Σ_m J_m gives every ∇J_m at once."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            f = self(zz, idx)
            (g,) = torch.autograd.grad(f.sum(), zz)
        return f.detach(), g.detach()
