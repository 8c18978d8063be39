"""Open catalog entries (Intake) with errors that name the bad entry and what the catalog has."""
from __future__ import annotations

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
