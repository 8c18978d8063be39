"""Run configuration: one YAML file, validated by pydantic models (unknown keys and impossible values refused).

A run config names everything a production run needs::

    name: demo
    workdir: ../out/demo                   # training store, prior checkpoint, quicklooks (default archive)
    variables: [air_temperature, ...]
    catalog: {path: ../catalogs/demo.yaml, fields: heldsuarez_daily, observations: pseudo_obs_clustered,
              truth: heldsuarez_daily}
    train: {start: 2000-01-01, end: 2004-12-31}
    prior: {latent_dim: 32, epochs: 20, max_minutes: 4, ...}   # fields of latentda.PriorConfig
    assimilation: {members: 16, seed: 0, block_days: null, options: {}}
    archive: {url: ..., storage_options: {}, keep_members: false, chunks: {time: 1},
              start: 2005-01-01, end: 2005-12-31, name: reanalysis, catalog: ../catalogs/reanalysis.yaml}
    backfill: {start: 2005-01-01, end: 2005-01-31}   # default range of `latentda backfill` / `demo`
    cluster: {profile: local, n_workers: 2, threads_per_worker: 1, address: null, gpu: auto, options: {}}
    evaluation: {holdout_fraction: 0.0, quicklook_variable: null}
    ingest: {fields: {variables: {t2m: {name: air_temperature, units: K}}, daily: {method: mean},
                      grid: {nlat: 48, nlon: 96}}}   # optional: latentda.ingest.steps.IngestSteps

Relative paths (catalog path, workdir, prior path, a local archive url, the output catalog) are resolved against
the folder of the config file. :func:`config_hash` is the sha256 of the canonical JSON of the config as written
(secrets in ``storage_options`` removed; ``cluster`` and ``backfill`` left out since they do not change a
single byte of the output); it goes into the archive provenance and the task cache keys.

The sections (``catalog``, ``prior``, ``archive``, ...) are the models of :mod:`latentda.config_sections`, re-exported
here. Only pydantic, yaml and the standard library: no orchestration import.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .config_sections import (ArchiveChunks, ArchiveConfig, AssimilationConfig, CatalogConfig, ClusterConfig,
                              ConfigError, EvaluationConfig, Period, PriorSettings, TrainConfig, _as_day, _Strict)
from .ingest.steps import IngestSteps
from .runtime import deep_merge
from .storage import is_remote, redact_storage_options

__all__ = ["RunConfig", "ConfigError", "load_config", "config_from_dict", "config_hash", "redact_storage_options",
           "CatalogConfig", "PriorSettings", "AssimilationConfig", "ArchiveConfig", "ClusterConfig",
           "EvaluationConfig", "Period", "TrainConfig", "ArchiveChunks", "deep_merge"]

#: Sections left out of the config hash: they choose where/how fast a run goes, not what it writes.
HASH_EXCLUDE = ("cluster", "backfill")




class RunConfig(_Strict):
    """The whole run configuration (see the module docstring)."""

    name: str = Field("latentda", min_length=1)
    workdir: str = "out"
    variables: list[str] = Field(min_length=1)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prior: PriorSettings = Field(default_factory=PriorSettings)
    assimilation: AssimilationConfig = Field(default_factory=AssimilationConfig)
    archive: ArchiveConfig
    backfill: Period | None = None
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    ingest: IngestSteps | None = Field(None, description="declared ingestion steps (latentda.ingest.steps)")

    _hash: str | None = PrivateAttr(default=None)
    _source: str | None = PrivateAttr(default=None)

    @field_validator("variables")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"variable(s) {dup} listed more than once")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        km = self.archive.keep_members
        if not isinstance(km, bool) and km > self.assimilation.members:
            raise ValueError(f"archive.keep_members={km} exceeds assimilation.members={self.assimilation.members}")
        if self.backfill is not None:
            a = self.archive
            if self.backfill.start < a.start or self.backfill.end > a.end:
                raise ValueError(f"backfill {self.backfill.start}..{self.backfill.end} is outside the archive "
                                 f"period {a.start}..{a.end} (archive.start/archive.end)")
        qv = self.evaluation.quicklook_variable
        if qv is not None and qv not in self.variables:
            raise ValueError(f"evaluation.quicklook_variable {qv!r} is not one of variables {self.variables}")
        return self

    # ------------------------------------------------------------------------------------------ derived
    @property
    def members_to_keep(self) -> int:
        km = self.archive.keep_members
        if isinstance(km, bool):
            return self.assimilation.members if km else 0
        return int(km)

    @property
    def prior_path(self) -> str:
        return self.prior.path or _join(self.workdir, "prior.pt")

    @property
    def training_store(self) -> str:
        return _join(self.workdir, "training.zarr")

    @property
    def archive_url(self) -> str:
        return self.archive.url or _join(self.workdir, "reanalysis.icechunk" if self.archive.engine == "icechunk"
                                         else "reanalysis.zarr")

    @property
    def output_catalog(self) -> str:
        return self.archive.catalog or os.path.abspath(os.path.join("catalogs", "reanalysis.yaml"))

    @property
    def quicklook_variable(self) -> str:
        return self.evaluation.quicklook_variable or self.variables[0]

    @property
    def hash(self) -> str:
        """:func:`config_hash` of the config as written (before path resolution)."""
        return self._hash or config_hash(self)

    @property
    def source(self) -> str | None:
        """The file the config was loaded from (None if built in code)."""
        return self._source

    def backfill_period(self) -> Period:
        return self.backfill or self.archive.period

    def day_range(self, start: Any = None, end: Any = None, default: Period | None = None
                  ) -> tuple[_dt.date, _dt.date]:
        """``(start, end)`` days of a command: the given ones (ISO strings or dates), else ``default``'s (the
        backfill range by default); ValueError naming the dates when one is not a date, they are reversed, or
        they are outside the archive period. Pure datetime: costs nothing before a command starts."""
        period = default or self.backfill_period()
        s, e = _as_day(start, period.start, "start"), _as_day(end, period.end, "end")
        if e < s:
            raise ValueError(f"end {e} is before start {s}")
        if s < self.archive.start or e > self.archive.end:
            raise ValueError(f"range {s}..{e} is outside the archive period {self.archive.start}.."
                             f"{self.archive.end} (archive.start/archive.end in the run config)")
        return s, e

    def resolved(self, base_dir: str | os.PathLike) -> "RunConfig":
        """A copy with relative local paths made absolute against ``base_dir`` (URLs left alone)."""
        base = Path(base_dir).resolve()

        def res(p: str | None) -> str | None:
            if p is None or is_remote(p) or "://" in p:
                return p
            return str((base / os.path.expanduser(p)).resolve())

        data = self.model_dump(by_alias=False)
        data["workdir"] = res(self.workdir)
        data["catalog"]["path"] = res(self.catalog.path)
        data["prior"]["path"] = res(self.prior.path)
        data["archive"]["url"] = res(self.archive.url)
        data["archive"]["catalog"] = res(self.archive.catalog)
        out = type(self).model_validate(data)
        out._hash = self.hash
        out._source = self._source
        return out

    def redacted(self) -> dict[str, Any]:
        """The config as a JSON-able dict with secrets removed (safe for logs, artifacts and provenance)."""
        d = self.model_dump(mode="json")
        d["archive"]["storage_options"] = redact_storage_options(self.archive.storage_options)
        return d


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if is_remote(base) else os.path.join(base, name)


def config_hash(cfg: RunConfig | Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of the config without secrets and without
    the sections in :data:`HASH_EXCLUDE`."""
    d = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else json.loads(json.dumps(cfg, default=str))
    d = {k: v for k, v in d.items() if k not in HASH_EXCLUDE}
    if d.get("ingest") is None:
        d.pop("ingest", None)  # no ingestion steps: the hash of a config without them stays what it was
    # no assimilation window (issue 9): likewise, the hash stays that of the config before windows existed
    if isinstance(d.get("prior"), dict) and d["prior"].get("window") == 0:
        d["prior"] = {k: v for k, v in d["prior"].items() if k != "window"}
    options = (d.get("assimilation") or {}).get("options") if isinstance(d.get("assimilation"), dict) else None
    if isinstance(options, dict) and options.get("window") is None:
        d["assimilation"] = {**d["assimilation"], "options": {k: v for k, v in options.items() if k != "window"}}
    if isinstance(d.get("archive"), dict):
        d["archive"] = dict(d["archive"])
        if d["archive"].get("engine") == "zarr":  # the default engine: the hash stays what it was before engines
            d["archive"].pop("engine")
        d["archive"]["storage_options"] = redact_storage_options(d["archive"].get("storage_options"))
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _format_errors(err: ValidationError, where: str, raw: Mapping[str, Any]) -> str:
    lines = [f"{where}: invalid run configuration ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            model: Any = RunConfig
            for p in parent:
                field = model.model_fields.get(str(p)) if isinstance(model, type) else None
                ann = getattr(field, "annotation", None)
                model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                              and issubclass(a, BaseModel)), None)
                if model is None:
                    break
            allowed = sorted(model.model_fields) if model is not None else []
            lines.append(f"  {loc}: unknown key" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else ""))
        elif e["type"] == "missing":
            lines.append(f"  {loc}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            inp = e.get("input")
            shown = "" if isinstance(inp, (dict, list)) else f" (got {inp!r})"
            lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def config_from_dict(data: Mapping[str, Any], base_dir: str | os.PathLike | None = None,
                     where: str = "run config", source: str | None = None) -> RunConfig:
    """Validate ``data``; resolve relative paths against ``base_dir`` (default: the current directory).

    Raises :class:`ConfigError` naming every bad key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where, data)) from None
    h = config_hash(cfg)
    out = cfg.resolved(base_dir if base_dir is not None else os.getcwd())
    out._hash = h
    out._source = source
    return out


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (``yaml.safe_load``), merge ``overrides`` (nested dict), validate, resolve paths.

    Raises FileNotFoundError for a missing file and :class:`ConfigError` for bad content (naming the key).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"run config {str(p)!r} does not exist; pass --config PATH "
                                "(the demo's is deploy/demo.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    data = deep_merge(data, overrides)
    return config_from_dict(data, base_dir=p.resolve().parent, where=str(p), source=str(p.resolve()))
