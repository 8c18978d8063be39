"""Latent data assimilation: cost (`cost`), batched solver (`solver`), ensemble draws and representation error
(`ensemble`), the options model (`options`, light: no torch), and the one-day analysis by randomise-then-optimise
(`rto.assimilate`, public as ``latentda.assimilate``; imported lazily so that ``latentda.da.options`` stays light)."""
from __future__ import annotations

from typing import Any

__all__ = ["assimilate", "AssimilationOptions"]


def __getattr__(name: str) -> Any:
    if name == "assimilate":
        from .rto import assimilate

        return assimilate
    if name == "AssimilationOptions":
        from .options import AssimilationOptions

        return AssimilationOptions
    raise AttributeError(f"module 'latentda.da' has no attribute {name!r}")
