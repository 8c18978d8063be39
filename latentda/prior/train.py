"""Training the VAE prior on standardised anomalies, with early stopping, a KL warm-up and full seeding.

Objective (negative ELBO per sample, reported per grid value):
``L = [0.5 * sum_{c,i,j} w_i (x - g(z))^2 + beta_e * KL(q(z|x) || N(0, I))] / (C * nlat * nlon)``, z = mu + sigma * eps,
with ``w_i`` = cos(lat) weights of mean 1 (:meth:`Grid.weights`) and ``beta_e`` ramping linearly from
``beta / (kl_warmup_epochs + 1)`` to ``beta`` over the warm-up epochs. Validation always uses the full ``beta`` and
the same noise every epoch, so its values are comparable; the weights of the best validation epoch are kept.
With ``beta = 0`` the model is a deterministic autoencoder: z = mu, no noise, the loss is the reconstruction term.

The validation split is random blocks of ``val_block_days`` consecutive days (daily fields are autocorrelated, so
random single days would leak the training set into validation).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import sys
import time as _time
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from ..eof import weighted_eofs, zonal_weighted_eofs
from ..fields import to_array
from ..grid import Grid, normalize_grid
from ..normalization import climatology_at, fit_climatology
from ..runtime import git_sha
from .checkpoint import Prior, resolve_device
from .config import PriorConfig, as_config
from .flowfit import fit_prior_flow
from .repr_time import TrainingDays, fit_window_parts
from .mode_weights import weigh_prior_modes
from .residual import residual_modes
from .vae import ConvVAE, choose_n_down, kl_divergence, weighted_sq_error
from .zonal import data_zonal_symmetry, fit_zonal_climatology

#: longitude rotations of the training pairs of the latent transition for zonally symmetric data
TRANSITION_ROTATIONS = 8


def array_sha256(arr: np.ndarray) -> str:
    """sha256 (hex) of a C-contiguous array's bytes (the training data: float32 (time, channel, lat, lon))."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def split_blocks(ntime: int, val_fraction: float, block: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random block split of ``range(ntime)``: (train_idx, val_idx), sorted int64 arrays.

    The days are cut into consecutive blocks of ``block`` days; ``max(1, round(val_fraction * nblocks))`` blocks,
    drawn with ``numpy.random.default_rng(SeedSequence([seed, 17]))``, are held out. Needs >= 2 blocks.
    """
    nblocks = math.ceil(ntime / block)
    nval = max(1, int(round(val_fraction * nblocks)))
    if ntime < 2 or nval >= nblocks:
        raise ValueError(f"{ntime} days in blocks of {block} give {nblocks} block(s), too few to hold out "
                         f"val_fraction={val_fraction} for validation; give more days or lower val_block_days")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    val_blocks = np.sort(rng.choice(nblocks, size=nval, replace=False))
    is_val = np.zeros(ntime, dtype=bool)
    for b in val_blocks:
        is_val[b * block:(b + 1) * block] = True
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


@contextlib.contextmanager
def deterministic_torch(device: torch.device, num_threads: int | None = None):
    """Inside the block: ``num_threads`` CPU threads (if given); on CUDA, deterministic algorithms (warn-only),
    deterministic cuDNN and a fixed cuBLAS workspace. Previous settings are restored on exit.

    On the CPU the ops the VAE uses are deterministic for a fixed thread count already; enabling
    ``torch.use_deterministic_algorithms`` there is skipped because it imports torch._inductor (seconds).
    """
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    cuda = device.type == "cuda"
    if cuda:
        prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if cuda:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


def _select_variables(ds: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    if variables is None:
        variables = [v for v in ds.data_vars if set(ds[v].dims) == {"time", "lat", "lon"}]
        if not variables:
            raise ValueError(f"no (time, lat, lon) variable in the dataset (variables: "
                             f"{ {v: ds[v].dims for v in ds.data_vars} }); pass variables=[...]")
    variables = [variables] if isinstance(variables, str) else list(variables)
    if not variables:
        raise ValueError("variables=[] : give at least one variable")
    if len(set(variables)) != len(variables):
        raise ValueError(f"duplicate variables in {variables}")
    for v in variables:
        if v not in ds.data_vars:
            raise ValueError(f"variable {v!r} not in the dataset; available: {sorted(ds.data_vars)}")
        if set(ds[v].dims) != {"time", "lat", "lon"}:
            raise ValueError(f"variable {v!r} has dims {ds[v].dims}; the prior needs (time, lat, lon) "
                             "(select a level first)")
    return variables


def _check_climatology(clim: xr.Dataset, variables: Sequence[str], grid: Grid) -> xr.Dataset:
    missing = [f"{v}_{k}" for v in variables for k in ("mean", "var") if f"{v}_{k}" not in clim]
    if missing:
        raise ValueError(f"climatology lacks {missing}; fit it with latentda.normalization.fit_climatology")
    for key in ("n_harmonics", "min_std"):
        if key not in clim.attrs:
            raise ValueError(f"climatology has no {key!r} attribute; fit it with fit_climatology")
    if not grid.matches(Grid.from_dataset(clim)):
        raise ValueError(f"climatology grid {Grid.from_dataset(clim).describe()} does not match the data grid "
                         f"{grid.describe()}")
    return clim


def _standardise(phys: np.ndarray, clim: xr.Dataset, variables: Sequence[str], times) -> np.ndarray:
    """x' = (x - m(d)) / s(d) per variable: (T, C, nlat, nlon) -> float32 (T, C, nlat, nlon)."""
    out = np.empty(phys.shape, dtype=np.float32)
    for k, v in enumerate(variables):
        m, s = climatology_at(clim, v, times)
        out[:, k] = (phys[:, k] - m) / s
    return out


