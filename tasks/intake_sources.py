"""Intake (v1 YAML) data source for observation tables stored as Parquet, locally or on object storage."""
from __future__ import annotations

import fsspec
import pandas as pd
from intake.source.base import DataSource, Schema


class ParquetTableSource(DataSource):
    """Read one Parquet file (any fsspec URL) into a pandas DataFrame: ``driver: tasks.intake_sources.ParquetTableSource``."""

    container = "dataframe"
    name = "parquet_table"
    version = "1"
    partition_access = False

    def __init__(self, urlpath: str, storage_options: dict | None = None, columns: list[str] | None = None,
                 metadata: dict | None = None):
        super().__init__(metadata=metadata)
        self.urlpath = urlpath
        self.storage_options = storage_options or {}
        self.columns = columns
        self._df = None

    def _get_schema(self):
        if self._df is None:
            with fsspec.open(self.urlpath, "rb", **self.storage_options) as f:
                self._df = pd.read_parquet(f, columns=self.columns)
        return Schema(datashape=None, dtype=dict(self._df.dtypes.astype(str)), shape=self._df.shape,
                      npartitions=1, extra_metadata={})

    def _get_partition(self, i):
        self._get_schema()
        return self._df

    def read(self) -> pd.DataFrame:
        self._get_schema()
        return self._df.copy()

    def _close(self):
        self._df = None
