"""Zonal symmetry of the data: whether it holds (from the dataset's attributes) and the zonally uniform climatology
that training then fits (:func:`latentda.prior.train.train_prior` also augments with longitude rotations)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from ..normalization import fit_climatology

__all__ = ["ZONAL_SYMMETRY_ATTR", "ZONALLY_SYMMETRIC_GENERATORS", "data_zonal_symmetry", "fit_zonal_climatology"]

#: the attribute that declares a dataset's statistics zonally symmetric (1) or not (0)
ZONAL_SYMMETRY_ATTR = "latentda:zonally_symmetric"
#: values of ``latentda:generator`` whose output is zonally symmetric by construction
ZONALLY_SYMMETRIC_GENERATORS = ("latentda.sim.heldsuarez",)


def data_zonal_symmetry(ds: xr.Dataset) -> bool:
    """Whether ``ds``'s statistics do not depend on longitude, from its attributes: ``latentda:zonally_symmetric``
    if present (any truthy value), else True for data made by a zonally symmetric generator (``latentda:generator``
    in :data:`ZONALLY_SYMMETRIC_GENERATORS`: Held-Suarez has no land, orography or seasons), else False."""
    if ZONAL_SYMMETRY_ATTR in ds.attrs:
        return bool(int(ds.attrs[ZONAL_SYMMETRY_ATTR]))
    return ds.attrs.get("latentda:generator") in ZONALLY_SYMMETRIC_GENERATORS


def fit_zonal_climatology(ds: xr.Dataset, variables: Sequence[str], n_harmonics: int = 3) -> xr.Dataset:
    """Zonally uniform harmonic climatology: :func:`fit_climatology` with every longitude taken as another sample
    of the same latitude (least squares over time x lon), broadcast back to all longitudes.

    For data whose statistics do not depend on longitude (Held-Suarez) this removes the sampling noise that a
    per-point fit leaves in m(d) and s(d). Same dataset layout and attrs as :func:`fit_climatology`.
    """
    nlon = ds.sizes["lon"]
    times = np.repeat(ds["time"].values, nlon)
    data = {}
    for v in variables:
        x = ds[v].transpose("time", "lat", "lon").values
        stacked = x.transpose(0, 2, 1).reshape(-1, x.shape[1], 1)        # (time * lon, lat, 1)
        data[v] = (("time", "lat", "lon"), stacked, dict(ds[v].attrs))
    flat = xr.Dataset(data, coords={"time": times, "lat": ds["lat"].values, "lon": [0.0]})
    clim = fit_climatology(flat, variables, n_harmonics)
    clim = clim.isel(lon=np.zeros(nlon, dtype=int)).assign_coords(lon=ds["lon"].values)
    clim.attrs.update(period=f"{str(ds.time.values[0])[:10]}/{str(ds.time.values[-1])[:10]}", zonal_symmetry=1)
    return clim
