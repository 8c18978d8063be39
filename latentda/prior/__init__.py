"""The VAE prior: a convolutional VAE trained on standardised anomalies, whose decoder g(z) is the generator the
latent-space assimilation searches over.

Public API::

    prior = train_prior(fields, PriorConfig(latent_dim=64), progress=True)   # fields: (time, lat, lon), physical
    x = prior.decode(z)                     # (B, L) -> (B, C, nlat, nlon) standardised anomalies, differentiable
    phys = prior.to_physical(x, time)       # x * s(d) + m(d)
    sha = prior.save("prior.pt"); prior = load_prior("prior.pt", device="auto")

Modules: ``vae`` (network and loss terms), ``train`` (PriorConfig, train_prior), ``checkpoint`` (Prior, load_prior,
checkpoint format), ``residual`` (leading modes of the reconstruction residual), ``transition`` (the latent
Markov chain of a window prior; ``add_window`` fits one to a day prior).
"""
from .checkpoint import FORMAT, FORMAT_VERSION, Prior, load_prior, resolve_device
from .residual import remainder_std, residual_modes
from .train import PriorConfig, add_window, train_prior
from .transition import LatentTransition, fit_transition
from .vae import ConvVAE

__all__ = ["Prior", "PriorConfig", "train_prior", "load_prior", "ConvVAE", "resolve_device", "FORMAT",
           "FORMAT_VERSION", "residual_modes", "remainder_std", "add_window", "LatentTransition", "fit_transition"]
