"""Latent data assimilation: cost (`cost`), batched solver (`solver`), ensemble draws and representation error
(`ensemble`), and the one-day analysis by randomise-then-optimise (`rto.assimilate`, public as
``latentda.assimilate``)."""
from .rto import assimilate

__all__ = ["assimilate"]
