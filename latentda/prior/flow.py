"""The latent flow of a flow prior (the probabilistic autoencoder of Böhm & Seljak): a normalising flow
``z = f(u)``, ``u ~ N(0, I_d)``, fitted by maximum likelihood to the encoded training days, so the assimilation
searches ``u`` with the generator ``g∘f`` and the prior term ½‖u‖² (the VAE's aggregate posterior is not N(0, I)).

Model (one line): ``z = m + s ⊙ h(u)``, ``h`` the inverse of a zuko coupling neural spline flow
(``zuko.flows.NSF(d, passes=2)``: rational-quadratic splines on [-5, 5], identity outside, alternating halves
conditioned on each other, so both directions cost one network pass per transform), ``m``, ``s`` (d,) the mean and
standard deviation of the training latents (so the splines see standardised inputs). Density (change of
variables): ``log p(z) = log N(h⁻¹((z − m)/s); 0, I) + log|det ∂h⁻¹/∂z'| − Σ log s``.

Fitting (:func:`fit_flow`): Adam on the mean negative log-likelihood per latent dimension, minibatches shuffled by a
seeded generator, early stopping on held-out latents (the prior's validation blocks), the best epoch kept. Same
inputs and seed on the same device -> the same weights.

Checkpoint form (:meth:`LatentFlow.to_tensors`, :meth:`LatentFlow.info`): a dict of CPU tensors (the NSF's
state_dict, ``shift`` m, ``scale`` s) and a JSON-able ``info`` (architecture, :data:`FLOW_FORMAT_VERSION`, fit
statistics); :func:`flow_from_checkpoint` refuses another version or a flow whose latent size differs from the
VAE's, naming both sizes.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time as _time
from typing import Any, Literal

import torch
import zuko
from torch import nn

__all__ = ["FLOW_FORMAT_VERSION", "FlowSettings", "LatentFlow", "fit_flow", "flow_from_checkpoint"]

log = logging.getLogger(__name__)

#: version of the flow's checkpoint entry (``meta_json["flow_info"]["format_version"]``)
FLOW_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """Architecture and fit of the latent flow (:class:`latentda.prior.PriorConfig` ``flow_*`` fields)."""

    transforms: int = 2          # coupling spline transforms
    hidden: int = 64             # width of each conditioner's hidden layers
    hidden_layers: int = 2       # hidden layers per conditioner
    bins: int = 8                # spline bins K
    epochs: int = 60             # maximum epochs
    batch_size: int = 256
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 1e-5   # AdamW decoupled weight decay
    patience: int = 5            # epochs without held-out improvement before stopping
    fit_on: Literal["mean", "sample"] = "mean"   # encoder means mu(x) or posterior samples mu + sigma * eps
    samples: int = 1             # posterior samples per day when fit_on="sample"

    def __post_init__(self) -> None:
        for name in ("transforms", "hidden", "hidden_layers", "bins", "epochs", "batch_size", "patience", "samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"flow setting {name}={value!r} must be a positive integer")
        if self.bins < 2:
            raise ValueError(f"flow setting bins={self.bins} must be >= 2")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"flow setting learning_rate={self.learning_rate!r} must be positive")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"flow setting weight_decay={self.weight_decay!r} must be >= 0")
        if self.fit_on not in ("mean", "sample"):
            raise ValueError(f"flow setting fit_on={self.fit_on!r} must be 'mean' or 'sample'")

    @classmethod
    def from_config(cls, cfg) -> "FlowSettings":
        """The settings held by a :class:`PriorConfig` (its ``flow_*`` fields)."""
        return cls(transforms=cfg.flow_transforms, hidden=cfg.flow_hidden, hidden_layers=cfg.flow_hidden_layers,
                   bins=cfg.flow_bins, epochs=cfg.flow_epochs, batch_size=cfg.flow_batch_size,
                   learning_rate=cfg.flow_learning_rate, weight_decay=cfg.flow_weight_decay,
                   patience=cfg.flow_patience, fit_on=cfg.flow_fit_on, samples=cfg.flow_samples)


class LatentFlow(nn.Module):
    """``f``: u (B, d) -> z (B, d) and back, with ``log_prob(z)`` (B,); float32, parameters frozen after fitting.

    ``shift``, ``scale``: (d,) m and s of the module docstring (s > 0).
    """

    def __init__(self, latent_dim: int, transforms: int = 4, hidden: int = 256, hidden_layers: int = 2,
                 bins: int = 8, shift: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim or latent_dim < 2:
            raise ValueError(f"latent_dim={latent_dim!r}: a coupling flow needs a latent of >= 2 dimensions")
        self.latent_dim = int(latent_dim)
        self.arch = {"latent_dim": self.latent_dim, "transforms": int(transforms), "hidden": int(hidden),
                     "hidden_layers": int(hidden_layers), "bins": int(bins)}
        self.nsf = zuko.flows.NSF(self.latent_dim, passes=2, transforms=int(transforms), bins=int(bins),
                                  hidden_features=[int(hidden)] * int(hidden_layers))
        d = self.latent_dim
        self.register_buffer("shift", torch.zeros(d) if shift is None else torch.as_tensor(shift).float().reshape(d))
        self.register_buffer("scale", torch.ones(d) if scale is None else torch.as_tensor(scale).float().reshape(d))
        if not bool((self.scale > 0).all()) or not bool(torch.isfinite(self.shift).all()):
            raise ValueError("flow scale must be positive and shift finite")
        self.fit_info: dict[str, Any] = {}

    def _check(self, t: torch.Tensor, name: str) -> None:
        if t.ndim != 2 or t.shape[1] != self.latent_dim:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (B, {self.latent_dim}) (latent_dim)")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """z = f(u) = m + s ⊙ h(u): (B, d) -> (B, d), differentiable in u."""
        self._check(u, "u")
        return self.shift + self.scale * self.nsf().transform.inv(u)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """u = f⁻¹(z) = h⁻¹((z − m)/s): (B, d) -> (B, d)."""
        self._check(z, "z")
        return self.nsf().transform((z - self.shift) / self.scale)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) (B,) (module docstring), nats."""
        self._check(z, "z")
        return self.nsf().log_prob((z - self.shift) / self.scale) - torch.log(self.scale).sum()

    def info(self) -> dict[str, Any]:
        """JSON-able: architecture, format version and fit statistics."""
        return {"format_version": FLOW_FORMAT_VERSION, "arch": dict(self.arch), "fit": dict(self.fit_info)}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint form: every state_dict entry (NSF weights and masks, shift, scale) as a CPU tensor."""
        return {k: t.detach().to("cpu").contiguous().clone() for k, t in self.state_dict().items()}

    def freeze(self) -> "LatentFlow":
        """Eval mode, parameters without gradients (the generator g∘f is differentiable in u only)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
            p.grad = None
        return self


