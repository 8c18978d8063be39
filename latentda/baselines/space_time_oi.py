"""Space-time optimal interpolation: the per-day OI (:mod:`latentda.baselines.oi`) over the window [d − k, d + k] with
a separable space-time correlation, optionally advected by the mean zonal flow.

Per variable, in standardised anomaly units, the covariance of the anomaly at point p on day s and at point q on
day t is::

    B((p, s), (q, t)) = v rho_s(|m_s(p) − m_t(q)| / L) rho_t(|s − t| / tau)

``v``, ``rho_s`` and ``L``: the per-day OI's (fitted by :func:`~latentda.baselines.oi.fit_oi`); ``rho_t`` one of
the correlation models of :mod:`~latentda.baselines.oi` (exponential: an AR(1) in time) with time scale ``tau``
(days) fitted to the lag-1 .. ``max_lag`` correlations of the training anomalies; ``|.|`` the chordal distance and
``m_t`` the frozen-flow (Taylor) map that moves a point upstream by the zonal drift of t days::

    m_t(phi, lambda) = (phi, lambda − c(phi) t),    c(phi) = alpha ū(phi) / (R cos phi)   (degrees per day)

with ū(phi) the training mean of the zonal wind at latitude phi and ``alpha`` in [0, 1.5] the factor that maximises
the area-weighted lag-1 correlation of the anomalies shifted by c (``alpha = 0``: no advection). The product of a
positive definite kernel of the mapped points and one of time is positive definite, so B is a covariance.

The analysis is the BLUE of the centre day d with the observations of all 2k + 1 days (each row against its own day,
``x_b' = 0``)::

    x_a'(d) = B_dY (B_YY + R)^-1 y',      var_a(d) = v − diag(B_dY (B_YY + R)^-1 B_Yd)

with ``B_dY`` the covariance of the centre day's grid with the observations of the window and ``B_YY`` that of the
observations among themselves (:func:`~latentda.baselines.oi.blue_update`); spread ``s sqrt(var_a)``. With k = 0
every factor is the per-day OI's: the analysis equals :func:`~latentda.baselines.oi.optimal_interpolation`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import minimize_scalar

from ..analysis import analysis_dataset
from ..obs.window import window_coverage, window_days
from .common import (Background, check_members, climatology_fields, diagnostics, prepare_observations,
                     read_model_npz, training_anomalies)
from .oi import CORRELATION_MODELS, EARTH_RADIUS_KM, OIModel, _bht, blue_update, correlation, fit_oi

SECONDS_PER_DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class SpaceTimeFitOptions:
    """How :func:`fit_space_time_oi` fits the temporal part: ``max_lag`` (days of lag correlations fitted),
    ``time_model`` (a correlation model or "auto": the smallest misfit), ``advection`` (fit alpha; False: alpha = 0),
    ``factors`` (the alpha values tried), ``wind_variable`` (the zonal wind of the training fields, m s-1)."""

    max_lag: int = 3
    time_model: str = "auto"
    advection: bool = True
    factors: tuple[float, ...] = tuple(np.round(np.arange(0.0, 1.51, 0.1), 2))
    wind_variable: str = "eastward_wind"

    def __post_init__(self) -> None:
        if int(self.max_lag) != self.max_lag or self.max_lag < 1:
            raise ValueError(f"max_lag={self.max_lag!r} must be a positive integer (days)")
        if self.time_model != "auto" and self.time_model not in CORRELATION_MODELS:
            raise ValueError(f"time_model {self.time_model!r} unknown; use 'auto' or one of "
                             f"{sorted(CORRELATION_MODELS)}")
        if not self.factors or min(self.factors) < 0:
            raise ValueError(f"factors={self.factors!r} must be a non-empty sequence of values >= 0")


@dataclasses.dataclass
class SpaceTimeOIModel:
    """Fitted space-time OI: the per-day ``oi`` model plus, per variable, ``time_model`` and ``time_scale_days``
    (rho_t, tau), ``advection_factor`` (alpha), ``zonal_drift`` c(phi) (nlat,) in degrees per day and
    ``lag_correlation`` (the empirical lag-1 .. max_lag correlations of the advected anomalies it was fitted to)."""

    oi: OIModel
    time_model: dict[str, str]
    time_scale_days: dict[str, float]
    advection_factor: dict[str, float]
    zonal_drift: dict[str, np.ndarray]
    lag_correlation: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def variables(self) -> tuple[str, ...]:
        return self.oi.variables

    @property
    def grid(self):
        return self.oi.grid

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (.npz): the OI's file plus the temporal part (c(phi) as arrays)."""
        meta = {**self.oi.npz_meta(), "kind": "SpaceTimeOIModel", "time_model": self.time_model,
                "time_scale_days": self.time_scale_days, "advection_factor": self.advection_factor,
                "lag_correlation": self.lag_correlation}
        return self.oi.save(path, meta, **{f"drift__{v}": np.asarray(self.zonal_drift[v]) for v in self.variables})

    @classmethod
    def load(cls, path: str | Path) -> "SpaceTimeOIModel":
        """Read a model written by :meth:`save`; ValueError if the file holds something else."""
        with read_model_npz(path, "SpaceTimeOIModel") as (data, meta, grid, clim):
            return cls(OIModel.from_meta(meta, grid, clim), meta["time_model"],
                       {k: float(v) for k, v in meta["time_scale_days"].items()},
                       {k: float(v) for k, v in meta["advection_factor"].items()},
                       {v: np.asarray(data[f"drift__{v}"], dtype=np.float64) for v in meta["variables"]},
                       meta.get("lag_correlation", {}))

    def time_correlation(self, variable: str, lag_days: float) -> float:
        """rho_t(|lag| / tau) of ``variable`` (1 at lag 0)."""
        return float(correlation(self.time_model[variable], np.abs(float(lag_days)),
                                 self.time_scale_days[variable]))

    def advected_lon(self, variable: str, lag_days: float) -> np.ndarray:
        """Longitudes (n,) of the grid points under m_t for t = ``lag_days`` (the grid's own at t = 0)."""
        lat2d, lon2d = np.meshgrid(self.grid.lat, self.grid.lon, indexing="ij")
        if lag_days == 0:
            return lon2d.ravel()
        return (lon2d - self.zonal_drift[variable][:, None] * float(lag_days)).ravel()


