"""``latentda`` command line: the demo, the production flows, archive status, quicklooks and data generators.

    latentda demo [--start D --end D --members N --workers N]   ingest -> train -> backfill -> evaluate
    latentda train                                              ingest + train the prior
    latentda backfill [--start D --end D]                       assimilate the missing days of a range
    latentda daily [--date D] [--force] [--serve]               one day (default yesterday UTC)
    latentda status [--start D --end D]                         days done / missing in the archive
    latentda feedback [--start D --end D]                       O-B / O-A per variable, QC, flagged stations
    latentda evaluate [--start D --end D]                       skill table (Prefect artifact) + quicklook
    latentda quicklook --date D [--variable V]                  PNG of one archived day
    latentda simulate ...  /  latentda make-obs ...             demo data generators (their own options)

Every command takes ``--config PATH`` (default ``deploy/demo.yaml``). Without ``PREFECT_API_URL`` a command starts
one temporary local Prefect server for itself and its Dask workers.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

DEFAULT_CONFIG = "deploy/demo.yaml"
PASS_THROUGH = {"simulate": ("latentda.sim.heldsuarez", "main"), "make-obs": ("latentda.sim.stations", "main"),
                "serve": ("flows.serve", "main")}


def _overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    o: dict[str, Any] = {}
    if getattr(args, "members", None) is not None:
        o.setdefault("assimilation", {})["members"] = args.members
    if getattr(args, "workers", None) is not None:
        o.setdefault("cluster", {})["n_workers"] = args.workers
    if getattr(args, "block_days", None) is not None:
        o.setdefault("assimilation", {})["block_days"] = args.block_days
    return o or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentda", description="latentda reanalysis production system",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if config:
            sp.add_argument("--config", default=DEFAULT_CONFIG, help=f"run config YAML (default {DEFAULT_CONFIG})")
        sp.add_argument("--debug", action="store_true", help="show the full traceback of an error")
        return sp

    def range_args(sp, required: bool = False, what: str = "the config's backfill range") -> None:
        sp.add_argument("--start", required=required, help=f"first day YYYY-MM-DD (default: {what})")
        sp.add_argument("--end", required=required, help=f"last day YYYY-MM-DD (default: {what})")

    def run_args(sp) -> None:
        sp.add_argument("--members", type=int, help="ensemble size (overrides assimilation.members)")
        sp.add_argument("--workers", type=int, help="Dask workers (overrides cluster.n_workers)")
        sp.add_argument("--block-days", type=int, help="days per Dask task (overrides assimilation.block_days)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    sp = add("demo", "the whole demo: ingest -> train -> backfill -> evaluate -> summary")
    range_args(sp)
    run_args(sp)
    sp.add_argument("--retrain", action="store_true", help="train the prior again even if it is up to date")

    sp = add("train", "ingest the training fields through the catalog and train the prior")
    sp.add_argument("--workers", type=int, help="Dask workers (overrides cluster.n_workers)")
    sp.add_argument("--retrain", action="store_true", help="train again even if the prior is up to date")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    sp = add("backfill", "assimilate the days of a range that are not done yet (resumable)")
    range_args(sp)
    run_args(sp)
    sp.add_argument("--force", action="store_true", help="redo the days of the range that are already done")

    sp = add("daily", "assimilate one day (default: yesterday, UTC)")
    sp.add_argument("--date", help="day YYYY-MM-DD (default: yesterday UTC)")
    sp.add_argument("--force", action="store_true", help="rewrite the day even if it is done")
    sp.add_argument("--serve", action="store_true", help="serve the daily flow on a cron schedule (blocks)")
    sp.add_argument("--cron", default="0 6 * * *", help="cron schedule for --serve, UTC (default 06:00 daily)")

    sp = add("status", "days done / missing in the archive")
    range_args(sp, what="the whole archive period")

    sp = add("feedback", "per-observation feedback: O-B and O-A per variable, rejections by reason, flagged "
                         "stations")
    from .feedback import add_arguments as feedback_arguments

    feedback_arguments(sp)

    sp = add("evaluate", "skill against the truth / held-out stations (Prefect artifact) and a quicklook")
    range_args(sp)
    sp.add_argument("--date", help="quicklook day (default: the middle done day)")

    sp = add("quicklook", "PNG of one archived day: analysis mean, spread + observations, truth if known")
    sp.add_argument("--date", required=True, help="day YYYY-MM-DD")
    sp.add_argument("--variable", help="variable (default: evaluation.quicklook_variable or the first one)")
    sp.add_argument("--out", help="PNG path (default: <workdir>/quicklooks/...)")

    for name, (mod, _) in PASS_THROUGH.items():
        sp = sub.add_parser(name, help=f"pass-through to {mod}.main (see `latentda {name} --help`)", add_help=False)
        sp.add_argument("args", nargs=argparse.REMAINDER)
    return p


# ---------------------------------------------------------------------------------------------- printing
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def print_summary(summary: dict, evaluation: dict | None = None, quicklook: str | None = None,
                  out=None) -> None:
    """The final summary of a backfill: days written, fit to observations, skill if truth known, archive path."""
    out = out or sys.stdout
    ev = evaluation or {}
    fit = ev.get("fit") or summary.get("fit") or {}
    truth = ev.get("truth") if evaluation is not None else summary.get("truth")
    stations = ev.get("stations") if evaluation is not None else summary.get("stations")
    w = out.write
    w("\n== latentda summary " + "=" * 50 + "\n")
    w(f"archive        {summary['archive']}\n")
    w(f"catalog        {summary['catalog']} (entry '{summary['entry']}': "
      f"intake.open_catalog(...)['{summary['entry']}'].to_dask())\n")
    w(f"range          {summary['range'][0]} .. {summary['range'][1]}: {summary['days_written']} day(s) written "
      f"now, {summary['days_requested'] - summary['days_todo']} were already done; "
      f"{summary['archive_days_done']}/{summary['archive_days']} days of the archive done\n")
    if summary.get("failed"):
        w(f"FAILED days    {summary['failed']} (rerun to resume)\n")
    if summary.get("qc") is not None:
        from latentda.obs.qc import format_counts

        w(f"QC             {summary['qc'].get('used', 0)} observation(s) used; rejected by reason: "
          f"{format_counts(summary['qc'])}\n")
    if summary.get("feedback_entry"):
        w(f"feedback       O-B, O-A, QC flag and reason of every input observation: entry "
          f"'{summary['feedback_entry']}' of the catalog (`latentda feedback --config "
          f"{summary.get('config') or 'CONFIG'}` summarises it)\n")
    if summary.get("prior_only"):
        w(f"PRIOR ONLY     {len(summary['prior_only'])} day(s) analysed from the prior alone (no usable "
          f"observation; no_obs=1 in the archive): {_ranges(summary['prior_only'])}\n")
    if fit:
        w(f"fit to obs     RMS normalised departure before {_fmt(fit.get('fit_before'))} -> after "
          f"{_fmt(fit.get('fit_after'))}; {_fmt(fit.get('obs_used'), 4)} observations used per day\n")
    if truth:
        w("skill vs truth (latitude-weighted RMSE, mean over days; skill = 1 - RMSE/RMSE_clim):\n")
        w(f"  {'variable':<22}{'units':>7}{'analysis':>11}{'climatol.':>11}{'skill':>8}{'spread':>9}"
          f"{'spr/skill':>10}\n")
        for v, r in truth.items():
            w(f"  {v:<22}{r.get('units', ''):>7}{_fmt(r.get('rmse')):>11}{_fmt(r.get('rmse_clim')):>11}"
              f"{_fmt(r.get('skill'), 2):>8}{_fmt(r.get('spread')):>9}{_fmt(r.get('spread_skill'), 2):>10}\n")
    if stations:
        w("O-A at held-out stations (rms):  " + ", ".join(f"{v} {_fmt(r.get('rms'))}" for v, r in stations.items())
          + "\n")
    if quicklook:
        w(f"quicklook      {quicklook}\n")
    w(f"time           {summary.get('seconds', 'n/a')} s for the backfill\n")
    w("=" * 70 + "\n")


def _ranges(days) -> str:
    if len(days) == 0:
        return "none"
    import pandas as pd

    d = pd.DatetimeIndex(days)
    out, s, prev = [], d[0], d[0]
    for x in d[1:]:
        if (x - prev).days != 1:
            out.append((s, prev))
            s = x
        prev = x
    out.append((s, prev))
    parts = [f"{a.date()}" if a == b else f"{a.date()}..{b.date()}" for a, b in out]
    return ", ".join(parts[:8]) + (f", ... ({len(parts)} ranges)" if len(parts) > 8 else "")


# ---------------------------------------------------------------------------------------------- commands
def cmd_status(args, out=None) -> int:
    out = out or sys.stdout
    from latentda import archive as lib
    from latentda import storage
    from latentda.config import load_config

    cfg = load_config(args.config)
    url = cfg.archive_url
    out.write(f"archive  {storage.redact(url)}\n")
    try:
        st = lib.day_status(url, cfg.archive.storage_options, args.start, args.end)
    except FileNotFoundError:
        out.write(f"status   not created yet (period {cfg.archive.start}..{cfg.archive.end}); run "
                  f"`latentda backfill --config {args.config}`\n")
        return 0
    done, missing = st.index[st.values], st.index[~st.values]
    out.write(f"range    {st.index[0].date()}..{st.index[-1].date()} ({len(st)} days)\n")
    out.write(f"done     {len(done)} days: {_ranges(done)}\n")
    out.write(f"missing  {len(missing)} days: {_ranges(missing)}\n")
    return 0


def cmd_quicklook(args, out=None) -> str:
    out = out or sys.stdout
    from latentda.config import load_config
    from latentda.report import quicklook_day
    from tasks.evaluate import run_observations, run_truth

    from .evaluate import quicklook_path

    cfg = load_config(args.config)
    var = args.variable or cfg.quicklook_variable
    if var not in cfg.variables:
        raise SystemExit(f"error: --variable {var!r} is not one of {cfg.variables}")
    day = str(args.date)[:10]
    png = args.out or quicklook_path(cfg, day, var)
    png = quicklook_day(cfg, day, var, png, truth=run_truth(cfg), observations=run_observations(cfg))
    out.write(f"quicklook {png}\n")
    return png


def cmd_demo(args, out=None) -> dict:
    out = out or sys.stdout
    from latentda.config import load_config

    from . import prefect_api
    from .evaluate import run_evaluate
    from .reanalysis import run_reanalysis
    from .runners import prestart_workers, worker_size
    from .train import run_train

    ov = _overrides(args)
    cfg = load_config(args.config, ov)
    p = cfg.backfill_period()
    start, end = args.start or str(p.start), args.end or str(p.end)
    progress = not args.no_progress
    t0 = time.perf_counter()
    out.write(f"latentda demo: config {cfg.source} (hash {cfg.hash[:12]}), {len(cfg.variables)} variables, "
              f"{cfg.assimilation.members} members, {worker_size(cfg.cluster).n_workers} Dask worker(s)\n")
    prestart_workers(cfg.cluster)
    with prefect_api():
        out.write(f"[1/3] ingest {cfg.catalog.fields!r} through {cfg.catalog.path} and train the prior "
                  f"(epochs<={cfg.prior.epochs}, <= {cfg.prior.max_minutes} min)\n")
        out.flush()
        tr = run_train(args.config, ov, retrain=args.retrain, progress=progress)
        out.write(f"      prior {'trained' if tr['trained'] else 'up to date, reused (checksum verified)'}: "
                  f"{tr['path']} ({time.perf_counter() - t0:.0f} s)\n      {tr['summary']}\n")
        out.write(f"[2/3] backfill {start}..{end} with {cfg.catalog.observations!r} into {cfg.archive_url}\n")
        out.flush()
        summary = run_reanalysis(args.config, start, end, ov, progress=progress, evaluate_skill=False)
        out.write(f"      {summary['days_written']} day(s) written in {summary['seconds']} s\n")
        out.write("[3/3] evaluate against the held-out truth and draw a quicklook\n")
        out.flush()
        ev = run_evaluate(args.config, start, end, ov)
    print_summary(summary, ev["evaluation"], ev["quicklook"], out=out)
    out.write(f"total {time.perf_counter() - t0:.0f} s\n")
    return {"train": tr, "reanalysis": summary, "evaluate": ev}


def _prestart(cfg) -> None:
    """Start the local workers' forkserver (imports torch once, in the background) before the Prefect server;
    ``cfg``: the run config preflight loaded (CLI overrides applied)."""
    from .runners import prestart_workers

    prestart_workers(cfg.cluster)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        mod_name, fn = PASS_THROUGH[argv[0]]
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as err:
            print(f"error: `latentda {argv[0]}` needs {mod_name} ({err})", file=sys.stderr)
            return 2
        if not hasattr(mod, fn):
            print(f"error: {mod_name} has no {fn}() yet; `latentda {argv[0]}` is not available", file=sys.stderr)
            return 2
        rc = getattr(mod, fn)(argv[1:])
        return int(rc or 0)
    args = build_parser().parse_args(argv)
    from . import BackfillIncomplete
    from .preflight import preflight

    cfg = None
    try:
        cfg = preflight(args)  # before any Prefect server, cluster or store: bad input exits 2 in about a second
        if args.command not in ("status", "quicklook", "feedback"):
            from . import hide_prefect_tracebacks, quiet_dask_logs

            quiet_dask_logs()
            if not args.debug:
                hide_prefect_tracebacks()
        return _dispatch(args, cfg)
    except BackfillIncomplete as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line; the traceback with --debug
        if args.debug:
            raise
        msg = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        if cfg is not None and isinstance(err, OSError):  # an object-store error: say which bucket
            from latentda.storage import name_buckets

            msg = name_buckets(msg, {"archive": cfg.archive_url, "prior": cfg.prior_path,
                                     "training store": cfg.training_store, "catalog": cfg.catalog.path})
        if is_input_error(err):
            print(f"error: {msg}", file=sys.stderr)
            return 2
        print(f"error: {type(err).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def is_input_error(err: BaseException) -> bool:
    """Bad input (exit code 2): a config, range, catalog, path or archive problem the user fixes
    (ConfigError and InputError are ValueErrors; ArchiveError is checked only if latentda.archive was imported,
    so that a config typo never pays for importing xarray)."""
    kinds: tuple[type, ...] = (ValueError, KeyError, FileNotFoundError, PermissionError, IsADirectoryError,
                               NotADirectoryError)
    arch = sys.modules.get("latentda.archive")
    if arch is not None:
        kinds += (arch.ArchiveError,)
    return isinstance(err, kinds)


def _dispatch(args, cfg) -> int:
    from latentda import storage

    from . import prefect_api

    c = args.command
    if c == "status":
        return cmd_status(args)
    if c == "feedback":
        from .feedback import cmd_feedback

        return cmd_feedback(args)
    if c == "quicklook":
        cmd_quicklook(args)
        return 0
    if c == "demo":
        cmd_demo(args)
        return 0
    if c == "train":
        from .train import run_train

        _prestart(cfg)
        with prefect_api():
            out = run_train(args.config, _overrides(args), retrain=args.retrain, progress=not args.no_progress)
        print(f"prior {'trained' if out['trained'] else 'up to date, reused (checksum verified)'}: "
              f"{storage.redact(out['path'])} (checksum {out['checksum'][:12]})\n{out['summary']}")
        return 0
    if c == "backfill":
        from .reanalysis import run_reanalysis

        _prestart(cfg)
        with prefect_api():
            summary = run_reanalysis(args.config, args.start, args.end, _overrides(args),
                                     progress=not args.no_progress, force=args.force)
        print_summary(summary)
        return 0
    if c == "daily":
        from .daily import run_daily, serve_daily

        if not args.serve:
            _prestart(cfg)
        with prefect_api():
            if args.serve:
                serve_daily(args.config, cron=args.cron)
                return 0
            out = run_daily(args.config, args.date, force=args.force)
        prior_only = (out.get("outcome") or {}).get("prior_only")
        print(f"day {out['day']}: {'written' if out['written'] else 'already done'}"
              f"{' from the PRIOR ALONE (no usable observation)' if prior_only else ''} ({out['archive']})")
        return 0
    if c == "evaluate":
        from .evaluate import run_evaluate

        with prefect_api():
            out = run_evaluate(args.config, args.start, args.end, day=args.date)
        print(out["markdown"])
        print(f"\nreport    {storage.redact(out['report'])}")
        if out["quicklook"]:
            print(f"quicklook {out['quicklook']}")
        return 0
    raise SystemExit(f"unknown command {c!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
