"""The reanalysis loop: assimilate days and write each into the archive (see ARCHITECTURE.md, "the day loop").

This is the one loop of the system. The CLI, the Prefect flows (one block of days per task, the days mapped over
Dask workers), the benchmarks and the tests all call it, so they write the same bytes::

    settings = DaySettings.from_config(cfg, exclude_stations=holdout_for(cfg, table))
    ensure_archive(cfg, prior)                        # create the pre-sized store, or check the existing one
    backfill(cfg, days, prior=prior, observations=table)          # skips done days unless force=True

Each day: the rows of that day (minus held-out stations) -> ``latentda.assimilate`` with the run's base seed
(draws derive from ``SeedSequence([seed, day, ...])``) at a fixed torch thread count -> ``archive.write_day``
with the day's provenance (prior checksum, observation-table hash, config hash). Before the archive write, the
day's per-observation feedback (every input row of the day: used, rejected with its QC reason, held out) is
written beside the archive (:mod:`latentda.feedback`), so it is complete before the day's done flag. Days are
independent. No orchestration import.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import xarray as xr

from . import archive, feedback
from .da.options import AssimilationOptions, as_options
from .evaluation import heldout_stations
from .obs.window import row_days, window_table
from .runtime import table_hash, to_days, torch_threads

__all__ = ["DaySettings", "observations_for_day", "split_holdout", "window_of", "record_end", "day_status",
           "days_needing_work", "day_outcome", "summarise_outcomes", "holdout_for", "assimilate_day",
           "assimilate_days", "backfill", "archive_provenance", "catalog_description", "feedback_entry_name",
           "feedback_description", "catalog_metadata", "ensure_archive", "day_range"]


@dataclasses.dataclass(frozen=True)
class DaySettings:
    """Everything a day's analysis and write need besides the prior, the observations and the day.

    ``threads``: torch intra-op threads during the assimilation (float32 reductions round differently with
    another count: keep it fixed, default 1 as on a Dask worker, for byte-identical archives; None: leave torch's
    setting). ``exclude_stations``: station ids never assimilated (the evaluation hold-out).
    ``feedback``: write each day's per-observation feedback beside the archive (:mod:`latentda.feedback`).
    """

    url: str
    members: int
    seed: int
    members_to_keep: int = 0
    options: AssimilationOptions = dataclasses.field(default_factory=AssimilationOptions)
    config_hash: str | None = None
    storage_options: Mapping[str, Any] | None = None
    threads: int | None = 1
    exclude_stations: tuple[str, ...] = ()
    feedback: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", as_options(self.options))
        object.__setattr__(self, "exclude_stations", tuple(map(str, self.exclude_stations)))

    @classmethod
    def from_config(cls, config, exclude_stations: Iterable[str] = ()) -> "DaySettings":
        """The settings of a :class:`latentda.config.RunConfig`."""
        return cls(url=config.archive_url, members=config.assimilation.members, seed=config.assimilation.seed,
                   members_to_keep=config.members_to_keep, options=config.assimilation.options,
                   config_hash=config.hash, storage_options=dict(config.archive.storage_options) or None,
                   threads=config.assimilation.threads, exclude_stations=tuple(exclude_stations))


def observations_for_day(observations: pd.DataFrame, day: Any, exclude_stations: Iterable[str] | None = None,
                         window: int = 0) -> pd.DataFrame:
    """The rows of ``observations`` on the days ``[day - window, day + window]`` (the day alone for ``window = 0``)
    by :func:`latentda.obs.window.window_table` (one time rule: time zones converted to UTC, a time that is not a
    date refused naming it), minus ``exclude_stations``, in their given order."""
    return split_holdout(window_table(observations, to_days(day)[0], int(window)), exclude_stations or ())[0]


def split_holdout(rows: pd.DataFrame, exclude_stations: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(assimilated, held_out)``: the rows whose station is not / is in ``exclude_stations``, each with a fresh
    index, in their input order."""
    ex = set(map(str, exclude_stations))
    if not ex or "station_id" not in rows.columns:
        return rows.reset_index(drop=True), rows.iloc[:0].reset_index(drop=True)
    held = rows["station_id"].astype(str).isin(ex).values
    return rows[~held].reset_index(drop=True), rows[held].reset_index(drop=True)


