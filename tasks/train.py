"""Train task: fit the VAE prior on the training store and save the checkpoint (runs on a GPU worker if any)."""
from __future__ import annotations

import dataclasses
import json
import os

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import latentda
from latentda import storage
from latentda.config import RunConfig
from latentda.prior import training_summary
from latentda.runtime import torch_threads
from latentda.training_store import training_fields

from .archive import RETRY_IO


def _sidecar(path: str) -> str:
    return path + ".json"


def _read_sidecar(path: str, storage_options: dict | None) -> dict | None:
    try:
        with storage.open(_sidecar(path), "rb", storage_options) as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """What the train task needs besides the run config: the training store reference made by the ingest task,
    torch threads (None: torch's setting), a progress bar, and ``retrain`` (ignore an up-to-date checkpoint)."""

    training: dict
    threads: int | None = None
    progress: bool = True
    retrain: bool = False


@task(name="train-prior", cache_policy=NO_CACHE, persist_result=False, **dict(RETRY_IO, retries=1))
def train_prior(config: RunConfig, request: TrainRequest) -> dict:
    """Train ``latentda.train_prior`` on the training store and save it to the run's prior path.

    Reuses the checkpoint (no training) when its sidecar (``path + ".json"``) says it was trained from the same
    training data, prior config and latentda version AND the checkpoint loads and its checksum still matches (no
    Prefect result cache: the file itself is verified every time). Returns ``{"path", "checksum", "trained",
    "summary"}`` (summary: how the training ended, ``latentda.prior.training_summary``).
    """
    log = get_run_logger()
    training_url, training_key = request.training["url"], request.training["key"]
    prior_config, variables, out_path = config.prior.prior_config(), list(config.variables), config.prior_path
    storage_options = dict(config.archive.storage_options) or None
    threads, progress = request.threads, request.progress
    want = {"training_key": training_key, "prior_config": prior_config, "variables": list(variables),
            "latentda_version": latentda.__version__}
    side = None if request.retrain else _read_sidecar(out_path, storage_options)
    if side and {k: side.get(k) for k in want} == json.loads(json.dumps(want)):
        try:
            prior = latentda.load_prior(out_path, device="cpu", storage_options=storage_options or None)
            if prior.checksum() == side.get("checksum"):
                log.info("prior %s is up to date (checksum %s)", storage.redact(out_path), side["checksum"][:12])
                return {"path": out_path, "checksum": side["checksum"], "trained": False,
                        "summary": training_summary(prior)}
            log.warning("prior %s does not match its sidecar's checksum: retraining", storage.redact(out_path))
        except (FileNotFoundError, OSError, ValueError) as err:
            log.warning("prior %s is unreadable (%s): retraining", storage.redact(out_path), err)
    fields = training_fields(training_url, storage_options)
    log.info("training the prior on %d days of %s (config %s)", fields.sizes["time"], variables, prior_config)
    with torch_threads(threads):
        prior = latentda.train_prior(fields, config=dict(prior_config), variables=list(variables),
                                     progress=progress)
    if not storage.is_remote(out_path):
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    checksum = prior.save(out_path, storage_options=storage_options or None)
    with storage.open(_sidecar(out_path), "wb", storage_options) as f:
        f.write(json.dumps(dict(want, checksum=checksum, config_hash=config.hash), indent=1,
                           default=str).encode())
    log.info("prior saved to %s (checksum %s); %s", storage.redact(out_path), checksum[:12], training_summary(prior))
    return {"path": out_path, "checksum": checksum, "trained": True, "summary": training_summary(prior)}
