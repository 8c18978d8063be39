"""The layout of the reanalysis archive: its variables, their CF attributes and encodings, and the pre-sized lazy
template that :func:`latentda.archive.create_archive` writes (metadata only). See ARCHITECTURE.md, "the archive
protocol", and :mod:`latentda.archive` for the store operations. No orchestration import.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from . import __version__
from .analysis import DIAG_ATTRS, DIAGNOSTICS
from .grid import Grid
from .runtime import to_days

__all__ = ["ArchiveSpec", "archive_spec", "template", "encoding", "DONE", "STATUS", "NOT_WRITTEN", "PRELIMINARY",
           "FINAL", "WINDOW_OBSERVED", "HASH_DIM", "PROVENANCE_VARS", "DIAG_DTYPES", "TIME_ENCODING"]

DONE = "done"
STATUS = "status"
#: Values of ``status``: a day written before the observations of its whole window existed is PRELIMINARY and is
#: analysed again once they do (the ERA5T -> ERA5 pattern); FINAL days are rewritten only on request.
NOT_WRITTEN, PRELIMINARY, FINAL = 0, 1, 2
WINDOW_OBSERVED = "window_days_observed"
HASH_DIM = "sha256_byte"
PROVENANCE_VARS = {
    "model_sha256": "SHA-256 of the prior checkpoint that produced this day",
    "obs_sha256": "SHA-256 of the observation table of this day's assimilation window as given to the assimilation",
    "config_sha256": "SHA-256 of the run configuration (latentda.config.config_hash)",
}
DIAG_DTYPES = {"obs_used": np.int32, "obs_rejected": np.int32, "iterations": np.int32, "no_obs": np.int8}
# CF time units name their time zone (xrlint's time-coordinate rule): analysis days are 00 UTC. UDUNITS form
# "DATE +H:MM": xarray keeps it as written (a "00:00:00 +00:00" time would be rewritten to ISO "T...+00:00").
TIME_ENCODING = {"units": "days since 1970-01-01 +0:00", "calendar": "proleptic_gregorian", "dtype": "int64"}


# ----------------------------------------------------------------------------------------------- the spec
@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """What an archive holds: variables, grid, the pre-sized period, ensemble size and members kept."""

    variables: tuple[str, ...]
    grid: Grid
    start: pd.Timestamp
    end: pd.Timestamp
    members: int
    members_to_keep: int = 0
    var_attrs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        start, end = to_days(self.start)[0], to_days(self.end)[0]
        if end < start:
            raise ValueError(f"archive period end {end.date()} is before start {start.date()}")
        if self.members < 1:
            raise ValueError(f"members={self.members} must be >= 1")
        if not 0 <= self.members_to_keep <= self.members:
            raise ValueError(f"members_to_keep={self.members_to_keep} must be in [0, members={self.members}]")
        if not self.variables:
            raise ValueError("an archive needs at least one variable")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "variables", tuple(self.variables))

    @property
    def times(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, self.end, freq="D")

    def field_names(self) -> list[str]:
        names = []
        for v in self.variables:
            names += [v, f"{v}_spread"] + ([f"{v}_members"] if self.members_to_keep else [])
        return names


def archive_spec(prior, start: Any, end: Any, members: int, members_to_keep: int = 0,
                 variables: Sequence[str] | None = None) -> ArchiveSpec:
    """The :class:`ArchiveSpec` of a prior (its variables, grid and CF attributes) over ``start..end``."""
    variables = tuple(variables or prior.variables)
    missing = [v for v in variables if v not in prior.variables]
    if missing:
        raise ValueError(f"variable(s) {missing} are not in the prior; it has {list(prior.variables)}")
    return ArchiveSpec(variables=variables, grid=prior.grid, start=start, end=end, members=int(members),
                       members_to_keep=int(members_to_keep), var_attrs=dict(getattr(prior, "var_attrs", {}) or {}))


# ----------------------------------------------------------------------------------------------- template
def template(spec: ArchiveSpec, attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The lazy (dask-backed) dataset of the whole archive, for ``to_zarr(compute=False)`` (metadata only).

    One dask chunk per variable: nothing is computed, and a graph of one task per day and variable cost seconds to
    build; the Zarr chunks (one day) come from :func:`encoding`.
    """
    import dask.array as dsa  # lazily: only the template needs dask

    t = spec.times
    nt, (ny, nx) = len(t), spec.grid.shape
    k = spec.members_to_keep
    data: dict[str, Any] = {}

    def full(var: str, shape: tuple[int, ...], fill, dtype):
        """A lazy constant array named by what it holds: a given name spares dask the tokenize of the creation
        function (a cloudpickle scan of sys.modules, ~0.15 s per archive in a process that imported torch)."""
        dt = np.dtype(dtype)
        return dsa.full(shape, fill, dtype=dt, chunks=-1,
                        name=f"latentda-template-{var}-{'x'.join(map(str, shape))}-{dt.str}-{fill}")

    for v in spec.variables:
        a = {kk: vv for kk, vv in dict(spec.var_attrs.get(v, {})).items() if kk != "_FillValue"}
        # CF 7.3: the ensemble statistics keep the field's standard_name; cell_methods appends the statistic
        # over the ensemble axis (the standard name "realization", the member coordinate) to the field's methods
        methods = a.get("cell_methods", "")
        data[v] = (("time", "lat", "lon"), full(v, (nt, ny, nx), np.nan, np.float32),
                   dict(a, cell_methods=f"{methods} realization: mean".strip()))
        sa = {kk: vv for kk, vv in a.items() if kk in ("units", "standard_name")}
        sa["long_name"] = f"ensemble standard deviation of {a.get('long_name', v)}"
        sa["cell_methods"] = f"{methods} realization: standard_deviation".strip()
        data[f"{v}_spread"] = (("time", "lat", "lon"), full(f"{v}_spread", (nt, ny, nx), np.nan,
                                                                np.float32), sa)
        if k:
            ma = dict(a, long_name=f"ensemble members of {a.get('long_name', v)}")
            data[f"{v}_members"] = (("time", "member", "lat", "lon"),
                                    full(f"{v}_members", (nt, k, ny, nx), np.nan, np.float32), ma)
    for name in DIAGNOSTICS:
        dt = DIAG_DTYPES.get(name, np.float32)
        fill = 0 if np.issubdtype(dt, np.integer) else np.nan
        data[name] = (("time",), full(name, (nt,), fill, dt), dict(DIAG_ATTRS[name]))
    for name, ln in PROVENANCE_VARS.items():
        data[name] = (("time", HASH_DIM), full(name, (nt, 32), 0, np.uint8),
                      {"long_name": ln, "units": "1",
                       "comment": "32 bytes of the digest; latentda.archive.hexdigest() gives hex; "
                                  "all zero for a day not written"})
    data[STATUS] = (("time",), full(STATUS, (nt,), 0, np.int8),
                    {"long_name": "analysis status: preliminary while observations of the assimilation window "
                                  "[d - k, d + k] were still to come when the day was written, else final",
                     "flag_values": [NOT_WRITTEN, PRELIMINARY, FINAL],
                     "flag_meanings": "not_written preliminary final", "units": "1"})
    data[WINDOW_OBSERVED] = (("time",), full(WINDOW_OBSERVED, (nt,), 0, np.int16),
                             {"long_name": "days of the assimilation window [d - k, d + k] with observations when "
                                           "the day was written", "units": "1"})
    data[DONE] = (("time",), full(DONE, (nt,), 0, np.int8),
                  {"long_name": "day complete (written after all of the day's data)", "flag_values": [0, 1],
                   "flag_meanings": "missing done", "units": "1"})
    coords = {
        "time": ("time", t.values, {"standard_name": "time", "long_name": "analysis day (00 UTC)"}),
        "lat": ("lat", spec.grid.lat, {"units": "degrees_north", "standard_name": "latitude",
                                       "long_name": "latitude"}),
        "lon": ("lon", spec.grid.lon, {"units": "degrees_east", "standard_name": "longitude",
                                       "long_name": "longitude"}),
        HASH_DIM: (HASH_DIM, np.arange(32, dtype=np.int8),
                   {"long_name": "byte of the SHA-256 digest (0: most significant)", "units": "1"}),
    }
    if k:
        coords["member"] = ("member", np.arange(k), {"standard_name": "realization", "long_name": "ensemble member",
                                                     "units": "1"})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"Conventions": "CF-1.10", "title": "latentda reanalysis",
                     "source": "latent-space data assimilation with a VAE prior (latentda)",
                     "comment": f"a day holds data once {DONE} = 1 (written after all of the day's variables); "
                                "other days hold fill values"})
    if attrs and "latentda:created" in attrs:
        ds.attrs["history"] = (f"{attrs['latentda:created']} created by latentda "
                               f"{attrs.get('latentda:version', __version__)} (latentda.archive.create_archive)")
    ds.attrs.update(_spec_attrs(spec))
    for key, val in (attrs or {}).items():
        key = key if key.startswith("latentda:") or key in ("title", "institution", "history", "comment",
                                                               "references") else f"latentda:{key}"
        ds.attrs[key] = val if isinstance(val, (str, int, float)) else json.dumps(val, sort_keys=True, default=str)
    return ds


def _spec_attrs(spec: ArchiveSpec) -> dict[str, Any]:
    return {"latentda:variables": json.dumps(list(spec.variables)), "latentda:members": int(spec.members),
            "latentda:members_kept": int(spec.members_to_keep),
            "latentda:period": f"{spec.start.date()}/{spec.end.date()}", "latentda:grid": spec.grid.describe()}


def encoding(ds: xr.Dataset) -> dict[str, dict]:
    enc: dict[str, dict] = {"time": dict(TIME_ENCODING, chunks=(ds.sizes["time"],))}
    for name in ds.coords:  # CF: coordinates have no missing values, so no _FillValue
        if name != "time":
            enc[name] = {"_FillValue": None}
    for name, var in ds.data_vars.items():
        e: dict[str, Any] = {"chunks": tuple(1 if d == "time" else ds.sizes[d] for d in var.dims)}
        if np.issubdtype(var.dtype, np.floating):
            e["_FillValue"] = np.float32(np.nan)
        enc[name] = e
    return enc
