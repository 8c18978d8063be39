"""Evaluation tasks: skill of the archive against a gridded truth or held-out stations; quicklook PNGs."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from prefect import task
from prefect.cache_policies import NO_CACHE

from latentda import archive as lib
from latentda import evaluation as ev
from latentda.grid import normalize_grid
from latentda.quicklook import quicklook

from . import catalog as catalog_io
from .archive import retry_on_io
from .assimilate import holdout_for, read_observations


def _done_days(url: str, storage_options: dict, start: str | None, end: str | None):
    ds = lib.open_archive(url, storage_options)
    if start or end:
        ds = ds.sel(time=slice(start, end))
    done = ds[lib.DONE].values.astype(bool)
    return ds.isel(time=np.nonzero(done)[0])


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _truth(catalog_path: str, entry: str, variables: list[str], days) -> xr.Dataset:
    """The truth of ``days`` (dates; the entry's times floored to the day) read through the catalog, loaded."""
    truth = normalize_grid(catalog_io.read_fields(catalog_path, entry))[list(variables)]
    truth = truth.assign_coords(time=pd.DatetimeIndex(truth["time"].values).floor("D"))
    common = pd.DatetimeIndex(days).intersection(pd.DatetimeIndex(truth["time"].values))
    return truth.sel(time=common.values).load(scheduler="synchronous")


def evaluate_archive(url: str, storage_options: dict, variables: list[str], start: str | None = None,
                     end: str | None = None, catalog_path: str | None = None, truth_entry: str | None = None,
                     obs_entry: str | None = None, holdout_fraction: float = 0.0, seed: int = 0,
                     training_url: str | None = None, members: int | None = None) -> dict:
    """Scores of the done days of ``start..end``: fit to observations, skill vs truth and vs held-out stations.

    Returns JSON-able ``{"days", "start", "end", "fit", "truth", "stations", "markdown"}`` (tables as
    ``{variable: {score: value}}``; ``markdown`` renders them).
    """
    ds = _done_days(url, storage_options, start, end)
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
    truth = _truth(catalog_path, truth_entry, variables, ds["time"].values) if truth_entry and catalog_path \
        else None
    if truth is not None and truth.sizes["time"] == 0:
        md += ["", f"The truth `{truth_entry}` has no day in this range: no gridded skill."]
        truth = None
    if truth is not None:
        clim = None
        if training_url:
            try:
                _, clim = lib.open_training_store(training_url, storage_options)
            except FileNotFoundError:
                clim = None
        table = ev.skill_vs_truth(ds[[*variables, *[f"{v}_spread" for v in variables]]].load(), truth, variables,
                                  climatology=clim, members=members)
        out["truth"] = _clean(table.to_dict(orient="index"))
        md += ["", f"Skill against the gridded truth `{truth_entry}` (latitude-weighted, mean over days):", "",
               ev.markdown_table(table)]
    if holdout_fraction and obs_entry and catalog_path:
        obs = read_observations(catalog_path, obs_entry)
        held = set(holdout_for(obs, holdout_fraction, seed))
        rows = obs[obs["station_id"].astype(str).isin(held).values]
        t = pd.to_datetime(rows["time"]).dt.normalize()
        rows = rows[t.isin(pd.DatetimeIndex(ds["time"].values)).values]
        if len(rows):
            st = ev.skill_vs_stations(ds[list(variables)].load(), rows, variables)
            out["stations"] = _clean(st.to_dict(orient="index"))
            md += ["", f"O-A at {len(held)} held-out stations (never assimilated):", "", ev.markdown_table(st)]
    out["markdown"] = "\n".join(md)
    return _clean(out)


@task(name="evaluate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_io)
def evaluate(url: str, storage_options: dict, variables: list[str], start: str | None = None,
             end: str | None = None, catalog_path: str | None = None, truth_entry: str | None = None,
             obs_entry: str | None = None, holdout_fraction: float = 0.0, seed: int = 0,
             training_url: str | None = None, members: int | None = None) -> dict:
    """Task wrapper of :func:`evaluate_archive`."""
    return evaluate_archive(url, storage_options, variables, start, end, catalog_path, truth_entry, obs_entry,
                            holdout_fraction, seed, training_url, members)


def quicklook_for_day(url: str, storage_options: dict, day: str, variable: str, out_png: str,
                      catalog_path: str | None = None, obs_entry: str | None = None,
                      truth_entry: str | None = None, holdout_fraction: float = 0.0, seed: int = 0) -> str:
    """Quicklook PNG of one archived day: mean, spread with the assimilated observation locations, truth."""
    ds = lib.open_archive(url, storage_options)
    d = lib.to_days(day)[0]
    if d not in pd.DatetimeIndex(ds["time"].values):
        raise ValueError(f"day {d.date()} is outside the archive period "
                         f"{str(ds.time.values[0])[:10]}..{str(ds.time.values[-1])[:10]}")
    one = ds.sel(time=[np.datetime64(d, "ns")])
    if not bool(one[lib.DONE].values[0]):
        raise ValueError(f"day {d.date()} is not done in the archive yet; run `latentda backfill` or `daily` first")
    one = one[[variable, f"{variable}_spread"]].load()
    obs = None
    if catalog_path and obs_entry:
        table = read_observations(catalog_path, obs_entry)
        obs = lib.observations_for_day(table, d, holdout_for(table, holdout_fraction, seed))
    truth = None
    if catalog_path and truth_entry:
        truth = _truth(catalog_path, truth_entry, [variable], [d])
        truth = truth if truth.sizes["time"] else None
    return quicklook(one, variable, out_png, observations=obs, truth=truth,
                     title=f"latentda reanalysis: {variable} on {d.date()}")


@task(name="quicklook", cache_policy=NO_CACHE, retries=1, retry_condition_fn=retry_on_io)
def make_quicklook(url: str, storage_options: dict, day: str, variable: str, out_png: str,
                   catalog_path: str | None = None, obs_entry: str | None = None, truth_entry: str | None = None,
                   holdout_fraction: float = 0.0, seed: int = 0) -> str:
    """Task wrapper of :func:`quicklook_for_day`."""
    return quicklook_for_day(url, storage_options, day, variable, out_png, catalog_path, obs_entry, truth_entry,
                             holdout_fraction, seed)
