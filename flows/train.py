"""Flow ``train``: ingest the training fields through the catalog, then train the prior (on a GPU worker if any)."""
from __future__ import annotations

import contextlib
import os

import dask
from prefect import flow, get_run_logger

from latentda import storage
from latentda.config import load_config
from tasks.ingest import ingest
from tasks.train import TrainRequest, train_prior

from . import untagged_tasks
from .runners import task_runner_from_config, use_gpu, worker_size


@flow(name="train")
def train(config_path: str, overrides: dict | None = None, retrain: bool = False, progress: bool = True) -> dict:
    """Ingest (catalog -> training store) then train the prior; returns ``{"path", "checksum", "trained", ...}``."""
    with untagged_tasks():
        return _train(config_path=config_path, overrides=overrides, retrain=retrain, progress=progress)


def _train(config_path: str, overrides: dict | None = None, retrain: bool = False, progress: bool = True) -> dict:
    """The body of :func:`train`."""
    log = get_run_logger()
    cfg = load_config(config_path, overrides)
    ref = ingest(cfg, retrain)
    log.info("training store: %s (%d days %s..%s)%s", storage.redact(ref["url"]), ref["days"], ref["start"],
             ref["end"], " (cached)" if ref["cached"] else "")
    threads = None
    if cfg.cluster.profile == "local":
        threads = min(os.cpu_count() or 1, worker_size(cfg.cluster).threads)
    gpu = use_gpu(cfg.cluster)
    ctx = dask.annotate(resources={"GPU": 1}) if gpu else contextlib.nullcontext()
    with ctx:
        fut = train_prior.submit(cfg, TrainRequest(training=ref, threads=threads, progress=progress,
                                                   retrain=retrain))
    out = fut.result()
    log.info("prior %s: %s (checksum %s, %s)", "trained" if out["trained"] else "reused (checksum verified)",
             storage.redact(out["path"]), out["checksum"][:12], "GPU worker" if gpu else "CPU")
    return dict(out, training_store=ref["url"], gpu=gpu)


def run_train(config_path: str, overrides: dict | None = None, retrain: bool = False, progress: bool = True) -> dict:
    """Run the ``train`` flow on the Dask cluster the config asks for."""
    cfg = load_config(config_path, overrides)
    runner = task_runner_from_config(cfg.cluster)
    return train.with_options(task_runner=runner)(config_path=str(config_path), overrides=overrides,
                                                  retrain=retrain, progress=progress)
