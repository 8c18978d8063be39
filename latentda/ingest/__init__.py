"""Real-shaped input -> latentda's daily fields and observation table, by declared steps (no orchestration here).

:mod:`.steps`: the pydantic models of the declared steps (pydantic only: imported by :mod:`latentda.config`).
:mod:`.fields`: gridded input (hourly, short names, any orientation, other units) -> daily fields on the prior's
grid. :mod:`.stations`: GHCN-Daily / ISD-like station files -> the observation table with station metadata.
:mod:`.examples`: the shipped demo data written in those shapes. The functions are imported on first use, so
that reading a run config does not import xarray.
"""
from __future__ import annotations

import importlib

from .steps import (ColumnSpec, DailyStep, FieldSteps, GridStep, IngestError, IngestSteps, StationLayout,
                    StationList, VariableStep)

_LAZY = {"apply_field_steps": "fields", "check_global": "fields", "regrid_conservative": "fields",
         "to_daily": "fields", "read_station_table": "stations"}

__all__ = [*_LAZY, "ColumnSpec", "DailyStep", "FieldSteps", "GridStep", "IngestError", "IngestSteps",
           "StationLayout", "StationList", "VariableStep"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
