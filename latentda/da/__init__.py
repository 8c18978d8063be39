"""Latent data assimilation: cost (`cost`), batched solver (`solver`), ensemble draws and representation error
(`ensemble`), the options model (`options`, light: no torch), the one-day analysis by randomise-then-optimise
(`rto.assimilate`) and the windowed analysis over [d − k, d + k] with a window prior (`window.assimilate_window`).
``assimilate`` (public as ``latentda.assimilate``) chooses by the prior: windowed for a window prior, per-day for a
day prior. The torch modules are imported lazily so that ``latentda.da.options`` stays light."""
from __future__ import annotations

from typing import Any

__all__ = ["assimilate", "assimilate_window", "AssimilationOptions"]


def __getattr__(name: str) -> Any:
    if name in ("assimilate", "assimilate_window"):
        from . import window

        return getattr(window, name)
    if name == "AssimilationOptions":
        from .options import AssimilationOptions

        return AssimilationOptions
    raise AttributeError(f"module 'latentda.da' has no attribute {name!r}")
