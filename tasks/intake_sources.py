"""Intake (v1 YAML) data sources for observation tables: Parquet tables in latentda's layout, GHCN-Daily /
ISD-like station files read by a declared layout, and the per-observation feedback of an archive; and a reanalysis
archive kept in an Icechunk repository. Local files or any fsspec URL (object storage)."""
from __future__ import annotations

import pandas as pd
from intake.source.base import DataSource, Schema


class _TableSource(DataSource):
    """One pandas DataFrame, read once by the subclass's ``_load`` and handed out as copies."""

    container = "dataframe"
    version = "1"
    partition_access = False

    def __init__(self, metadata: dict | None = None):
        super().__init__(metadata=metadata)
        self._df = None

    def _load(self) -> pd.DataFrame:
        raise NotImplementedError(f"{type(self).__name__} must define _load")

    def _get_schema(self):
        if self._df is None:
            self._df = self._load()
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


class ParquetTableSource(_TableSource):
    """Read one Parquet file (any fsspec URL) into a pandas DataFrame: ``driver: tasks.intake_sources.ParquetTableSource``."""

    name = "parquet_table"

    def __init__(self, urlpath: str, storage_options: dict | None = None, columns: list[str] | None = None,
                 metadata: dict | None = None):
        super().__init__(metadata=metadata)
        self.urlpath = urlpath
        self.storage_options = storage_options or {}
        self.columns = columns

    def _load(self) -> pd.DataFrame:
        from latentda import storage  # the storage options of the URL resolved in one place (S3 endpoint, ...)

        with storage.open(self.urlpath, "rb", self.storage_options or None) as f:
            return pd.read_parquet(f, columns=self.columns)


class FeedbackSource(_TableSource):
    """The per-observation feedback of a latentda archive (Parquet files partitioned by day beside it, see
    :mod:`latentda.feedback`), done days only, as one pandas DataFrame:
    ``driver: tasks.intake_sources.FeedbackSource`` with ``urlpath`` the ARCHIVE's URL; ``start``/``end``
    (YYYY-MM-DD) limit the days read."""

    name = "latentda_feedback"

    def __init__(self, urlpath: str, storage_options: dict | None = None, start: str | None = None,
                 end: str | None = None, metadata: dict | None = None):
        super().__init__(metadata=metadata)
        self.urlpath = urlpath
        self.storage_options = storage_options or {}
        self.start, self.end = start, end

    def _load(self) -> pd.DataFrame:
        from latentda.feedback import read_feedback

        return read_feedback(self.urlpath, self.start, self.end, self.storage_options or None)


class IcechunkArchiveSource(DataSource):
    """A latentda archive kept in an Icechunk repository (``archive.engine: icechunk``), read at the last commit of
    its ``main`` branch (``snapshot``: an earlier commit's id) as a lazy xarray Dataset with one-day dask chunks:
    ``driver: tasks.intake_sources.IcechunkArchiveSource``; ``.to_dask()`` (lazy) or ``.read()`` (loaded)."""

    container = "xarray"
    name = "latentda_icechunk_archive"
    version = "1"
    partition_access = False

    def __init__(self, urlpath: str, storage_options: dict | None = None, snapshot: str | None = None,
                 metadata: dict | None = None):
        super().__init__(metadata=metadata)
        self.urlpath = urlpath
        self.storage_options = storage_options or {}
        self.snapshot = snapshot

    def to_dask(self):
        from latentda.archive import open_archive

        return open_archive(self.urlpath, self.storage_options or None, chunks={}, snapshot=self.snapshot)

    def read(self):
        return self.to_dask().load()

    def _get_schema(self):
        ds = self.to_dask()
        return Schema(datashape=None, dtype=None, shape=None, npartitions=None, extra_metadata=dict(ds.attrs))

    def _close(self):
        pass


class StationTableSource(_TableSource):
    """A GHCN-Daily / ISD-like station file (CSV or Parquet, any fsspec URL) read by a declared layout into the
    observation table with station metadata: ``driver: tasks.intake_sources.StationTableSource``.

    ``layout`` is a :class:`latentda.ingest.steps.StationLayout` (column mapping, units, missing-value codes,
    station list file); the reading and every check are :func:`latentda.ingest.stations.read_station_table`.
    """

    name = "station_table"

    def __init__(self, urlpath: str, layout: dict, storage_options: dict | None = None,
                 metadata: dict | None = None):
        super().__init__(metadata=metadata)
        self.urlpath = urlpath
        self.layout = layout
        self.storage_options = storage_options or {}

    def _load(self) -> pd.DataFrame:
        from latentda.ingest.stations import read_station_table

        return read_station_table(self.urlpath, self.layout, self.storage_options)
