"""Window priors from day priors: :func:`add_window` fits the latent transition (:mod:`latentda.prior.repr_time`,
:mod:`latentda.prior.transition`) to a trained VAE, so an existing checkpoint becomes a window prior without
retraining (``train_prior`` with ``PriorConfig(window=k)`` fits the same parts during training)."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ..fields import to_array
from ..grid import normalize_grid
from .checkpoint import Prior
from .config import PriorConfig
from .repr_time import TrainingDays, fit_window_parts
from .train import TRANSITION_ROTATIONS, array_sha256, deterministic_torch, split_blocks

__all__ = ["add_window"]


def add_window(prior: Prior, fields: xr.Dataset, window: int) -> Prior:
    """A window prior of half-width ``window`` from a day prior: the same VAE plus a latent transition fitted on
    ``fields`` (the prior's training fields, time, lat, lon, physical; the prior's own block split and seed keep
    the validation days out of the fit). Returns a new :class:`Prior`; ``prior`` is not modified."""
    if prior.window:
        raise ValueError(f"prior already is a window prior (window={prior.window}); add_window needs a day prior")
    if prior.flow is not None:
        raise ValueError("prior is a flow prior (config.flow_prior=True); the latent transition of a window prior "
                         "is a model of z, not of the flow's u: use the VAE prior")
    cfg = prior.config.model_copy(update={"window": int(window)})
    cfg = PriorConfig.model_validate(cfg.model_dump())  # validates window
    if cfg.window < 1:
        raise ValueError(f"window={window!r} must be >= 1 for a window prior")
    fields = normalize_grid(fields).sortby("time")
    prior.check_compatible(fields, prior.variables)
    times = fields["time"].values
    train_idx, val_idx = split_blocks(times.size, cfg.val_fraction, cfg.val_block_days, cfg.seed)
    X = torch.as_tensor(prior.anomalies(fields), device=prior.device)
    with deterministic_torch(prior.device, cfg.num_threads):
        days = TrainingDays(X, times, train_idx, val_idx, prior.grid.lat, list(prior.variables))
        transition = fit_window_parts(prior, days, cfg.seed, TRANSITION_ROTATIONS if cfg.zonal_symmetry else 1)
    out = prior.with_parts(cfg, transition=transition)
    out.provenance["window_fit"] = {"data_sha256": array_sha256(to_array(fields, prior.variables, np.float32)),
                                    "period": f"{str(times[0])[:10]}/{str(times[-1])[:10]}"}
    return out
