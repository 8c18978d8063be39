"""The VAE prior: a convolutional VAE trained on standardised anomalies, whose decoder g(z) is the generator the
latent-space assimilation searches over.

Public API::

    prior = train_prior(fields, PriorConfig(latent_dim=64), progress=True)   # fields: (time, lat, lon), physical
    x = prior.decode(z)                     # (B, L) -> (B, C, nlat, nlon) standardised anomalies, differentiable
    phys = prior.to_physical(x, time)       # x * s(d) + m(d)
    sha = prior.save("prior.pt"); prior = load_prior("prior.pt", device="auto")

Modules: ``config`` (PriorConfig; light, no torch), ``vae`` (network and loss terms), ``train`` (train_prior),
``checkpoint`` (Prior, checkpoint format), ``loading`` (load_prior), ``residual`` (leading modes of the
reconstruction residual), ``mode_weights`` (their per-variable weights fitted on the validation days;
``add_mode_weights`` weights an older prior's modes),
``transition`` (the latent Markov chain of a window prior; ``windowfit.add_window`` fits one to a day prior),
``flow`` (the latent normalising flow z = f(u) of a flow prior; ``flowfit.add_flow`` fits one to a VAE prior).
Everything but ``config`` is imported on first use, so the run config can be validated without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import PriorConfig

_LAZY = {
    "Prior": "checkpoint", "load_prior": "loading", "resolve_device": "checkpoint", "FORMAT": "checkpoint",
    "FORMAT_VERSION": "checkpoint", "train_prior": "train", "training_summary": "train", "ConvVAE": "vae",
    "residual_modes": "residual", "remainder_std": "residual", "add_window": "windowfit",
    "LatentTransition": "transition", "fit_transition": "transition",
    "LatentFlow": "flow", "fit_flow": "flow", "add_flow": "flowfit",
    "add_mode_weights": "mode_weights", "fit_mode_weights": "mode_weights",
}

__all__ = ["PriorConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'latentda.prior' has no attribute {name!r}")
