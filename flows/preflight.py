"""Validate a command's inputs before anything starts: no Prefect server, no Dask cluster, no store is created
until these checks pass (issue 11 item 3).

Two stages, cheap first, so that the common mistakes fail in about a second:

1. :func:`check_light` (pydantic, yaml and the standard library only): the run config (``load_config``), the date
   range (a date, not reversed, inside the archive period), the catalog entries the command names (``fields``,
   ``observations``, ``truth`` exist in a local catalog), the archive path (not a regular file).
2. :func:`check_data` (reads data, imports xarray/torch): the observation table has rows in the range, the prior
   exists and matches the archive's grid when both exist, ``evaluate`` has a done day to evaluate.

Every failure is an :class:`InputError` (a ValueError: exit code 2, one line) naming the bad value and the fix.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any

import yaml

from latentda.config import RunConfig, load_config

#: Which catalog entries each command reads (roles of ``RunConfig.catalog``).
ENTRIES = {"demo": ("fields", "observations", "truth"), "train": ("fields",),
           "backfill": ("observations", "truth"), "daily": ("observations",), "evaluate": ("truth",),
           "quicklook": ("truth", "observations")}


class InputError(ValueError):
    """A bad input found before the command starts anything (the CLI exits 2 with this one line)."""


def yesterday_utc() -> str:
    """Yesterday's date in UTC, ISO (the default day of ``latentda daily``)."""
    return str(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))


def command_range(cfg: RunConfig, args: Any) -> tuple[dt.date, dt.date] | None:
    """The days a command works on, checked (:meth:`RunConfig.day_range`); None for ``train`` and
    ``daily --serve`` (a schedule, not a day)."""
    c = args.command
    if c == "train" or (c == "daily" and getattr(args, "serve", False)):
        return None
    if c == "daily":
        day = args.date or yesterday_utc()
        return cfg.day_range(day, day)
    if c == "quicklook":
        return cfg.day_range(args.date, args.date)
    default = cfg.archive.period if c == "status" else None
    return cfg.day_range(getattr(args, "start", None), getattr(args, "end", None), default=default)


def catalog_entries(path: str) -> list[str] | None:
    """Entry names of a local Intake v1 YAML catalog (its ``sources``), read with yaml alone; None for a remote
    catalog or one whose entries come from elsewhere (Intake checks those when it opens them)."""
    if "://" in path:
        return None
    if not os.path.isfile(path):
        raise InputError(f"catalog {path!r} (catalog.path in the run config) does not exist")
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise InputError(f"catalog {path!r} is not valid YAML: {err}") from None
    sources = doc.get("sources") if isinstance(doc, dict) else None
    return sorted(sources) if isinstance(sources, dict) else None


def check_entries(cfg: RunConfig, roles: tuple[str, ...]) -> None:
    """Every catalog entry the command reads (``roles`` of ``cfg.catalog``) exists in the input catalog."""
    names = {r: getattr(cfg.catalog, r) for r in roles if getattr(cfg.catalog, r)}
    if not names:
        return
    have = catalog_entries(cfg.catalog.path)
    if have is None:
        return
    for role, name in names.items():
        if name not in have:
            raise InputError(f"catalog.{role}: entry {name!r} does not exist in {cfg.catalog.path}; available "
                             f"entries: {have}")


def check_archive_path(cfg: RunConfig) -> None:
    """A local archive path must be a directory (a Zarr store) or absent, not a regular file."""
    url = cfg.archive_url
    if "://" not in url and os.path.isfile(url):
        raise InputError(f"archive path {url} is a regular file, not a Zarr store: move it away or set archive.url "
                         "in the run config")


def check_light(args: Any) -> tuple[RunConfig, tuple[dt.date, dt.date] | None]:
    """Stage 1 (about a second): config, range, catalog entries, archive path. Returns the config and range."""
    from .cli import _overrides

    cfg = load_config(args.config, _overrides(args))
    days = command_range(cfg, args)
    check_entries(cfg, ENTRIES.get(args.command, ()))
    check_archive_path(cfg)
    return cfg, days


