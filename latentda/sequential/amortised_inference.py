"""Cycling Finn's amortised analysis network: the same map as :meth:`.amortised_net.AnalysisNet.forward`,
rewritten for one ensemble per call with as few tensor operations as the algebra allows.

An analysis on Lorenz-96 (N = 40, n = p = 40) is a few hundred thousand flops; what it costs on a CPU is the
fixed overhead of each torch operation (a few microseconds), so the forward pass of the training code (written
for batches and autograd) is re-expressed here, in the dtype of the ensemble (float64), with everything that does
not depend on the cycle computed once. The MLP runs in the dtype it was trained in (float32: half the time of
float64 at these sizes); the ensemble statistics and the update run in the ensemble's dtype (float64):

* the feature standardisation h = raw ⊙ scale + shift is folded into the first layer:
  W₁ h_i + b₁ = (W₁ diag(scale)) raw_i + (W₁ shift_i + b₁), a per-variable bias (n, hidden);
* the ensemble statistics come from one product C = Aᵀ A (n, n) of the anomalies A = E − x̄ (N, n):
  s_i = sqrt(C_ii / (N − 1)), corr(x_i, x_{i+j}) = C_{i,i+j} / (N s_i s_{i+j});
* the windowed gain sum Σ_{|j| ≤ w/2} K_i,j d_m,i+j is one matrix product d G with G (n, n), G_{i+j,i} = K_i,j;
* the masked perturbed-observation innovation d_m = Hᵀ1 ⊙ (Hᵀ(y + σ_o ε_m) − x_b,m) is
  (y + σ_o ε_m) H_m − Hᵀ1 ⊙ x_b,m with H_m = H diag(Hᵀ1) (one fused multiply-add and one matrix product);
* inflation x̄ + λ (x̃_m − x̄) is one ``lerp``.

The result equals the training forward pass up to rounding (float64 here, float32 there; a test checks it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .amortised_net import CLIM_MEAN, CLIM_STD, CORR_LAGS, FEATURES, AnalysisNet
from .checks import check_ensemble
from .twin import Twin, ensemble_spread


class AnalysisPlan:
    """The map of a trained :class:`.amortised_net.AnalysisNet` for one ensemble of ``dtype`` (the state's),
    its weights copied (frozen) on the net's device; see the module docstring for the algebra. Build it after
    training: later changes to the net's weights are not seen."""

    def __init__(self, net: AnalysisNet, dtype: torch.dtype = torch.float64):
        mask = net.mask
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"AnalysisPlan needs a selection operator H (each variable observed 0 or 1 times); "
                             f"got column sums {net.H.sum(0).tolist()}")
        lin = [m for m in net.mlp if isinstance(m, nn.Linear)]
        if len(lin) != net.config.layers + 1 or any(
                not isinstance(m, (nn.Linear, nn.GELU)) or (isinstance(m, nn.GELU) and m.approximate != "none")
                for m in net.mlp):
            raise ValueError(f"AnalysisPlan expects Linear/GELU layers as built by AnalysisNet, got {net.mlp}")
        cfg = net.config
        n, w, L = net.n, cfg.window, len(CORR_LAGS)
        dev = net.H.device

        self.dtype, self.mlp_dtype = dtype, lin[0].weight.dtype

        def cast(t: torch.Tensor, to: torch.dtype = dtype) -> torch.Tensor:
            return t.detach().to(dtype=to, device=dev).clone()

        self.n, self.p, self.window, self.infl = n, net.p, w, cfg.infl
        self.mask = cast(mask)                                             # (n,) Hᵀ1
        self.Hm = cast(net.H * mask)                                       # (p, n) H diag(Hᵀ1)
        self.sigma_Hm = cast(net.obs_std[:, None] * net.H * mask)          # (p, n) diag(σ_o) H diag(Hᵀ1)
        idx = net.idx.to(dev)                                              # (n, w) window neighbours (periodic)
        self.idx = idx
        i = torch.arange(n, device=dev)
        lags = torch.tensor((0, *CORR_LAGS), device=dev)
        self.cov_pos = (i[:, None] * n + (i[:, None] + lags) % n)          # (n, 1 + L) flat positions in C
        self.lag_idx = (i[:, None] + torch.tensor(CORR_LAGS, device=dev)) % n  # (n, L)
        self.gain_pos = (idx * n + i[:, None]).reshape(-1)                 # (n w,) flat positions G_{i+j, i}
        self.std_floor = 1e-6 * CLIM_STD                                   # the net clamps the standardised std
        # channels of the net's features: [x̄, log s, corr_1..corr_L, Hᵀy, Hᵀ1, Hᵀ1 ⊙ (Hᵀy − x̄)], standardised;
        # raw channels computed per cycle: all but the constant Hᵀ1, unstandardised
        keep = [0, 1, *range(2, 2 + L), 2 + L, 4 + L]
        # corr's 1/N is applied per call (N is the ensemble's)
        scale = torch.tensor([1 / CLIM_STD, 1.0, *[1.0] * L, 1 / CLIM_STD, 1 / CLIM_STD], dtype=torch.float64,
                             device=dev)
        shift = torch.zeros(n, FEATURES, dtype=torch.float64, device=dev)
        shift[:, 0] = -CLIM_MEAN / CLIM_STD
        shift[:, 1] = -math.log(CLIM_STD)
        shift[:, 2 + L] = -CLIM_MEAN / CLIM_STD * mask.double()
        shift[:, 3 + L] = mask.double()
        W1 = lin[0].weight.detach().double().reshape(-1, w, FEATURES)     # (hidden, w, FEATURES)
        b1 = lin[0].bias.detach().double() + torch.einsum("hkc,nkc->nh", W1, shift[idx])  # (n, hidden)
        self.W1t = cast((W1[:, :, keep] * scale).reshape(W1.shape[0], -1).T, self.mlp_dtype)  # (w (F − 1), hidden)
        self.b1 = cast(b1, self.mlp_dtype)
        self.layers = [(cast(m.weight.T, self.mlp_dtype), cast(m.bias, self.mlp_dtype)) for m in lin[1:]]

    def __call__(self, E: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Analysis members (N, n) from the forecast ensemble ``E`` (N, n), observations ``y`` (p,) and noise
        ``eps`` (N, p) ~ N(0, I), all in the plan's dtype and device."""
        N, n = E.shape
        mean = E.mean(0)
        A = E - mean
        c = (A.T @ A).view(-1)[self.cov_pos]                                  # (n, 1 + L): C_ii, C_i,i+j
        s = c[:, 0].mul(1.0 / (N - 1)).sqrt_().clamp_min_(self.std_floor)     # (n,) member std
        corr = c[:, 1:] / (s[self.lag_idx] * s[:, None]).mul_(N)              # (n, L)
        yH = y @ self.Hm                                                      # (n,) Hᵀy on observed variables
        raw = torch.cat([mean[:, None], s.log()[:, None], corr, yH[:, None],
                         ((yH - mean) * self.mask)[:, None]], 1)              # (n, FEATURES − 1)
        h = torch.addmm(self.b1, raw[self.idx].view(n, -1).to(self.mlp_dtype), self.W1t)
        for Wt, b in self.layers:
            h = torch.addmm(b, F.gelu(h), Wt)                                 # last: gains K (n, w)
        G = torch.zeros(n * n, dtype=E.dtype, device=E.device).index_add_(0, self.gain_pos, h.view(-1).to(E.dtype))
        eps = eps - eps.mean(0)
        d = torch.addmm(torch.addcmul(yH, E, self.mask, value=-1.0), eps, self.sigma_Hm)  # (N, n) innovations
        xt = torch.addmm(E, d, G.view(n, n))
        return torch.lerp(xt.mean(0), xt, self.infl)


@dataclass
class AmortisedMethod:
    """Cycling wrapper for :func:`.twin.run_twin`: one pass of the network per cycle, fresh noise per member
    ε (N, p) ~ N(0, I) drawn from the run's generator as :meth:`.amortised_net.AnalysisNet.noise` draws it
    (float32: a quarter of the time of a float64 draw here). The weights are frozen into an
    :class:`AnalysisPlan` when the method is made."""

    net: AnalysisNet
    plan: AnalysisPlan = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.plan = AnalysisPlan(self.net)

    @property
    def members(self) -> int:
        return self.net.config.members

    def analyse(self, E, y, twin: Twin, generator):
        check_ensemble(E)
        if E.dtype != self.plan.dtype:
            raise ValueError(f"AmortisedMethod analyses {self.plan.dtype} ensembles, got dtype {E.dtype}")
        with torch.no_grad():
            eps = torch.randn(E.shape[0], self.plan.p, generator=generator, device=E.device)
            return self.plan(E, y, eps.to(E.dtype))

    def spread(self, E) -> float:
        return ensemble_spread(E)
