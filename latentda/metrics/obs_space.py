"""Observation-space diagnostics: O-B and O-A departure statistics per variable.

For observations ``y_k`` of variable ``v`` and a gridded state ``x`` (background or analysis mean), the departure
is ``d_k = y_k - H(x)_k`` with ``H`` the bilinear point operator of :mod:`latentda.obs.operator`. Per variable::

    mean = (1/N) sum_k d_k      std = sqrt((1/N) sum_k (d_k - mean)^2)      rms = sqrt((1/N) sum_k d_k^2)

(``rms^2 = mean^2 + std^2``). With ``normalised=True`` the departures are divided by the observation error
``sigma_k`` first (a consistent system has normalised O-B RMS near ``sqrt(1 + HBH'/R)``, O-A below 1).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..grid import Grid, normalize_grid
from ..obs.operator import PointOperator
from ..obs.schema import QC_OK

STAT_COLUMNS = ("n", "mean", "std", "rms")


def _day_field(fields: xr.Dataset, v: str) -> np.ndarray:
    da = fields[v]
    if "time" in da.dims:
        if da.sizes["time"] != 1:
            raise ValueError(f"fields must hold one day; {v!r} has {da.sizes['time']} times: select one first")
        da = da.isel(time=0)
    extra = [d for d in da.dims if d not in ("lat", "lon")]
    if extra:
        raise ValueError(f"variable {v!r} has extra dimension(s) {extra}; pass the ensemble mean (lat, lon)")
    return da.transpose("lat", "lon").values.astype(np.float64)


def departures(fields: xr.Dataset, observations: pd.DataFrame, variables: Sequence[str] | None = None) -> np.ndarray:
    """``y - H(x)`` for every row of ``observations`` (nobs,), NaN for rows with a QC reason or unknown variable.

    ``fields``: one day (``time`` of length 1 or no ``time``), variables on (lat, lon). ``observations``: the
    observation table (``variable``, ``lat``, ``lon``, ``value``; a ``qc`` column from
    :func:`latentda.obs.validate_observations` is honoured).
    """
    for c in ("lat", "lon", "value", "variable"):
        if c not in observations.columns:
            raise ValueError(f"observation table lacks column {c!r}; it has {list(observations.columns)}")
    fields = normalize_grid(fields)
    grid = Grid.from_dataset(fields)
    variables = list(variables) if variables is not None else sorted(set(observations["variable"]))
    out = np.full(len(observations), np.nan)
    ok = np.ones(len(observations), dtype=bool)
    if "qc" in observations.columns:
        ok &= (observations["qc"].values == QC_OK)
    var_col = observations["variable"].astype(str).values
    for v in variables:
        rows = np.nonzero(ok & (var_col == v))[0]
        if rows.size == 0:
            continue
        if v not in fields:
            raise KeyError(f"variable {v!r} observed but not in the fields; they have {sorted(fields.data_vars)}")
        H = PointOperator(grid, observations["lat"].values[rows], observations["lon"].values[rows])
        hx = H.apply_np(_day_field(fields, v)[None])
        out[rows] = observations["value"].values[rows].astype(np.float64) - hx
    return out


def departure_stats(observations: pd.DataFrame, departures_: np.ndarray, normalised: bool = False) -> pd.DataFrame:
    """Per-variable ``n, mean, std, rms`` of departures (module docstring); NaN departures are skipped.

    Returns a DataFrame indexed by variable. ``normalised=True`` divides by the ``error`` column first.
    """
    d = np.asarray(departures_, dtype=np.float64)
    if d.shape != (len(observations),):
        raise ValueError(f"departures have shape {d.shape}, expected ({len(observations)},) (one per row)")
    if normalised:
        if "error" not in observations.columns:
            raise ValueError("normalised departures need an 'error' column in the observation table")
        d = d / observations["error"].values.astype(np.float64)
    rows = []
    var_col = observations["variable"].astype(str).values
    for v in sorted(set(var_col)):
        x = d[(var_col == v) & np.isfinite(d)]
        if x.size == 0:
            rows.append((v, 0, np.nan, np.nan, np.nan))
            continue
        rows.append((v, int(x.size), float(x.mean()), float(x.std()), float(np.sqrt(np.mean(x ** 2)))))
    return pd.DataFrame(rows, columns=["variable", *STAT_COLUMNS]).set_index("variable")


def omb_oma(observations: pd.DataFrame, background: xr.Dataset, analysis: xr.Dataset,
            variables: Sequence[str] | None = None, normalised: bool = False) -> pd.DataFrame:
    """O-B and O-A statistics side by side: columns ``omb_n, omb_mean, omb_std, omb_rms, oma_...`` per variable."""
    b = departure_stats(observations, departures(background, observations, variables), normalised)
    a = departure_stats(observations, departures(analysis, observations, variables), normalised)
    return pd.concat([b.add_prefix("omb_"), a.add_prefix("oma_")], axis=1)
