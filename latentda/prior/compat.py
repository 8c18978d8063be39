"""Is a dataset or grid usable with a prior? One check with messages that name the mismatch and what to do."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from ..grid import Grid


def check_compatible(prior, ds_or_grid: xr.Dataset | xr.DataArray | Grid, variables: Sequence[str] | None = None
                     ) -> None:
    """Raise ValueError naming the mismatch if ``ds_or_grid`` is not on ``prior``'s grid, lacks one of its
    variables, or (when ``variables`` is given) asks for variables the prior does not have. Units are compared
    when both sides carry a ``units`` attribute. ``prior``: anything with ``grid``, ``variables`` and
    ``var_attrs`` (a :class:`latentda.prior.checkpoint.Prior`)."""
    if isinstance(ds_or_grid, Grid):
        grid = ds_or_grid
    elif isinstance(ds_or_grid, (xr.Dataset, xr.DataArray)):
        for name in ("lat", "lon"):
            if name not in ds_or_grid.coords:
                raise ValueError(f"data has no {name!r} coordinate (has {list(ds_or_grid.coords)}); "
                                 "use latentda.grid.normalize_grid")
        grid = Grid.from_dataset(ds_or_grid)
    else:
        raise ValueError(f"expected an xarray Dataset or a Grid, got {type(ds_or_grid).__name__}")
    if not prior.grid.matches(grid):
        if grid.shape != prior.grid.shape:
            detail = f"shape {grid.shape[0]}x{grid.shape[1]} != {prior.grid.shape[0]}x{prior.grid.shape[1]}"
        else:
            dlat = float(np.abs(grid.lat - prior.grid.lat).max())
            dlon = float(np.abs(grid.lon - prior.grid.lon).max())
            detail = f"coordinates differ by up to {dlat:.4g} deg in lat and {dlon:.4g} deg in lon"
        raise ValueError(f"grid mismatch: the prior was trained on the {prior.grid.describe()}, the data are on "
                         f"the {grid.describe()} ({detail}); regrid the data or train a prior on this grid")
    if variables is not None:
        variables = [variables] if isinstance(variables, str) else list(variables)
        extra = [v for v in variables if v not in prior.variables]
        missing = [v for v in prior.variables if v not in variables]
        if extra or missing:
            raise ValueError(f"variable mismatch: the prior has variables {prior.variables}; requested "
                             f"{variables} (not in the prior: {extra}; missing: {missing})")
    if isinstance(ds_or_grid, xr.Dataset):
        absent = [v for v in prior.variables if v not in ds_or_grid.data_vars]
        if absent:
            raise ValueError(f"variable mismatch: the data lack the prior's variable(s) {absent} (data have "
                             f"{sorted(ds_or_grid.data_vars)}, the prior needs {prior.variables})")
        for v in prior.variables:
            have = ds_or_grid[v].attrs.get("units")
            want = prior.var_attrs.get(v, {}).get("units")
            if have is not None and want is not None and str(have) != str(want):
                raise ValueError(f"units mismatch for variable {v!r}: data in {have!r}, the prior in {want!r}; "
                                 "convert the data")
