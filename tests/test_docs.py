"""README.md: every documented command exists and parses, every YAML snippet is a valid run-config
fragment, every deployment / work pool / file named exists (no server, no cluster, no network)."""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "README.md"
SECTIONS = ("Run it every day", "Backfill decades", "Run on a cluster", "Store on S3")
VENV_BIN = Path(sys.executable).parent


def blocks(lang: str) -> list[str]:
    text = DOC.read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands() -> list[str]:
    """Shell commands of the bash blocks: continuations joined, comments, loops and `&` stripped."""
    out = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#") or line in ("done",) or line.startswith("for "):
                continue
            line = line.rstrip("&").strip()
            out.append(line)
    return out


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deployments() -> dict[str, set[str]]:
    """{"flow-name/deployment-name": parameter names} from deploy/prefect.yaml's entrypoints."""
    from prefect.flows import load_flow_from_entrypoint

    out = {}
    old = os.getcwd()
    os.chdir(REPO)
    try:
        for d in prefect_yaml()["deployments"]:
            f = load_flow_from_entrypoint(d["entrypoint"])
            out[f"{f.name}/{d['name']}"] = set(inspect.signature(f.fn).parameters)
    finally:
        os.chdir(old)
    return out


def test_sections_present():
    text = DOC.read_text()
    for s in SECTIONS:
        assert f"\n## {s}\n" in text, s
    assert len(commands()) >= 20


def test_latentda_commands_parse_with_the_cli():
    from flows.cli import build_parser

    seen = 0
    for cmd in commands():
        argv = shlex.split(cmd)
        if argv[0] != "latentda" or argv[1] == "serve":  # serve: see test_serve_commands_parse
            continue
        seen += 1
        try:
            args = build_parser().parse_args(argv[1:])
        except SystemExit as e:  # argparse exits on a bad command line
            pytest.fail(f"documented command does not parse: {cmd!r} (exit {e.code})")
        assert (REPO / args.config).is_file(), cmd
    assert seen >= 4


def test_serve_commands_parse():
    from flows.serve import build_parser

    seen = 0
    for cmd in commands():
        argv = shlex.split(cmd)
        if argv[:3] == ["python", "-m", "flows.serve"]:
            rest = argv[3:]
        elif argv[:2] == ["latentda", "serve"]:  # once the CLI passes `serve` through to flows.serve.main
            rest = argv[2:]
        else:
            continue
        seen += 1
        args = build_parser().parse_args(rest)
        assert (REPO / args.config).is_file()
    assert seen >= 2


def test_prefect_commands_name_what_exists(deployments):
    pools = {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}
    seen = set()
    for cmd in commands():
        argv = shlex.split(cmd)
        if argv[0] != "prefect":
            continue
        args = [a for a in argv[1:] if a != "--no-prompt"]
        if args[:2] == ["deployment", "run"]:
            assert args[2] in deployments, (cmd, sorted(deployments))
            params = [args[i + 1].split("=", 1)[0] for i, a in enumerate(args) if a == "-p"]
            assert set(params) <= deployments[args[2]], (cmd, deployments[args[2]])
            seen.add("run")
        elif args[:2] == ["work-pool", "create"]:
            assert args[2] in pools and args[args.index("--type") + 1] == "process", cmd
            seen.add("pool")
        elif args[:2] == ["worker", "start"]:
            assert args[args.index("--pool") + 1] in pools, cmd
            seen.add("worker")
        elif args[0] == "deploy":
            assert "--all" in args and (REPO / args[args.index("--prefect-file") + 1]).is_file(), cmd
            seen.add("deploy")
        elif args[:2] == ["server", "start"]:
            assert args[args.index("--host") + 1] == "127.0.0.1", cmd
            seen.add("server")
        elif args[:2] == ["deployment", "ls"]:
            seen.add("ls")
        else:
            pytest.fail(f"unchecked prefect command in the docs: {cmd!r}; teach tests/test_docs.py about it")
    assert seen == {"run", "pool", "worker", "deploy", "server", "ls"}
    assert {"latentda-daily/daily", "latentda-backfill/backfill"} <= set(deployments)