def _evaluate(model: ConvVAE, X: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, beta: float, seed: int,
              batch: int = 256) -> dict:
    """Validation loss (full beta, fixed noise), recon MSE of g(mu) (area-weighted) and KL, per grid value."""
    model.eval()
    gen = torch.Generator(device=X.device).manual_seed(seed)
    npix = float(X[0].numel())
    tot = {"loss": 0.0, "mse_mu": 0.0, "kl": 0.0}
    with torch.no_grad():
        for k in range(0, idx.numel(), batch):
            x = X[idx[k:k + batch]]
            mu, logvar = model.encode(x)
            eps = torch.randn(mu.shape, generator=gen, device=X.device)
            x_hat = model.decode(mu + torch.exp(0.5 * logvar) * eps if beta > 0 else mu)
            kl = kl_divergence(mu, logvar)
            tot["loss"] += float((0.5 * weighted_sq_error(x, x_hat, w) + beta * kl).sum())
            tot["mse_mu"] += float(weighted_sq_error(x, model.decode(mu), w).sum())
            tot["kl"] += float(kl.sum())
    n = idx.numel()
    return {"loss": tot["loss"] / n / npix, "mse_mu": tot["mse_mu"] / n / npix, "kl": tot["kl"] / n}


def train_prior(fields: xr.Dataset, config: "PriorConfig | dict | None" = None,
                variables: Sequence[str] | None = None, climatology: xr.Dataset | None = None,
                progress: bool = True) -> Prior:
    """Train a VAE prior on ``fields`` (time, lat, lon) in physical units.

    Fits the harmonic climatology (``config.n_harmonics``) unless ``climatology`` is given, standardises the
    anomalies ``x' = (x - m(d)) / s(d)`` and trains the VAE on them (objective in the module docstring) with Adam,
    early stopping on a held-out block split, and an optional wall-time limit (``max_minutes``). Same seed, data
    and device -> same weights. ``progress`` shows a tqdm bar on stderr.

    Returns a :class:`Prior` (on ``config.device``) whose ``recon_std`` is the RMS validation reconstruction error
    per channel and grid point, in standardised anomaly units.
    """
    cfg = as_config(config)
    if not isinstance(fields, xr.Dataset):
        raise TypeError(f"fields must be an xarray.Dataset (time, lat, lon), got {type(fields).__name__}")
    if "time" not in fields.dims:
        raise ValueError(f"fields have no 'time' dimension (dims {dict(fields.sizes)})")
    fields = normalize_grid(fields).sortby("time")
    variables = _select_variables(fields, variables)
    grid = Grid.from_dataset(fields)
    n_down = choose_n_down(*grid.shape, cfg.n_down)
    device = resolve_device(cfg.device)
    times = fields["time"].values
    ntime = times.size
    train_idx, val_idx = split_blocks(ntime, cfg.val_fraction, cfg.val_block_days, cfg.seed)

    phys = to_array(fields, variables, dtype=np.float32)  # (T, C, nlat, nlon)
    for k, v in enumerate(variables):
        nbad = int(np.size(phys[:, k]) - np.isfinite(phys[:, k]).sum())
        if nbad:
            raise ValueError(f"variable {v!r} has {nbad} non-finite values; fill or drop those days first")
    data_sha = array_sha256(phys)
    if cfg.zonal_symmetry is None:
        cfg = cfg.model_copy(update={"zonal_symmetry": data_zonal_symmetry(fields)})
    if climatology is not None:
        clim = _check_climatology(climatology, variables, grid)
    elif cfg.zonal_symmetry:
        clim = fit_zonal_climatology(fields, variables, cfg.n_harmonics)
    else:
        clim = fit_climatology(fields, variables, cfg.n_harmonics)
    anom = _standardise(phys.astype(np.float64), clim, variables, times)
    del phys
    var_attrs = {v: {k: val for k, val in fields[v].attrs.items()} for v in variables}

    with deterministic_torch(device, cfg.num_threads), torch.random.fork_rng(
            devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = ConvVAE(len(variables), *grid.shape, latent_dim=cfg.latent_dim,
                        base_channels=cfg.base_channels, n_down=n_down, max_mult=cfg.max_channel_mult,
                        dropout=cfg.dropout, res_blocks=cfg.res_blocks, linear_path=cfg.linear_path).to(device)
        X = torch.from_numpy(anom).to(device)
        w = torch.as_tensor(grid.weights(), dtype=torch.float32, device=device)
        if cfg.linear_path:
            eofs = zonal_weighted_eofs if cfg.zonal_symmetry else weighted_eofs
            mean, modes = eofs(anom[train_idx], grid.weights(), cfg.latent_dim)
            model.init_linear_path(torch.as_tensor(mean, dtype=torch.float32, device=device),
                                   torch.as_tensor(modes, dtype=torch.float32, device=device), w)
        del anom
        tr = torch.as_tensor(train_idx, device=device)
        va = torch.as_tensor(val_idx, device=device)
        result = _fit(model, X, tr, va, w, cfg, device, progress)
        if result["best_state"] is None:
            raise FloatingPointError("no finite validation loss in any epoch; lower learning_rate "
                                     f"(now {cfg.learning_rate}) or check the data")
        model.load_state_dict(result["best_state"])
        model.eval()
        with torch.no_grad():
            sq = torch.zeros(X.shape[1:], dtype=torch.float64, device=device)
            for k in range(0, va.numel(), 256):
                x = X[va[k:k + 256]]
                sq += (x - model.decode(model.encode(x)[0])).double().pow(2).sum(0)
            recon_std = torch.sqrt(sq / va.numel()).float().cpu().numpy()
            clim_rms = X[va].double().pow(2).mean(0).sqrt().float().cpu().numpy()
        train_anom = X[tr].cpu().numpy() if cfg.residual_modes else None
        val_anom = X[va].cpu().numpy() if cfg.residual_modes and cfg.residual_mode_weights else None
    wn = grid.weights()[None, :, None]
    provenance = {
        "package": "latentda",
        "version": _package_version(),
        "git_sha": git_sha(),
        "data_sha256": data_sha,
        "data_shape": [int(s) for s in X.shape],
        "train_period": f"{str(times[0])[:10]}/{str(times[-1])[:10]}",
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "seed": int(cfg.seed),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "train_device": str(device),
        "epochs_run": int(result["epochs_run"]),
        "best_epoch": int(result["best_epoch"]),
        "stop_reason": result["stop_reason"],
        "train_seconds": round(float(result["seconds"]), 3),
        "best_val_loss": float(result["best_loss"]),
        "val_rmse": [float(np.sqrt((recon_std[c] ** 2 * wn[0]).mean())) for c in range(len(variables))],
        "val_rms_anomaly": [float(np.sqrt((clim_rms[c] ** 2 * wn[0]).mean())) for c in range(len(variables))],
    }
    transition = None
    if cfg.window:
        with deterministic_torch(device, cfg.num_threads):
            days = TrainingDays(X, times, train_idx, val_idx, grid.lat, list(variables))
            transition = fit_window_parts(model, days, cfg.seed, TRANSITION_ROTATIONS if cfg.zonal_symmetry else 1)
    flow = fit_prior_flow(model.encode, X, train_idx, val_idx, cfg, device) if cfg.flow_prior else None
    prior = Prior(model, config=cfg, variables=variables, grid=grid, climatology=clim, var_attrs=var_attrs,
                  provenance=provenance, recon_std=recon_std, history=result["history"], device=device,
                  transition=transition, flow=flow)
    if cfg.residual_modes:
        with deterministic_torch(device, cfg.num_threads):
            prior.recon_modes, info = residual_modes(prior, train_anom, cfg.residual_modes)
            prior.provenance["residual_modes"] = info
            if val_anom is not None:  # shrink each variable's modes by a weight fitted on the validation days
                weigh_prior_modes(prior, val_anom)
    return prior


def _package_version() -> str:
    from .. import __version__

    return str(__version__)


def _param_groups(model: ConvVAE, lr: float) -> list[dict]:
    """Adam parameter groups: the network at ``lr``; each matrix of a linear EOF path at ``lr`` times its initial
    RMS entry (Adam moves every entry by about lr per step whatever its size, and the encoder's EOF projection has
    entries ~1e-3: at the full rate the first steps would erase the EOF start)."""
    if not getattr(model, "linear_path", False):
        return [{"params": list(model.parameters())}]
    linear = [model.lin_enc, model.lin_dec]
    rest = [p for p in model.parameters() if all(p is not q for q in linear)]
    return [{"params": rest}] + [{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt())} for p in linear]


