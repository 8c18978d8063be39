"""Cluster profiles: where the Dask workers of a flow run come from.

A profile is a small YAML file in ``deploy/clusters/`` (or any path) that names a Dask cluster class and its
keyword arguments, or the address of a scheduler that is already running::

    cluster_class: dask_jobqueue.SLURMCluster      # import path of a distributed.deploy.Cluster
    cluster_kwargs: {queue: compute, cores: 8, memory: 32GB, walltime: "02:00:00", ...}
    adapt_kwargs: {minimum_jobs: 0, maximum_jobs: 10}   # optional: adaptive scaling
    client_kwargs: {}                              # optional: distributed.Client options

    # or, for a scheduler started by someone else:
    address: tcp://scheduler.example.org:8786

The run config selects one by name (``cluster: {profile: slurm}``) and may override a few values::

    cluster:
      profile: slurm            # a name in deploy/clusters/ or a path to a YAML file
      n_workers: 16             # optional: workers to start (local) or the adaptive maximum (HPC, k8s)
      threads_per_worker: 2     # optional: threads per Dask worker (local; HPC: processes = cores // threads)
      address: null             # only with profile: address
      options:                  # optional: deep-merged into the profile
        cluster_kwargs: {walltime: "06:00:00"}
        queue: long             # keys outside the four sections go into cluster_kwargs

``make_task_runner("slurm", n_workers=16)`` turns that into a ``prefect_dask.DaskTaskRunner``;
``job_script("slurm")`` shows the batch script dask-jobqueue would submit, without a batch system.
Profiles are searched in ``$LATENTDA_CLUSTER_PROFILES`` (a directory) first, then in ``deploy/clusters/``.
"""
from __future__ import annotations

import copy
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ClusterProfile",
    "ClusterProfileError",
    "MissingClusterDependency",
    "PROFILE_DIR",
    "job_script",
    "list_profiles",
    "load_profile",
    "make_task_runner",
    "resolve_profile",
    "task_runner_from_cluster_config",
]

log = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "clusters"
PROFILE_DIR_ENV = "LATENTDA_CLUSTER_PROFILES"
ADDRESS_ENV = ("LATENTDA_DASK_ADDRESS", "DASK_SCHEDULER_ADDRESS")
_SECTIONS = ("cluster_class", "cluster_kwargs", "adapt_kwargs", "client_kwargs", "address")
_PROFILE_KEYS = frozenset({*_SECTIONS, "description", "name"})

# Which pip package provides a cluster class's top-level module (for the error when it is missing).
PIP_PACKAGES = {
    "dask_kubernetes": "dask-kubernetes",
    "dask_jobqueue": "dask-jobqueue",
    "dask_gateway": "dask-gateway",
    "dask_cloudprovider": "dask-cloudprovider",
    "dask_mpi": "dask-mpi",
    "distributed": "distributed",
}
_EXTRA_HINTS = {
    "dask_kubernetes": " and install the Dask Kubernetes operator in the cluster "
                       "(helm install --repo https://helm.dask.org --create-namespace -n dask-operator "
                       "--generate-name dask-kubernetes-operator)",
}


class ClusterProfileError(ValueError):
    """A profile that cannot be found, parsed or combined with the requested overrides."""


class MissingClusterDependency(ImportError):
    """The cluster class of a profile lives in a package that is not installed."""


@dataclass(frozen=True)
class ClusterProfile:
    """A parsed profile: either ``cluster_class`` (+ kwargs) or ``address``."""

    name: str
    cluster_class: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    adapt_kwargs: dict[str, Any] = field(default_factory=dict)
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    description: str = ""
    path: Path | None = None

    @property
    def kind(self) -> str:
        """``address``, ``local``, ``jobqueue``, ``kubernetes`` or ``other``."""
        if self.cluster_class is None:
            return "address"
        module = self.cluster_class.split(".")[0]
        if self.cluster_class in ("distributed.LocalCluster", "dask.distributed.LocalCluster",
                                  "distributed.deploy.local.LocalCluster"):
            return "local"
        return {"dask_jobqueue": "jobqueue", "dask_kubernetes": "kubernetes"}.get(module, "other")


# ------------------------------------------------------------------------------------------------ loading
def _search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(PROFILE_DIR_ENV):
        dirs.append(Path(os.environ[PROFILE_DIR_ENV]).expanduser())
    dirs.append(PROFILE_DIR)
    return dirs


