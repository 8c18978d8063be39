"""Observations: table schema and validation (`schema`), point operator (`operator`), quality control (`qc`)."""
from .schema import OBS_COLUMNS, validate_observations, QC_OK
from .operator import PointOperator

__all__ = ["OBS_COLUMNS", "validate_observations", "QC_OK", "PointOperator"]