def holdout_for(config, observations: pd.DataFrame) -> list[str]:
    """Station ids of ``observations`` held out of the assimilation by ``config.evaluation.holdout_fraction``."""
    fraction = config.evaluation.holdout_fraction
    if not fraction or "station_id" not in observations.columns:
        return []
    return heldout_stations(observations["station_id"].astype(str).unique(), fraction, config.assimilation.seed)


def assimilate_day(prior, observations: pd.DataFrame, day: Any, settings: DaySettings,
                   held_out: pd.DataFrame | None = None) -> xr.Dataset | tuple[xr.Dataset, pd.DataFrame]:
    """One day's analysis: ``latentda.assimilate`` with the run's base seed, options and thread count (the same
    call in a notebook reproduces the archived day). ``observations`` are that day's rows.

    With ``held_out`` (that day's held-out rows, possibly empty): ``(analysis, feedback)``, the feedback of every
    row of both tables (:mod:`latentda.feedback`); the analysis is the same bytes."""
    from .da.window import assimilate  # lazy (torch); windowed for a window prior, per-day otherwise

    with torch_threads(settings.threads):
        return assimilate(prior, observations, to_days(day)[0], members=settings.members, seed=settings.seed,
                          keep_members=bool(settings.members_to_keep), options=settings.options,
                          feedback=held_out is not None, passive=held_out)


def window_of(prior) -> int:
    """Half-width k (days) of the prior's assimilation window: 0 for a day prior."""
    return int(getattr(prior, "window", 0) or 0)


def record_end(observations: pd.DataFrame) -> pd.Timestamp | None:
    """The last day of the observation record (the latest day with a row), None for an empty table."""
    t = row_days(observations)
    return None if t.isna().all() else t.max()


def day_status(day: Any, window: int, end_of_record: pd.Timestamp | None) -> int:
    """:data:`archive.FINAL` when the observation record reaches the end of the day's window (day + k), else
    :data:`archive.PRELIMINARY`: observations of the window may still come."""
    d = to_days(day)[0]
    final = end_of_record is not None and end_of_record >= d + pd.Timedelta(days=window)
    return archive.FINAL if final else archive.PRELIMINARY


def days_needing_work(url: str, days: Iterable[Any], window: int, end_of_record: pd.Timestamp | None,
                      storage_options: Mapping[str, Any] | None = None) -> list[pd.Timestamp]:
    """The days of ``days`` to (re)analyse: not done, or done as preliminary while their window is complete now.
    A final day, or a preliminary one whose window is still open, is left alone (rerunning it would write the same
    or no better bytes)."""
    todo = to_days(list(days))
    if not todo:
        return []
    return _needing_work(archive.day_states(url, storage_options, min(todo), max(todo)), todo, window, end_of_record)


def _needing_work(states: pd.DataFrame, todo: list[pd.Timestamp], window: int,
                  end_of_record: pd.Timestamp | None) -> list[pd.Timestamp]:
    """The days of ``todo`` that :func:`days_needing_work` keeps, from the archive's ``states``
    (:func:`latentda.archive.day_states` covering them)."""
    out = []
    for d in todo:
        done, status = bool(states.at[d, "done"]), int(states.at[d, "status"])
        upgrade = status == archive.PRELIMINARY and day_status(d, window, end_of_record) == archive.FINAL
        if not done or upgrade:
            out.append(d)
    return out


def plan_days(config, start: Any, end: Any, window: int, end_of_record: pd.Timestamp | None
              ) -> tuple[list[pd.Timestamp], list[pd.Timestamp]]:
    """``(todo, missing)`` of a backfill of ``start..end`` from one read of the archive's flags: the days of the
    range that need work (:func:`days_needing_work`) and the days of the whole archive period not done yet (what
    the run's summary counts against)."""
    states = archive.day_states(config.archive_url, config.archive.storage_options or None)
    missing = list(states.index[~states["done"].to_numpy()])
    todo = list(states.index[archive.period_slice(states.index, start, end)])
    return _needing_work(states, todo, window, end_of_record), missing


