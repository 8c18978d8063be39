"""Shared plumbing of the baselines: background resolution, observation preparation in standardised anomaly space,
seeding, training-anomaly matrices and .npz persistence of a climatology.

Standardised anomaly space (:mod:`latentda.normalization`): ``x' = (x - m(d)) / s(d)`` per variable and grid
point. An observation ``y`` with error standard deviation ``sigma`` at a point becomes::

    y' = (y - H m) / (H s),      sigma' = sigma / (H s)

with ``H`` the bilinear point operator: the observation error is scaled by the climatological standard deviation
interpolated to the observation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..analysis import rms_departure
from ..fields import check_variables
from ..grid import Grid, normalize_grid
from ..normalization import climatology_at
from ..obs.operator import PointOperator
from ..obs.schema import QC_OK, qc_summary, validate_observations

#: Method tags mixed into the per-day seed so that methods do not share random streams.
METHOD_TAGS = {"climatology": 1, "optimal_interpolation": 2, "tsvd_3dvar": 3, "seed_search": 4,
               "linear_smoother": 5}


@dataclasses.dataclass(frozen=True)
class Background:
    """What every baseline needs to know about the state: ``variables`` (C names), ``grid``, ``climatology``
    (normalization.py format) and CF attributes ``var_attrs`` per variable."""

    variables: tuple[str, ...]
    grid: Grid
    climatology: xr.Dataset
    var_attrs: dict[str, dict]


@dataclasses.dataclass
class EOFModel:
    """The fields shared by the baselines fitted in an EOF space of the training anomalies (TSVD 3D-Var, the linear
    smoother): ``variables, grid, climatology, var_attrs`` as in :class:`Background`, ``modes`` (N, r) and
    ``mean_anomaly`` xbar (N,) in standardised units (N = C nlat nlon, order C, lat, lon)."""

    variables: tuple[str, ...]
    grid: Grid
    climatology: xr.Dataset
    var_attrs: dict[str, dict]
    modes: np.ndarray
    mean_anomaly: np.ndarray


def clim_var_attrs(clim: xr.Dataset, variables: Sequence[str]) -> dict[str, dict]:
    """CF attributes of each variable as stored on ``<var>_mean`` of a climatology dataset."""
    return {v: {k: a for k, a in clim[f"{v}_mean"].attrs.items() if isinstance(a, (str, int, float))}
            for v in variables}


def resolve_background(obj: Any) -> Background:
    """A :class:`Background` from a prior, a fitted baseline model (OIModel, TSVDModel, ...) or a climatology
    ``xr.Dataset``. Objects need the attributes ``variables, grid, climatology`` (``var_attrs`` optional)."""
    if isinstance(obj, Background):
        return obj
    if isinstance(obj, xr.Dataset):
        if "variables" not in obj.attrs or "n_harmonics" not in obj.attrs:
            raise ValueError("a climatology dataset needs the attrs 'variables' and 'n_harmonics' "
                             "(build it with latentda.normalization.fit_climatology)")
        variables = list(obj.attrs["variables"]) if not isinstance(obj.attrs["variables"], str) \
            else [obj.attrs["variables"]]
        return Background(tuple(variables), Grid(obj["lat"].values, obj["lon"].values), obj,
                          clim_var_attrs(obj, variables))
    missing = [a for a in ("variables", "grid", "climatology") if not hasattr(obj, a)]
    if missing:
        raise ValueError(f"background of type {type(obj).__name__} lacks attribute(s) {missing}; pass a prior, a "
                         "fitted baseline model or a climatology xr.Dataset")
    variables = tuple(obj.variables)
    var_attrs = dict(getattr(obj, "var_attrs", None) or clim_var_attrs(obj.climatology, variables))
    return Background(variables, obj.grid, obj.climatology, var_attrs)


def day_of(time) -> pd.Timestamp:
    """The analysed day (midnight) of ``time``; ValueError for something that is not a date."""
    try:
        return pd.Timestamp(time).normalize()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"time {time!r} is not a date/time") from exc


def day_seed(seed: int, time, method: str) -> np.random.SeedSequence:
    """``SeedSequence([seed, day ordinal, method tag])``: one stream per day and method; spawn per member."""
    if int(seed) < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    return np.random.SeedSequence([int(seed), day_of(time).toordinal(), METHOD_TAGS[method]])


def check_members(members: int) -> int:
    if int(members) != members or members < 1:
        raise ValueError(f"members={members!r} must be a positive integer")
    return int(members)


def climatology_fields(bg: Background, time) -> tuple[np.ndarray, np.ndarray]:
    """Climatological mean and standard deviation on the day of ``time``: two arrays (C, nlat, nlon), physical."""
    t = np.array([np.datetime64(day_of(time), "ns")])
    ms = [climatology_at(bg.climatology, v, t) for v in bg.variables]
    mean = np.stack([m[0][0] for m in ms])
    std = np.stack([m[1][0] for m in ms])
    return mean, std


@dataclasses.dataclass
class PreparedObs:
    """Usable observations of one day in both physical and standardised anomaly units.

    ``table``: validated table (all rows, ``qc`` column). ``rows``: indices of used rows (p,). ``channel``: (p,)
    variable index. ``H``: PointOperator over (C, nlat, nlon). ``y``/``sigma``: (p,) physical. ``y_std``,
    ``sigma_std``: (p,) standardised (module docstring). ``qc_counts``: counts per QC reason.
    """

    table: pd.DataFrame
    rows: np.ndarray
    channel: np.ndarray
    H: PointOperator
    y: np.ndarray
    sigma: np.ndarray
    y_std: np.ndarray
    sigma_std: np.ndarray
    qc_counts: dict[str, int]

    @property
    def n_used(self) -> int:
        return int(self.rows.size)

    @property
    def n_rejected(self) -> int:
        return int(len(self.table) - self.rows.size)


def prepare_observations(observations: pd.DataFrame, bg: Background, time, clim_mean: np.ndarray,
                         clim_std: np.ndarray, default_error: float | Mapping[str, float] | None = None
                         ) -> PreparedObs:
    """Validate ``observations`` (same QC as the latent assimilation) and standardise the usable rows."""
    table = validate_observations(observations, bg.variables,
                                  default_error=dict(default_error) if isinstance(default_error, Mapping)
                                  else default_error, time=time)
    rows = np.nonzero(table["qc"].values == QC_OK)[0]
    index = {v: k for k, v in enumerate(bg.variables)}
    channel = np.array([index[v] for v in table["variable"].values[rows]], dtype=np.int64)
    H = PointOperator(bg.grid, table["lat"].values[rows], table["lon"].values[rows], channel,
                      nchannels=len(bg.variables))
    y = table["value"].values[rows].astype(np.float64)
    sigma = table["error"].values[rows].astype(np.float64)
    m_obs = H.apply_np(clim_mean)
    s_obs = H.apply_np(clim_std)
    return PreparedObs(table, rows, channel, H, y, sigma, (y - m_obs) / s_obs, sigma / s_obs,
                       qc_summary(table))


def diagnostics(obs: PreparedObs, background_mean: np.ndarray, analysis_mean: np.ndarray, cost: float,
                iterations: int = 0, converged_fraction: float = 1.0) -> dict[str, float]:
    """The per-day diagnostics of :func:`latentda.analysis.analysis_dataset` (physical means (C, nlat, nlon))."""
    hb = obs.H.apply_np(background_mean) if obs.n_used else np.zeros(0)
    ha = obs.H.apply_np(analysis_mean) if obs.n_used else np.zeros(0)
    return {"obs_used": obs.n_used, "obs_rejected": obs.n_rejected,
            "fit_before": rms_departure(obs.y, hb, obs.sigma), "fit_after": rms_departure(obs.y, ha, obs.sigma),
            "cost": float(cost), "iterations": int(iterations), "converged_fraction": float(converged_fraction),
            "no_obs": int(obs.n_used == 0)}


def training_anomalies(train_fields: xr.Dataset, climatology: xr.Dataset, variables: Sequence[str],
                       dtype=np.float64) -> tuple[np.ndarray, Grid]:
    """Standardised anomalies of ``variables`` of ``train_fields``: array (T, C, nlat, nlon) and the grid.

    ValueError if the grid of the fields and of the climatology differ or fewer than 2 times are given.
    """
    train_fields = normalize_grid(train_fields)
    check_variables(train_fields, variables)
    grid = Grid.from_dataset(train_fields)
    cgrid = Grid(climatology["lat"].values, climatology["lon"].values)
    if not grid.matches(cgrid):
        raise ValueError(f"training fields are on a {grid.describe()} but the climatology on a {cgrid.describe()}")
    times = train_fields["time"].values
    if times.size < 2:
        raise ValueError(f"need at least 2 training times, got {times.size}")
    out = np.empty((times.size, len(variables), *grid.shape), dtype=dtype)
    for k, v in enumerate(variables):
        mean, std = climatology_at(climatology, v, times)
        x = train_fields[v].transpose("time", "lat", "lon").values.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"training variable {v!r} has non-finite values; fill or drop those days")
        out[:, k] = (x - mean) / std
    return out, grid


# -- persistence --------------------------------------------------------------------------------------------------
def climatology_to_npz(clim: xr.Dataset, prefix: str = "clim__") -> dict[str, np.ndarray]:
    """Arrays of a climatology dataset for ``np.savez`` (keys prefixed), with its attrs as JSON."""
    arrays = {f"{prefix}{name}": clim[name].values for name in clim.data_vars}
    arrays[f"{prefix}lat"] = clim["lat"].values
    arrays[f"{prefix}lon"] = clim["lon"].values
    arrays[f"{prefix}harmonic"] = clim["harmonic"].values
    meta = {"attrs": {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v)
                      for k, v in clim.attrs.items()},
            "var_attrs": {name: {k: a for k, a in clim[name].attrs.items() if isinstance(a, (str, int, float))}
                          for name in clim.data_vars}}
    arrays[f"{prefix}meta"] = np.array(json.dumps(meta, default=str))
    return arrays


def climatology_from_npz(data: Mapping[str, np.ndarray], prefix: str = "clim__") -> xr.Dataset:
    """Inverse of :func:`climatology_to_npz`."""
    meta = json.loads(str(data[f"{prefix}meta"]))
    names = [k[len(prefix):] for k in data if k.startswith(prefix)
             and k[len(prefix):] not in ("lat", "lon", "harmonic", "meta")]
    ds = xr.Dataset({n: (("harmonic", "lat", "lon"), np.asarray(data[f"{prefix}{n}"]), meta["var_attrs"].get(n, {}))
                     for n in names},
                    coords={"lat": np.asarray(data[f"{prefix}lat"]), "lon": np.asarray(data[f"{prefix}lon"]),
                            "harmonic": np.asarray(data[f"{prefix}harmonic"])})
    ds.attrs.update(meta["attrs"])
    return ds


def chordal_distance_km(lat1, lon1, lat2, lon2, radius_km: float = 6371.0) -> np.ndarray:
    """Chord length ``2 R sin(theta/2)`` between points (degrees; broadcasting), in km.

    The chord (straight line through the Earth) equals the great-circle distance to 1 % up to ~2,700 km and
    makes Gaussian, exponential and SOAR correlation functions positive definite on the sphere (restrictions of
    positive definite functions of R^3).
    """
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * radius_km * np.sqrt(np.clip(h, 0.0, 1.0))


def great_circle_km(lat1, lon1, lat2, lon2, radius_km: float = 6371.0) -> np.ndarray:
    """Great-circle distance (haversine) in km."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * radius_km * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


@contextlib.contextmanager
def read_model_npz(path: str | Path, kind: str) -> Iterator[tuple[Any, dict, Grid, xr.Dataset]]:
    """Open a baseline model file written by its ``save``: yields (arrays, meta, grid, climatology), the arrays
    readable inside the block; ValueError naming ``path`` if the file holds another kind of model."""
    with np.load(Path(path), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("kind") != kind:
            raise ValueError(f"{path} is not a {kind} file (kind={meta.get('kind')!r})")
        yield data, meta, Grid(data["grid_lat"], data["grid_lon"]), climatology_from_npz(data)
