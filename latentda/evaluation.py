"""Evaluation of a reanalysis: skill against a gridded truth or against held-out stations, as tables.

Scores per variable over the evaluated days (each a per-day latitude-weighted score from :mod:`latentda.metrics`,
then averaged over days, the WeatherBench2 convention):

* ``rmse``: analysis mean vs truth; ``rmse_clim``: climatological mean vs truth (the no-skill reference);
  ``skill = 1 - rmse / rmse_clim`` (1 perfect, 0 no better than climatology);
* ``bias``; ``spread`` = sqrt(mean spread^2); ``spread_skill`` (``spread_skill_ratio_gaussian`` with the
  finite-ensemble correction); ``crps`` (Gaussian CRPS of mean +- spread); ``coverage90`` (90 % interval);
* against stations: O-A departures ``y - H(analysis)`` at stations never assimilated: ``n``, ``rms``, ``mean``.

Held-out stations are chosen by :func:`heldout_stations` from the station id alone (a hash), so the assimilation
and the evaluation agree on them without sharing state. No orchestration import.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from . import metrics
from .grid import Grid, normalize_grid
from .normalization import climatology_at

__all__ = ["heldout_stations", "skill_vs_truth", "skill_vs_stations", "fit_summary", "markdown_table"]


def heldout_stations(station_ids: Iterable[str], fraction: float, seed: int = 0) -> list[str]:
    """The station ids held out of the assimilation: ``u(id) < fraction`` with ``u`` a sha256-based uniform.

    Deterministic in (id, seed); about ``fraction`` of the ids; ``fraction = 0`` holds out none.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction {fraction} must be in [0, 1)")
    if fraction == 0:
        return []
    out = []
    for sid in sorted({str(s) for s in station_ids}):
        u = int.from_bytes(hashlib.sha256(f"{seed}:{sid}".encode()).digest()[:8], "big") / 2.0 ** 64
        if u < fraction:
            out.append(sid)
    return out


def _check_grid(a: xr.Dataset, b: xr.Dataset, what: str) -> None:
    ga, gb = Grid.from_dataset(a), Grid.from_dataset(b)
    if not ga.matches(gb):
        raise ValueError(f"{what} grid {gb.describe()} differs from the analysis grid {ga.describe()}; "
                         "regrid the truth first")


def skill_vs_truth(analysis: xr.Dataset, truth: xr.Dataset, variables: Sequence[str],
                   climatology: xr.Dataset | None = None, members: int | None = None) -> pd.DataFrame:
    """Scores of the analysis (``<var>``, ``<var>_spread`` on time, lat, lon) against ``truth`` on common days.

    ``climatology``: the coefficient dataset of :func:`latentda.normalization.fit_climatology` (adds
    ``rmse_clim`` and ``skill``). ``members``: ensemble size behind the spread (finite-ensemble correction).
    Returns a DataFrame indexed by variable.
    """
    truth = normalize_grid(truth)
    _check_grid(analysis, truth, "truth")
    t = np.intersect1d(analysis["time"].values, truth["time"].values)
    if t.size == 0:
        raise ValueError("the analysis and the truth have no day in common")
    rows = []
    for v in variables:
        if v not in truth:
            raise KeyError(f"variable {v!r} not in the truth dataset; it has {sorted(truth.data_vars)}")
        a = analysis[v].sel(time=t).load()
        s = analysis[f"{v}_spread"].sel(time=t).load()
        y = truth[v].sel(time=t).transpose("time", "lat", "lon").load()
        y = y.assign_coords(lat=a["lat"].values, lon=a["lon"].values)
        rmse_t = metrics.rmse(a, y)
        row = {"variable": v, "units": analysis[v].attrs.get("units", ""), "days": int(t.size),
               "rmse": float(rmse_t.mean()), "bias": float(metrics.bias(a, y).mean()),
               "spread": float(np.sqrt(metrics.spatial_mean(s ** 2).mean())),
               "spread_skill": float(metrics.spread_skill_ratio_gaussian(a, s, y, n_members=members,
                                                                         dims=("time", "lat", "lon"))),
               "crps": float(metrics.crps_gaussian(a, s, y).mean()),
               "coverage90": float(metrics.interval_coverage_gaussian(a, s, y, 0.9).mean())}
        if climatology is not None:
            mean, _ = climatology_at(climatology, v, t)
            c = xr.DataArray(mean.astype(np.float32), dims=("time", "lat", "lon"), coords=a.coords)
            row["rmse_clim"] = float(metrics.rmse(c, y).mean())
            row["skill"] = 1.0 - row["rmse"] / row["rmse_clim"] if row["rmse_clim"] > 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("variable")


def skill_vs_stations(analysis: xr.Dataset, observations: pd.DataFrame, variables: Sequence[str]) -> pd.DataFrame:
    """O-A statistics (``n``, ``mean``, ``rms``; normalised ``rms_norm``) at the given stations over all days.

    ``observations``: table rows of the evaluated days (usually the held-out stations only).
    """
    parts, norm = [], []
    for t in np.unique(pd.to_datetime(observations["time"]).dt.normalize().values):
        if t not in analysis["time"].values:
            continue
        rows = observations[pd.to_datetime(observations["time"]).dt.normalize().values == t]
        rows = rows[rows["variable"].isin(variables)]
        if rows.empty:
            continue
        day = analysis[[v for v in variables]].sel(time=[t])
        d = metrics.departures(day, rows, variables)
        parts.append(pd.DataFrame({"variable": rows["variable"].values, "d": d,
                                   "dn": d / rows["error"].values if "error" in rows else np.nan}))
    if not parts:
        return pd.DataFrame(columns=["n", "mean", "rms", "rms_norm"]).rename_axis("variable")
    df = pd.concat(parts, ignore_index=True).dropna(subset=["d"])
    g = df.groupby("variable")
    rms = lambda x: float(np.sqrt((x ** 2).mean()))  # noqa: E731
    out = pd.DataFrame({"n": g["d"].size(), "mean": g["d"].mean(), "rms": g["d"].apply(rms),
                        "rms_norm": g["dn"].apply(rms)})
    return out


def fit_summary(archive_days: xr.Dataset) -> dict[str, float]:
    """Means over the given (done) days of the fit to the observations and observation counts."""
    out = {}
    for name in ("fit_before", "fit_after", "obs_used", "obs_rejected", "converged_fraction"):
        if name in archive_days:
            vals = np.asarray(archive_days[name].values, dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out[name] = float(vals.mean()) if vals.size else math.nan
    return out


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table of ``df`` (index as the first column)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]

    def fmt(x) -> str:
        if isinstance(x, (float, np.floating)):
            return "nan" if not np.isfinite(x) else f"{x:.{digits}g}"
        return str(x)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([fmt(idx)] + [fmt(x) for x in row.values]) + " |")
    return "\n".join(lines)