def flow_from_checkpoint(tensors: dict, info: dict, latent_dim: int) -> LatentFlow:
    """Rebuild a :class:`LatentFlow` from its checkpoint tensors and ``info``; ValueError naming the values if the
    format version is not :data:`FLOW_FORMAT_VERSION` or the flow's latent size is not ``latent_dim`` (the VAE's)."""
    version = info.get("format_version")
    if version != FLOW_FORMAT_VERSION:
        raise ValueError(f"flow format_version {version!r} not supported (this latentda reads version "
                         f"{FLOW_FORMAT_VERSION}); refit the flow with latentda.prior.add_flow")
    arch = dict(info["arch"])
    if int(arch["latent_dim"]) != int(latent_dim) or tuple(tensors["shift"].shape) != (int(latent_dim),):
        raise ValueError(f"the flow is {arch['latent_dim']}-dimensional (shift {tuple(tensors['shift'].shape)}), "
                         f"the VAE latent {latent_dim}-dimensional; refit the flow to this prior with "
                         "latentda.prior.add_flow")
    flow = LatentFlow(**arch)
    flow.load_state_dict(tensors, strict=True)
    flow.fit_info = dict(info.get("fit", {}))
    return flow.freeze()


def _mean_nll(flow: LatentFlow, z: torch.Tensor, batch: int = 4096) -> float:
    """Mean negative log-likelihood per latent dimension (nats) of the rows of ``z`` (N, d)."""
    with torch.no_grad():
        tot = sum(float(-flow.log_prob(z[k:k + batch]).double().sum()) for k in range(0, z.shape[0], batch))
    return tot / z.shape[0] / z.shape[1]


