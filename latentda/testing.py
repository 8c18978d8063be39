"""Small, fast, deterministic test fixtures: synthetic fields, observation tables and a tiny trained prior.

For tests and examples only: the fields are a handful of smooth large-scale modes with AR(1) amplitudes, not
weather, and :func:`tiny_prior` is trained for a few seconds.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .grid import Grid

#: Background, anomaly amplitude, seasonal amplitude and CF attributes of the synthetic variables.
_VARIABLES = {
    "air_temperature": {"units": "K", "standard_name": "air_temperature", "long_name": "Air temperature",
                        "amp": 3.0, "seas": 8.0},
    "eastward_wind": {"units": "m s-1", "standard_name": "eastward_wind", "long_name": "Eastward wind",
                      "amp": 4.0, "seas": 3.0},
    "northward_wind": {"units": "m s-1", "standard_name": "northward_wind", "long_name": "Northward wind",
                       "amp": 3.0, "seas": 0.5},
    "surface_air_pressure": {"units": "Pa", "standard_name": "surface_air_pressure",
                             "long_name": "Surface air pressure", "amp": 800.0, "seas": 300.0},
}
_N_MODES = 6
_AR1 = 0.8          # lag-1 autocorrelation of the mode amplitudes (about 4.5 days e-folding)
_NOISE = 0.05       # white noise, as a fraction of the anomaly amplitude


def _background(name: str, lat: np.ndarray) -> np.ndarray:
    """Zonal-mean background (nlat,) in the variable's units."""
    phi = np.deg2rad(lat)
    if name == "air_temperature":
        return 250.0 + 40.0 * np.cos(phi)
    if name == "eastward_wind":
        return 20.0 * np.exp(-((np.abs(lat) - 40.0) / 15.0) ** 2) - 4.0 * np.cos(phi) ** 4
    if name == "surface_air_pressure":
        return 101325.0 - 1500.0 * np.exp(-((np.abs(lat) - 60.0) / 12.0) ** 2)
    return np.zeros_like(lat)


def _basis(grid: Grid, lmax: int = 4) -> np.ndarray:
    """Smooth modes (nbasis, nlat, nlon): associated Legendre P_l^m(sin lat) x cos/sin(m lon), 1 <= l <= lmax,
    each normalised to unit RMS over the grid."""
    from scipy.special import lpmv

    mu = np.sin(np.deg2rad(grid.lat))
    lam = np.deg2rad(grid.lon)
    out = []
    for deg in range(1, lmax + 1):
        for m in range(0, deg + 1):
            p = lpmv(m, deg, mu)[:, None]
            for trig in ((np.cos,) if m == 0 else (np.cos, np.sin)):
                f = p * trig(m * lam)[None, :]
                out.append(f / np.sqrt((f ** 2).mean()) / deg)  # red spectrum: larger scales stronger
    return np.stack(out)


