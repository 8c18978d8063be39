"""Cluster profiles (deploy/clusters/*.yaml) and flows.clusters: parsing, overrides, job scripts, runners."""
from __future__ import annotations

import importlib.util
import os
import textwrap

import pytest
import yaml

from flows import clusters
from flows.clusters import ClusterProfileError, MissingClusterDependency, job_script, make_task_runner

EXPECTED = {
    "local": "distributed.LocalCluster",
    "slurm": "dask_jobqueue.SLURMCluster",
    "pbs": "dask_jobqueue.PBSCluster",
    "k8s": "dask_kubernetes.operator.KubeCluster",
    "address": None,
}


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch):
    for v in (clusters.PROFILE_DIR_ENV, *clusters.ADDRESS_ENV):
        monkeypatch.delenv(v, raising=False)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_profiles_parse_and_name_their_class(name):
    path = clusters.PROFILE_DIR / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())  # well-formed YAML
    assert isinstance(raw, dict) and raw.get("description")
    p = clusters.load_profile(name)
    assert p.cluster_class == EXPECTED[name] == raw.get("cluster_class")
    assert p.path == path
    # every profile is commented for site adaptation
    assert sum(1 for line in path.read_text().splitlines() if line.lstrip().startswith("#")) >= 5


def test_list_profiles_and_unknown_profile():
    assert set(EXPECTED) <= set(clusters.list_profiles())
    with pytest.raises(ClusterProfileError, match=r"unknown cluster profile 'nope'.*available: .*slurm"):
        clusters.load_profile("nope")
    with pytest.raises(ClusterProfileError, match="does not exist"):
        clusters.load_profile("site/missing.yaml")


@pytest.mark.parametrize("text, match", [
    ("cluster_class: distributed.LocalCluster\nclsuter_kwargs: {}\n", r"unknown key\(s\) \['clsuter_kwargs'\]"),
    ("cluster_class: [x\n", "not valid YAML"),
    ("cluster_class: distributed.LocalCluster\naddress: tcp://127.0.0.1:1\n", "both cluster_class and address"),
    ("cluster_kwargs: {n_workers: 1}\n", "neither cluster_class nor address"),
])
def test_profile_validation(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ClusterProfileError, match=match):
        clusters.load_profile(bad)
    from flows import runners

    with pytest.raises(ClusterProfileError, match=match):  # the run config's loader says the same
        runners.task_runner_from_config({"profile": str(bad)})


def test_profile_with_unknown_cluster_class(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_class: distributed.NoSuchCluster\n")
    with pytest.raises(ClusterProfileError, match="has no 'NoSuchCluster'"):
        make_task_runner(bad)


def test_profile_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "site-slurm.yaml").write_text(textwrap.dedent("""\
        cluster_class: dask_jobqueue.SLURMCluster
        cluster_kwargs: {queue: gpu, cores: 4, memory: 16GB, walltime: "00:30:00"}
    """))
    monkeypatch.setenv(clusters.PROFILE_DIR_ENV, str(tmp_path))
    assert "site-slurm" in clusters.list_profiles()
    assert clusters.load_profile("site-slurm").cluster_kwargs["queue"] == "gpu"


# ------------------------------------------------------------------------------------------------ overrides
def test_overrides_local():
    p = clusters.resolve_profile("local", n_workers=3, threads_per_worker=2, options={"memory_limit": "1GiB"})
    assert p.cluster_kwargs["n_workers"] == 3 and p.cluster_kwargs["threads_per_worker"] == 2
    assert p.cluster_kwargs["memory_limit"] == "1GiB" and p.cluster_kwargs["host"] == "127.0.0.1"
    assert p.adapt_kwargs == {}
    # an adaptive local cluster: n_workers becomes the adaptive maximum
    p = clusters.resolve_profile("local", n_workers=3, options={"adapt_kwargs": {"minimum": 1, "maximum": 8}})
    assert p.adapt_kwargs == {"minimum": 1, "maximum": 3}
    with pytest.raises(ClusterProfileError, match="positive integer"):
        clusters.resolve_profile("local", n_workers=0)


