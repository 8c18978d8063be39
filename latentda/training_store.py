"""The training store of a run: the standardised anomalies of the training fields (root, float32, about a year
per chunk) and the climatology they were taken against (group ``climatology``), in one Zarr v3 store.

Written by the ingest step, read by training (:func:`training_fields` gives physical units back). Derived data:
rewriting it replaces what is there. No orchestration import.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from . import storage
from .archive_layout import TIME_ENCODING

__all__ = ["write_training_store", "open_training_store", "training_fields"]


def _store(url: str, storage_options: Mapping[str, Any] | None, read_only: bool = False):
    return storage.zarr_store(url, storage_options or None, read_only=read_only)


def write_training_store(fields: xr.Dataset, variables: Sequence[str], url: str, n_harmonics: int = 0,
                         attrs: Mapping[str, Any] | None = None,
                         storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit the climatology of ``fields`` (physical units, time/lat/lon) and write the standardised anomalies
    (root, float32, ~1 year per chunk) and the climatology coefficients (group ``climatology``) to a Zarr store.

    Replaces whatever is at ``url`` (the training store is derived data). ``attrs`` go into the root attributes
    (e.g. the ingest key). Returns ``{"url", "days", "start", "end"}``.
    """
    from .fields import check_variables
    from .grid import normalize_grid
    from .normalization import fit_climatology, to_anomalies

    fields = normalize_grid(fields)
    check_variables(fields, variables)
    if fields.sizes.get("time", 0) < 2:
        raise ValueError(f"training fields need at least 2 days, got {fields.sizes.get('time', 0)}")
    clim = fit_climatology(fields, variables, n_harmonics=n_harmonics)
    anoms = to_anomalies(fields[list(variables)], clim, variables)
    anoms = xr.Dataset({v: anoms[v].astype(np.float32) for v in variables})
    for v in variables:
        anoms[v].attrs["physical_units"] = fields[v].attrs.get("units", "")
    anoms.attrs = {f"latentda:{k}" if not k.startswith("latentda:") else k: (
        v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True, default=str))
        for k, v in (attrs or {}).items()}
    nt = anoms.sizes["time"]
    enc = {v: {"chunks": (min(nt, 366), *anoms[v].shape[1:])} for v in variables}
    enc["time"] = dict(TIME_ENCODING)
    anoms.to_zarr(_store(url, storage_options), mode="w", zarr_format=3, consolidated=False, encoding=enc)
    clim.to_zarr(_store(url, storage_options), group="climatology", mode="w", zarr_format=3, consolidated=False)
    t = pd.DatetimeIndex(anoms["time"].values)
    return {"url": url, "days": int(nt), "start": str(t[0].date()), "end": str(t[-1].date())}


def open_training_store(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """``(anomalies, climatology)`` of a training store written by :func:`write_training_store` (loaded)."""
    if not storage.exists(url, storage_options or None):
        raise FileNotFoundError(f"no training store at {storage.redact(url)!r}; run the ingest step first")
    anoms = xr.open_zarr(_store(url, storage_options, read_only=True), consolidated=False, chunks=None,
                         zarr_format=3).load()
    clim = xr.open_zarr(_store(url, storage_options, read_only=True), group="climatology", consolidated=False,
                        chunks=None, zarr_format=3).load()
    return anoms, clim


def training_fields(url: str, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The training fields in physical units (anomalies x std + mean), CF attributes restored."""
    from .normalization import from_anomalies

    anoms, clim = open_training_store(url, storage_options)
    phys = from_anomalies(anoms, clim)
    return xr.Dataset({v: phys[v].astype(np.float32) for v in clim.attrs["variables"]}, attrs=dict(anoms.attrs))
