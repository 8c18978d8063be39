"""Dask task runners from the run config's ``cluster:`` section: one loader for every profile.

``cluster.profile`` names a cluster profile, a YAML file of ``deploy/clusters/`` (``local``, ``address``,
``slurm``, ``pbs``, ``k8s``; more with ``$LATENTDA_CLUSTER_PROFILES``) or the path of one. Every profile goes the
same way: :func:`flows.clusters.resolve_profile` reads it and applies the run config's overrides, where ``None``
(the default of ``n_workers`` / ``threads_per_worker``) keeps the profile's value, then
:func:`flows.clusters.make_task_runner` builds the ``prefect_dask.DaskTaskRunner``. Editing
``deploy/clusters/local.yaml`` therefore changes the local cluster, and ``profile: slurm`` keeps the profile's
``maximum_jobs`` and ``processes`` unless the run config sets ``n_workers`` / ``threads_per_worker``.

A ``distributed.LocalCluster`` profile (kind ``local``) also gets, unless the profile or ``cluster.options`` say
otherwise: glibc's own malloc trimming (:func:`keep_malloc_defaults`), quieter periodic work in the scheduler,
nannies and workers (:func:`quiet_local_cluster`), the scheduler on loopback (``127.0.0.1``;
in-process workers use ``inproc://`` and take no host), the dashboard on a free loopback port, a ``GPU`` worker
resource when :func:`use_gpu`, and explicit ``n_workers`` / ``threads_per_worker`` equal to :func:`worker_size`,
so the cluster started is the size the flows plan their blocks for.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

from latentda.config import ClusterConfig

from .clusters import ClusterProfile, load_profile, make_task_runner, resolve_profile

#: Used when neither the run config nor the profile sizes the workers (an ``address`` profile, a LocalCluster
#: profile without ``n_workers``/``threads_per_worker``): one worker with one thread, the measured best use of a
#: core for the numpy/torch assimilation. Set ``cluster.n_workers`` to the size of a running scheduler's cluster.
DEFAULT_N_WORKERS = 1
DEFAULT_THREADS_PER_WORKER = 1


@dataclasses.dataclass(frozen=True)
class WorkerSize:
    """Effective Dask worker count and threads per worker of a cluster config (:func:`worker_size`)."""

    n_workers: int
    threads_per_worker: int

    @property
    def threads(self) -> int:
        """Threads of the whole cluster: ``n_workers * threads_per_worker``."""
        return self.n_workers * self.threads_per_worker


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    """Number of CUDA GPUs visible here (0 without torch/CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: CPU
        return 0


def _cfg(cluster: ClusterConfig | Mapping[str, Any] | None) -> ClusterConfig:
    if cluster is None:
        return ClusterConfig()
    return cluster if isinstance(cluster, ClusterConfig) else ClusterConfig.model_validate(dict(cluster))


def use_gpu(cluster: ClusterConfig | Mapping[str, Any]) -> bool:
    """Whether training is annotated to need a ``GPU`` worker resource.

    ``gpu: true/false`` decides; ``auto`` means: a LocalCluster profile and a GPU is visible here (for other
    profiles we cannot know what the workers have, so ``auto`` is CPU; say ``gpu: true`` when they advertise one).
    """
    c = _cfg(cluster)
    if isinstance(c.gpu, bool):
        return c.gpu
    return load_profile(c.profile).kind == "local" and gpu_count() > 0


def keep_malloc_defaults() -> None:
    """Do not start local Dask workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (distributed's nanny default).

    With it glibc returns freed memory to the OS at once, and torch's many short-lived tensors in the
    assimilation and training pay for it in page faults: measured 2x slower per day than the same loop outside
    Dask. Unsetting it restores glibc's own (adaptive) threshold. Affects LocalClusters started by this process.
    """
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


#: Dask settings of the LocalClusters started here where the Dask config has distributed's default (key: (default,
#: ours)). Every worker sampled its own stack every 10 ms for the dashboard's profile page, and every scheduler,
#: nanny and worker measured its event loop's tick every 20 ms and its system load every 0.5 s: measured on a worker
#: computing days, 0.23 s of CPU in 7 s beside the task (0.06 s with these), and 0.045 s of CPU a second in the flow
#: process that hosts the scheduler and the nannies of two workers (0.015 s), all of it taken from the cores the
#: days run on.
LOCAL_CLUSTER_DASK_CONFIG = {
    "distributed.worker.profile.enabled": (True, False),
    "distributed.admin.tick.interval": ("20ms", "200ms"),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
}


def quiet_local_cluster() -> dict[str, Any]:
    """Apply :data:`LOCAL_CLUSTER_DASK_CONFIG` to the Dask config of this process (the nannies pass it to their
    workers) where a setting still has distributed's default; returns the settings changed. Another value set in
    the Dask config (YAML, ``DASK_*`` environment variables, ``dask.config.set``) is kept."""
    import dask

    changed = {key: ours for key, (default, ours) in LOCAL_CLUSTER_DASK_CONFIG.items()
               if dask.config.get(key, None) == default}
    if changed:
        dask.config.set(changed)
    return changed


#: What local Dask worker processes start with: forked from a server process that imported these once
#: (:func:`start_worker_forkserver`). Only modules that start no thread at import (fork copies one thread).
#: The second line is what a worker's warm-up (the prior, the observation table) and first day import lazily
#: otherwise, ~0.2 s of CPU per worker and flow run: xarray's duck-array checks import dask.array and pint when
#: they are installed, opening an Intake catalog imports every installed driver package (intake_xarray), pandas
#: reads Parquet through pyarrow.dataset; a module that is not installed is skipped.
WORKER_PRELOAD = ("numpy", "pandas", "scipy", "xarray", "zarr", "torch", "latentda.da.rto", "latentda.backfill",
                  "tasks.worker",
                  "dask.array", "pint", "intake_xarray", "pyarrow.parquet", "pyarrow.dataset", "tasks.intake_sources",
                  "latentda.prior.loading", "latentda.prior.flow", "latentda.da.window")


def start_worker_forkserver() -> bool:
    """Have this process's LocalCluster workers forked from a server that has imported :data:`WORKER_PRELOAD`.

    A spawned worker imports torch and the assimilation code itself (3 s idle, 5-9 s on a busy 2-core machine)
    before its first day, on the critical path of every flow run. The forkserver imports them once per process, in
    the background from the moment this is called (the CLI calls it before starting the Prefect server, so the two
    overlap), and every worker started after that is a fork of it. The forkserver starts with Dask's pre-spawn
    environment (``OMP_NUM_THREADS=1`` etc.: a forked worker keeps the forkserver's environment, so the nanny
    cannot set it), and exits with this process. Idempotent; returns False (spawned workers, as before) where
    there is no ``forkserver`` start method or ``LATENTDA_WORKER_FORKSERVER=0``.
    """
    import multiprocessing
    import multiprocessing.forkserver as mpf
    import os

    if os.environ.get("LATENTDA_WORKER_FORKSERVER", "1") == "0" or \
            "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    import dask
    from distributed.utils import get_mp_context

    if _FORKSERVER["started"]:
        return True
    keep_malloc_defaults()
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    ctx = get_mp_context()  # distributed sets its own preload list the first time; ours extends it
    ctx.set_forkserver_preload(["distributed", *WORKER_PRELOAD])
    env = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
           if v is not None}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mpf.ensure_running()
        _FORKSERVER["environ"] = dict(os.environ)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _FORKSERVER["started"] = True
    return True


