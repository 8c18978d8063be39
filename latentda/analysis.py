"""The analysis dataset every method returns (latent DA and all baselines): one day, physical units.

Layout (the archive variables of ARCHITECTURE.md, for a single day)::

    <var>            (time=1, lat, lon)          ensemble mean
    <var>_spread     (time=1, lat, lon)          ensemble standard deviation (ddof=1)
    <var>_members    (time=1, member, lat, lon)  only if keep_members
    obs_used, obs_rejected (time,) int; fit_before, fit_after (time,) float: RMS of (y - H(x)) / sigma over the
    used observations for the background (prior) mean and the analysis mean; cost, iterations (time,),
    converged_fraction (time,), no_obs (time,) bool; windowed methods add window_days_observed and
    obs_outside_window (time,) int (:data:`WINDOW_DIAGNOSTICS`); the Langevin sampler adds acceptance_rate, ess
    and step_size (time,) float (:data:`SAMPLER_DIAGNOSTICS`).

attrs: ``latentda:method``, ``latentda:qc`` (JSON counts per QC reason) and any method options.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .grid import Grid

DIAGNOSTICS = ("obs_used", "obs_rejected", "fit_before", "fit_after", "cost", "iterations",
               "converged_fraction", "no_obs")

DIAG_ATTRS = {
    "obs_used": {"long_name": "observations used", "units": "1"},
    "obs_rejected": {"long_name": "observations rejected by QC", "units": "1"},
    "fit_before": {"long_name": "RMS normalised departure y - H(background mean), used observations",
                   "units": "1"},
    "fit_after": {"long_name": "RMS normalised departure y - H(analysis mean), used observations", "units": "1"},
    "cost": {"long_name": "final cost J per member, ensemble mean", "units": "1"},
    "iterations": {"long_name": "solver iterations", "units": "1"},
    "converged_fraction": {"long_name": "fraction of members whose solver converged", "units": "1"},
    "no_obs": {"long_name": "no usable observation: the analysis is the prior ensemble", "units": "1"},
}

#: Written only by windowed methods (latentda.da.window, baselines.smoother): coverage of [d − k, d + k].
WINDOW_DIAGNOSTICS = {
    "window_days_observed": {"long_name": "days of the assimilation window with observations", "units": "1"},
    "obs_outside_window": {"long_name": "observations ignored because outside the assimilation window",
                           "units": "1"},
}


#: Written only by the Langevin sampler (latentda.da.samplers).
SAMPLER_DIAGNOSTICS = {
    "acceptance_rate": {"long_name": "Metropolis-adjusted Langevin acceptance rate after the burn-in", "units": "1"},
    "ess": {"long_name": "effective sample size of the Langevin chains (minimum over latent coordinates)",
            "units": "1"},
    "step_size": {"long_name": "Langevin step size h after the burn-in", "units": "1"},
}


def analysis_dataset(members: np.ndarray, variables: Sequence[str], grid: Grid, time,
                     diagnostics: Mapping[str, float], method: str, qc_counts: Mapping[str, int],
                     var_attrs: Mapping[str, dict] | None = None, keep_members: bool = False,
                     mean: np.ndarray | None = None, spread: np.ndarray | None = None,
                     attrs: Mapping[str, object] | None = None) -> xr.Dataset:
    """Build the one-day analysis Dataset from an ensemble ``members`` (M, C, nlat, nlon) in physical units.

    ``mean``/``spread`` (C, nlat, nlon) override the ensemble statistics (e.g. OI's analytic posterior spread).
    """
    members = np.asarray(members, dtype=np.float64)
    if members.ndim != 4 or members.shape[1] != len(variables) or members.shape[2:] != grid.shape:
        raise ValueError(f"members must be (M, {len(variables)}, {grid.shape[0]}, {grid.shape[1]}), "
                         f"got {members.shape}")
    var_attrs = var_attrs or {}
    t = np.array([np.datetime64(pd.Timestamp(time).normalize(), "ns")])
    if mean is None:
        mean = members.mean(axis=0)
    if spread is None:
        spread = members.std(axis=0, ddof=1) if members.shape[0] > 1 else np.zeros_like(mean)
    data = {}
    for k, v in enumerate(variables):
        a = dict(var_attrs.get(v, {}))
        data[v] = (("time", "lat", "lon"), mean[None, k].astype(np.float32), a)
        sa = {kk: vv for kk, vv in a.items() if kk in ("units",)}
        sa["long_name"] = f"ensemble standard deviation of {a.get('long_name', v)}"
        data[f"{v}_spread"] = (("time", "lat", "lon"), spread[None, k].astype(np.float32), sa)
        if keep_members:
            data[f"{v}_members"] = (("time", "member", "lat", "lon"), members[None, :, k].astype(np.float32), a)
    for name in DIAGNOSTICS:
        val = diagnostics.get(name, np.nan)
        dtype = {"obs_used": np.int32, "obs_rejected": np.int32, "iterations": np.int32,
                 "no_obs": np.int8}.get(name, np.float32)
        data[name] = (("time",), np.array([val]).astype(dtype), DIAG_ATTRS[name])
    for name, attrs_ in WINDOW_DIAGNOSTICS.items():
        if name in diagnostics:
            data[name] = (("time",), np.array([diagnostics[name]]).astype(np.int32), attrs_)
    for name, attrs_ in SAMPLER_DIAGNOSTICS.items():
        if name in diagnostics:
            data[name] = (("time",), np.array([diagnostics[name]]).astype(np.float32), attrs_)
    coords = {"time": t, "lat": ("lat", grid.lat, {"units": "degrees_north", "standard_name": "latitude"}),
              "lon": ("lon", grid.lon, {"units": "degrees_east", "standard_name": "longitude"})}
    if keep_members:
        coords["member"] = np.arange(members.shape[0])
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["latentda:method"] = method
    ds.attrs["latentda:qc"] = json.dumps(dict(qc_counts), sort_keys=True)
    for k, v in (attrs or {}).items():
        ds.attrs[f"latentda:{k}"] = v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True)
    return ds


def rms_departure(y: np.ndarray, hx: np.ndarray, sigma: np.ndarray) -> float:
    """RMS of (y - Hx) / sigma; NaN for no observations."""
    if y.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean(((y - hx) / sigma) ** 2)))
