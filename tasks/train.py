"""Train task: fit the VAE prior on the training store and save the checkpoint (runs on a GPU worker if any)."""
from __future__ import annotations

import json
import os

from prefect import get_run_logger, task

import latentda
from latentda import archive as lib
from latentda import storage

from .archive import CACHE_POLICY, retry_on_io


def _sidecar(path: str) -> str:
    return path + ".json"


def _read_sidecar(path: str, storage_options: dict | None) -> dict | None:
    try:
        with storage.open(_sidecar(path), "rb", storage_options) as f:
            return json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None


@task(name="train-prior", cache_policy=CACHE_POLICY, persist_result=True, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_on_io)
def train_prior(training_url: str, training_key: str, prior_config: dict, variables: list[str], out_path: str,
                config_hash: str, threads: int | None = None, progress: bool = True,
                storage_options: dict | None = None) -> dict:
    """Train ``latentda.train_prior`` on the training store and save it to ``out_path``.

    Skips training when the checkpoint's sidecar (``out_path + ".json"``) says it was trained from the same
    training data, prior config and latentda version, and its checksum still matches. Returns
    ``{"path", "checksum", "trained": bool}``.
    """
    log = get_run_logger()
    want = {"training_key": training_key, "prior_config": prior_config, "variables": list(variables),
            "latentda_version": latentda.__version__}
    side = _read_sidecar(out_path, storage_options)
    if side and {k: side.get(k) for k in want} == json.loads(json.dumps(want)):
        try:
            prior = latentda.load_prior(out_path, device="cpu", storage_options=storage_options or None)
            if prior.checksum() == side.get("checksum"):
                log.info("prior %s is up to date (checksum %s)", storage.redact(out_path), side["checksum"][:12])
                return {"path": out_path, "checksum": side["checksum"], "trained": False}
        except (FileNotFoundError, OSError, ValueError):
            pass
    fields = lib.training_fields(training_url, storage_options)
    log.info("training the prior on %d days of %s (config %s)", fields.sizes["time"], variables, prior_config)
    with lib.torch_threads(threads):
        prior = latentda.train_prior(fields, config=dict(prior_config), variables=list(variables),
                                     progress=progress)
    if not storage.is_remote(out_path):
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    checksum = prior.save(out_path, storage_options=storage_options or None)
    with storage.open(_sidecar(out_path), "wb", storage_options) as f:
        f.write(json.dumps(dict(want, checksum=checksum, config_hash=config_hash), indent=1,
                           default=str).encode())
    log.info("prior saved to %s (checksum %s)", storage.redact(out_path), checksum[:12])
    return {"path": out_path, "checksum": checksum, "trained": True}