_FORKSERVER: dict[str, Any] = {"started": False, "environ": {}}


def pass_environment_to_forked_workers() -> dict[str, str]:
    """Workers forked from the forkserver have ITS environment, taken when it started. Variables set or changed in
    this process since (credentials exported later in a session, a test's AWS_* variables) go to the workers
    started next through the nanny's ``distributed.nanny.environ`` (applied in the worker when it starts), except
    Dask's pre-spawn ones (``OMP_NUM_THREADS``, ...) that the forkserver already has. A variable removed since the
    forkserver started stays set in the workers. Returns the variables passed."""
    import os

    import dask

    if not _FORKSERVER["started"]:
        return {}
    pre_spawn = set(dask.config.get("distributed.nanny.pre-spawn-environ") or {})
    started_with = _FORKSERVER["environ"]
    delta = {k: v for k, v in os.environ.items() if started_with.get(k) != v and k not in pre_spawn}
    if _FORKSERVER.get("passed") != delta:  # set it only when it changes: config.set copies Dask's whole config
        configured = {k: v for k, v in (dask.config.get("distributed.nanny.environ") or {}).items()
                      if k not in _FORKSERVER.get("passed", {})}
        dask.config.set({"distributed.nanny.environ": {**configured, **delta}})
        _FORKSERVER["passed"] = delta
    return delta


