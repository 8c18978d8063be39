"""The trained prior (VAE generator + normalisation + grid + provenance) and its checkpoint format.

A checkpoint is one ``torch.save`` zip of a plain dict that ``torch.load(..., weights_only=True)`` can read: dicts
of tensors plus strings and ints; all other metadata (config, CF attributes, climatology attributes, history,
provenance) is in one canonical JSON string. It is always serialised to memory first (so the bytes do not depend
on the file name) and written in one piece, so the same prior always gives the same bytes and the same sha256
(``checksum``), also after a save/load round trip.

Keys (format ``latentda.prior``, version 1):

================  ===================================================================================
format            "latentda.prior"
format_version    1
meta_json         JSON object: arch (ConvVAE constructor arguments), config (PriorConfig), variables (channel
                  order), var_attrs (CF attributes per variable), climatology_names / _attrs / _var_attrs,
                  history (per-epoch training records), provenance (version, git sha, data sha256, seed,
                  creation time, torch version, ...)
state_dict        VAE weights (CPU tensors)
grid              {"lat": float64 (nlat,), "lon": float64 (nlon,)}
climatology       {"<var>_mean" | "<var>_var": float64 (harmonic, lat, lon)} harmonic coefficients
recon_std         float32 (C, nlat, nlon): validation RMS reconstruction error, standardised anomaly units
recon_modes       optional, float32 (k, C, nlat, nlon): leading residual modes, scaled by sqrt(eigenvalue)
                  (:mod:`latentda.prior.residual`); absent in priors trained without them
transition        optional, {"A", "q_chol"}: float64 (d, d) latent transition of a window prior
                  (:mod:`latentda.prior.transition`; ``config.window`` >= 1; its fit statistics are
                  ``meta_json["transition_info"]``), and "repr_rho": float64 (C,) the representation error's AR(1)
                  coefficient in time per variable (:mod:`latentda.prior.repr_time`; absent in window priors written
                  before it was fitted: loaded as None, ρ = 0); absent in day priors (``config.window`` = 0, the
                  default, also for checkpoints written before windows existed)
flow              optional, {name: float32 tensor}: the latent flow z = f(u) of a flow prior
                  (:mod:`latentda.prior.flow`; ``config.flow_prior``; architecture, flow format version and fit
                  statistics in ``meta_json["flow_info"]``); absent in VAE priors
================  ===================================================================================
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..fields import to_array
from ..grid import Grid
from ..normalization import climatology_at
from ..runtime import to_json
from .compat import check_compatible
from .device import resolve_device
from .flow import LatentFlow
from .transition import LatentTransition
from .vae import ConvVAE

FORMAT = "latentda.prior"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "meta_json", "state_dict", "grid", "climatology", "recon_std")
_CLIM_CACHE_SIZE = 64


def _to_timestamp(time) -> pd.Timestamp:
    arr = np.atleast_1d(np.asarray(time, dtype="datetime64[ns]"))
    if arr.size != 1:
        raise ValueError(f"expected one time, got {arr.size} values ({arr[:3]}...)")
    if np.isnat(arr[0]):
        raise ValueError(f"time {time!r} is not a valid date")
    return pd.Timestamp(arr[0])


class Prior:
    """A trained VAE prior: generator ``g(z)`` in standardised anomaly units, plus what is needed to use it.

    Attributes:
        variables: variable names in channel order (C of them).
        grid: the :class:`~latentda.grid.Grid` (nlat, nlon) the prior was trained on.
        climatology: harmonic day-of-year climatology (see :mod:`latentda.normalization`).
        latent_dim: L, the size of z.
        config: the :class:`PriorConfig` it was trained with.
        var_attrs: CF attributes per variable (units, standard_name, long_name).
        provenance: package version, git sha, training-data sha256, seed, creation time, torch version, ...
        device: where the network lives; ``decode`` returns tensors there.
        recon_std: (C, nlat, nlon) RMS of ``x - g(mu(x))`` over the validation days, standardised anomaly units
            (the representation error of the generator; the DA adds it to the spread).
        recon_modes: None or (k, C, nlat, nlon) float32, the leading modes of the reconstruction residual
            (standardised units, scaled by sqrt(eigenvalue)): the coupled, anisotropic part of the representation
            error covariance (see :mod:`latentda.prior.residual`).
        history: per-epoch training records (train/validation loss, beta, seconds).
        model: the :class:`~latentda.prior.vae.ConvVAE` (eval mode, parameters frozen).
        flow: None, or the :class:`~latentda.prior.flow.LatentFlow` z = f(u) of a flow prior: then :meth:`decode`
            is the generator g∘f of u ~ N(0, I) (the assimilation latent), :meth:`encode` stays the VAE's q(z|x).

    Built by :func:`latentda.prior.train_prior` or :func:`load_prior`, not directly.
    """

    def __init__(self, model: ConvVAE, *, config, variables: Sequence[str], grid: Grid, climatology: xr.Dataset,
                 var_attrs: dict[str, dict], provenance: dict, recon_std: np.ndarray,
                 history: list[dict] | None = None, device: str | torch.device = "auto",
                 recon_modes: np.ndarray | None = None, transition: LatentTransition | None = None,
                 flow: LatentFlow | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.config = config
        self.variables = list(variables)
        self.grid = grid
        self.climatology = climatology
        self.var_attrs = {v: dict(var_attrs.get(v, {})) for v in self.variables}
        self.provenance = dict(provenance)
        self.recon_std = np.asarray(recon_std, dtype=np.float32)
        self.history = list(history or [])
        self.latent_dim = int(model.latent_dim)
        if model.in_channels != len(self.variables) or (model.nlat, model.nlon) != grid.shape:
            raise ValueError(f"network shape (C={model.in_channels}, {model.nlat}x{model.nlon}) does not match "
                             f"{len(self.variables)} variables on a {grid.shape[0]}x{grid.shape[1]} grid")
        if self.recon_std.shape != self.shape:
            raise ValueError(f"recon_std has shape {self.recon_std.shape}, expected {self.shape}")
        self.recon_modes = None if recon_modes is None else np.asarray(recon_modes, dtype=np.float32)
        if self.recon_modes is not None and (self.recon_modes.ndim != 4 or self.recon_modes.shape[1:] != self.shape
                                             or not np.isfinite(self.recon_modes).all()):
            raise ValueError(f"recon_modes must be finite (k, {', '.join(map(str, self.shape))}), "
                             f"got shape {self.recon_modes.shape}")
        self._clim_cache: dict[pd.Timestamp, tuple[torch.Tensor, torch.Tensor]] = {}
        self.transition = transition
        self._check_window()
        self.flow = None if flow is None else flow.to(self.device).freeze()
        self._check_flow()

    @property
    def window(self) -> int:
        """Half-width k in days of the window prior (``config.window``); 0 for a day prior."""
        return int(getattr(self.config, "window", 0) or 0)

    def _check_window(self) -> None:
        if self.window and self.transition is None:
            raise ValueError(f"config.window={self.window} (a window prior) but no latent transition was given")
        if not self.window and self.transition is not None:
            raise ValueError("a latent transition was given to a day prior (config.window=0)")
        if self.transition is not None and self.transition.latent_dim != self.latent_dim:
            raise ValueError(f"the latent transition is {self.transition.latent_dim}-dimensional, the VAE latent "
                             f"{self.latent_dim}-dimensional")

    def _check_flow(self) -> None:
        want = bool(getattr(self.config, "flow_prior", False))
        if want and self.flow is None:
            raise ValueError("config.flow_prior=True (a flow prior) but no latent flow was given")
        if not want and self.flow is not None:
            raise ValueError("a latent flow was given to a prior with config.flow_prior=False")
        if self.flow is not None and self.flow.latent_dim != self.latent_dim:
            raise ValueError(f"the latent flow is {self.flow.latent_dim}-dimensional, the VAE latent "
                             f"{self.latent_dim}-dimensional")
        if self.flow is not None and self.window:
            raise ValueError(f"a flow prior cannot be a window prior (window={self.window}): the latent transition "
                             "is a model of z, the flow prior's assimilation latent is u")

    def with_parts(self, config, transition: LatentTransition | None = None,
                   flow: LatentFlow | None = None) -> "Prior":
        """A new prior sharing this one's VAE, grid, climatology and representation-error model, with ``config``
        and the given latent transition (window prior) or flow (flow prior); this prior is not modified."""
        return Prior(self.model, config=config, variables=self.variables, grid=self.grid,
                     climatology=self.climatology, var_attrs=self.var_attrs, provenance=self.provenance,
                     recon_std=self.recon_std, history=self.history, device=self.device, recon_modes=self.recon_modes,
                     transition=transition, flow=flow)

    def require_window(self, caller: str, window: bool) -> None:
        """Refuse this prior (ValueError naming ``caller`` and the prior) if ``caller`` needs a window prior
        (``window=True``) and this is a day prior, or the other way round."""
        if bool(self.window) == bool(window):
            return
        what = (f"a window prior (window={self.window} days, latent transition)" if self.window
                else "a day prior (window=0)")
        need = "a window prior (PriorConfig.window >= 1)" if window else "a day prior (PriorConfig.window = 0)"
        hint = ("; add a transition with latentda.prior.add_window or train with {'window': k}" if window
                else "; use latentda.assimilate, which analyses with the whole window")
        raise ValueError(f"{caller} needs {need}, but prior {self.checksum()[:12]} is {what}{hint}")

    # ------------------------------------------------------------------ shapes and conversions
    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, nlat, nlon) of one field."""
        return (len(self.variables), *self.grid.shape)

    def __repr__(self) -> str:
        return (f"Prior(variables={self.variables}, grid={self.grid.describe()}, latent_dim={self.latent_dim}, "
                f"device={self.device}, version={self.provenance.get('version')})")

    def _check_field_shape(self, x: torch.Tensor, name: str) -> None:
        if x.ndim < 3 or tuple(x.shape[-3:]) != self.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, self.shape))})"
                             f" = (..., C, nlat, nlon) for variables {self.variables}")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Generator g(z): (B, L) latents -> (B, C, nlat, nlon) standardised anomalies on ``self.device``; for a
        flow prior g(f(u)) of the flow's base variable u (the latent the assimilation and :meth:`sample` use).

        Differentiable with respect to ``z`` (the network's own parameters are frozen). A (L,) input gives (C, nlat,
        nlon). ``z`` is moved to ``self.device`` and cast to float32.
        """
        z = torch.as_tensor(z)
        if z.shape[-1] != self.latent_dim or z.ndim not in (1, 2):
            raise ValueError(f"z has shape {tuple(z.shape)}; expected (B, {self.latent_dim}) (latent_dim)")
        squeeze = z.ndim == 1
        z = z.to(device=self.device, dtype=torch.float32)
        z = z[None] if squeeze else z
        x = self.model.decode(z if self.flow is None else self.flow(z))
        return x[0] if squeeze else x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder q(z|x): (B, C, nlat, nlon) standardised anomalies -> (mu, logvar), each (B, L), on ``self.device``."""
        x = torch.as_tensor(x)
        if x.ndim != 4:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, self.shape))})")
        self._check_field_shape(x, "x")
        return self.model.encode(x.to(device=self.device, dtype=torch.float32))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """g(mu(x)): (B, C, nlat, nlon) -> (B, C, nlat, nlon), standardised anomalies, no gradient (the VAE's
        decoder of its encoder mean, with or without a flow)."""
        with torch.no_grad():
            return self.model.decode(self.encode(x)[0])

    def climatology_tensors(self, time) -> tuple[torch.Tensor, torch.Tensor]:
        """Climatological mean m(d) and standard deviation s(d) on day ``time``: two float32 (C, nlat, nlon)
        tensors on ``self.device``, physical units (cached per time)."""
        t = _to_timestamp(time)
        hit = self._clim_cache.get(t)
        if hit is not None:
            return hit
        means, stds = [], []
        for v in self.variables:
            m, s = climatology_at(self.climatology, v, [t.to_datetime64()])
            means.append(m[0])
            stds.append(s[0])
        out = (torch.as_tensor(np.stack(means), dtype=torch.float32, device=self.device),
               torch.as_tensor(np.stack(stds), dtype=torch.float32, device=self.device))
        if len(self._clim_cache) >= _CLIM_CACHE_SIZE:
            self._clim_cache.pop(next(iter(self._clim_cache)))
        self._clim_cache[t] = out
        return out

    def to_physical(self, anom: torch.Tensor, time) -> torch.Tensor:
        """x = x' s(d) + m(d): (..., C, nlat, nlon) standardised anomalies -> physical units (differentiable)."""
        anom = torch.as_tensor(anom)
        self._check_field_shape(anom, "anom")
        mean, std = self.climatology_tensors(time)
        return anom.to(device=self.device, dtype=torch.float32) * std + mean

    def to_anomaly(self, phys: torch.Tensor, time) -> torch.Tensor:
        """x' = (x - m(d)) / s(d): (..., C, nlat, nlon) physical units -> standardised anomalies (differentiable)."""
        phys = torch.as_tensor(phys)
        self._check_field_shape(phys, "phys")
        mean, std = self.climatology_tensors(time)
        return (phys.to(device=self.device, dtype=torch.float32) - mean) / std

    def anomalies(self, ds: xr.Dataset) -> np.ndarray:
        """Standardised anomalies of this prior's variables in ``ds`` (time, lat, lon): float32 (T, C, nlat, nlon)."""
        self.check_compatible(ds)
        phys = to_array(ds, self.variables, dtype=np.float64)
        times = ds["time"].values
        out = np.empty(phys.shape, dtype=np.float32)
        for k, v in enumerate(self.variables):
            m, s = climatology_at(self.climatology, v, times)
            out[:, k] = (phys[:, k] - m) / s
        return out

    def sample(self, n: int, seed: int, time) -> np.ndarray:
        """Draw ``n`` fields x = g(z) s(d) + m(d) with z ~ N(0, I) (seeded): float32 (n, C, nlat, nlon), physical."""
        if int(n) != n or n < 1:
            raise ValueError(f"n={n} must be a positive integer")
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(int(n), self.latent_dim, generator=gen)
        out = []
        with torch.no_grad():
            for k in range(0, int(n), 256):
                out.append(self.to_physical(self.decode(z[k:k + 256]), time).cpu().numpy())
        return np.concatenate(out, axis=0)

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, ds_or_grid: xr.Dataset | xr.DataArray | Grid,
                         variables: Sequence[str] | None = None) -> None:
        """ValueError naming the mismatch if the data are not on this prior's grid or lack/ask for other
        variables or units (:func:`latentda.prior.compat.check_compatible`)."""
        check_compatible(self, ds_or_grid, variables)

    # ------------------------------------------------------------------ serialisation
    def to_checkpoint(self) -> dict:
        """The checkpoint dict (see module docstring): tensors, plus every other item in one canonical JSON string.

        Keeping metadata in JSON and interning the tensor-dict keys makes the pickled bytes independent of which
        Python string objects happen to be shared (pickle memoises by identity), so a loaded prior re-serialises
        to the same bytes as the trained one.
        """
        clim_names = [n for v in self.variables for n in (f"{v}_mean", f"{v}_var")]
        clim = self.climatology
        meta = {
            "arch": dict(self.model.arch()),
            "config": self.config.model_dump(mode="json"),
            "variables": list(self.variables),
            "var_attrs": self.var_attrs,
            "climatology_names": clim_names,
            "climatology_attrs": dict(clim.attrs),
            "climatology_var_attrs": {n: dict(clim[n].attrs) for n in clim_names},
            "history": self.history,
            "provenance": self.provenance,
        }
        if self.transition is not None:
            meta["transition_info"] = self.transition.info
        if self.flow is not None:
            meta["flow_info"] = self.flow.info()
        ckpt = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meta_json": to_json(meta),
            "state_dict": {sys.intern(str(k)): t.detach().to("cpu").contiguous().clone()
                           for k, t in self.model.state_dict().items()},
            "grid": {"lat": torch.tensor(np.array(self.grid.lat, dtype=np.float64)),
                     "lon": torch.tensor(np.array(self.grid.lon, dtype=np.float64))},
            "climatology": {sys.intern(n): torch.tensor(np.array(
                clim[n].transpose("harmonic", "lat", "lon").values, dtype=np.float64)) for n in clim_names},
            "recon_std": torch.tensor(np.array(self.recon_std, dtype=np.float32)),
        }
        if self.recon_modes is not None:
            ckpt["recon_modes"] = torch.tensor(np.array(self.recon_modes, dtype=np.float32))
        if self.transition is not None:
            ckpt["transition"] = self.transition.to_tensors()
        if self.flow is not None:
            ckpt["flow"] = {sys.intern(k): t for k, t in self.flow.to_tensors().items()}
        return ckpt

    def to_bytes(self) -> bytes:
        """Serialised checkpoint (deterministic: same prior -> same bytes)."""
        buf = io.BytesIO()
        torch.save(self.to_checkpoint(), buf)
        return buf.getvalue()

    def checksum(self) -> str:
        """sha256 (hex) of the serialised checkpoint bytes: what :meth:`save` returns. Cached until a public
        attribute is set (the network's parameters are frozen)."""
        return self._derived("checksum", lambda: hashlib.sha256(self.to_bytes()).hexdigest())

    def residual_model(self) -> tuple[np.ndarray, torch.Tensor | None, np.ndarray | None]:
        """(D_r, M, M columns) of the representation-error model (:mod:`latentda.prior.residual`), standardised
        units: the remainder std D_r (C, nlat, nlon) float32 numpy, the residual modes as a float32
        (k, C, nlat, nlon) tensor on :attr:`device` and as a C-contiguous (C·nlat·nlon, k) numpy array (None, None
        and D_r = recon_std without modes). Cached like :meth:`checksum`."""
        def make():
            from .residual import remainder_std

            if self.recon_modes is None:
                return remainder_std(self.recon_std, None), None, None
            k = self.recon_modes.shape[0]
            return (remainder_std(self.recon_std, self.recon_modes),
                    torch.as_tensor(self.recon_modes, device=self.device),
                    np.ascontiguousarray(self.recon_modes.reshape(k, -1).T))

        return self._derived("residual_model", make)

    def _derived(self, key: str, make):
        cache = self.__dict__.setdefault("_derived_cache", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_"):
            self.__dict__.pop("_derived_cache", None)  # checksum and derived arrays follow the new value
        super().__setattr__(name, value)

    def save(self, path: str, storage_options: dict | None = None) -> str:
        """Write the checkpoint to ``path`` (local path or fsspec URL such as ``s3://bucket/prior.pt``); returns its
        sha256. Local writes go to a temporary file renamed into place (no half-written checkpoint)."""
        from .. import storage

        data = self.to_bytes()
        digest = hashlib.sha256(data).hexdigest()
        fs, fpath = storage.filesystem(str(path), storage_options)
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if "file" in protocols or "local" in protocols:
            parent = os.path.dirname(os.path.abspath(fpath))
            os.makedirs(parent, exist_ok=True)
            tmp = f"{fpath}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, fpath)
        else:
            with fs.open(fpath, "wb") as f:
                f.write(data)
        return digest
