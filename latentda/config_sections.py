"""The sections of the run configuration (:mod:`latentda.config`): one strict pydantic model per YAML section.

Each model refuses unknown keys and impossible values with a message naming them; :class:`latentda.config.RunConfig`
puts them together. Only pydantic and the standard library: no orchestration import.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .da.options import AssimilationOptions
from .prior.config import PriorConfig

class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names each bad key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _as_day(value: Any, default: _dt.date, what: str) -> _dt.date:
    """``value`` (an ISO date string, a date or None for ``default``) as a date; ValueError naming it if not."""
    if value is None:
        return default
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a date YYYY-MM-DD") from None


def _check_order(start: _dt.date, end: _dt.date) -> None:
    """ValueError naming both dates if ``end`` is before ``start``."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")


class Period(_Strict):
    """An inclusive date range (days)."""

    start: _dt.date
    end: _dt.date

    @model_validator(mode="after")
    def _ordered(self) -> "Period":
        _check_order(self.start, self.end)
        return self

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


class CatalogConfig(_Strict):
    """Input catalog (Intake v1 YAML) and the entry names the run reads (fields only through the catalog)."""

    path: str = "catalogs/demo.yaml"
    fields: str = Field("heldsuarez_daily", min_length=1, description="gridded training fields")
    observations: str | None = Field("pseudo_obs_clustered", description="observation table entry")
    truth: str | None = Field(None, description="gridded truth for evaluation (None: no gridded truth)")


class TrainConfig(_Strict):
    """Training period; None takes the ``train_period`` metadata of the fields entry."""

    start: _dt.date | None = None
    end: _dt.date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "TrainConfig":
        if (self.start is None) != (self.end is None):
            raise ValueError("give both train.start and train.end, or neither (catalog metadata train_period)")
        if self.start is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class PriorSettings(PriorConfig):
    """The ``prior:`` section: every :class:`latentda.PriorConfig` field (same names, defaults and checks: the
    class itself, not a copy) plus ``path``, where the checkpoint lives."""

    path: str | None = Field(None, description="checkpoint path or URL; default <workdir>/prior.pt")

    def prior_config(self) -> dict[str, Any]:
        """The :class:`latentda.PriorConfig` fields as a dict (what ``latentda.train_prior`` takes)."""
        return self.model_dump(exclude={"path"})


class AssimilationConfig(_Strict):
    """Ensemble size, base seed (each day derives its own), days per Dask task, and the options of
    ``latentda.assimilate`` (:class:`latentda.da.options.AssimilationOptions`: checked when the config loads)."""

    members: int = Field(32, ge=2)
    seed: int = Field(0, ge=0)
    block_days: int | None = Field(None, ge=1, description="days per task; None: 16 per worker, at least 32")
    threads: int = Field(1, ge=1, description="torch threads per assimilation; the bytes depend on it: keep fixed")
    options: AssimilationOptions = Field(default_factory=AssimilationOptions)


class ArchiveChunks(_Strict):
    """Archive chunking. One day per chunk along time (whole grid per chunk): region writes cover whole chunks."""

    time: int = 1

    @field_validator("time")
    @classmethod
    def _one_day(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"time chunk {v} is not allowed: it must be 1 (one day), so that concurrent "
                             "per-day region writes cover whole chunks and cannot lose data")
        return v


class ArchiveConfig(_Strict):
    """The reanalysis archive: where, its engine (plain Zarr or Icechunk), its pre-sized period, members kept, and
    its output catalog entry."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    url: str | None = Field(None, description="local path or fsspec URL; default <workdir>/reanalysis.zarr")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    keep_members: bool | int = Field(False, alias="members_to_keep",
                                     description="false, true (all members) or how many members to store")
    chunks: ArchiveChunks = Field(default_factory=ArchiveChunks)
    start: _dt.date
    end: _dt.date
    name: str = Field("reanalysis", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    catalog: str | None = Field(None, description="output Intake catalog; default ./catalogs/reanalysis.yaml")
    engine: Literal["zarr", "icechunk"] = Field(
        "zarr", description="zarr: a plain Zarr v3 store, days visible as each is written; icechunk: an Icechunk "
                            "repository, each block of days one atomic commit (latentda.archive_icechunk)")

    @field_validator("keep_members")
    @classmethod
    def _keep(cls, v: bool | int) -> bool | int:
        if not isinstance(v, bool) and v < 0:
            raise ValueError(f"keep_members {v} must be false, true or a member count >= 0")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "ArchiveConfig":
        _check_order(self.start, self.end)
        scheme = (self.url or "").split("://")[0] if "://" in (self.url or "") else "file"
        if self.engine == "icechunk" and scheme not in ("s3", "s3a", "file"):
            raise ValueError(f"archive.engine icechunk takes a local path or an s3:// URL, not {scheme}://...; "
                             "use archive.engine: zarr for that store")
        return self

    @property
    def period(self) -> Period:
        return Period(start=self.start, end=self.end)


class ClusterConfig(_Strict):
    """Dask cluster: ``profile`` names a cluster profile (``deploy/clusters/<profile>.yaml`` or a YAML path:
    local, address, slurm, pbs, k8s, ...). ``n_workers`` / ``threads_per_worker`` / ``options`` override the
    profile; ``None`` (the default) means "the profile decides" (flows/runners.py: ``worker_size`` gives the
    effective values)."""

    profile: str = Field("local", min_length=1)
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    address: str | None = None
    gpu: Literal["auto"] | bool = "auto"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _address(self) -> "ClusterConfig":
        if self.profile == "address" and not self.address:
            raise ValueError("profile 'address' needs cluster.address (e.g. tcp://scheduler:8786)")
        return self


class EvaluationConfig(_Strict):
    """Evaluation: held-out stations (a fraction of station ids never assimilated) and the quicklook variable."""

    holdout_fraction: float = Field(0.0, ge=0, lt=1)
    quicklook_variable: str | None = None