def test_overrides_jobqueue():
    p = clusters.resolve_profile("slurm", n_workers=6, threads_per_worker=4,
                                 options={"cluster_kwargs": {"walltime": "06:00:00"}, "queue": "long"})
    assert p.adapt_kwargs["maximum"] == 6 and "maximum_jobs" not in p.adapt_kwargs  # adaptive cap
    assert p.cluster_kwargs["processes"] == 2  # 8 cores // 4 threads
    assert p.cluster_kwargs["walltime"] == "06:00:00" and p.cluster_kwargs["queue"] == "long"
    fixed = clusters.resolve_profile("slurm", n_workers=4, options={"adapt_kwargs": None})
    assert fixed.adapt_kwargs == {} and fixed.cluster_kwargs["n_workers"] == 4
    # the shipped file is not modified by overrides
    assert clusters.load_profile("slurm").cluster_kwargs["queue"] == "compute"


def test_address_override_rules():
    with pytest.raises(ClusterProfileError, match="use `profile: address`"):
        clusters.resolve_profile("local", address="tcp://127.0.0.1:8786")
    r = make_task_runner("address", address="tcp://127.0.0.1:8786", n_workers=2)
    assert r.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ClusterProfileError, match="no address is set"):
        make_task_runner("address")


def test_address_options_are_client_kwargs():
    r = make_task_runner("address", address="tcp://127.0.0.1:8786", options={"timeout": "20s"})
    assert r.client_kwargs["timeout"] == "20s" and not r.cluster_kwargs


def test_address_from_environment(monkeypatch):
    monkeypatch.setenv("LATENTDA_DASK_ADDRESS", "tcp://127.0.0.1:8799")
    assert make_task_runner("address").address == "tcp://127.0.0.1:8799"


def test_runner_kwargs_reach_dask_task_runner():
    from prefect_dask import DaskTaskRunner
    from distributed import LocalCluster

    r = make_task_runner("local", n_workers=2)
    assert isinstance(r, DaskTaskRunner)
    assert r.resolved_cluster_class is LocalCluster
    assert r.cluster_kwargs["n_workers"] == 2 and r.cluster_kwargs["host"] == "127.0.0.1"
    assert not r.adapt_kwargs


def test_task_runner_from_run_config_section():
    config = pytest.importorskip("latentda.config")
    cfg = config.ClusterConfig(profile="local", n_workers=2, threads_per_worker=1, options={"memory_limit": "2GiB"})
    r = clusters.task_runner_from_cluster_config(cfg)
    assert r.cluster_kwargs["n_workers"] == 2 and r.cluster_kwargs["memory_limit"] == "2GiB"
    r = clusters.task_runner_from_cluster_config({"profile": "address", "address": "tcp://127.0.0.1:8786"})
    assert r.address == "tcp://127.0.0.1:8786"


# ---------------------------------------------------------------------------------------------- job scripts
def test_slurm_job_script_without_slurm(tmp_path):
    script = job_script("slurm")
    for line in ("#SBATCH -p compute", "#SBATCH -A my-project", "#SBATCH -t 02:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "#SBATCH --qos=normal",
                 "#SBATCH -J latentda-worker", "#SBATCH -e logs/dask-slurm/latentda-worker-%J.err",
                 "module load python/3.11"):
        assert line in script, (line, script)
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert worker.startswith("/opt/latentda/.venv/bin/python -m distributed.cli.dask_worker")
    for arg in ("--nworkers 2", "--nthreads 4", "--interface ib0", "--local-directory $TMPDIR",
                "--death-timeout 120"):
        assert arg in worker
    assert not (tmp_path / "logs").exists() and not os.path.exists("logs/dask-slurm")  # nothing created


def test_job_script_site_profile_and_gpu(tmp_path):
    python = str(tmp_path / "env" / "bin" / "python3.11")
    site = tmp_path / "mysite.yaml"
    site.write_text(yaml.safe_dump({
        "cluster_class": "dask_jobqueue.SLURMCluster",
        "cluster_kwargs": {"queue": "gpu-a100", "account": "proj42", "walltime": "12:00:00", "cores": 16,
                           "processes": 1, "memory": "64GB", "python": python, "interface": "eth0",
                           "job_extra_directives": ["--gres=gpu:1"],
                           "worker_extra_args": ["--resources", "GPU=1"]},
    }))
    script = job_script(site, options={"walltime": "00:20:00"})
    assert "#SBATCH -p gpu-a100" in script and "#SBATCH -A proj42" in script
    assert "#SBATCH -t 00:20:00" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --cpus-per-task=16" in script and "--nthreads 16" in script
    assert f"{python} -m distributed.cli.dask_worker" in script and "--resources GPU=1" in script