def check_observation_rows(cfg: RunConfig, days: tuple[dt.date, dt.date]) -> None:
    """The observation entry has rows dated inside ``days`` (else there is nothing to assimilate)."""
    import pandas as pd

    from tasks.assimilate import run_observations  # cached per process: the flow reuses this read

    table = run_observations(cfg)
    if "time" not in table.columns:
        raise InputError(f"observation entry {cfg.catalog.observations!r} has no 'time' column; it has "
                         f"{list(table.columns)}")
    t = pd.to_datetime(table["time"], errors="coerce", utc=True).dt.tz_localize(None).dt.normalize()
    s, e = pd.Timestamp(days[0]), pd.Timestamp(days[1])
    if not ((t >= s) & (t <= e)).any():
        span = (f"its {len(table)} rows are dated {t.min().date()}..{t.max().date()}" if t.notna().any()
                else f"none of its {len(table)} rows has a readable time")
        raise InputError(f"observation entry {cfg.catalog.observations!r} has no row dated {s.date()}..{e.date()} "
                         f"({span}): nothing to assimilate; check its time column or the range")


def check_prior(cfg: RunConfig) -> None:
    """The prior exists, loads, and matches an existing archive (engine, grid, variables, members, period)."""
    from latentda import archive, archive_icechunk, storage
    from tasks.archive import load_prior_cached  # cached per process: the flow reuses this load

    so = dict(cfg.archive.storage_options) or None
    if not storage.exists(cfg.prior_path, so):
        raise InputError(f"no prior checkpoint at {storage.redact(cfg.prior_path)}; train it first: "
                         f"`latentda train --config {cfg.source or 'CONFIG'}`")
    if not storage.exists(cfg.archive_url, so):
        return
    found = archive.engine_at(cfg.archive_url, so)
    if found != cfg.archive.engine and (found == "icechunk" or not archive_icechunk.may_create_in(cfg.archive_url,
                                                                                                so)):
        raise InputError(f"the store at {storage.redact(cfg.archive_url)} is not an archive of engine "
                         f"{cfg.archive.engine!r} (it is {found!r}): set archive.engine to match it or choose "
                         "another archive.url")
    prior = load_prior_cached(cfg.prior_path, "cpu", cfg.archive.storage_options)
    spec = archive.archive_spec(prior, cfg.archive.start, cfg.archive.end, cfg.assimilation.members,
                                cfg.members_to_keep, cfg.variables)
    archive.check_compatible(cfg.archive_url, spec, storage_options=so)


def check_done_days(cfg: RunConfig, days: tuple[dt.date, dt.date]) -> None:
    """``evaluate``/``quicklook``: the archive exists and has a done day in ``days``."""
    from latentda import archive

    try:
        st = archive.day_status(cfg.archive_url, cfg.archive.storage_options, str(days[0]), str(days[1]))
    except FileNotFoundError:
        raise InputError(f"archive {cfg.archive_url} does not exist yet: run `latentda backfill --config "
                         f"{cfg.source or 'CONFIG'}` first") from None
    if not st.values.any():
        raise InputError(f"no day of {days[0]}..{days[1]} is done in {cfg.archive_url}: nothing to evaluate; run "
                         f"`latentda backfill` for the range first")


def check_data(args: Any, cfg: RunConfig, days: tuple[dt.date, dt.date] | None) -> None:
    """Stage 2 (reads data): observation rows in the range, the prior against the archive, done days."""
    c = args.command
    if c in ("backfill", "daily", "demo") and cfg.catalog.observations and days is not None:
        check_observation_rows(cfg, days)
    if c in ("backfill", "daily"):
        check_prior(cfg)
    if c == "evaluate":
        check_done_days(cfg, days)


def preflight(args: Any) -> RunConfig:
    """Run both stages for the parsed CLI ``args``; returns the loaded run config. Raises InputError,
    ConfigError, FileNotFoundError or ArchiveError (all input errors: exit 2)."""
    cfg, days = check_light(args)
    check_data(args, cfg, days)
    return cfg