def day_outcome(analysis: xr.Dataset) -> dict[str, Any]:
    """What the summary reports of a written day: ``{"qc": rows per QC reason, "prior_only": no usable
    observation}`` (from the analysis attrs ``latentda:qc`` and its ``no_obs`` diagnostic)."""
    qc = json.loads(analysis.attrs.get("latentda:qc", "{}"))
    return {"qc": {str(k): int(v) for k, v in qc.items()},
            "prior_only": bool(int(analysis["no_obs"].values.reshape(-1)[0])) if "no_obs" in analysis else False}


def assimilate_days(prior, observations: pd.DataFrame, days: Iterable[Any], settings: DaySettings, *,
                    skip_done: bool = False, progress: Callable[[str], None] | None = None,
                    outcomes: dict[str, dict] | None = None, session: Any = None,
                    end_of_record: pd.Timestamp | None = None) -> list[str]:
    """Assimilate and write each of ``days`` into the archive ``settings.url``; returns the ISO dates written.

    Each day uses the rows of its window [d - k, d + k] (k = the prior's window; the day alone for a day prior) and
    is written with its status: final when the observation record reaches d + k, else preliminary.
    ``skip_done`` leaves alone the days that need no work (:func:`days_needing_work`: done, and final or with
    their window still open). ``progress(day_iso)`` is called after each day.
    ``outcomes`` (a dict, filled in place): ``{day_iso: day_outcome(analysis)}`` of every day written.
    ``session``: an Icechunk archive's (forked) session to write into, committed by the caller
    (:mod:`latentda.archive_icechunk`); without it an Icechunk archive commits each day on its own.
    ``end_of_record``: :func:`record_end` of ``observations`` when the caller has it (a worker running the days of
    one table one at a time); None computes it.
    """
    checksum = prior.checksum()
    k = window_of(prior)
    end_of_record = record_end(observations) if end_of_record is None else end_of_record
    todo = to_days(list(days))
    if skip_done:
        todo = days_needing_work(settings.url, todo, k, end_of_record, settings.storage_options)
    written = []
    for d in todo:
        if settings.feedback:  # a windowed analysis gives the feedback of the centre day's rows
            obs, held = split_holdout(observations_for_day(observations, d, window=k), settings.exclude_stations)
            ana, fb = assimilate_day(prior, obs, d, settings, held_out=held)
            feedback.write_day_feedback(settings.url, d, fb, settings.storage_options)  # before the done flag
        else:
            obs = observations_for_day(observations, d, settings.exclude_stations, window=k)
            ana = assimilate_day(prior, obs, d, settings)
        if archive.WINDOW_OBSERVED not in ana:
            ana[archive.WINDOW_OBSERVED] = (("time",), [int(row_days(obs).nunique())] if len(obs) else [0])
        archive.write_day(settings.url, ana, {"model_checksum": checksum, "obs_hash": table_hash(obs),
                                              "config_hash": settings.config_hash},
                          settings.storage_options, members_to_keep=settings.members_to_keep,
                          status=day_status(d, k, end_of_record), session=session)
        written.append(str(d.date()))
        if outcomes is not None:
            outcomes[written[-1]] = day_outcome(ana)
        if progress is not None:
            progress(written[-1])
    return written


def backfill(config, days: Iterable[Any], *, prior, observations: pd.DataFrame, force: bool = False,
             progress: Callable[[str], None] | None = None, outcomes: dict[str, dict] | None = None,
             session: Any = None, end_of_record: pd.Timestamp | None = None) -> list[str]:
    """Assimilate ``days`` of a run config into its archive (which must exist: :func:`ensure_archive`), skipping
    the days already done unless ``force``; the evaluation hold-out of the config is applied. Returns the ISO
    dates written (``outcomes``, ``session``, ``end_of_record``: see :func:`assimilate_days`)."""
    settings = DaySettings.from_config(config, exclude_stations=holdout_for(config, observations))
    return assimilate_days(prior, observations, days, settings, skip_done=not force, progress=progress,
                           outcomes=outcomes, session=session, end_of_record=end_of_record)