def synthetic_fields(ntime: int = 400, nlat: int = 16, nlon: int = 32,
                     variables: Sequence[str] = ("air_temperature", "eastward_wind"), seed: int = 0,
                     start: str = "2000-01-01", seasonal: bool = True, poles: bool = False) -> xr.Dataset:
    """Daily synthetic fields (time, lat, lon) in physical units with CF attributes.

    ``x_v(t) = b_v(lat) + [S_v sin(lat) cos(2 pi (doy - 200) / 365.25) if seasonal] + A_v sum_k a_k(t) P_vk + noise``
    with ``_N_MODES`` = 6 AR(1) amplitudes ``a_k`` (lag-1 correlation 0.8, unit variance) shared by all variables,
    smooth patterns ``P_vk`` (random combinations of low-order associated Legendre x Fourier modes), and 5% white
    noise: low-dimensional, so a tiny VAE fits them. Known variables: air_temperature (K), eastward_wind,
    northward_wind (m s-1), surface_air_pressure (Pa); any other name gets units "1". Grid: cell-centred regular
    ``nlat`` x ``nlon`` (``poles=True``: with pole rows, ``Grid.regular(nlat, nlon, poles=True)``). Same arguments
    -> same values.
    """
    if ntime < 1 or nlat < 2 or nlon < 2:
        raise ValueError(f"ntime={ntime}, nlat={nlat}, nlon={nlon}: need ntime >= 1, nlat >= 2, nlon >= 2")
    variables = [variables] if isinstance(variables, str) else list(variables)
    grid = Grid.regular(nlat, nlon, poles=poles)
    time = pd.date_range(start, periods=ntime, freq="D")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2024]))
    # AR(1) mode amplitudes, stationary start: a_t = r a_{t-1} + sqrt(1 - r^2) e_t
    e = rng.standard_normal((ntime, _N_MODES))
    a = np.empty_like(e)
    a[0] = e[0]
    c = np.sqrt(1.0 - _AR1 ** 2)
    for t in range(1, ntime):
        a[t] = _AR1 * a[t - 1] + c * e[t]
    basis = _basis(grid)  # (nb, nlat, nlon)
    doy = time.dayofyear.values.astype(float)
    season = np.cos(2 * np.pi * (doy - 200.0) / 365.25)  # +1 in northern summer
    sinlat = np.sin(np.deg2rad(grid.lat))
    data = {}
    for k, v in enumerate(variables):
        spec = _VARIABLES.get(v, {"units": "1", "standard_name": v, "long_name": v, "amp": 1.0, "seas": 0.5})
        vrng = np.random.default_rng(np.random.SeedSequence([seed, 2025, k]))
        mix = vrng.standard_normal((_N_MODES, basis.shape[0]))
        patterns = np.einsum("kb,byx->kyx", mix, basis)
        patterns /= np.sqrt((patterns ** 2).mean(axis=(1, 2), keepdims=True))
        anom = np.einsum("tk,kyx->tyx", a, patterns) / np.sqrt(_N_MODES)
        x = _background(v, grid.lat)[None, :, None] + spec["amp"] * anom
        if seasonal:
            x = x + spec["seas"] * season[:, None, None] * sinlat[None, :, None]
        x = x + _NOISE * spec["amp"] * vrng.standard_normal(x.shape)
        attrs = {key: spec[key] for key in ("units", "standard_name", "long_name")}
        data[v] = (("time", "lat", "lon"), x, attrs)
    ds = xr.Dataset(data, coords={"time": time, "lat": grid.lat, "lon": grid.lon})
    ds["lat"].attrs.update(units="degrees_north", standard_name="latitude")
    ds["lon"].attrs.update(units="degrees_east", standard_name="longitude")
    ds.attrs["title"] = "latentda synthetic test fields"
    return ds


#: Configuration of :func:`tiny_prior` (seconds on a CPU core).
TINY_PRIOR_CONFIG = dict(latent_dim=8, base_channels=8, epochs=15, batch_size=16, learning_rate=5e-3, patience=5,
                         val_fraction=0.1, n_harmonics=2, kl_warmup_epochs=3, device="cpu", num_threads=1)


@functools.lru_cache(maxsize=4)
def tiny_prior(seed: int = 0):
    """A small :class:`~latentda.prior.Prior` (latent_dim 8, 16x32 grid, air_temperature + eastward_wind) trained
    on ``synthetic_fields(seed=seed)`` on the CPU in a few seconds. FOR TESTS ONLY.

    Cached per process and seed: the same object is returned to every caller, so do not modify it.
    """
    from .prior import train_prior

    fields = synthetic_fields(seed=seed)
    return train_prior(fields, dict(TINY_PRIOR_CONFIG, seed=seed), progress=False)