def prestart_workers(cluster: ClusterConfig | Mapping[str, Any] | None) -> bool:
    """Start the worker forkserver now if ``cluster`` is a LocalCluster of worker processes (the CLI calls this
    before the Prefect server starts, so the two start together); True if it runs."""
    c = _cfg(cluster)
    p = _resolve(c)
    if p.kind != "local" or not p.cluster_kwargs.get("processes", True):
        return False
    return start_worker_forkserver()


def _resolve(c: ClusterConfig) -> ClusterProfile:
    return resolve_profile(c.profile, n_workers=c.n_workers, threads_per_worker=c.threads_per_worker,
                           address=c.address, options=c.options or None)


def _nthreads_arg(command: Any) -> int | None:
    """``N`` of ``--nthreads N`` in a k8s ``worker_command`` (a list or a string), else None."""
    words = command.split() if isinstance(command, str) else [str(w) for w in command or []]
    for flag, value in zip(words, words[1:]):
        if flag == "--nthreads" and re.fullmatch(r"\d+", value):
            return int(value)
    return None


def _profile_size(p: ClusterProfile) -> tuple[int | None, int | None]:
    """(workers, threads per worker) a resolved profile asks for; None where it does not say."""
    ck, ak = p.cluster_kwargs, p.adapt_kwargs
    if p.kind == "address":
        return None, None  # the scheduler's owner sized that cluster
    if p.kind == "jobqueue":
        cores = int(ck["cores"]) if ck.get("cores") else None
        processes = ck.get("processes")
        if processes is None and cores:
            from distributed.deploy.utils import nprocesses_nthreads  # dask-jobqueue's own default

            processes = nprocesses_nthreads(cores)[0]
        threads = cores // int(processes) if cores and processes else None
        if ak.get("maximum_jobs") is not None and processes:  # dask-jobqueue: maximum = maximum_jobs * processes
            return int(ak["maximum_jobs"]) * int(processes), threads
        return ak.get("maximum", ck.get("n_workers")), threads
    if p.kind == "kubernetes":
        return ak.get("maximum", ck.get("n_workers")), _nthreads_arg(ck.get("worker_command"))
    return ak.get("maximum", ck.get("n_workers")), ck.get("threads_per_worker")


def worker_size(cluster: ClusterConfig | Mapping[str, Any] | None) -> WorkerSize:
    """Effective worker count and threads per worker: the run config's value, else the profile's, else
    :data:`DEFAULT_N_WORKERS` / :data:`DEFAULT_THREADS_PER_WORKER`.

    The profile's count is what it starts or scales up to: a LocalCluster's ``n_workers``; an adaptive
    profile's maximum (dask-jobqueue: ``maximum_jobs * processes``); threads per worker of a dask-jobqueue
    profile are ``cores // processes``, of a k8s profile the ``--nthreads`` of its ``worker_command``.
    """
    c = _cfg(cluster)
    workers, threads = _profile_size(_resolve(c))
    n = c.n_workers or workers or DEFAULT_N_WORKERS
    t = c.threads_per_worker or threads or DEFAULT_THREADS_PER_WORKER
    return WorkerSize(n_workers=int(n), threads_per_worker=int(t))


def _local_details(p: ClusterProfile, c: ClusterConfig) -> ClusterProfile:
    """The LocalCluster settings every local run gets unless the profile or ``cluster.options`` set them."""
    keep_malloc_defaults()
    quiet_local_cluster()
    ck = dict(p.cluster_kwargs)
    size = worker_size(c)
    if not p.adapt_kwargs:
        ck.setdefault("n_workers", size.n_workers)
    ck.setdefault("threads_per_worker", size.threads_per_worker)
    ck.setdefault("processes", True)
    ck.setdefault("dashboard_address", "127.0.0.1:0")
    if ck["processes"]:
        ck.setdefault("host", "127.0.0.1")  # the scheduler listens on loopback only
        start_worker_forkserver()
        pass_environment_to_forked_workers()
    elif "://" not in str(ck.get("host") or ""):
        ck.pop("host", None)  # in-process workers talk over inproc://, which takes no host
    if use_gpu(c):
        ck.setdefault("resources", {"GPU": 1})
    return dataclasses.replace(p, cluster_kwargs=ck)


def task_runner_from_config(cluster: ClusterConfig | Mapping[str, Any] | None):
    """The Prefect task runner for the ``cluster:`` section of a run config (any profile; nothing starts here).

    Raises :class:`flows.clusters.ClusterProfileError` (a ``ValueError``) naming an unknown or malformed profile.
    """
    c = _cfg(cluster)
    p = _resolve(c)
    if p.kind == "local":
        p = _local_details(p, c)
    return make_task_runner(p)