def zonal_shift(anomalies: np.ndarray, shift_deg: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``x(lambda − shift(phi))`` of fields (..., nlat, nlon) on a periodic, regular longitude grid, by the Fourier
    shift theorem (exact for band-limited rows); ``shift_deg`` (nlat,) degrees east."""
    dlon = 360.0 / lon.size
    m = np.fft.rfftfreq(lon.size, d=dlon / 360.0)  # zonal wavenumbers 0 .. nlon/2
    phase = np.exp(-1j * np.deg2rad(np.asarray(shift_deg))[:, None] * m[None])  # (nlat, nk)
    return np.fft.irfft(np.fft.rfft(anomalies, axis=-1) * phase, n=lon.size, axis=-1)


def lag_correlation(anomalies: np.ndarray, lag: int, shift_deg: np.ndarray, lon: np.ndarray,
                    weights: np.ndarray) -> float:
    """Area-weighted mean over grid points of the Pearson correlation (over time) of x_{t+lag}(lambda) with
    x_t(lambda − lag c(phi)): ``anomalies`` (T, nlat, nlon), ``shift_deg`` c (nlat,), ``weights`` (nlat, nlon)."""
    a = anomalies[lag:]
    b = zonal_shift(anomalies[:-lag], shift_deg * lag, lon) if np.any(shift_deg) else anomalies[:-lag]
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    r = np.where(den > 0, (a * b).sum(axis=0) / np.where(den > 0, den, 1.0), 0.0)
    return float(np.sum(weights * r) / weights.sum())


def fit_time_scale(lags: np.ndarray, correlations: np.ndarray, model: str = "auto") -> tuple[str, float, float]:
    """Least-squares fit of rho_t(lag / tau) to empirical lag correlations: (model, tau in days, RMS misfit).

    ``tau = argmin sum_l (rho(l / tau) − c_l)^2`` over tau in [0.05, 1000] days; "auto" keeps the best model."""
    lags, c = np.asarray(lags, dtype=np.float64), np.asarray(correlations, dtype=np.float64)
    models = list(CORRELATION_MODELS) if model == "auto" else [model]
    best = None
    for m in models:
        def loss(logt, m=m):
            return float(np.mean((correlation(m, lags, np.exp(logt)) - c) ** 2))
        res = minimize_scalar(loss, bounds=(np.log(0.05), np.log(1000.0)), method="bounded",
                              options={"xatol": 1e-8})
        cand = (m, float(np.exp(res.x)), float(np.sqrt(res.fun)))
        if best is None or cand[2] < best[2]:
            best = cand
    return best


def mean_zonal_drift(train_fields: xr.Dataset, wind_variable: str, lat: np.ndarray) -> np.ndarray:
    """ū(phi) / (R cos phi) in degrees per day (nlat,): the training mean zonal wind (m s-1) of ``wind_variable``
    averaged over time and longitude, as an angular drift (cos phi floored at 0.05 near the poles)."""
    if wind_variable not in train_fields:
        raise ValueError(f"advection needs the zonal wind {wind_variable!r} in the training fields, which have "
                         f"{sorted(train_fields.data_vars)}; fit with SpaceTimeFitOptions(advection=False)")
    u = train_fields[wind_variable].mean(("time", "lon")).values.astype(np.float64)
    cosphi = np.maximum(np.cos(np.deg2rad(lat)), 0.05)
    return np.rad2deg(u * SECONDS_PER_DAY / (EARTH_RADIUS_KM * 1e3 * cosphi))


def fit_space_time_oi(train_fields: xr.Dataset, climatology: xr.Dataset, variables: Sequence[str],
                      oi: OIModel | None = None, options: SpaceTimeFitOptions | None = None,
                      seed: int = 0) -> SpaceTimeOIModel:
    """Fit a :class:`SpaceTimeOIModel` to consecutive daily ``train_fields`` (time, lat, lon; physical units).

    ``oi``: the spatial part (default :func:`~latentda.baselines.oi.fit_oi` on the same fields). Per variable:
    alpha maximising the lag-1 correlation of the advected anomalies (:func:`lag_correlation`), then rho_t and tau
    fitted to the lag-1 .. max_lag correlations at that alpha (:func:`fit_time_scale`). ValueError if the training
    days are not consecutive daily steps.
    """
    opts = options or SpaceTimeFitOptions()
    variables = tuple(variables)
    t = pd.DatetimeIndex(train_fields["time"].values)
    if t.size <= opts.max_lag + 2 or not (np.diff(t.values) == np.timedelta64(1, "D")).all():
        raise ValueError(f"the temporal correlation needs more than {opts.max_lag + 2} consecutive daily training "
                         f"fields; got {t.size} times from {t.min()} to {t.max()} with gaps or sub-daily steps")
    if oi is None:
        oi = fit_oi(train_fields, climatology, variables, seed=seed)
    anom, grid = training_anomalies(train_fields, climatology, variables)
    weights = np.cos(np.deg2rad(grid.lat))[:, None] * np.ones(grid.shape[1])[None]
    base = mean_zonal_drift(train_fields, opts.wind_variable, grid.lat) if opts.advection else np.zeros(grid.shape[0])
    factors = opts.factors if opts.advection else (0.0,)
    lags = np.arange(1, opts.max_lag + 1)
    models, scales, alphas, drifts, lagcorr = {}, {}, {}, {}, {}
    for k, v in enumerate(variables):
        r1 = [lag_correlation(anom[:, k], 1, a * base, grid.lon, weights) for a in factors]
        alpha = float(factors[int(np.argmax(r1))])
        c = [lag_correlation(anom[:, k], int(lag), alpha * base, grid.lon, weights) for lag in lags]
        models[v], scales[v], _ = fit_time_scale(lags, c, opts.time_model)
        alphas[v], drifts[v], lagcorr[v] = alpha, alpha * base, [float(x) for x in c]
    return SpaceTimeOIModel(oi, models, scales, alphas, drifts, lagcorr)


def space_time_oi(model: SpaceTimeOIModel, observations: pd.DataFrame, time, members: int = 32, seed: int = 0, *,
                  window: int = 1, default_error: float | Mapping[str, float] | None = None,
                  keep_members: bool = False, chunk: int = 256) -> xr.Dataset:
    """Space-time OI analysis of the day of ``time`` with the observations of [d − ``window``, d + ``window``]
    (module docstring), in the analysis_dataset layout (physical units, mean and analytic spread; no members:
    ``keep_members=True`` raises ValueError). Diagnostics as the per-day OI's for the centre day's rows
    (``obs_used``, fits) plus ``window_days_observed`` and ``obs_outside_window``; ``cost`` covers the window."""
    check_members(members)
    if keep_members:
        raise ValueError("the space-time OI returns a mean and an analytic spread, no members; use keep_members=False")
    if not isinstance(model, SpaceTimeOIModel):
        raise ValueError(f"model must be a SpaceTimeOIModel (from fit_space_time_oi), got {type(model).__name__}")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    oi = model.oi
    days = window_days(time, window)
    bg = Background(tuple(oi.variables), oi.grid, oi.climatology, oi.var_attrs)
    n = bg.grid.shape[0] * bg.grid.shape[1]
    per_day = []
    for dt in days:
        m, s = climatology_fields(bg, dt)
        obs = prepare_observations(observations, bg, dt, m, s, default_error)
        per_day.append((int((dt - days[window]).days), obs, obs.H.to_sparse().tocsr() if obs.n_used else None))
    C = len(bg.variables)
    xa, var, cost = np.zeros((C, n)), np.empty((C, n)), 0.0
    for c, v in enumerate(bg.variables):
        var[c] = oi.variance[v]
        blocks = []  # (lag, H of this variable's rows of that day (p_t, n), y', sigma')
        for lag, obs, Hs in per_day:
            idx = np.nonzero(obs.channel == c)[0]
            if idx.size:
                blocks.append((lag, Hs[idx][:, c * n:(c + 1) * n].tocsr(), obs.y_std[idx], obs.sigma_std[idx]))
        if not blocks:
            continue
        lon = {lag: model.advected_lon(v, lag) for lag, *_ in blocks} | {0: model.advected_lon(v, 0)}

        def cov(lag_a, lag_b, Hb, rows=None):
            return _bht(oi, v, Hb, chunk, grid_lon=lon[lag_a], obs_lon=lon[lag_b],
                        factor=model.time_correlation(v, lag_a - lag_b), rows=rows)

        centre = [cov(0, lag, H) for lag, H, _, _ in blocks]  # B_dY by day, (n, p_t) each
        bht = np.concatenate(centre, axis=1)  # (n, P)

        def hbh(la, Ha, j, lb, Hb):
            """B_YY block (p_a, p_b): from the centre's columns on day d (k = 0: the per-day OI's product), else
            on the grid points day la's rows read only."""
            if la == 0:
                return Ha @ centre[j]
            rows = np.unique(Ha.indices)
            return Ha[:, rows] @ cov(la, lb, Hb, rows)

        hbht = np.block([[hbh(la, Ha, j, lb, Hb) for j, (lb, Hb, _, _) in enumerate(blocks)]
                         for la, Ha, _, _ in blocks])
        y = np.concatenate([b[2] for b in blocks])
        sig = np.concatenate([b[3] for b in blocks])
        xa[c], var[c], cost_c = blue_update(bht, hbht, y, sig, var[c])
        cost += cost_c
    _, obs_c, _ = per_day[window]
    m_c, s_c = climatology_fields(bg, days[window])
    shape = (C, *bg.grid.shape)
    mean = m_c + s_c * xa.reshape(shape)
    spread = s_c * np.sqrt(var.reshape(shape))
    diag = {**diagnostics(obs_c, m_c, mean, cost=cost), **window_coverage(observations, days)}
    return analysis_dataset(mean[None], list(bg.variables), bg.grid, days[window], diag, "space_time_oi",
                            obs_c.qc_counts, var_attrs=bg.var_attrs, mean=mean, spread=spread,
                            attrs={"window": int(window), "correlation_model": dict(oi.model),
                                   "length_scale_km": dict(oi.length_scale_km),
                                   "time_model": dict(model.time_model),
                                   "time_scale_days": dict(model.time_scale_days),
                                   "advection_factor": dict(model.advection_factor)})
