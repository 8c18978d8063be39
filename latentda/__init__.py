"""latentda: reanalysis by data assimilation in the latent space of a generative (VAE) prior.

Public API (stable)::

    prior = latentda.train_prior(fields, config)          # fields: xr.Dataset (time, lat, lon), physical units
    prior.save(path); prior = latentda.load_prior(path)
    analysis = latentda.assimilate(prior, observations, time, members=32, seed=0, **options)
    latentda.baselines.<method>(background, observations, time, members=32, seed=0, **options)

``import latentda`` is light: it pulls in numpy/xarray only; torch is imported when a prior is built or loaded.
It never imports an orchestration package (prefect, distributed, intake): tests check this.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "train_prior": ("latentda.prior", "train_prior"),
    "load_prior": ("latentda.prior", "load_prior"),
    "Prior": ("latentda.prior", "Prior"),
    "PriorConfig": ("latentda.prior", "PriorConfig"),
    "assimilate": ("latentda.da", "assimilate"),
    "baselines": ("latentda.baselines", None),
    "metrics": ("latentda.metrics", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'latentda' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
