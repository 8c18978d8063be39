"""Flow ``train``: ingest the training fields through the catalog, then train the prior (on a GPU worker if any)."""
from __future__ import annotations

import contextlib
import os

import dask
from prefect import flow, get_run_logger

from latentda import storage
from latentda.config import load_config
from tasks.archive import archive_exists
from tasks.ingest import ingest
from tasks.train import train_prior

from .runners import task_runner_from_config, use_gpu


def _iso(d) -> str | None:
    return None if d is None else str(d)


def field_steps(cfg) -> dict | None:
    """The declared ingestion steps of the fields entry (run config ``ingest.fields``) as a dict, or None."""
    return cfg.ingest.fields.model_dump(mode="json") if cfg.ingest and cfg.ingest.fields else None


@flow(name="train")
def train(config_path: str, overrides: dict | None = None, retrain: bool = False, progress: bool = True) -> dict:
    """Ingest (catalog -> training store) then train the prior; returns ``{"path", "checksum", "trained", ...}``."""
    log = get_run_logger()
    cfg = load_config(config_path, overrides)
    so = cfg.archive.storage_options
    ingest_task = ingest.with_options(refresh_cache=retrain or not archive_exists(cfg.training_store))
    ref = ingest_task.submit(cfg.catalog.path, cfg.catalog.fields, list(cfg.variables), _iso(cfg.train.start),
                             _iso(cfg.train.end), int(cfg.prior.n_harmonics or 0), cfg.training_store,
                             cfg.hash, steps=field_steps(cfg)).result()
    log.info("training store: %s (%d days %s..%s)", storage.redact(ref["url"]), ref["days"], ref["start"],
             ref["end"])
    threads = None
    if cfg.cluster.profile == "local":
        threads = min(os.cpu_count() or 1, cfg.cluster.n_workers * cfg.cluster.threads_per_worker)
    train_task = train_prior.with_options(refresh_cache=retrain or not archive_exists(cfg.prior_path, so))
    gpu = use_gpu(cfg.cluster)
    ctx = dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext()
    with ctx:
        fut = train_task.submit(ref["url"], ref["key"], cfg.prior.prior_config(), list(cfg.variables),
                                cfg.prior_path, cfg.hash, threads=threads, progress=progress)
    out = fut.result()
    log.info("prior %s: %s (checksum %s, %s)", "trained" if out["trained"] else "reused",
             storage.redact(out["path"]), out["checksum"][:12], "GPU worker" if gpu else "CPU")
    return dict(out, training_store=ref["url"], gpu=gpu)


def run_train(config_path: str, overrides: dict | None = None, retrain: bool = False, progress: bool = True) -> dict:
    """Run the ``train`` flow on the Dask cluster the config asks for."""
    cfg = load_config(config_path, overrides)
    runner = task_runner_from_config(cfg.cluster)
    return train.with_options(task_runner=runner)(config_path=str(config_path), overrides=overrides,
                                                  retrain=retrain, progress=progress)
