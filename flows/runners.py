"""Dask task runners from the run config's ``cluster:`` section: a small dispatch on ``profile``.

``local``   -> a ``distributed.LocalCluster`` started and stopped by the flow (``n_workers``,
               ``threads_per_worker``, extra ``options`` passed to LocalCluster); workers advertise a ``GPU``
               resource when a GPU is present (or ``gpu: true``).
``address`` -> an existing Dask scheduler at ``address`` (``options`` go to ``distributed.Client``).
other       -> the cluster profile of that name in deploy/clusters/ (flows/clusters.py: slurm, pbs, k8s, ...).

Add a profile (slurm, pbs, k8s, ...) with :func:`register_profile` or an entry in :data:`PROFILES`, e.g.
``DaskTaskRunner(cluster_class="dask_jobqueue.SLURMCluster", cluster_kwargs=..., adapt_kwargs=...)``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from prefect_dask import DaskTaskRunner

from latentda.config import ClusterConfig

Factory = Callable[[ClusterConfig], Any]


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """Number of CUDA GPUs visible here (0 without torch/CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: CPU
        return 0


def use_gpu(cluster: ClusterConfig | Mapping[str, Any]) -> bool:
    """Whether training is annotated to need a ``GPU`` worker resource.

    ``gpu: true/false`` decides; ``auto`` means: profile ``local`` and a GPU is visible here (for other profiles
    we cannot know what the workers have, so ``auto`` is CPU; say ``gpu: true`` when they advertise one).
    """
    c = _cfg(cluster)
    if isinstance(c.gpu, bool):
        return c.gpu
    return c.profile == "local" and gpu_count() > 0


def _cfg(cluster: ClusterConfig | Mapping[str, Any]) -> ClusterConfig:
    return cluster if isinstance(cluster, ClusterConfig) else ClusterConfig.model_validate(dict(cluster))


def keep_malloc_defaults() -> None:
    """Do not start local Dask workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (distributed's nanny default).

    With it glibc returns freed memory to the OS at once, and torch's many short-lived tensors in the
    assimilation and training pay for it in page faults: measured 2x slower per day than the same loop outside
    Dask. Unsetting it restores glibc's own (adaptive) threshold. Affects LocalClusters started by this process.
    """
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def _local(c: ClusterConfig) -> DaskTaskRunner:
    keep_malloc_defaults()
    kwargs: dict[str, Any] = {"n_workers": c.n_workers, "threads_per_worker": c.threads_per_worker,
                              "processes": True, "dashboard_address": "127.0.0.1:0"}
    if use_gpu(c):
        kwargs["resources"] = {"GPU": 1}
    kwargs.update(c.options)
    if kwargs["processes"]:
        kwargs.setdefault("host", "127.0.0.1")  # loopback only (in-process workers use inproc://)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def _address(c: ClusterConfig) -> DaskTaskRunner:
    return DaskTaskRunner(address=c.address, client_kwargs=dict(c.options) or None)


def _named_profile(c: ClusterConfig):
    """Any other profile name: a cluster profile of deploy/clusters/<name>.yaml (flows/clusters.py: slurm, pbs,
    k8s, ...), with n_workers / threads_per_worker / address / options from the run config."""
    try:
        from . import clusters
    except ImportError:
        raise ValueError(f"cluster.profile {c.profile!r} unknown; known profiles: {sorted(PROFILES)}") from None
    return clusters.task_runner_from_cluster_config(c.model_dump(exclude={"gpu"}))


PROFILES: dict[str, Factory] = {"local": _local, "address": _address}


def register_profile(name: str, factory: Factory) -> None:
    """Make ``cluster.profile: name`` build its task runner with ``factory(cluster_config)``."""
    PROFILES[name] = factory


def task_runner_from_config(cluster: ClusterConfig | Mapping[str, Any]):
    """The Prefect task runner for the ``cluster:`` section of a run config."""
    c = _cfg(cluster)
    return PROFILES.get(c.profile, _named_profile)(c)
