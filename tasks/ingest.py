"""Ingest task: read the training fields through the input catalog, write anomalies + climatology to Zarr."""
from __future__ import annotations

import json

import pandas as pd
from prefect import get_run_logger, task
from prefect.utilities.hashing import hash_objects

import latentda
from latentda import archive as lib
from latentda import storage
from latentda.grid import normalize_grid

from . import catalog as catalog_io
from .archive import CACHE_POLICY, retry_on_io


def train_period(catalog_path: str, fields_entry: str, start: str | None, end: str | None) -> tuple[str, str]:
    """The training period: the config's, else the entry's ``train_period`` metadata (clear error if neither)."""
    if start and end:
        return str(start), str(end)
    meta = catalog_io.entry_metadata(catalog_path, fields_entry)
    period = meta.get("train_period")
    if not period or len(period) != 2:
        raise ValueError(f"no training period: set train.start/train.end in the run config, or give entry "
                         f"{fields_entry!r} of {catalog_path} a metadata train_period: [start, end]")
    return str(period[0]), str(period[1])


def ingest_key(catalog_path: str, fields_entry: str, variables: list[str], start: str, end: str,
               n_harmonics: int, steps: dict | None = None) -> str:
    """What determines the training store (the catalog file's own content and the ingestion steps included)."""
    with storage.open(catalog_path, "rb") as f:
        cat_bytes = f.read()
    extra = () if not steps else (json.dumps(steps, sort_keys=True),)
    return hash_objects(cat_bytes, fields_entry, list(variables), str(start), str(end), int(n_harmonics),
                        latentda.__version__, *extra)


def read_training_fields(catalog_path: str, fields_entry: str, steps: dict | None = None):
    """The fields entry through the catalog, then the declared steps (``latentda.ingest.steps.FieldSteps`` as a
    dict; None: the entry is used as it is), on the normalised grid. Lazy; every check of the steps runs here."""
    ds = catalog_io.read_fields(catalog_path, fields_entry)
    if steps:
        from latentda.ingest.fields import apply_field_steps
        from latentda.ingest.steps import FieldSteps

        ds = apply_field_steps(ds, FieldSteps.model_validate(steps))
    return normalize_grid(ds)


@task(name="ingest", cache_policy=CACHE_POLICY, persist_result=True, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_on_io)
def ingest(catalog_path: str, fields_entry: str, variables: list[str], start: str | None, end: str | None,
           n_harmonics: int, out_url: str, config_hash: str, storage_options: dict | None = None,
           steps: dict | None = None) -> dict:
    """Training fields of ``fields_entry`` (read ONLY through the catalog, then the declared ingestion ``steps``)
    over ``start..end`` -> training store.

    Skips the work when ``out_url`` already holds a store with the same ingest key. Returns a reference
    ``{"url", "key", "days", "start", "end"}``.
    """
    log = get_run_logger()
    start, end = train_period(catalog_path, fields_entry, start, end)
    key = ingest_key(catalog_path, fields_entry, variables, start, end, n_harmonics, steps)
    try:
        anoms, _ = lib.open_training_store(out_url, storage_options)
        if anoms.attrs.get("latentda:ingest_key") == key:
            log.info("training store %s is up to date (%d days)", storage.redact(out_url), anoms.sizes["time"])
            t = pd.DatetimeIndex(anoms["time"].values)
            return {"url": out_url, "key": key, "days": int(t.size), "start": str(t[0].date()),
                    "end": str(t[-1].date())}
    except FileNotFoundError:
        pass
    ds = read_training_fields(catalog_path, fields_entry, steps)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"variable(s) {missing} not in catalog entry {fields_entry!r}; it has {sorted(ds.data_vars)}")
    ds = ds[list(variables)].sel(time=slice(start, end))
    if ds.sizes["time"] < 2:
        raise ValueError(f"catalog entry {fields_entry!r} has {ds.sizes['time']} day(s) in {start}..{end}")
    ds = ds.load(scheduler="synchronous")
    log.info("ingesting %d days x %d variables of %r (%s..%s)", ds.sizes["time"], len(variables), fields_entry,
             start, end)
    attrs = {"ingest_key": key, "catalog": json.dumps({"path": str(catalog_path), "entry": fields_entry}),
             "period": f"{start}/{end}", "config_hash": config_hash}
    ref = lib.write_training_store(ds, variables, out_url, n_harmonics=n_harmonics, attrs=attrs,
                                   storage_options=storage_options)
    return dict(ref, key=key)