def test_pbs_job_script_without_pbs():
    script = job_script("pbs", n_workers=4)
    for line in ("#PBS -q workq", "#PBS -A my-project", "#PBS -l walltime=02:00:00",
                 "#PBS -l select=1:ncpus=8:mem=32GB", "#PBS -N latentda-worker", "#PBS -e logs/dask-pbs/"):
        assert line in script, (line, script)
    assert "/opt/latentda/.venv/bin/python -m distributed.cli.dask_worker" in script
    assert "--interface ib0" in script and "--nworkers 2" in script


def test_job_script_refuses_non_batch_profiles():
    for name in ("local", "address", "k8s"):
        with pytest.raises(ClusterProfileError, match="does not submit batch jobs"):
            job_script(name)


def test_job_script_bad_kwarg_is_named(tmp_path):
    site = tmp_path / "typo.yaml"
    site.write_text("cluster_class: dask_jobqueue.SLURMCluster\n"
                    "cluster_kwargs: {cores: 2, memory: 4GB, wall_time: '01:00:00'}\n")
    with pytest.raises(ClusterProfileError, match="wall_time"):
        job_script(site)


# ----------------------------------------------------------------------------------------------------- k8s
@pytest.mark.skipif(importlib.util.find_spec("dask_kubernetes") is not None,
                    reason="dask-kubernetes is installed: the missing-package message cannot be shown")
def test_k8s_profile_without_dask_kubernetes_says_what_to_install():
    with pytest.raises(MissingClusterDependency) as info:
        make_task_runner("k8s")
    msg = str(info.value)
    assert "pip install dask-kubernetes" in msg and "dask_kubernetes.operator.KubeCluster" in msg
    assert "'k8s'" in msg
    assert isinstance(info.value, ImportError)


def test_k8s_profile_content():
    p = clusters.load_profile("k8s")
    assert p.kind == "kubernetes"
    assert {"name", "image", "n_workers", "resources"} <= set(p.cluster_kwargs)
    assert set(p.cluster_kwargs["resources"]) <= {"requests", "limits"}
    assert p.adapt_kwargs == {"minimum": 1, "maximum": 20}


# ------------------------------------------------------------------------------------------ running flows
@pytest.fixture(scope="module")
def prefect_api(request):
    """The session's Prefect test harness (tests/conftest.py) if it defines one, else a module-local one."""
    for name in ("prefect_harness", "prefect_test_server", "prefect_api_harness"):
        try:
            value = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
        yield value
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness() as h:
        yield h


@pytest.mark.slow
def test_trivial_flow_on_local_profile_with_two_workers(prefect_api):
    from prefect import flow, task

    @task
    def where(i: int) -> tuple[int, str]:
        from distributed import get_worker

        return i * i, get_worker().address

    @flow(task_runner=make_task_runner("local", n_workers=2, threads_per_worker=1))
    def trivial(n: int = 6):
        return [f.result() for f in where.map(range(n))]

    out = trivial()
    assert [v for v, _ in out] == [i * i for i in range(6)]
    addrs = {a for _, a in out}
    assert len(addrs) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in addrs)


@pytest.mark.slow
def test_trivial_flow_on_address_profile(prefect_api):
    from distributed import LocalCluster
    from prefect import flow, task

    @task
    def add(a: int, b: int) -> int:
        return a + b

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1", protocol="tcp://",
                      dashboard_address=None) as cluster:
        runner = clusters.task_runner_from_cluster_config({"profile": "address", "address": cluster.scheduler_address})

        @flow(task_runner=runner)
        def sums():
            return [f.result() for f in add.map(range(4), 1)]

        assert sums() == [1, 2, 3, 4]


# ------------------------------------------------------------------------------- selection from the run config
@pytest.mark.parametrize("name, kind", [("slurm", "dask_jobqueue.SLURMCluster"), ("pbs", "dask_jobqueue.PBSCluster"),
                                        ("local", "distributed.LocalCluster")])