def summarise_outcomes(outcomes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Range totals of per-day outcomes (:func:`day_outcome`, or ``{"qc": counts}`` of a day that failed QC):
    ``{"qc": rows per QC reason over the days, "prior_only": sorted days analysed from the prior alone}``."""
    total: dict[str, int] = {}
    for o in outcomes.values():
        for k, v in (o.get("qc") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return {"qc": dict(sorted(total.items())),
            "prior_only": sorted(d for d, o in outcomes.items() if o.get("prior_only"))}


# ------------------------------------------------------------------------------------------- the archive
def archive_provenance(config) -> dict[str, Any]:
    """Global provenance attributes of a run's archive (no secrets)."""
    return {"config_hash": config.hash, "config_name": config.name,
            "catalog": {"path": config.catalog.path, "fields": config.catalog.fields,
                        "observations": config.catalog.observations},
            "assimilation": {"seed": config.assimilation.seed,
                             "options": config.assimilation.options.model_dump(mode="json"),
                             "holdout_fraction": config.evaluation.holdout_fraction}}


def catalog_description(config) -> str:
    """One line describing the archive in the output catalog."""
    return (f"latentda reanalysis '{config.name}': {', '.join(config.variables)}, "
            f"{config.archive.start}..{config.archive.end}, {config.assimilation.members} members")


def feedback_entry_name(config) -> str:
    """Name of the archive's per-observation feedback entry in the output catalog: ``<archive.name>_feedback``."""
    return f"{config.archive.name}_feedback"


def feedback_description(config) -> str:
    """One line describing the feedback entry in the output catalog."""
    return (f"per-observation feedback of '{config.name}' (O-B, O-A, spread, QC flag and reason per input row; "
            f"done days only; pandas DataFrame via .read())")


def catalog_metadata(config) -> dict[str, Any]:
    """Metadata of the archive's entry in the output catalog."""
    return {"variables": list(config.variables), "period": [str(config.archive.start), str(config.archive.end)],
            "members": config.assimilation.members, "members_kept": config.members_to_keep,
            "config_hash": config.hash, "source_catalog": config.catalog.path,
            "source_entries": {"fields": config.catalog.fields, "observations": config.catalog.observations}}


def ensure_archive(config, prior) -> tuple[str, str | None]:
    """Create the run's pre-sized archive (metadata only) or check an existing one against the config and prior.

    Returns ``(status, made_with)``: status ``"created"`` or ``"exists"``; ``made_with`` is the checksum of the
    prior an existing archive was created with when it differs from ``prior`` (each day records its own prior),
    else None. A mismatching store raises :class:`latentda.archive.ArchiveMismatchError` (never overwritten).
    """
    spec = archive.archive_spec(prior, config.archive.start, config.archive.end, config.assimilation.members,
                                config.members_to_keep, config.variables)
    prov = dict(archive_provenance(config), model_checksum=prior.checksum())
    so = dict(config.archive.storage_options) or None
    status = archive.create_archive(config.archive_url, spec, provenance=prov, storage_options=so,
                                    engine=config.archive.engine)
    made_with = None
    if status == "exists":
        old = archive.open_archive(config.archive_url, so).attrs.get("latentda:model_checksum")
        made_with = old if old and old != prov["model_checksum"] else None
    return status, made_with


def day_range(config, start: Any = None, end: Any = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``(start, end)`` days of a run as Timestamps: the given ones, else the config's backfill range; ValueError
    naming both dates when they are reversed or outside the archive period (:meth:`RunConfig.day_range`)."""
    s, e = config.day_range(None if start is None else to_days(start)[0].date(),
                            None if end is None else to_days(end)[0].date())
    return pd.Timestamp(s), pd.Timestamp(e)
