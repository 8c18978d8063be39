"""Open catalog entries (Intake) with errors that name the bad entry and what the catalog has."""
from __future__ import annotations

import dataclasses

import os
from pathlib import Path

import intake
import pandas as pd
import xarray as xr


def open_catalog(path: str | os.PathLike):
    """Open an Intake YAML catalog; a missing file is a FileNotFoundError naming the path."""
    p = str(path)
    if "://" not in p and not Path(p).exists():
        raise FileNotFoundError(f"catalog {p!r} does not exist")
    return intake.open_catalog(p)


def entry(cat, name: str):
    """The catalog entry ``name``; a KeyError lists the entries the catalog does have."""
    if name not in list(cat):
        raise KeyError(f"catalog entry {name!r} does not exist in {getattr(cat, 'path', cat)!s}; "
                       f"available entries: {sorted(cat)}")
    return cat[name]


def read_fields(catalog_path: str | os.PathLike, name: str) -> xr.Dataset:
    """Gridded fields of entry ``name`` as a lazy xarray Dataset."""
    src = entry(open_catalog(catalog_path), name)
    return src.to_dask()


def read_table(catalog_path: str | os.PathLike, name: str) -> pd.DataFrame:
    """Observation table of entry ``name`` as a pandas DataFrame."""
    return entry(open_catalog(catalog_path), name).read()


def entry_metadata(catalog_path: str | os.PathLike, name: str) -> dict:
    """The ``metadata`` mapping of entry ``name`` (empty if it has none)."""
    return dict(getattr(entry(open_catalog(catalog_path), name), "metadata", None) or {})


@dataclasses.dataclass(frozen=True)
class ZarrEntry:
    """An output-catalog entry: its name, the store's URL and storage options (secrets are never written), a
    description and metadata."""

    name: str
    url: str
    storage_options: dict | None = None
    description: str = ""
    metadata: dict | None = None


def register_zarr_source(catalog_path: str | os.PathLike, entry: ZarrEntry) -> str:
    """Add or replace a ``driver: zarr`` (intake-xarray) entry in the v1 YAML catalog at ``catalog_path``.

    The file is created if missing and other entries are kept. A local archive inside the catalog's folder tree
    is written relative to ``{{ CATALOG_DIR }}``. Storage options are written without secrets (credentials come
    from the environment when the catalog is read). The file is replaced atomically. Returns its path.
    ``intake.open_catalog(path)[name].to_dask()`` then opens the archive lazily with dask.
    """
    args = {"urlpath": _catalog_urlpath(entry.url, catalog_path), "consolidated": False}
    return _write_entry(catalog_path, entry, "zarr", args, f"latentda reanalysis archive {entry.name}")


def register_icechunk_source(catalog_path: str | os.PathLike, entry: ZarrEntry) -> str:
    """Add or replace the entry of an archive kept in an Icechunk repository (driver
    ``tasks.intake_sources.IcechunkArchiveSource``: the last commit, lazily with dask), as
    :func:`register_zarr_source` does for a plain Zarr archive. Returns the catalog's path."""
    args = {"urlpath": _catalog_urlpath(entry.url, catalog_path)}
    return _write_entry(catalog_path, entry, "tasks.intake_sources.IcechunkArchiveSource", args,
                        f"latentda reanalysis archive {entry.name} (Icechunk)")


def register_feedback_source(catalog_path: str | os.PathLike, entry: ZarrEntry) -> str:
    """Add or replace the per-observation feedback entry of the archive at ``entry.url`` (driver
    ``tasks.intake_sources.FeedbackSource``; ``latentda.feedback`` explains the table) in the output catalog, as
    :func:`register_zarr_source` does for the archive. ``intake.open_catalog(path)[name].read()`` gives the
    feedback of every done day as one pandas DataFrame. Returns the catalog's path."""
    args = {"urlpath": _catalog_urlpath(entry.url, catalog_path)}
    return _write_entry(catalog_path, entry, "tasks.intake_sources.FeedbackSource", args,
                        f"latentda per-observation feedback {entry.name}")


def _catalog_urlpath(url: str, catalog_path: str | os.PathLike) -> str:
    """``url`` as written in the catalog: redacted if remote; relative to ``{{ CATALOG_DIR }}`` if local and inside
    the catalog folder's parent tree, else absolute."""
    from latentda import storage

    if storage.is_remote(url):
        return storage.redact(url)
    local = os.path.abspath(storage.strip_protocol(url) if url.startswith("file://") else url)
    rel = os.path.relpath(local, Path(catalog_path).parent.resolve())
    return local if rel.startswith(".." + os.sep + "..") else "{{ CATALOG_DIR }}/" + Path(rel).as_posix()


def _write_entry(catalog_path: str | os.PathLike, entry: ZarrEntry, driver: str, args: dict,
                 default_description: str) -> str:
    """Add or replace ``entry`` (with ``driver`` and ``args``; storage options added without secrets) in the v1
    YAML catalog at ``catalog_path``, created if missing, replaced atomically. Returns its path."""
    import yaml

    from latentda import storage
    from latentda.config import redact_storage_options

    p = Path(catalog_path)
    data = yaml.safe_load(p.read_text()) if p.exists() else None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("sources", {}), dict):
        raise ValueError(f"output catalog {str(p)!r} is not a v1 Intake YAML catalog (a 'sources' mapping)")
    data.setdefault("metadata", {"version": 1,
                                 "description": "latentda reanalysis archives (entries written by latentda runs)"})
    opts = redact_storage_options(entry.storage_options)
    if opts:
        args = dict(args, storage_options=opts)
    entry_ = {"description": entry.description or default_description, "driver": driver,
              "args": args, "metadata": storage.redact(dict(entry.metadata or {}))}
    data.setdefault("sources", {})[entry.name] = entry_
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    header = "# Written by latentda (tasks.catalog.register_zarr_source): reanalysis archives, open with\n" \
             "#   intake.open_catalog(PATH)[NAME].to_dask()   (feedback entries: .read())\n"
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    os.replace(tmp, p)
    return str(p)