def test_run_config_selects_profile_by_name(name, kind):
    """flows.runners.task_runner_from_config builds every profile of deploy/clusters/ through flows.clusters."""
    from latentda.config import ClusterConfig
    from flows import runners

    r = runners.task_runner_from_config(ClusterConfig(profile=name))
    cls = r.resolved_cluster_class
    assert f"{cls.__module__.split('.')[0]}.{cls.__name__}" == kind


def test_run_config_keeps_the_slurm_profile_values():
    """``profile: slurm`` alone: the job script and the adaptive bounds are the profile's (maximum_jobs 10,
    processes 2 of 8 cores); the effective size is 10 jobs x 2 workers x 4 threads."""
    from latentda.config import ClusterConfig
    from flows import runners

    cfg = ClusterConfig(profile="slurm")
    assert cfg.n_workers is None and cfg.threads_per_worker is None
    r = runners.task_runner_from_config(cfg)
    assert r.adapt_kwargs == clusters.load_profile("slurm").adapt_kwargs
    assert r.adapt_kwargs["maximum_jobs"] == 10 and r.cluster_kwargs["processes"] == 2
    script = job_script("slurm", n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                        options=cfg.options or None)
    assert script == job_script("slurm")
    assert "--nworkers 2" in script and "--nthreads 4" in script and "#SBATCH --cpus-per-task=8" in script
    assert runners.worker_size(cfg) == runners.WorkerSize(n_workers=20, threads_per_worker=4)
    # pbs likewise: 10 jobs x 2 processes of 8 cores
    assert runners.worker_size({"profile": "pbs"}) == runners.WorkerSize(n_workers=20, threads_per_worker=4)


def test_run_config_values_win_over_the_profile():
    from latentda.config import ClusterConfig
    from flows import runners

    cfg = ClusterConfig(profile="slurm", threads_per_worker=8, n_workers=3)
    r = runners.task_runner_from_config(cfg)
    assert r.cluster_kwargs["processes"] == 1 and r.adapt_kwargs["maximum"] == 3
    assert "maximum_jobs" not in r.adapt_kwargs
    script = job_script("slurm", n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker)
    assert "--nthreads 8" in script and "--nworkers" not in script  # one worker of 8 threads per job
    assert runners.worker_size(cfg) == runners.WorkerSize(n_workers=3, threads_per_worker=8)
    # local: the run config's numbers reach the LocalCluster
    r = runners.task_runner_from_config({"profile": "local", "n_workers": 3, "threads_per_worker": 2})
    assert (r.cluster_kwargs["n_workers"], r.cluster_kwargs["threads_per_worker"]) == (3, 2)


def test_local_profile_file_is_read(tmp_path, monkeypatch):
    """The local cluster is built from deploy/clusters/local.yaml (here a copy with other values found first via
    $LATENTDA_CLUSTER_PROFILES), with the local details added where the file is silent."""
    from flows import runners

    shipped = yaml.safe_load((clusters.PROFILE_DIR / "local.yaml").read_text())
    r = runners.task_runner_from_config({"profile": "local", "gpu": False})
    assert {k: r.cluster_kwargs[k] for k in shipped["cluster_kwargs"]} == shipped["cluster_kwargs"]
    assert runners.worker_size({"profile": "local"}) == runners.WorkerSize(
        shipped["cluster_kwargs"]["n_workers"], shipped["cluster_kwargs"]["threads_per_worker"])

    edited = dict(shipped, cluster_kwargs={"n_workers": 3, "threads_per_worker": 2, "memory_limit": "3GiB",
                                           "processes": True})
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(edited))
    monkeypatch.setenv(clusters.PROFILE_DIR_ENV, str(tmp_path))
    r = runners.task_runner_from_config({"profile": "local", "gpu": False})
    assert r.cluster_kwargs["n_workers"] == 3 and r.cluster_kwargs["threads_per_worker"] == 2
    assert r.cluster_kwargs["memory_limit"] == "3GiB"
    # details the edited file leaves out: loopback scheduler, free loopback dashboard port
    assert r.cluster_kwargs["host"] == "127.0.0.1" and r.cluster_kwargs["dashboard_address"] == "127.0.0.1:0"
    assert runners.worker_size({"profile": "local"}) == runners.WorkerSize(3, 2)
    # in-process workers: no host (inproc://); a GPU resource on request
    r = runners.task_runner_from_config({"profile": "local", "gpu": True, "options": {"processes": False}})
    assert "host" not in r.cluster_kwargs and r.cluster_kwargs["resources"] == {"GPU": 1}


