"""Latent data assimilation: cost (`cost`), batched solver (`solver`), ensemble draws and representation error
(`ensemble`), the one-day analysis by randomise-then-optimise (`rto.assimilate`) and the windowed analysis over
[d − k, d + k] with a window prior (`window.assimilate_window`). ``assimilate`` (public as ``latentda.assimilate``)
chooses by the prior: windowed for a window prior, per-day for a day prior."""
from .window import assimilate, assimilate_window

__all__ = ["assimilate", "assimilate_window"]