def gaussian_nll(z: torch.Tensor) -> float:
    """Mean negative log-likelihood per dimension (nats) of ``z`` (N, d) under N(0, I): ½ log 2π + ½ mean(z²)."""
    return 0.5 * math.log(2 * math.pi) + 0.5 * float(z.double().pow(2).mean())


def fit_flow(z_train: torch.Tensor, z_val: torch.Tensor, settings: FlowSettings, seed: int) -> LatentFlow:
    """Fit a :class:`LatentFlow` by maximum likelihood to latents ``z_train`` (N, d), early stopping on ``z_val``
    (N_val, d) (module docstring). Returns the frozen flow of the best held-out epoch on ``z_train``'s device;
    ``flow.fit_info`` holds the held-out NLL per dimension of the flow and of N(0, I), epochs and seconds.
    The initial weights come from torch's global generator seeded with ``seed`` (callers that must not disturb
    it wrap the call in ``torch.random.fork_rng``, as :func:`latentda.prior.flowfit.fit_prior_flow` does)."""
    if z_train.ndim != 2 or z_val.ndim != 2 or z_val.shape[1] != z_train.shape[1]:
        raise ValueError(f"latents must be (N, d) with equal d, got {tuple(z_train.shape)} and {tuple(z_val.shape)}")
    if z_train.shape[0] < 2 or z_val.shape[0] < 1:
        raise ValueError(f"need >= 2 training and >= 1 held-out latents, got {z_train.shape[0]} and {z_val.shape[0]}")
    if not (bool(torch.isfinite(z_train).all()) and bool(torch.isfinite(z_val).all())):
        raise ValueError("latents hold non-finite values")
    s = settings
    dev = z_train.device
    z_train, z_val = z_train.float(), z_val.float()
    torch.manual_seed(int(seed))  # the NSF's initial weights
    flow = LatentFlow(z_train.shape[1], s.transforms, s.hidden, s.hidden_layers, s.bins,
                      shift=z_train.mean(0), scale=z_train.std(0).clamp_min(1e-6)).to(dev)
    opt = torch.optim.AdamW(flow.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(int(seed) + 7)
    n, d = z_train.shape
    best, best_epoch, best_state, bad, history = math.inf, -1, None, 0, []
    t0 = _time.monotonic()
    stop = "epochs"
    for epoch in range(s.epochs):
        flow.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        tot = 0.0
        for k in range(0, n, s.batch_size):
            zb = z_train[perm[k:k + s.batch_size]]
            loss = -flow.log_prob(zb).mean() / d
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * zb.shape[0]
        flow.eval()
        val = _mean_nll(flow, z_val)
        history.append({"epoch": epoch, "train_nll": tot / n, "val_nll": val})
        log.info("flow epoch %d: train NLL/dim %.4f, held-out %.4f (%.0f s)", epoch, tot / n, val,
                 _time.monotonic() - t0)
        if not math.isfinite(tot):
            raise FloatingPointError(f"flow training loss became {tot} in epoch {epoch}; lower flow_learning_rate "
                                     f"(now {s.learning_rate})")
        if val < best:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: t.detach().clone() for k, t in flow.state_dict().items()}
        else:
            bad += 1
            if bad >= s.patience:
                stop = "early_stopping"
                break
    if best_state is None:
        raise FloatingPointError("no finite held-out log-likelihood in any epoch of the flow fit")
    flow.load_state_dict(best_state)
    flow.fit_info = {"fit_on": s.fit_on, "n_train": int(n), "n_val": int(z_val.shape[0]), "seed": int(seed),
                     "val_nll": best, "train_nll": _mean_nll(flow, z_train), "val_nll_gaussian": gaussian_nll(z_val),
                     "best_epoch": best_epoch, "epochs_run": len(history), "stop_reason": stop,
                     "seconds": round(_time.monotonic() - t0, 3), "settings": dataclasses.asdict(s)}
    return flow.freeze()
