"""Fitting the latent flow of a flow prior (:mod:`latentda.prior.flow`) to a trained VAE: in ``train_prior`` with
``PriorConfig(flow_prior=True)``, or afterwards with :func:`add_flow` (like ``add_window``), so an existing
checkpoint gets a flow in minutes without retraining the VAE.

The training latents are the encoder's outputs on the prior's own training days (its block split and seed keep
the validation days out; they are the held-out set of the early stopping): the means mu(x)
(``flow_fit_on="mean"``, the probabilistic autoencoder's choice) or ``flow_samples`` posterior draws
mu + sigma ⊙ eps per day (``"sample"``, the VAE's aggregate posterior), for zonally symmetric data also of
``flow_rotations`` evenly spaced longitude rotations of every day (more samples of the same distribution).
"""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ..fields import to_array
from ..grid import normalize_grid
from .checkpoint import Prior
from .config import PriorConfig
from .flow import FlowSettings, LatentFlow, fit_flow

__all__ = ["encoded_latents", "fit_prior_flow", "add_flow"]

def encoded_latents(encode, anomalies: torch.Tensor, idx: np.ndarray, fit_on: str, samples: int, seed: int,
                    rotations: int = 1, batch: int = 256) -> torch.Tensor:
    """Latents (N, d) float32 of the days ``idx`` of ``anomalies`` (T, C, nlat, nlon) standardised anomalies:
    ``encode(x)`` -> (mu, logvar); the means (``fit_on="mean"``) or ``samples`` draws mu + exp(logvar/2) ⊙ eps
    per day (``"sample"``, eps from a generator seeded with ``seed``), each for ``rotations`` evenly spaced
    longitude rotations. N = len(idx) · rotations (· samples)."""
    if fit_on not in ("mean", "sample"):
        raise ValueError(f"fit_on={fit_on!r} must be 'mean' or 'sample'")
    nlon = anomalies.shape[-1]
    shifts = [int(round(k * nlon / rotations)) for k in range(max(1, int(rotations)))]
    gen = torch.Generator().manual_seed(int(seed) + 211)
    out = []
    with torch.no_grad():
        for shift in shifts:
            for k in range(0, len(idx), batch):
                x = anomalies[torch.as_tensor(idx[k:k + batch], device=anomalies.device)].roll(shift, dims=-1)
                mu, logvar = encode(x)
                mu, sd = mu.float().cpu(), torch.exp(0.5 * logvar).float().cpu()
                if fit_on == "mean":
                    out.append(mu)
                else:
                    out.extend(mu + sd * torch.randn(mu.shape, generator=gen) for _ in range(samples))
    return torch.cat(out)


def fit_prior_flow(encode, anomalies: torch.Tensor, train_idx: np.ndarray, val_idx: np.ndarray,
                   cfg: PriorConfig, device: torch.device | str = "cpu") -> LatentFlow:
    """The flow of a prior with config ``cfg`` (its ``flow_*`` settings and seed) fitted to the encoded training
    days ``train_idx`` with early stopping on ``val_idx`` (module docstring); frozen, on ``device``."""
    s = FlowSettings.from_config(cfg)
    rot = cfg.flow_rotations if cfg.zonal_symmetry else 1
    z_tr = encoded_latents(encode, anomalies, np.asarray(train_idx), s.fit_on, s.samples, cfg.seed, rot)
    z_va = encoded_latents(encode, anomalies, np.asarray(val_idx), s.fit_on, s.samples, cfg.seed + 1, rot)
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(int(cfg.num_threads))
    try:
        with torch.random.fork_rng(devices=[]):
            flow = fit_flow(z_tr.to(device), z_va.to(device), s, cfg.seed)
    finally:
        torch.set_num_threads(threads)
    flow.fit_info["rotations"] = rot
    return flow


def add_flow(prior: Prior, fields: xr.Dataset, **flow_options) -> Prior:
    """A flow prior from a VAE prior: the same VAE plus a latent flow fitted on ``fields`` (the prior's training
    fields, time, lat, lon, physical units). ``flow_options``: ``PriorConfig`` ``flow_*`` fields to override
    (e.g. ``flow_fit_on="sample"``), validated. Returns a new :class:`Prior` (``config.flow_prior = True``);
    ``prior`` is not modified. A window prior is refused (its latent transition is fitted in z)."""
    from .train import array_sha256, split_blocks

    if prior.window:
        raise ValueError(f"prior is a window prior (window={prior.window}); a flow prior needs a day prior "
                         "(the latent transition is a model of z, not of the flow's u)")
    unknown = sorted(k for k in flow_options if not k.startswith("flow_") or k not in PriorConfig.model_fields)
    if unknown:
        raise ValueError(f"add_flow takes PriorConfig flow_* options only, got {unknown}")
    cfg = PriorConfig.model_validate({**prior.config.model_dump(), **flow_options, "flow_prior": True})
    fields = normalize_grid(fields).sortby("time")
    prior.check_compatible(fields, prior.variables)
    times = fields["time"].values
    train_idx, val_idx = split_blocks(times.size, cfg.val_fraction, cfg.val_block_days, cfg.seed)
    X = torch.as_tensor(prior.anomalies(fields), device=prior.device)
    flow = fit_prior_flow(prior.encode, X, train_idx, val_idx, cfg, prior.device)
    out = prior.with_parts(cfg, flow=flow)
    out.provenance["flow_fit"] = {"data_sha256": array_sha256(to_array(fields, prior.variables, np.float32)),
                                  "period": f"{str(times[0])[:10]}/{str(times[-1])[:10]}"}
    return out