def test_worker_size_defaults_and_other_kinds(tmp_path):
    from flows import runners

    # an address profile: the scheduler's owner sized it; the run config may say how big it is
    addr = {"profile": "address", "address": "tcp://127.0.0.1:8786"}
    assert runners.worker_size(addr) == runners.WorkerSize(runners.DEFAULT_N_WORKERS,
                                                           runners.DEFAULT_THREADS_PER_WORKER)
    assert runners.worker_size(dict(addr, n_workers=6, threads_per_worker=2)).threads == 12
    # k8s: the adaptive maximum and dask-worker --nthreads of the shipped profile
    assert runners.worker_size({"profile": "k8s"}) == runners.WorkerSize(20, 2)
    # a LocalCluster profile without sizes: the documented defaults, and the cluster is started that size
    bare = tmp_path / "bare.yaml"
    bare.write_text("cluster_class: distributed.LocalCluster\n")
    assert runners.worker_size({"profile": str(bare)}) == runners.WorkerSize(1, 1)
    r = runners.task_runner_from_config({"profile": str(bare), "gpu": False})
    assert r.cluster_kwargs["n_workers"] == 1 and r.cluster_kwargs["threads_per_worker"] == 1


@pytest.mark.parametrize("section, match", [
    ({"profile": "nope"}, r"unknown cluster profile 'nope'.*available: .*slurm"),
    ({"profile": "site/missing.yaml"}, "does not exist"),
    ({"profile": "local", "address": "tcp://127.0.0.1:8786"}, "use `profile: address`"),
    ({"profile": "slurm", "options": {"adapt_kwargs": "ten"}}, "adapt_kwargs .* must be a mapping"),
])
def test_run_config_with_bad_profile_is_named(section, match):
    from flows import runners

    with pytest.raises(ClusterProfileError, match=match):
        runners.task_runner_from_config(section)
    with pytest.raises(ClusterProfileError, match=match):
        runners.worker_size(section)



def test_local_workers_fork_with_torch_imported_and_see_later_environment(monkeypatch):
    """Local workers are forks of a server that imported torch once (flows.runners.start_worker_forkserver);
    a variable set in this process after that server started still reaches the workers started next."""
    import sys

    from distributed import Client, LocalCluster

    from flows.runners import pass_environment_to_forked_workers, start_worker_forkserver

    if not start_worker_forkserver():
        pytest.skip("no forkserver start method here")
    monkeypatch.setenv("LATENTDA_TEST_LATE_VARIABLE", "set-after-the-forkserver")
    assert pass_environment_to_forked_workers().get("LATENTDA_TEST_LATE_VARIABLE") == "set-after-the-forkserver"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        assert client.submit(os.environ.get, "LATENTDA_TEST_LATE_VARIABLE").result() == "set-after-the-forkserver"
        assert client.submit(lambda: "torch" in sys.modules).result()  # imported by the forkserver, not the task
        assert client.submit(os.environ.get, "OMP_NUM_THREADS").result() == "1"  # Dask's pre-spawn environment


def test_local_clusters_quiet_periodic_work_unless_configured():
    """flows.runners.quiet_local_cluster: the profiler, tick and system-monitor settings of local clusters change
    only where the Dask config still has distributed's default, and the nannies pass them to their workers."""
    import copy

    import dask
    from distributed import Client, LocalCluster

    from flows import runners

    saved = copy.deepcopy(dask.config.config)
    try:
        dask.config.set({"distributed.admin.tick.interval": "50ms", "distributed.worker.profile.enabled": True,
                         "distributed.admin.system-monitor.interval": "500ms"})
        changed = runners.quiet_local_cluster()
        assert "distributed.admin.tick.interval" not in changed
        assert dask.config.get("distributed.admin.tick.interval") == "50ms"  # a value of the user's
        assert dask.config.get("distributed.worker.profile.enabled") is False
        assert dask.config.get("distributed.admin.system-monitor.interval") == "2s"
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            assert client.submit(dask.config.get, "distributed.worker.profile.enabled").result() is False
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
