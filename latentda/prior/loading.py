"""Reading prior checkpoints: validation of the bytes (``torch.load(weights_only=True)``, format, version, keys) and
the rebuilt :class:`~latentda.prior.checkpoint.Prior`; every byte goes through :mod:`latentda.storage` (local paths
and object stores with their storage options). The checkpoint layout is documented in
:mod:`latentda.prior.checkpoint`.
"""
from __future__ import annotations

import io
import json
import logging
import zipfile

import numpy as np
import torch
import xarray as xr

from ..grid import Grid
from .checkpoint import FORMAT, FORMAT_VERSION, REQUIRED_KEYS, Prior, resolve_device
from .config import PriorConfig
from .flow import LatentFlow, flow_from_checkpoint
from .transition import LatentTransition
from .vae import ConvVAE

__all__ = ["checkpoint_from_bytes", "prior_from_checkpoint", "load_prior"]

log = logging.getLogger(__name__)


def _refuse(path: str, why: str) -> ValueError:
    return ValueError(f"{path}: not a usable latentda prior checkpoint: {why}")


def checkpoint_from_bytes(data: bytes, path: str = "<bytes>") -> dict:
    """Validate and unpickle checkpoint bytes (``weights_only=True``); ValueError naming ``path`` on any problem."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise _refuse(path, f"not a torch zip archive ({len(data)} bytes; corrupted, truncated or another format)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise _refuse(path, f"archive member {bad!r} fails its CRC check (corrupted file)")
    except zipfile.BadZipFile as err:
        raise _refuse(path, f"broken zip archive ({err})") from None
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise _refuse(path, f"torch.load(weights_only=True) failed: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(ckpt, dict):
        raise _refuse(path, f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    if ckpt.get("format") != FORMAT:
        hint = " (looks like a bare state_dict)" if ckpt and all(isinstance(v, torch.Tensor)
                                                                  for v in ckpt.values()) else ""
        raise _refuse(path, f"format is {ckpt.get('format')!r}, expected {FORMAT!r}{hint}")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise _refuse(path, f"format_version {ckpt.get('format_version')!r} not supported (this latentda reads "
                            f"version {FORMAT_VERSION}); retrain the prior with this version")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise _refuse(path, f"missing keys {missing}")
    return ckpt


def prior_from_checkpoint(ckpt: dict, device: str = "auto", path: str = "<checkpoint>") -> Prior:
    """Rebuild a :class:`Prior` from a validated checkpoint dict."""
    resolve_device(device)  # an unavailable device is the caller's problem, not the checkpoint's
    try:
        meta = json.loads(ckpt["meta_json"])
        # checkpoints from before residual_mode_weights carry unweighted modes
        config = PriorConfig.model_validate({"residual_mode_weights": False, **meta["config"]})
        model = ConvVAE(**meta["arch"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
        variables = [str(v) for v in meta["variables"]]
        grid = Grid(ckpt["grid"]["lat"].numpy(), ckpt["grid"]["lon"].numpy())
        names = meta["climatology_names"]
        cattrs = meta["climatology_var_attrs"]
        data = {n: ckpt["climatology"][n].numpy() for n in names}
        clim = xr.Dataset({n: (("harmonic", "lat", "lon"), data[n], cattrs.get(n, {})) for n in names},
                          coords={"lat": grid.lat, "lon": grid.lon,
                                  "harmonic": np.arange(data[names[0]].shape[0])})
        clim.attrs.update(meta["climatology_attrs"])
        prior = Prior(model, config=config, variables=variables, grid=grid, climatology=clim,
                      var_attrs=meta["var_attrs"], provenance=meta["provenance"],
                      recon_std=ckpt["recon_std"].numpy(), history=meta["history"], device=device,
                      recon_modes=ckpt["recon_modes"].numpy() if "recon_modes" in ckpt else None,
                      transition=_transition(ckpt, meta), flow=_flow(ckpt, meta, int(meta["arch"]["latent_dim"])))
    except ValueError as err:
        raise _refuse(path, f"inconsistent contents: {err}") from None
    except (KeyError, TypeError, RuntimeError, AttributeError, IndexError, json.JSONDecodeError) as err:
        raise _refuse(path, f"inconsistent contents: {type(err).__name__}: {err}") from None
    return prior


def _transition(ckpt: dict, meta: dict) -> LatentTransition | None:
    """The latent transition of a window-prior checkpoint, None for a day prior."""
    if "transition" not in ckpt:
        return None
    tr = ckpt["transition"]
    rho = tr.get("repr_rho")
    if rho is None:
        log.info("window prior checkpoint without the representation error's correlation in time (written before "
                 "it was fitted): the window analysis takes it independent between days (rho = 0); refit with "
                 "latentda.prior.add_window to use it")
    return LatentTransition(tr["A"].numpy(), tr["q_chol"].numpy(), meta.get("transition_info", {}),
                            repr_rho=None if rho is None else rho.numpy())


def _flow(ckpt: dict, meta: dict, latent_dim: int) -> LatentFlow | None:
    """The latent flow of a flow-prior checkpoint (its size checked against the VAE's), None for a VAE prior."""
    if "flow" not in ckpt:
        return None
    return flow_from_checkpoint(ckpt["flow"], meta.get("flow_info", {}), latent_dim)


def load_prior(path: str, device: str = "auto", storage_options: dict | None = None) -> Prior:
    """Load a prior saved by :meth:`Prior.save` from a local path or fsspec URL onto ``device``.

    Refuses (ValueError naming ``path``) anything that is not a latentda prior checkpoint: random or truncated
    bytes, a torch file holding something else (e.g. a bare state_dict), missing keys, another format version.
    Raises FileNotFoundError if ``path`` does not exist.
    """
    from .. import storage

    resolve_device(device)  # fail early on an impossible device
    if not storage.exists(str(path), storage_options):
        raise FileNotFoundError(f"prior checkpoint {storage.redact(str(path))} does not exist")
    with storage.open(str(path), "rb", storage_options) as f:
        data = f.read()
    ckpt = checkpoint_from_bytes(data, str(path))
    return prior_from_checkpoint(ckpt, device=device, path=str(path))
