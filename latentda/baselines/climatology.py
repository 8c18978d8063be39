"""Climatology baseline: the analysis ignores the observations.

    mean(d) = m(d),   spread(d) = s(d)

with ``m``, ``s`` the harmonic day-of-year climatological mean and standard deviation of
:mod:`latentda.normalization` (physical units). The observations are still validated (same QC as every other
method) so that the diagnostics (used/rejected counts, fit to observations) are comparable.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from ..analysis import analysis_dataset
from .common import check_members, climatology_fields, day_of, diagnostics, prepare_observations, resolve_background


def climatology(background: Any, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
                default_error: float | Mapping[str, float] | None = None, keep_members: bool = False
                ) -> xr.Dataset:
    """Climatological analysis of the day of ``time`` in the :func:`latentda.analysis.analysis_dataset` layout.

    ``background``: a prior, a fitted baseline model or a climatology ``xr.Dataset`` (anything with
    ``variables, grid, climatology``). ``observations``: observation table (ARCHITECTURE.md columns), only validated
    and used for diagnostics. ``members``/``seed`` are accepted for a common signature; the output is the
    climatological mean and standard deviation (no members: ``keep_members=True`` raises ValueError).
    Diagnostics: ``fit_before == fit_after`` (RMS of ``(y - H m)/sigma``), ``cost`` NaN, ``iterations`` 0.
    """
    check_members(members)
    if keep_members:
        raise ValueError("the climatology baseline has a mean and a spread but no members; use keep_members=False")
    bg = resolve_background(background)
    mean, std = climatology_fields(bg, time)
    obs = prepare_observations(observations, bg, time, mean, std, default_error)
    diag = diagnostics(obs, mean, mean, cost=np.nan)
    return analysis_dataset(mean[None], list(bg.variables), bg.grid, day_of(time), diag, "climatology",
                            obs.qc_counts, var_attrs=bg.var_attrs, mean=mean, spread=std,
                            attrs={"background": "climatology"})