def test_other_commands_exist_and_stay_on_loopback():
    for cmd in commands():
        argv = shlex.split(cmd)
        exe = argv[0]
        if exe in ("latentda", "prefect") or argv[:3] == ["python", "-m", "flows.serve"]:
            continue
        if exe == "export":
            assert all(re.fullmatch(r"[A-Z_0-9]+=\S*", a) for a in argv[1:]), cmd
        elif exe == "python" and argv[1] == "-c":
            code = argv[2]
            compile(code, "<docs>", "exec")
            if "job_script" in code:  # cheap and offline: run it
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    exec(code, {})
                assert "distributed.cli.dask_worker" in buf.getvalue()
        elif exe == "python" and argv[1] == "-m":  # a library module's command line: it must parse
            import importlib

            importlib.import_module(argv[2]).build_parser().parse_args(argv[3:])
        elif exe == "cp":
            assert (REPO / argv[1]).is_file(), cmd
        elif exe in ("dask", "moto_server"):
            assert (VENV_BIN / exe).exists() or shutil.which(exe), f"{exe} is not installed"
            if "--host" in argv:
                assert argv[argv.index("--host") + 1] == "127.0.0.1", cmd
            if "-H" in argv:
                assert argv[argv.index("-H") + 1] == "127.0.0.1", cmd
            for a in argv:
                if a.startswith("tcp://"):
                    assert a.startswith("tcp://127.0.0.1:"), cmd
        elif exe == "make":
            targets = re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M)
            assert all(t in targets for t in argv[1:]), cmd
        elif exe.endswith("bin/python") and argv[1].endswith(".py"):
            script = REPO / argv[1]
            assert script.is_file(), cmd
            assert "argparse" in script.read_text(), cmd
        else:
            pytest.fail(f"unchecked command in the docs: {cmd!r}; teach tests/test_docs.py about it")


def test_yaml_snippets_are_valid_run_config_fragments():
    from latentda.config import RunConfig, config_from_dict, deep_merge

    from flows.clusters import task_runner_from_cluster_config

    demo = yaml.safe_load((REPO / "deploy" / "demo.yaml").read_text())
    snippets = blocks("yaml")
    assert len(snippets) >= 4
    for snippet in snippets:
        frag = yaml.safe_load(snippet)
        if isinstance(frag, dict) and set(frag) == {"sources"}:
            check_catalog_fragment(frag)
            continue
        assert isinstance(frag, dict) and set(frag) <= set(RunConfig.model_fields), snippet
        cfg = config_from_dict(deep_merge(demo, frag), base_dir=REPO / "deploy")
        if "cluster" in frag:
            runner = task_runner_from_cluster_config(cfg.cluster)  # builds, starts nothing
            assert runner is not None


def check_catalog_fragment(frag: dict) -> None:
    """An input-catalog snippet: every driver importable, every station layout valid."""
    import importlib

    from latentda.ingest.steps import StationLayout

    for name, src in frag["sources"].items():
        driver = src["driver"]
        if "." in driver:
            mod, cls = driver.rsplit(".", 1)
            assert hasattr(importlib.import_module(mod), cls), (name, driver)
        if driver.endswith("StationTableSource"):
            StationLayout.model_validate(src["args"]["layout"])


def test_python_snippets_compile():
    for code in blocks("python"):
        compile(code, "<docs>", "exec")


def test_profiles_and_files_named_in_the_docs_exist():
    text = DOC.read_text()
    for name in re.findall(r"`(local|slurm|pbs|k8s|address)`", text):
        assert (REPO / "deploy" / "clusters" / f"{name}.yaml").is_file(), name
    written_by_runs = {"catalogs/reanalysis.yaml"}  # the output catalog: created by the first run, git-ignored
    for path in re.findall(r"`((?:deploy|flows|catalogs|tests)/[\w./-]+\.(?:yaml|py))`", text):
        assert path in written_by_runs or (REPO / path).exists(), path
