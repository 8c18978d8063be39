"""Posterior samplers in latent space besides randomise-then-optimise: ``laplace`` and ``langevin``
(``latentda.assimilate(..., sampler=...)``), batched over members, deterministic from the seed.

Both sample the latent posterior of one day (z the VAE latent, or u the flow prior's base variable)::

    U(z) = −log p(z | y) + const = ½‖z‖² + ½ (y − H g(z))ᵀ R⁻¹ (y − H g(z)),    R = R_o + G Gᵀ

(:class:`latentda.da.cost.LatentCost` with z_p = 0 and the unperturbed y), then the representation error of each
member is updated exactly as for RTO (:func:`latentda.da.rto.analyse_members`).

``laplace`` (Böhm & Seljak's MAP + Laplace): the MAP ẑ = argmin U (L-BFGS, the RTO solver), the Gauss-Newton
Hessian there A = I + Jᵀ R⁻¹ J (J = ∂(H g)/∂z at ẑ by forward differences), members z_m = ẑ + L ξ_m with
L Lᵀ = A⁻¹ and ξ_m the members' latent draws (stream STREAM_LATENT).

``langevin``: Metropolis-adjusted Langevin (MALA, Roberts & Tweedie 1996) preconditioned by the Laplace covariance
P = A⁻¹ = L Lᵀ; every member is one chain, started at ẑ (``langevin_init="map"``) or at its Laplace draw
ẑ + L ξ_m (``"laplace"``). Proposal and acceptance (one line each)::

    z' = z − (h/2) P ∇U(z) + √h L ξ,        log α = U(z) − U(z') + log q(z | z') − log q(z' | z),
    log q(b | a) = −‖L⁻¹(b − a + (h/2) P ∇U(a))‖² / (2h)

During ``langevin_burnin`` steps the step size adapts by Robbins–Monro, log h += (ᾱ − α*) / √(t + 1), ᾱ the
members' mean acceptance probability and α* ``langevin_target_accept`` (0.574, optimal for MALA); then it is
fixed for ``langevin_steps`` steps and each member is its chain's last state. Diagnostics: ``acceptance_rate``
(after the burn-in), ``ess`` (effective sample size of the post-burn-in traces of all chains together, the
minimum over latent coordinates: Geyer's initial positive sequence on the chain-averaged autocorrelation) and
``step_size`` h. Random numbers: ``SeedSequence([seed, day ordinal, STREAM_LANGEVIN])``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .cost import LatentCost
from .options import AssimilationOptions
from .solver import SolverResult, minimize_batched

__all__ = ["posterior_mode", "laplace_members", "langevin_members", "sample_members", "effective_sample_size",
           "STREAM_LANGEVIN"]

STREAM_LANGEVIN = 4  # after latentda.da.ensemble's STREAM_LATENT, STREAM_REPR, STREAM_OBS, STREAM_MODES



def posterior_mode(cost: LatentCost, y64: np.ndarray, opts: AssimilationOptions) -> tuple[torch.Tensor, SolverResult]:
    """The MAP ẑ (d,) of the unperturbed cost (z_p = 0, ỹ = ``y64`` (n,)): one single-member L-BFGS solve."""
    dev = cost.z_prior.device
    zero = torch.zeros((1, cost.z_prior.shape[1]), device=dev)
    cost0 = cost.with_members(zero, torch.as_tensor(y64[None], device=dev))
    res = minimize_batched(cost0.value_and_grad, zero, **opts.solver())
    return res.z[0], res


def _laplace(cost: LatentCost, y64: np.ndarray, opts: AssimilationOptions):
    """(ẑ (d,), P = A⁻¹ (d, d) float64, L = chol(P) float64, MAP solver result)."""
    z_hat, res = posterior_mode(cost, y64, opts)
    P = cost.linearise(z_hat)[0].double()
    if not bool(torch.isfinite(P).all()):
        raise FloatingPointError("the Gauss-Newton Hessian at the MAP is not finite; the Laplace approximation "
                                 "and the Langevin preconditioner need it")
    return z_hat, P, torch.linalg.cholesky(0.5 * (P + P.T)), res


def _potential(cost: LatentCost, y64: np.ndarray, members: int) -> LatentCost:
    """U(z) for ``members`` chains: the cost with z_p = 0 and the unperturbed observations."""
    dev = cost.z_prior.device
    target = torch.as_tensor(np.broadcast_to(y64, (members, y64.size)).copy(), device=dev)
    return cost.with_members(torch.zeros((members, cost.z_prior.shape[1]), device=dev), target)


def laplace_members(cost: LatentCost, y64: np.ndarray, opts: AssimilationOptions) -> tuple[SolverResult, dict]:
    """Members z_m = ẑ + L ξ_m (module docstring), ξ_m = ``cost.z_prior``; (result, extra diagnostics {})."""
    z_hat, _P, L, res0 = _laplace(cost, y64, opts)
    xi = cost.z_prior.double()
    z = (z_hat.double() + xi @ L.T).to(torch.float32)
    M = z.shape[0]
    with torch.no_grad():
        u = _potential(cost, y64, M)(z)
    out = SolverResult(z=z, cost=u, grad_norm=torch.full((M,), float(res0.grad_norm[0])),
                       iterations=np.full(M, int(res0.iterations[0])), converged=np.full(M, bool(res0.converged[0])),
                       evaluations=res0.evaluations)
    return out, {}


def langevin_members(cost: LatentCost, y64: np.ndarray, opts: AssimilationOptions, seed: int,
                     ordinal: int) -> tuple[SolverResult, dict]:
    """One preconditioned MALA chain per member from the MAP (module docstring); (result, diagnostics
    {acceptance_rate, ess, step_size})."""
    steps, burnin, target_acc = int(opts.langevin_steps), int(opts.langevin_burnin), opts.langevin_target_accept
    if steps < 1:
        raise ValueError(f"langevin_steps={steps} must be >= 1")
    z_hat, P, L, res0 = _laplace(cost, y64, opts)
    M, d = cost.z_prior.shape
    dev = cost.z_prior.device
    pot = _potential(cost, y64, M)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(ordinal), STREAM_LANGEVIN])))
    z = z_hat.double().expand(M, d).clone()
    if opts.langevin_init == "laplace":
        z = z + cost.z_prior.double() @ L.T
    u, g = pot.value_and_grad(z.float())
    u, g = u.double(), g.double()
    log_h = math.log(min(1.0, 1.65 ** 2 / d ** (1.0 / 3.0)))
    trace = np.empty((steps, M, d), dtype=np.float32)
    accepted, evaluations = 0.0, res0.evaluations + 1

    def mean_of(zz: torch.Tensor, gg: torch.Tensor, h: float) -> torch.Tensor:
        return zz - 0.5 * h * gg @ P

    def log_q(to: torch.Tensor, mu: torch.Tensor, h: float) -> torch.Tensor:
        r = torch.linalg.solve_triangular(L, (to - mu).T, upper=False).T
        return -(r * r).sum(-1) / (2.0 * h)

    for t in range(burnin + steps):
        h = math.exp(log_h)
        xi = torch.as_tensor(rng.standard_normal((M, d)), device=dev)
        log_unif = torch.as_tensor(np.log(rng.uniform(size=M)), device=dev)
        mu = mean_of(z, g, h)
        z_new = mu + math.sqrt(h) * xi @ L.T
        u_new, g_new = pot.value_and_grad(z_new.float())
        u_new, g_new = u_new.double(), g_new.double()
        evaluations += 1
        log_alpha = u - u_new + log_q(z, mean_of(z_new, g_new, h), h) - log_q(z_new, mu, h)
        log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, torch.full_like(log_alpha, -math.inf))
        accept = log_unif < log_alpha
        z = torch.where(accept[:, None], z_new, z)
        u = torch.where(accept, u_new, u)
        g = torch.where(accept[:, None], g_new, g)
        if t < burnin:
            mean_alpha = float(torch.exp(log_alpha.clamp(max=0.0)).mean())
            log_h += (mean_alpha - target_acc) / math.sqrt(t + 1.0)
        else:
            accepted += float(accept.double().mean())
            trace[t - burnin] = z.float().cpu().numpy()
    zf = z.to(torch.float32)
    out = SolverResult(z=zf, cost=u, grad_norm=g.norm(dim=-1), iterations=np.full(M, burnin + steps),
                       converged=np.full(M, bool(res0.converged[0])), evaluations=evaluations)
    extra = {"acceptance_rate": accepted / steps, "ess": float(effective_sample_size(trace).min()),
             "step_size": math.exp(log_h)}
    return out, extra


def sample_members(cost: LatentCost, y64: np.ndarray, opts: AssimilationOptions, seed: int, ordinal: int,
                   extra: dict | None = None) -> tuple[SolverResult, int]:
    """The members of ``opts.sampler`` ("laplace" or "langevin") and the MAP solve's iterations; the sampler's
    diagnostics are added to ``extra``."""
    if opts.sampler == "laplace":
        res, info = laplace_members(cost, y64, opts)
    elif opts.sampler == "langevin":
        res, info = langevin_members(cost, y64, opts, seed, ordinal)
    else:
        raise ValueError(f"sampler={opts.sampler!r}: sample_members draws 'laplace' or 'langevin' members")
    if extra is not None:
        extra.update(info)
    return res, int(res.iterations[0])


def sampler_attrs(opts: AssimilationOptions) -> dict:
    """Analysis attributes of a non-default sampler ({} for "rto": its analyses keep their attributes)."""
    if opts.sampler == "rto":
        return {}
    if opts.sampler == "langevin":
        return {"sampler": "langevin", "langevin_steps": int(opts.langevin_steps),
                "langevin_burnin": int(opts.langevin_burnin), "langevin_init": opts.langevin_init}
    return {"sampler": opts.sampler}


def effective_sample_size(trace: np.ndarray) -> np.ndarray:
    """ESS (d,) of ``trace`` (N steps, M chains, d coordinates), all chains together: N M / (1 + 2 Σ_t ρ_t), ρ_t
    the chain-averaged autocorrelation at lag t, summed over Geyer's initial positive sequence (pairs
    ρ_{2k} + ρ_{2k+1} > 0). A chain that does not move gives ESS 0 (it carries no information about the spread)."""
    x = np.asarray(trace, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"trace must be (steps >= 2, chains, dims), got shape {x.shape}")
    N, M, d = x.shape
    xc = x - x.mean(axis=0, keepdims=True)
    nfft = 1 << (2 * N - 1).bit_length()
    f = np.fft.rfft(xc, n=nfft, axis=0)
    acov = np.fft.irfft(f * np.conj(f), n=nfft, axis=0)[:N] / N  # (N, M, d), lag 0 .. N-1
    within = acov[0].mean(axis=0)  # mean within-chain variance (d,)
    var = within * (N - 1) / N + (x.mean(axis=0).var(axis=0, ddof=1) if M > 1 else 0.0)
    ess = np.zeros(d)
    for j in range(d):
        if not var[j] > 0:
            continue
        rho = 1.0 - (within[j] - acov[:, :, j].mean(axis=1)) / var[j]  # (N,), rho[0] = 1
        tau, k = -1.0, 0
        while 2 * k + 1 < N:
            pair = rho[2 * k] + rho[2 * k + 1]
            if pair <= 0:
                break
            tau += 2.0 * pair
            k += 1
        ess[j] = N * M / max(tau, 1.0 / math.log10(max(N * M, 10)))
    return ess