def _fit(model: ConvVAE, X: torch.Tensor, tr: torch.Tensor, va: torch.Tensor, w: torch.Tensor, cfg: PriorConfig,
         device: torch.device, progress: bool) -> dict:
    """The training loop: Adam(W), KL warm-up, early stopping on the validation loss, wall-time limit. A model with
    a linear EOF path is evaluated before the first epoch too (history epoch -1), so its initial state can be kept."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(_param_groups(model, cfg.learning_rate), lr=cfg.learning_rate,
                            weight_decay=cfg.weight_decay)
    g_shuffle = torch.Generator().manual_seed(cfg.seed)
    g_noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    npix = float(X[0].numel())
    ntrain, bs, nlon = tr.numel(), cfg.batch_size, X.shape[-1]
    t0 = _time.monotonic()
    deadline = None if cfg.max_minutes is None else t0 + 60.0 * cfg.max_minutes
    best_loss, best_epoch, best_state, bad = math.inf, -1, None, 0
    history: list[dict] = []
    stop_reason = "epochs"
    bar = tqdm(total=cfg.epochs, desc="train prior", unit="epoch", file=sys.stderr, disable=not progress,
               leave=False)
    if getattr(model, "linear_path", False):  # the EOF start is a candidate: training can only improve on it
        val = _evaluate(model, X, va, w, cfg.beta, cfg.seed + 2)
        history.append({"epoch": -1, "beta": cfg.beta, "train_loss": None, "val_loss": val["loss"],
                        "val_mse": val["mse_mu"], "val_kl": val["kl"], "seconds": round(_time.monotonic() - t0, 3)})
        best_loss, best_state = val["loss"], {k: t.detach().clone() for k, t in model.state_dict().items()}
    try:
        for epoch in range(cfg.epochs):
            beta_e = cfg.beta * min(1.0, (epoch + 1) / (cfg.kl_warmup_epochs + 1))
            model.train()
            perm = tr[torch.randperm(ntrain, generator=g_shuffle).to(device)]
            tot, nseen, timed_out = 0.0, 0, False
            for k in range(0, ntrain, bs):
                x = X[perm[k:k + bs]]
                if cfg.zonal_symmetry:  # rotate each sample by its own random number of longitudes
                    shift = torch.randint(0, nlon, (x.shape[0], 1), generator=g_shuffle).to(device)
                    cols = (torch.arange(nlon, device=device)[None, :] - shift) % nlon
                    x = x.gather(-1, cols[:, None, None, :].expand_as(x))
                eps = torch.randn((x.shape[0], model.latent_dim), generator=g_noise, device=device)
                x_hat, mu, logvar = model(x, eps if cfg.beta > 0 else None)   # beta = 0: a plain autoencoder
                loss = (0.5 * weighted_sq_error(x, x_hat, w) + beta_e * kl_divergence(mu, logvar)).mean() / npix
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * x.shape[0]
                nseen += x.shape[0]
                if deadline is not None and _time.monotonic() > deadline:
                    timed_out = True
                    break
            if not math.isfinite(tot):
                raise FloatingPointError(f"training loss became {tot} in epoch {epoch}; lower learning_rate "
                                         f"(now {cfg.learning_rate})")
            val = _evaluate(model, X, va, w, cfg.beta, cfg.seed + 2)
            rec = {"epoch": epoch, "beta": beta_e, "train_loss": tot / max(nseen, 1), "val_loss": val["loss"],
                   "val_mse": val["mse_mu"], "val_kl": val["kl"], "seconds": round(_time.monotonic() - t0, 3)}
            history.append(rec)
            if val["loss"] < best_loss:
                best_loss, best_epoch, bad = val["loss"], epoch, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
            bar.update(1)
            bar.set_postfix(train=f"{rec['train_loss']:.4f}", val=f"{val['loss']:.4f}", mse=f"{val['mse_mu']:.3f}")
            if timed_out:
                stop_reason = "max_minutes"
                break
            if bad >= cfg.patience and epoch + 1 > cfg.kl_warmup_epochs:
                stop_reason = "early_stopping"
                break
    finally:
        bar.close()
    return {"best_state": best_state, "best_loss": best_loss, "best_epoch": best_epoch, "history": history,
            "epochs_run": sum(r["epoch"] >= 0 for r in history), "stop_reason": stop_reason, "seconds": _time.monotonic() - t0}


STOP_REASONS = {"epochs": "the epoch limit (epochs={epochs})", "max_minutes": "the max_minutes={max_minutes} time limit",
                "early_stopping": "early stopping (no validation improvement in {patience} epochs)"}


def training_summary(prior) -> str:
    """One line on how a prior's training ended, from its provenance: the stop reason (epochs / max_minutes /
    early stopping), epochs run of the maximum, the best (kept) epoch and its validation loss, and the validation
    reconstruction RMSE per variable (standardised-anomaly units)."""
    p, cfg = prior.provenance, prior.config
    reason = STOP_REASONS.get(p.get("stop_reason"), str(p.get("stop_reason"))).format(
        epochs=cfg.epochs, max_minutes=cfg.max_minutes, patience=cfg.patience)
    rmse = ", ".join(f"{v} {r:.3g}" for v, r in zip(prior.variables, p.get("val_rmse") or []))
    return (f"training stopped by {reason} after {p.get('epochs_run')}/{cfg.epochs} epoch(s) in "
            f"{float(p.get('train_seconds') or 0):.0f} s; kept epoch {int(p.get('best_epoch', -1)) + 1} with "
            f"validation loss {float(p.get('best_val_loss', float('nan'))):.4g}"
            + (f"; validation RMSE {rmse}" if rmse else ""))
