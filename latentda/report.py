"""The evaluation report of a run's archive: fit to the assimilated observations, skill against a gridded truth
and against held-out stations over the done days of a range (Markdown + JSON-able tables), and the quicklook of one
day. The truth and the observations are given as data (the task layer reads them through the catalog).
No orchestration import.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import archive
from . import evaluation as ev
from .backfill import holdout_for, observations_for_day
from .grid import normalize_grid
from .quicklook import quicklook
from .runtime import to_days

__all__ = ["done_days_of", "truth_for_days", "evaluate_archive", "quicklook_day"]


def done_days_of(config, start: str | None, end: str | None) -> xr.Dataset:
    """The archive restricted to the done days of ``start..end`` (lazy)."""
    ds = archive.open_archive(config.archive_url, config.archive.storage_options)
    if start or end:
        ds = ds.sel(time=slice(start, end))
    return ds.isel(time=np.nonzero(ds[archive.DONE].values.astype(bool))[0])


def truth_for_days(truth: xr.Dataset, variables: list[str], days) -> xr.Dataset:
    """``truth`` (any grid orientation) on ``days`` (its times floored to the day), loaded."""
    truth = normalize_grid(truth)[list(variables)]
    truth = truth.assign_coords(time=pd.DatetimeIndex(truth["time"].values).floor("D"))
    common = pd.DatetimeIndex(days).intersection(pd.DatetimeIndex(truth["time"].values))
    return truth.sel(time=common.values).load(scheduler="synchronous")


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate_archive(config, start: str | None = None, end: str | None = None, *, truth: xr.Dataset | None = None,
                     observations: pd.DataFrame | None = None, climatology: xr.Dataset | None = None) -> dict:
    """Scores of the done days of ``start..end``: fit to observations, skill vs ``truth`` (if given) and vs the
    held-out stations of ``observations`` (if the config holds some out).

    Returns JSON-able ``{"days", "start", "end", "fit", "truth", "stations", "markdown"}`` (tables as
    ``{variable: {score: value}}``; ``markdown`` renders them).
    """
    variables = list(config.variables)
    ds = done_days_of(config, start, end)
    n = int(ds.sizes["time"])
    out: dict[str, Any] = {"days": n, "start": start, "end": end, "fit": {}, "truth": None, "stations": None}
    if n == 0:
        out["markdown"] = "No day of the range is done yet: nothing to evaluate."
        return out
    out["start"] = str(pd.Timestamp(ds.time.values[0]).date())
    out["end"] = str(pd.Timestamp(ds.time.values[-1]).date())
    out["fit"] = ev.fit_summary(ds)
    md = [f"Days evaluated: **{n}** ({out['start']} .. {out['end']})", "",
          "Fit to the assimilated observations (RMS of normalised departures, mean over days): "
          f"before {out['fit'].get('fit_before', float('nan')):.3f}, "
          f"after {out['fit'].get('fit_after', float('nan')):.3f}; "
          f"observations used per day {out['fit'].get('obs_used', float('nan')):.0f}"]
    entry = config.catalog.truth
    if truth is not None:
        truth = truth_for_days(truth, variables, ds["time"].values)
        if truth.sizes["time"] == 0:
            md += ["", f"The truth `{entry}` has no day in this range: no gridded skill."]
            truth = None
    if truth is not None:
        table = ev.skill_vs_truth(ds[[*variables, *[f"{v}_spread" for v in variables]]].load(), truth, variables,
                                  climatology=climatology, members=config.assimilation.members)
        out["truth"] = _clean(table.to_dict(orient="index"))
        md += ["", f"Skill against the gridded truth `{entry}` (latitude-weighted, mean over days):", "",
               ev.markdown_table(table)]
    if config.evaluation.holdout_fraction and observations is not None:
        held = set(holdout_for(config, observations))
        rows = observations[observations["station_id"].astype(str).isin(held).values]
        t = pd.to_datetime(rows["time"]).dt.normalize()
        rows = rows[t.isin(pd.DatetimeIndex(ds["time"].values)).values]
        if len(rows):
            st = ev.skill_vs_stations(ds[variables].load(), rows, variables)
            out["stations"] = _clean(st.to_dict(orient="index"))
            md += ["", f"O-A at {len(held)} held-out stations (never assimilated):", "", ev.markdown_table(st)]
    out["markdown"] = "\n".join(md)
    return _clean(out)


def quicklook_day(config, day: str, variable: str, out_png: str, *, truth: xr.Dataset | None = None,
                  observations: pd.DataFrame | None = None) -> str:
    """Quicklook PNG of one archived day: mean, spread with the assimilated observation locations, truth."""
    ds = archive.open_archive(config.archive_url, config.archive.storage_options)
    d = to_days(day)[0]
    if d not in pd.DatetimeIndex(ds["time"].values):
        raise ValueError(f"day {d.date()} is outside the archive period "
                         f"{str(ds.time.values[0])[:10]}..{str(ds.time.values[-1])[:10]}")
    one = ds.sel(time=[np.datetime64(d, "ns")])
    if not bool(one[archive.DONE].values[0]):
        raise ValueError(f"day {d.date()} is not done in the archive yet; run `latentda backfill` or `daily` first")
    one = one[[variable, f"{variable}_spread"]].load()
    obs = None
    if observations is not None:
        obs = observations_for_day(observations, d, holdout_for(config, observations))
    if truth is not None:
        truth = truth_for_days(truth, [variable], [d])
        truth = truth if truth.sizes["time"] else None
    return quicklook(one, variable, out_png, observations=obs, truth=truth,
                     title=f"latentda reanalysis: {variable} on {d.date()}",
                     members=int(ds.attrs.get("latentda:members", 0)) or None)
