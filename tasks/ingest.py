"""Ingest task: read the training fields through the input catalog, write anomalies + climatology to Zarr."""
from __future__ import annotations

import json

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.hashing import hash_objects

import latentda
from latentda import storage
from latentda.config import RunConfig
from latentda.grid import normalize_grid
from latentda.training_store import open_training_store, write_training_store

from . import catalog as catalog_io
from .archive import RETRY_IO


def train_period(config: RunConfig) -> tuple[str, str]:
    """The training period: the config's, else the entry's ``train_period`` metadata (clear error if neither)."""
    catalog_path, fields_entry = config.catalog.path, config.catalog.fields
    if config.train.start is not None and config.train.end is not None:
        return str(config.train.start), str(config.train.end)
    meta = catalog_io.entry_metadata(catalog_path, fields_entry)
    period = meta.get("train_period")
    if not period or len(period) != 2:
        raise ValueError(f"no training period: set train.start/train.end in the run config, or give entry "
                         f"{fields_entry!r} of {catalog_path} a metadata train_period: [start, end]")
    return str(period[0]), str(period[1])


def field_steps(config: RunConfig) -> dict | None:
    """The declared ingestion steps of the fields entry (run config ``ingest.fields``) as a dict, or None."""
    return config.ingest.fields.model_dump(mode="json") if config.ingest and config.ingest.fields else None


def ingest_key(config: RunConfig, start: str, end: str) -> str:
    """What determines the training store: the catalog file's own content, the fields entry, the variables, the
    training period ``start..end``, the climatology harmonics, the latentda version and the ingestion steps."""
    with storage.open(config.catalog.path, "rb") as f:
        cat_bytes = f.read()
    steps = field_steps(config)
    extra = () if not steps else (json.dumps(steps, sort_keys=True),)
    return hash_objects(cat_bytes, config.catalog.fields, list(config.variables), str(start), str(end),
                        int(config.prior.n_harmonics), latentda.__version__, *extra)


def read_training_fields(config: RunConfig):
    """The fields entry through the catalog, then the declared steps (``latentda.ingest.steps.FieldSteps``; none:
    the entry is used as it is), on the normalised grid. Lazy; every check of the steps runs here."""
    ds = catalog_io.read_fields(config.catalog.path, config.catalog.fields)
    steps = config.ingest.fields if config.ingest else None
    if steps:
        from latentda.ingest.fields import apply_field_steps

        ds = apply_field_steps(ds, steps)
    return normalize_grid(ds)


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False, **RETRY_IO)
def ingest(config: RunConfig, refresh: bool = False) -> dict:
    """The run's training fields (entry ``catalog.fields``, read ONLY through the catalog) over the training
    period -> the run's training store.

    Skips the work when the store already exists with the same ingest key (what determines its content: the
    catalog file, entry, variables, period, harmonics, latentda version), unless ``refresh``. No Prefect result
    cache: the store itself is checked. Returns ``{"url", "key", "days", "start", "end", "cached"}``.
    """
    log = get_run_logger()
    catalog_path, fields_entry, variables = config.catalog.path, config.catalog.fields, list(config.variables)
    n_harmonics, out_url = int(config.prior.n_harmonics), config.training_store
    storage_options = dict(config.archive.storage_options) or None
    start, end = train_period(config)
    key = ingest_key(config, start, end)
    try:
        anoms, _ = open_training_store(out_url, storage_options)
        if anoms.attrs.get("latentda:ingest_key") == key and not refresh:
            log.info("training store %s is up to date (%d days): cached", storage.redact(out_url),
                     anoms.sizes["time"])
            t = pd.DatetimeIndex(anoms["time"].values)
            return {"url": out_url, "key": key, "days": int(t.size), "start": str(t[0].date()),
                    "end": str(t[-1].date()), "cached": True}
    except FileNotFoundError:
        pass
    ds = read_training_fields(config)
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
             "period": f"{start}/{end}", "config_hash": config.hash}
    ref = write_training_store(ds, variables, out_url, n_harmonics=n_harmonics, attrs=attrs,
                               storage_options=storage_options)
    return dict(ref, key=key, cached=False)
