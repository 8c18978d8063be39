"""Training of Finn's (2019) amortised analysis network (:mod:`.amortised_net`) on simulated cycles.

Loss (instead of Finn's adversarial AVB, unstable by his own account): the fair ensemble CRPS of the analysis
members against the truth, averaged over variables and cycles,
    CRPS_fair = 1/N Σ_m |x_a,m − x_t| − 1/(2N(N−1)) Σ_{m,m'} |x_a,m − x_a,m'|,
a proper score whose minimiser makes the members exchangeable draws from p(x_t | inputs): calibrated spread.
Training data are simulated cycles on truths of other seeds than the benchmark's: round 1 the forecasts of a
teacher LETKF, later rounds the forecasts of the network cycling itself (DAgger). Each training sample starts
from a recorded forecast ensemble and runs the network itself for ``unroll`` cycles (analysis, RK4 forecast of
the members at the setup's forcing, next analysis, ...), the loss averaged over those analyses and
backpropagated through the forecasts, so the network is trained on the backgrounds it produces.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .amortised_inference import AmortisedMethod
from .amortised_net import CLIM_MEAN, CLIM_STD, AmortisedConfig, AnalysisNet, load_net
from .twin import TwinConfig, make_twin, run_twin

__all__ = ["CLIM_MEAN", "CLIM_STD", "AmortisedConfig", "AmortisedMethod", "AnalysisNet", "fair_crps", "load_net",
           "simulate_cycles", "train_amortised"]


def fair_crps(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean fair ensemble CRPS of ``members`` (B, N, n) against ``truth`` (B, n) (formula in the module doc)."""
    N = members.shape[1]
    skill = (members - truth[:, None]).abs().mean(1)
    pair = (members[:, :, None] - members[:, None, :]).abs().sum((1, 2)) / (2 * N * (N - 1))
    return (skill - pair).mean()


@dataclass
class _Recorder:
    """Wraps a method and keeps the forecast ensembles it was given."""

    inner: object
    forecasts: list

    @property
    def members(self) -> int:
        return self.inner.members

    def analyse(self, E, y, twin, generator):
        self.forecasts.append(E.detach().clone())
        return self.inner.analyse(E, y, twin, generator)

    def spread(self, E) -> float:
        return self.inner.spread(E)


def simulate_cycles(method, cfg: TwinConfig, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cycle ``method`` on the twin ``cfg``: forecasts (K, N, n), observations (K, p), truth (K, n)."""
    twin = make_twin(cfg, device=device)
    rec = _Recorder(method, [])
    run_twin(rec, twin, seed=cfg.seed + 5)
    K = len(rec.forecasts)
    return torch.stack(rec.forecasts), twin.obs[:K], twin.truth[1:K + 1]


def train_amortised(setup: TwinConfig, config: AmortisedConfig = AmortisedConfig(), teacher=None,
                    device: str | torch.device = "cpu",
                    log: Callable[[str], None] = print) -> tuple[AnalysisNet, dict]:
    """Train :class:`AnalysisNet` on simulated cycles of ``setup`` (truth seeds ``config.train_seed + r``).

    ``teacher``: the method whose forecasts make round 1's data (default LETKF, N = ``config.members``, inflation
    1.04, radius 4, rotated). Returns the network (eval mode) and a summary (steps, minutes, final loss)."""
    from .methods import LETKF

    dev = torch.device(device)
    torch.manual_seed(config.seed)
    teacher = teacher or LETKF(members=config.members, infl=1.04, rot=True, radius=4.0)
    if teacher.members != config.members:
        config = replace(config, members=teacher.members)
    data_cfg = replace(setup, cycles=config.data_cycles, spinup=0)
    twin0 = make_twin(replace(data_cfg, cycles=1), device=dev)
    net = AnalysisNet(config, twin0.H, torch.diagonal(twin0.R).sqrt()).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    g = torch.Generator(device=dev).manual_seed(config.seed + 1)
    model = setup.model
    E_all, y_all, t_all, starts = [], [], [], []
    offset = 0
    t0 = time.perf_counter()
    steps = skipped = 0
    loss = torch.tensor(float("nan"))
    stopped = False
    for r in range(config.rounds):
        method = teacher if r == 0 else AmortisedMethod(net.eval())
        with torch.no_grad():
            E, y, t = simulate_cycles(method, replace(data_cfg, seed=config.train_seed + r), dev)
        bad = (~torch.isfinite(E).all(-1).all(-1)).nonzero()
        K = int(bad[0]) if len(bad) else len(E)                   # the finite, contiguous prefix
        log(f"amortised: round {r} data: {K} cycles, forecast-mean RMSE "
            f"{float(((E[:K].mean(1) - t[:K]) ** 2).mean().sqrt()):.3f}")
        E_all.append(E[:K]), y_all.append(y[:K]), t_all.append(t[:K])
        starts.append(offset + torch.arange(max(K - config.unroll + 1, 0), device=dev))
        offset += K
        Ed, yd, td, st = torch.cat(E_all), torch.cat(y_all), torch.cat(t_all), torch.cat(starts)
        net.train()
        for s in range(config.steps):
            frac = s / config.steps
            for pg in opt.param_groups:  # cosine decay within each round
                pg["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * frac)) * (0.5 ** r)
            idx = st[torch.randint(len(st), (config.batch,), generator=g, device=dev)]
            E = Ed[idx]
            loss = torch.zeros((), device=dev)
            for j in range(config.unroll):  # cycle the network itself: analyse, score, forecast the members
                xa = net(E, yd[idx + j], net.noise(config.batch, g, dev))
                loss = loss + fair_crps(xa, td[idx + j]) / config.unroll
                if j + 1 < config.unroll:
                    E = model.step(xa, setup.obs_every)
            opt.zero_grad()
            if not torch.isfinite(loss):  # a member blew up in the unrolled forecast: skip this sample
                skipped += 1
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            steps += 1
            if (time.perf_counter() - t0) / 60 > config.max_minutes:
                stopped = True
                log(f"amortised: max_minutes={config.max_minutes} reached at round {r}, step {s}")
                break
        log(f"amortised: round {r} ({len(Ed)} cycles of data) loss {float(loss.detach()):.4f} "
            f"after {(time.perf_counter() - t0) / 60:.1f} min")
        if stopped:
            break
    net.eval()
    return net, {"steps": steps, "skipped": skipped, "minutes": (time.perf_counter() - t0) / 60,
                 "final_crps": float(loss.detach()), "stopped_early": stopped}