def list_profiles() -> list[str]:
    """Names of the profiles found in the search directories."""
    names: set[str] = set()
    for d in _search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _find(profile: str | os.PathLike) -> Path:
    s = os.fspath(profile)
    p = Path(s).expanduser()
    looks_like_path = os.sep in s or "/" in s or s.endswith((".yaml", ".yml"))
    if looks_like_path:
        if p.is_file():
            return p
        raise ClusterProfileError(f"cluster profile file {s!r} does not exist; give a profile name "
                                  f"({', '.join(list_profiles())}) or the path to a YAML profile")
    for d in _search_dirs():
        for ext in (".yaml", ".yml"):
            cand = d / f"{s}{ext}"
            if cand.is_file():
                return cand
    raise ClusterProfileError(
        f"unknown cluster profile {s!r}; available: {', '.join(list_profiles()) or '(none)'} "
        f"(searched {', '.join(str(d) for d in _search_dirs())}). Set cluster.profile in the run config to one "
        f"of them or to the path of a YAML profile")


def _as_dict(value: Any, what: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ClusterProfileError(f"{what} in {where} must be a mapping (key: value), got "
                                  f"{type(value).__name__} {value!r}")
    return copy.deepcopy(dict(value))


def _from_mapping(data: Mapping[str, Any], name: str, path: Path | None) -> ClusterProfile:
    where = str(path) if path else f"profile {name!r}"
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise ClusterProfileError(f"unknown key(s) {sorted(unknown)} in {where}; a profile has "
                                  f"{sorted(_PROFILE_KEYS)}")
    cluster_class = data.get("cluster_class")
    address = data.get("address")
    if cluster_class is not None and not isinstance(cluster_class, str):
        raise ClusterProfileError(f"cluster_class in {where} must be an import path such as "
                                  f"'distributed.LocalCluster', got {cluster_class!r}")
    if cluster_class and address:
        raise ClusterProfileError(f"{where} sets both cluster_class and address; a profile either starts a "
                                  f"cluster (cluster_class) or connects to a running scheduler (address)")
    if cluster_class is None and "address" not in data:
        raise ClusterProfileError(f"{where} names neither cluster_class nor address")
    return ClusterProfile(
        name=str(data.get("name") or name),
        cluster_class=cluster_class,
        cluster_kwargs=_as_dict(data.get("cluster_kwargs"), "cluster_kwargs", where),
        adapt_kwargs=_as_dict(data.get("adapt_kwargs"), "adapt_kwargs", where),
        client_kwargs=_as_dict(data.get("client_kwargs"), "client_kwargs", where),
        address=None if address is None else str(address),
        description=str(data.get("description") or "").strip(),
        path=path,
    )


def load_profile(profile: str | os.PathLike | Mapping[str, Any] | ClusterProfile) -> ClusterProfile:
    """Read a profile by name (``"slurm"``), by path (``"site/mycluster.yaml"``) or from a mapping."""
    if isinstance(profile, ClusterProfile):
        return profile
    if isinstance(profile, Mapping):
        return _from_mapping(profile, str(profile.get("name", "inline")), None)
    path = _find(profile)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ClusterProfileError(f"cluster profile {path} is not valid YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ClusterProfileError(f"cluster profile {path} must be a YAML mapping, got {type(data).__name__}")
    return _from_mapping(data, path.stem, path)


# ---------------------------------------------------------------------------------------------- overrides
def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_profile(profile: str | os.PathLike | Mapping[str, Any] | ClusterProfile = "local", *,
                    n_workers: int | None = None, threads_per_worker: int | None = None,
                    address: str | None = None, options: Mapping[str, Any] | None = None,
                    **cluster_kwargs: Any) -> ClusterProfile:
    """The profile with the run config's overrides applied (``None`` means "keep the profile's value").

    - ``options``: deep-merged; its keys ``cluster_class``, ``cluster_kwargs``, ``adapt_kwargs``,
      ``client_kwargs``, ``address`` merge into those sections, any other key goes into ``cluster_kwargs``
      (``client_kwargs`` for an address profile); ``adapt_kwargs: null`` turns adaptive scaling off.
    - ``n_workers``: LocalCluster/other: ``cluster_kwargs.n_workers``; an adaptive profile: the adaptive
      maximum (``adapt_kwargs.maximum``, replacing ``maximum_jobs``); a non-adaptive HPC/k8s profile: the
      workers started at once.
    - ``threads_per_worker``: LocalCluster: as is; dask-jobqueue: ``processes = cores // threads_per_worker``.
    - ``address``: only with an address profile (a running scheduler).
    - extra keyword arguments go into ``cluster_kwargs``.
    """
    p = load_profile(profile)
    sections: dict[str, Any] = {"cluster_class": p.cluster_class, "cluster_kwargs": p.cluster_kwargs,
                                "adapt_kwargs": p.adapt_kwargs, "client_kwargs": p.client_kwargs,
                                "address": p.address}
    if options:
        if not isinstance(options, Mapping):
            raise ClusterProfileError(f"cluster.options must be a mapping, got {type(options).__name__}")
        for k, v in options.items():
            if k in ("cluster_kwargs", "client_kwargs", "adapt_kwargs"):
                sections[k] = {} if v is None else _deep_merge(sections[k], _as_dict(v, f"options.{k}", p.name))
            elif k in ("cluster_class", "address"):
                sections[k] = v
            else:
                sections["cluster_kwargs"] = _deep_merge(sections["cluster_kwargs"], {k: v})
    if cluster_kwargs:
        sections["cluster_kwargs"] = _deep_merge(sections["cluster_kwargs"], cluster_kwargs)
    if sections["cluster_class"] and sections["address"]:
        raise ClusterProfileError(f"options set both cluster_class and address for profile {p.name!r}")
    p = replace(p, **sections)

    if address:
        if p.kind != "address":
            raise ClusterProfileError(
                f"cluster.address={address!r} is set but profile {p.name!r} starts its own cluster "
                f"({p.cluster_class}); use `profile: address` to connect to a running scheduler, or remove "
                f"cluster.address")
        p = replace(p, address=str(address))

    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ClusterProfileError(f"cluster.{name} must be a positive integer, got {value!r}")

    ck, ak = dict(p.cluster_kwargs), dict(p.adapt_kwargs)
    if p.kind == "address":
        # no cluster to configure: loose options are distributed.Client keyword arguments (timeout, ...)
        p = replace(p, client_kwargs=_deep_merge(ck, p.client_kwargs))
        ck, ak = {}, {}
        if n_workers is not None or threads_per_worker is not None:
            log.info("profile %r connects to a running scheduler: n_workers/threads_per_worker are ignored "
                     "(the scheduler's owner sizes that cluster)", p.name)
    else:
        if n_workers is not None:
            if ak:
                ak.pop("maximum_jobs", None)
                ak["maximum"] = n_workers
                if "minimum" in ak and ak["minimum"] > n_workers:
                    ak["minimum"] = n_workers
                if p.kind == "jobqueue" and "minimum_jobs" in ak:
                    ak["minimum_jobs"] = min(ak["minimum_jobs"], n_workers)
            else:
                ck["n_workers"] = n_workers
        if threads_per_worker is not None:
            if p.kind == "jobqueue":
                cores = ck.get("cores")
                if not cores:
                    raise ClusterProfileError(
                        f"threads_per_worker needs cluster_kwargs.cores in profile {p.name!r} "
                        f"(dask-jobqueue runs cores // threads_per_worker worker processes per job)")
                ck["processes"] = max(1, int(cores) // threads_per_worker)
            elif p.kind == "kubernetes":
                log.info("profile %r: threads_per_worker is set by the worker_command/resources of the k8s "
                         "profile (dask-worker --nthreads N); the override is ignored", p.name)
            else:
                ck["threads_per_worker"] = threads_per_worker
    return replace(p, cluster_kwargs=ck, adapt_kwargs=ak)


# --------------------------------------------------------------------------------------------- the runner
def import_cluster_class(cluster_class: str, profile_name: str = "?") -> type:
    """Import ``module.Class``; a missing package is a :class:`MissingClusterDependency` naming the pip install."""
    module_name, _, attr = cluster_class.rpartition(".")
    if not module_name:
        raise ClusterProfileError(f"cluster_class {cluster_class!r} of profile {profile_name!r} must be "
                                  f"an import path such as 'distributed.LocalCluster'")
    top = module_name.split(".")[0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == top or module_name.startswith(e.name)):
            pkg = PIP_PACKAGES.get(top, top.replace("_", "-"))
            raise MissingClusterDependency(
                f"cluster profile {profile_name!r} uses {cluster_class}, but the Python package {top!r} is not "
                f"installed. Install it in the environment that runs the flow: `pip install {pkg}`"
                f"{_EXTRA_HINTS.get(top, '')}; or choose another profile ({', '.join(list_profiles())})."
            ) from e
        raise
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ClusterProfileError(f"{module_name} has no {attr!r} (cluster_class of profile "
                                  f"{profile_name!r}); check the spelling") from e


def _scheduler_address(p: ClusterProfile) -> str:
    addr = p.address or next((os.environ[v] for v in ADDRESS_ENV if os.environ.get(v)), None)
    if not addr:
        raise ClusterProfileError(
            f"profile {p.name!r} connects to a running Dask scheduler but no address is set: put "
            f"`address: tcp://HOST:8786` in the profile, set cluster.address in the run config, or export "
            f"{ADDRESS_ENV[0]}")
    return addr


def make_task_runner(profile: str | os.PathLike | Mapping[str, Any] | ClusterProfile = "local", **overrides: Any):
    """A ``prefect_dask.DaskTaskRunner`` for ``profile`` with ``overrides`` (see :func:`resolve_profile`).

    Nothing starts here: the cluster (or the connection) is made when the flow run enters the runner.
    A cluster class whose package is missing raises :class:`MissingClusterDependency` now, not at run time.
    """
    p = resolve_profile(profile, **overrides)
    from prefect_dask import DaskTaskRunner

    if p.kind == "address":
        return DaskTaskRunner(address=_scheduler_address(p), client_kwargs=p.client_kwargs or None)
    cls = import_cluster_class(p.cluster_class, p.name)
    return DaskTaskRunner(cluster_class=cls, cluster_kwargs=p.cluster_kwargs or None,
                          adapt_kwargs=p.adapt_kwargs or None, client_kwargs=p.client_kwargs or None)


def task_runner_from_cluster_config(cluster_cfg: Any):
    """The task runner for the run config's ``cluster`` section (a ``ClusterConfig`` or a mapping): the one
    loader of every profile, :func:`flows.runners.task_runner_from_config`, under the name this module had."""
    from .runners import task_runner_from_config  # runners imports this module

    return task_runner_from_config(cluster_cfg)


# ----------------------------------------------------------------------------------------------- job script
_JOBQUEUE_CLUSTER_ONLY = frozenset({
    "n_workers", "job_cls", "loop", "security", "shared_temp_directory", "silence_logs", "name",
    "asynchronous", "dashboard_address", "host", "scheduler_options", "scheduler_cls",
})


def job_script(profile: str | os.PathLike | Mapping[str, Any] | ClusterProfile, **overrides: Any) -> str:
    """The batch script a dask-jobqueue profile submits per job, built without a batch system or a scheduler.

    The ``--scheduler`` line shows ``tcp://<scheduler-address>:8786``: the real address is known only once the
    cluster runs.  Use it to check queue, account, walltime, cores, memory, python and directives before a
    first submission.
    """
    p = resolve_profile(profile, **overrides)
    if p.kind != "jobqueue":
        raise ClusterProfileError(f"profile {p.name!r} ({p.cluster_class or 'address'}) does not submit batch "
                                  f"jobs; job_script() is for dask_jobqueue profiles such as slurm and pbs")
    cls = import_cluster_class(p.cluster_class, p.name)
    job_cls = getattr(cls, "job_cls", None)
    if job_cls is None:
        raise ClusterProfileError(f"{p.cluster_class} has no job class; is it a dask_jobqueue cluster?")
    kwargs = {k: v for k, v in p.cluster_kwargs.items() if k not in _JOBQUEUE_CLUSTER_ONLY}
    # The Job constructor creates log_directory; build against a scratch directory and put the real one back.
    real_logdir = kwargs.get("log_directory")
    scratch = tempfile.mkdtemp(prefix="latentda-jobscript-") if real_logdir else None
    if scratch:
        kwargs["log_directory"] = scratch
    try:
        try:
            job = job_cls(scheduler="tcp://<scheduler-address>:8786", name="dummy-name", **kwargs)
        except TypeError as e:
            raise ClusterProfileError(f"profile {p.name!r}: {e}; check cluster_kwargs against the "
                                      f"{cls.__name__} documentation") from e
        script = job.job_script()
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if scratch:
        script = script.replace(scratch, str(real_logdir))
    return script


def describe(profile: str | os.PathLike | Mapping[str, Any] | ClusterProfile, **overrides: Any) -> dict[str, Any]:
    """The resolved profile as a plain dict (for ``--dry-run`` output and logs); nothing secret is expected
    in a profile, but the result still goes through ``latentda.storage.redact``."""
    from latentda.storage import redact

    p = resolve_profile(profile, **overrides)
    out = {"name": p.name, "kind": p.kind, "cluster_class": p.cluster_class, "cluster_kwargs": p.cluster_kwargs,
           "adapt_kwargs": p.adapt_kwargs, "client_kwargs": p.client_kwargs, "address": p.address,
           "path": str(p.path) if p.path else None}
    return redact(out)

