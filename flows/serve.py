"""The two production deployments, ``daily`` and ``backfill``, and a command that serves them from this process.

    python -m flows.serve --config deploy/demo.yaml            # serve both (blocks; Ctrl-C stops)
    python -m flows.serve --config deploy/demo.yaml --dry-run  # print what would be served, as JSON

The same deployments are declared in ``deploy/prefect.yaml`` for a work pool (``prefect deploy``); serving is
the no-infrastructure alternative: this process polls the Prefect API and runs each flow run in a subprocess.

Both entry flows are thin: they call ``flows.daily.run_daily`` / ``flows.reanalysis.run_reanalysis``, which build
the Dask task runner from the run config's ``cluster:`` section and run the real flow (a subflow) on it. A
deployment cannot choose a task runner from its parameters any other way: the runner is fixed when a flow starts.

- ``latentda-daily/daily``: cron ``0 6 * * *`` in UTC, parameters ``{config_path}``; each run assimilates
  yesterday (UTC), or ``date`` if given; a done day is skipped unless ``force``.
- ``latentda-backfill/backfill``: no schedule; parameters ``config_path`` (default) and ``start``/``end``
  (required at trigger time). Backfill decades as one run per year, e.g.
  ``prefect deployment run latentda-backfill/backfill -p start=1990-01-01 -p end=1990-12-31``; runs resume from
  the archive's done flags, so a failed or repeated year is simply triggered again.

Serving needs a Prefect server (schedules are created by its scheduler service): ``prefect server start --host
127.0.0.1`` and ``export PREFECT_API_URL=http://127.0.0.1:4200/api``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.daily import run_daily  # noqa: E402  (absolute imports: the worker loads this file by path)
from flows.reanalysis import run_reanalysis  # noqa: E402

DEFAULT_CONFIG = "deploy/demo.yaml"
DAILY_CRON = "0 6 * * *"
TIMEZONE = "UTC"
DAILY_FLOW = "latentda-daily"
BACKFILL_FLOW = "latentda-backfill"
TAGS = ["latentda"]


@flow(name=DAILY_FLOW, description="Assimilate one day (default: yesterday UTC) into the archive.")
def daily_entry(config_path: str = DEFAULT_CONFIG, date: str | None = None, force: bool = False) -> dict:
    """Deployment ``daily``: ``run_daily`` on the cluster of the run config at ``config_path``."""
    return run_daily(config_path, date, force=force)


@flow(name=BACKFILL_FLOW, description="Backfill start..end (inclusive) into the archive; resumable.")
def backfill_entry(start: str, end: str, config_path: str = DEFAULT_CONFIG, evaluate_skill: bool = False) -> dict:
    """Deployment ``backfill``: ``run_reanalysis`` for ``start..end`` on the cluster of the run config.

    Days already done are skipped, so rerunning a year after a failure only does what is missing.
    """
    summary = run_reanalysis(config_path, start, end, progress=False, evaluate_skill=evaluate_skill)
    return {k: v for k, v in summary.items() if k != "written"}


def build_deployments(config_path: str = DEFAULT_CONFIG, cron: str = DAILY_CRON, timezone: str = TIMEZONE,
                      daily_name: str = "daily", backfill_name: str = "backfill") -> list:
    """The two ``RunnerDeployment`` objects (not registered): what ``serve`` and the tests use."""
    from prefect.schedules import Cron

    config_path = os.path.abspath(config_path)
    daily = daily_entry.to_deployment(
        name=daily_name, schedules=[Cron(cron, timezone=timezone)], parameters={"config_path": config_path},
        tags=[*TAGS, "daily"], description=f"latentda daily assimilation, cron '{cron}' ({timezone})")
    backfill = backfill_entry.to_deployment(
        name=backfill_name, parameters={"config_path": config_path}, tags=[*TAGS, "backfill"],
        description="latentda backfill of start..end; trigger one run per year to backfill decades")
    return [daily, backfill]


def describe(deployments: Sequence[Any]) -> list[dict[str, Any]]:
    """Plain-data view of deployments (name, flow, schedules, parameters) for --dry-run and logs."""
    out = []
    for d in deployments:
        scheds = []
        for s in d.schedules or []:
            sch = getattr(s, "schedule", s)
            scheds.append({"cron": getattr(sch, "cron", None), "timezone": getattr(sch, "timezone", None),
                           "active": getattr(s, "active", True)})
        out.append({"name": f"{d.flow_name}/{d.name}", "schedules": scheds, "parameters": dict(d.parameters),
                    "required": list((d._parameter_openapi_schema.required or [])
                                     if getattr(d, "_parameter_openapi_schema", None) else []),
                    "tags": list(d.tags or [])})
    return out


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m flows.serve`` (and of a ``latentda serve`` subcommand)."""
    if not any(a.dest == "config" for a in p._actions):
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"run config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--cron", default=DAILY_CRON, help=f"schedule of the daily deployment (default '{DAILY_CRON}')")
    p.add_argument("--timezone", default=TIMEZONE, help=f"time zone of --cron (default {TIMEZONE})")
    p.add_argument("--limit", type=int, default=None, help="at most this many flow runs at once (default: no limit)")
    p.add_argument("--dry-run", action="store_true", help="print the deployments as JSON and exit")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.serve",
                                description="Serve the latentda deployments 'daily' (cron) and 'backfill'.")
    return add_arguments(p)


def cmd_serve(args: argparse.Namespace, out=sys.stdout) -> int:
    """Serve (blocks) or, with ``--dry-run``, print the deployments."""
    from latentda.config import load_config

    cfg = load_config(args.config)  # fail now, not at 06:00, if the config is broken
    deps = build_deployments(args.config, args.cron, args.timezone)
    if args.dry_run:
        out.write(json.dumps({"config": os.path.abspath(args.config), "config_hash": cfg.hash,
                              "deployments": describe(deps)}, indent=2) + "\n")
        return 0
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: serving needs a Prefect server, whose scheduler creates the daily runs. Start one and point "
              "at it:\n  prefect server start --host 127.0.0.1 --port 4200 &\n"
              "  export PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    from prefect import serve

    serve(*deps, limit=args.limit)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cmd_serve(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