def synthetic_observations(fields: xr.Dataset, n: int = 50, seed: int = 0, time=None,
                           error: float | Mapping[str, float] | None = None,
                           variables: Sequence[str] | None = None) -> pd.DataFrame:
    """Observe ``fields`` at ``n`` random stations (uniform on the sphere) with seeded Gaussian errors.

    ``time``: one time or a list (default: all times of ``fields``). ``error``: one standard deviation for every
    variable, a {variable: std} mapping, or None (``latentda.sim.stations.DEFAULT_ERRORS``, 1.0 for unknown
    variables). Returns the observation table (time, station_id, lat, lon, variable, value, error).
    """
    from .sim.stations import DEFAULT_ERRORS, random_network, sample_observations

    variables = list(fields.data_vars) if variables is None else list(variables)
    if error is None:
        errors = {v: DEFAULT_ERRORS.get(v, 1.0) for v in variables}
    elif isinstance(error, Mapping):
        errors = dict(error)
    else:
        if not float(error) > 0:
            raise ValueError(f"error={error} must be > 0")
        errors = {v: float(error) for v in variables}
    times = None if time is None else pd.DatetimeIndex(np.atleast_1d(np.asarray(time, dtype="datetime64[ns]")))
    return sample_observations(fields, random_network(n, seed), variables, errors=errors, seed=seed, times=times)


def linear_ar1_prior(rho: float = 0.8, latent_dim: int = 2, nlat: int = 8, nlon: int = 16, ndays: int = 3000,
                     window: int = 1, seed: int = 0):
    """A linear-Gaussian window-prior toy, FOR TESTS: returns (prior, z) with ``z`` (ndays, latent_dim) the true
    latent series. Truth: z_{t+1} = rho z_t + sqrt(1 − rho²) e_t per component (unit variance), one variable
    ``air_temperature`` x_t = Σ_i z_t,i P_i with fixed random unit patterns P (climatology 0, s = 1, so standardised
    = physical). The prior's decoder is that linear map, its encoder the least-squares projection, and its latent
    transition is fitted by :func:`latentda.prior.transition.fit_transition` on the series (the window prior
    "trained" on the toy). It duck-types :class:`latentda.prior.Prior` for :mod:`latentda.da`."""
    import hashlib

    import torch

    from .prior.checkpoint import Prior
    from .prior.train import split_blocks
    from .prior.transition import fit_transition

    grid = Grid.regular(nlat, nlon)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 31]))
    P = rng.standard_normal((latent_dim, 1, nlat, nlon))
    P /= np.sqrt((P ** 2).mean(axis=(1, 2, 3), keepdims=True))
    z = np.empty((ndays, latent_dim))
    z[0] = rng.standard_normal(latent_dim)
    for t in range(1, ndays):
        z[t] = rho * z[t - 1] + np.sqrt(1 - rho ** 2) * rng.standard_normal(latent_dim)
    Pt = torch.as_tensor(P.reshape(latent_dim, -1), dtype=torch.float32)
    Pinv = torch.linalg.pinv(Pt)

    class LinearPrior:
        variables = ["air_temperature"]
        var_attrs = {"air_temperature": {"units": "K"}}
        device = torch.device("cpu")
        recon_std = np.zeros((1, nlat, nlon), dtype=np.float32)
        recon_modes = None
        require_window = Prior.require_window

        def __init__(self):
            self.grid, self.latent_dim, self.patterns = grid, latent_dim, Pt
            self.transition, self.window = None, 0

        def decode(self, zz):
            zz = torch.as_tensor(zz, dtype=torch.float32)
            return (zz @ Pt).reshape(zz.shape[0], 1, nlat, nlon)

        def encode(self, x):
            mu = x.reshape(x.shape[0], -1).to(torch.float32) @ Pinv
            return mu, torch.full_like(mu, -30.0)

        def climatology_tensors(self, time):
            return torch.zeros((1, nlat, nlon)), torch.ones((1, nlat, nlon))

        def checksum(self):
            h = hashlib.sha256(P.tobytes())
            if self.transition is not None:
                h.update(self.transition.A.tobytes())
            return h.hexdigest()

    prior = LinearPrior()
    times = pd.date_range("2000-01-01", periods=ndays, freq="D").values
    x = torch.as_tensor((z @ P.reshape(latent_dim, -1)).reshape(ndays, 1, nlat, nlon), dtype=torch.float32)
    tr, va = split_blocks(ndays, 0.1, 8, seed)
    prior.transition = fit_transition(prior.encode, x, times, tr, va, seed, samples=1)
    prior.window = int(window)
    return prior, z
