"""Declared ingestion steps (pydantic): how real-shaped inputs become the prior's daily fields and observations.

Gridded fields (run config, section ``ingest.fields``)::

    ingest:
      fields:
        variables:                       # source name -> latentda name and the units the prior uses
          t2m: {name: air_temperature, units: K}
          sp: {name: surface_air_pressure, units: Pa}
        daily: {method: mean}            # or {method: at_hour, hour: 0}
        grid: {nlat: 48, nlon: 96}       # conservative regridding to this cell-centred regular grid

Station tables (catalog entry args of ``tasks.intake_sources.StationTableSource``, model :class:`StationLayout`)::

    layout:
      station_column: ID
      time_column: DATE
      time_format: "%Y%m%d"
      missing_values: [-9999]
      columns:                           # value column (wide layout) or element code (long layout)
        TAVG: {variable: air_temperature, units: degC, to_units: K, error: 1.0}
      stations: {urlpath: ".../stations.csv", id_column: ID, lat_column: LATITUDE, lon_column: LONGITUDE}

Only pydantic and the standard library here; the work is done in :mod:`.fields` and :mod:`.stations`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class IngestError(ValueError):
    """Input that the declared ingestion steps cannot turn into latentda's fields or observations.

    The message names the bad value (variable, unit, coordinate range, time, column or station id).
    """


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariableStep(_Strict):
    """One source variable: its latentda name and the units it is converted to (pint, CF unit strings)."""

    name: str = Field(min_length=1, description="latentda variable name, e.g. air_temperature")
    units: str = Field(min_length=1, description="target units, e.g. K, Pa, m s-1")
    source_units: str | None = Field(None, description="units of the source when it has no 'units' attribute")


class DailyStep(_Strict):
    """Sub-daily input to one field per day: the mean of each UTC day, or the value at one hour of it."""

    method: Literal["mean", "at_hour"] = "mean"
    hour: int | None = Field(None, ge=0, le=23, description="hour (UTC) taken by method at_hour")

    @model_validator(mode="after")
    def _hour(self) -> "DailyStep":
        if self.method == "at_hour" and self.hour is None:
            raise ValueError("daily.method 'at_hour' needs daily.hour (0..23)")
        if self.method == "mean" and self.hour is not None:
            raise ValueError(f"daily.hour={self.hour} is only used by daily.method 'at_hour'")
        return self


class GridStep(_Strict):
    """Target of the conservative regridding: the cell-centred regular grid ``Grid.regular(nlat, nlon)``."""

    nlat: int = Field(ge=2)
    nlon: int = Field(ge=2)


class FieldSteps(_Strict):
    """Steps turning gridded input (e.g. ERA5-shaped, hourly) into the prior's daily fields, in this order:
    rename + unit conversion, duplicate-time check, daily aggregation, coverage check, conservative regridding,
    latitude ascending / longitude in [0, 360)."""

    variables: dict[str, VariableStep] = Field(min_length=1)
    daily: DailyStep | None = Field(default_factory=DailyStep, description="None: the input is already daily")
    grid: GridStep | None = Field(None, description="None: keep the input grid (it must already be global)")

    @field_validator("variables")
    @classmethod
    def _unique_targets(cls, v: dict[str, VariableStep]) -> dict[str, VariableStep]:
        names = [s.name for s in v.values()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"target name(s) {dup} given to more than one source variable")
        return v

    @property
    def names(self) -> list[str]:
        """The latentda names produced, in declaration order."""
        return [s.name for s in self.variables.values()]


class IngestSteps(_Strict):
    """The ``ingest`` section of the run config (declared ingestion steps; None: inputs are used as they are)."""

    fields: FieldSteps | None = None


class ColumnSpec(_Strict):
    """One observed quantity of a station file: latentda variable, source units, target units, error std."""

    variable: str = Field(min_length=1)
    units: str = Field(min_length=1, description="units of the values in the file, e.g. degC, hPa")
    to_units: str = Field(min_length=1, description="units of the latentda variable, e.g. K, Pa")
    error: float = Field(gt=0, description="observation error standard deviation, in to_units")
    scale: float = Field(1.0, gt=0, description="factor applied to the raw numbers first (0.1: tenths)")


class StationList(_Strict):
    """The station list file (CSV or Parquet): one row per station with id, latitude, longitude, metadata."""

    urlpath: str = Field(min_length=1)
    id_column: str = "ID"
    lat_column: str = "LATITUDE"
    lon_column: str = "LONGITUDE"
    metadata_columns: dict[str, str] = Field(default_factory=dict,
                                             description="file column -> output column, e.g. ELEVATION: elevation")
    storage_options: dict = Field(default_factory=dict)


class StationLayout(_Strict):
    """Declared layout of a GHCN-Daily / ISD-like station file.

    Wide layout (``element_column`` None): one row per station and time, one value column per key of
    ``columns``. Long layout (GHCN-Daily by_year): one row per station, time and element; ``element_column``
    holds the keys of ``columns`` and ``value_column`` the number. Every column of the file must be named here
    (mapped, or listed in ``ignore_columns``): an unknown column is an error, not guessed at.
    """

    station_column: str = "ID"
    time_column: str = "DATE"
    time_format: str | None = Field("%Y%m%d", description="strptime format; None: ISO dates/times")
    element_column: str | None = None
    value_column: str | None = None
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    missing_values: list[float | str] = Field(default_factory=lambda: [-9999])
    ignore_columns: list[str] = Field(default_factory=list)
    stations: StationList

    @model_validator(mode="after")
    def _long(self) -> "StationLayout":
        if (self.element_column is None) != (self.value_column is None):
            raise ValueError("give both element_column and value_column (long layout), or neither (wide layout)")
        return self
