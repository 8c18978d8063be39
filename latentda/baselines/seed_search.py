"""The seed method, re-implemented faithfully: Brohan (2022) "Machine Learning for Data Assimilation".

DA by searching the latent space of a VAE generator ``g`` for the point whose field best fits the observations:

* loss = observation misfit only, no prior (background) term: the mean squared difference between the
  generated field at the observations and the observed values, in the normalised (standardised anomaly) units
  the VAE works in, summed over the fitted variables (his ``decodeFit``)::

      loss(z) = sum_v mean_{k in obs of v} ( H(g(z))_k - y'_k )^2

* optimiser: Adam, learning rate 0.05, at most 1000 steps (``tfp.math.minimize(..., num_steps=1000,
  optimizer=tf.optimizers.Adam(learning_rate=0.05))``), stopping when the loss stops decreasing: the rule of
  ``tfp.optimizer.convergence_criteria.LossNotDecreasing`` (an exponentially weighted moving average, window 10,
  of the step-to-step decrease of the loss falls below ``rtol`` = 1e-3 times its value over the first window,
  or below ``atol`` if given; never before ``min_steps`` = 20 steps). The paper names no tolerance: with
  ``rtol=1e-3`` a search stops once the loss falls 1000 times slower than at the start (100-500 steps on the
  demo data); ``rtol=None`` (and no ``atol``) runs the full 1000 steps, like a ``tfp.math.minimize`` call without
  a convergence criterion;
* ensemble: restarts from independent ``z ~ N(0, I)`` sharing one observation set (no perturbed observations),
  run one after another as the paper does (so the time per day is that of the method as published); the
  ensemble spread is the spread of the restarts. Brohan uses 10 restarts (the default here).

Observation errors do not enter the loss (as in the paper); they only enter the fit diagnostics.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from ..analysis import analysis_dataset
from .common import (check_members, climatology_fields, day_of, day_seed, diagnostics, prepare_observations,
                     resolve_background)

#: Brohan (2022) settings.
SEED_LR = 0.05
SEED_MAX_STEPS = 1000
SEED_RESTARTS = 10


class LossNotDecreasing:
    """Stopping rule of ``tfp.optimizer.convergence_criteria.LossNotDecreasing``::

        decrease[t] = loss[t-1] - loss[t]
        avg[t] = decrease[t] + (1 - 1/window) (avg[t-1] - decrease[t]),      avg[0] = 0
        init = avg[window]                       (the average decrease over the first window steps)
        converged at step t >= min_steps when avg[t] < max(atol, rtol * init)

    ``rtol`` makes the rule scale-free: "the loss decreases at less than rtol of its initial speed".
    """

    def __init__(self, atol: float | None = None, rtol: float | None = None, window_size: int = 10,
                 min_steps: int = 20) -> None:
        if atol is None and rtol is None:
            raise ValueError("give at least one of atol and rtol")
        if (atol is not None and not atol >= 0) or (rtol is not None and not rtol >= 0):
            raise ValueError(f"atol={atol} and rtol={rtol} must be >= 0")
        if window_size < 1 or min_steps < 0:
            raise ValueError(f"window_size={window_size} must be >= 1 and min_steps={min_steps} >= 0")
        self.atol = float(atol or 0.0)
        self.rtol = float(rtol or 0.0)
        self.window, self.decay, self.min_steps = int(window_size), 1.0 - 1.0 / window_size, int(min_steps)
        self.previous: float | None = None
        self.average = 0.0
        self.initial = 0.0

    def __call__(self, step: int, loss: float) -> bool:
        """Feed the loss evaluated at step ``step`` (0-based); True when the search should stop."""
        if self.previous is None:
            self.previous = loss
            return False
        dec = self.previous - loss
        self.average = dec + self.decay * (self.average - dec)
        self.previous = loss
        if step <= self.window:
            self.initial = self.average
        return step >= self.min_steps and self.average < max(self.atol, self.rtol * self.initial)


def seed_search(prior: Any, observations: pd.DataFrame, time, members: int = SEED_RESTARTS, seed: int = 0, *,
                lr: float = SEED_LR, max_steps: int = SEED_MAX_STEPS, rtol: float | None = 1e-3,
                atol: float | None = None, window_size: int = 10, min_steps: int = 20,
                default_error: float | Mapping[str, float] | None = None, keep_members: bool = False) -> xr.Dataset:
    """Brohan (2022) latent search (module docstring) for the day of ``time``; analysis_dataset layout, physical.

    ``prior``: the VAE prior (``variables, grid, latent_dim, device, climatology, var_attrs``, ``decode(z)`` ->
    standardised anomalies (B, C, nlat, nlon), differentiable). ``members``: number of restarts (10 in the
    paper); restart ``r`` starts from ``z_r ~ N(0, I)`` drawn from ``SeedSequence([seed, day, method])``'s r-th
    spawned stream. Diagnostics: ``cost`` = mean final loss, ``iterations`` = mean steps,
    ``converged_fraction`` = fraction of restarts stopped by the rule before ``max_steps``
    (:class:`LossNotDecreasing` with ``rtol``/``atol``, ``window_size``, ``min_steps``); the background of
    ``fit_before`` is the climatology. Without usable observations the restarts are returned unoptimised
    (samples of the prior).
    """
    import torch

    members = check_members(members)
    if not lr > 0 or max_steps < 1:
        raise ValueError(f"lr={lr} must be > 0 and max_steps={max_steps} >= 1")
    for attr in ("decode", "latent_dim"):
        if not hasattr(prior, attr):
            raise ValueError(f"prior of type {type(prior).__name__} lacks {attr!r}; pass a latentda prior")
    bg = resolve_background(prior)
    clim_mean, clim_std = climatology_fields(bg, time)
    obs = prepare_observations(observations, bg, time, clim_mean, clim_std, default_error)
    device = torch.device(getattr(prior, "device", "cpu"))
    dtype = torch.float32
    y = torch.as_tensor(obs.y_std, dtype=dtype, device=device)
    groups = [torch.as_tensor(np.nonzero(obs.channel == c)[0], device=device) for c in range(len(bg.variables))]
    groups = [g for g in groups if g.numel()]

    def loss_fn(z):
        hx = obs.H.apply_torch(prior.decode(z))[0]
        return sum(((hx[g] - y[g]) ** 2).mean() for g in groups)

    streams = day_seed(seed, time, "seed_search").spawn(members)
    fields, losses, steps, converged = [], [], [], []
    for r in range(members):  # one restart after another, as in the paper
        z0 = np.random.default_rng(streams[r]).standard_normal((1, int(prior.latent_dim)))
        z = torch.tensor(z0, dtype=dtype, device=device, requires_grad=True)
        n_steps, conv, last = 0, False, float("nan")
        if groups:
            opt = torch.optim.Adam([z], lr=lr)
            rule = (LossNotDecreasing(atol, rtol, window_size, min_steps)
                    if atol is not None or rtol is not None else None)
            for step in range(max_steps):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(z)
                loss.backward(inputs=[z])
                opt.step()
                n_steps = step + 1
                last = float(loss.detach())
                if rule is not None and rule(step, last):
                    conv = True
                    break
        with torch.no_grad():
            x = prior.decode(z.detach())
            if groups:
                last = float(loss_fn(z.detach()))
        fields.append(x[0].detach().cpu().double().numpy())
        losses.append(last)
        steps.append(n_steps)
        converged.append(conv)
    anom = np.stack(fields)  # (M, C, nlat, nlon)
    ens = clim_mean[None] + clim_std[None] * anom
    mean = ens.mean(axis=0)
    diag = diagnostics(obs, clim_mean, mean, cost=float(np.mean(losses)) if groups else np.nan,
                       iterations=int(round(np.mean(steps))), converged_fraction=float(np.mean(converged)))
    return analysis_dataset(ens, list(bg.variables), bg.grid, day_of(time), diag, "seed_search", obs.qc_counts,
                            var_attrs=bg.var_attrs, keep_members=keep_members,
                            attrs={"lr": lr, "max_steps": max_steps, "rtol": rtol if rtol is not None else "none",
                                   "atol": atol if atol is not None else "none", "restarts": members})
