"""Per-variable weights of the residual modes, fitted on held-out days: shrinkage of their sample covariance.

The residual modes M (:mod:`latentda.prior.residual`) are the sample second moment of the decoder's residuals on
the training days: up to a thousand modes from some 1600 days, fitted on days the decoder was trained on. Used as
the covariance of the representation error they predict the residual away from the stations with too much
confidence: conditioned on the residual at 400 random stations, the predicted residual elsewhere on the
validation days has spread/skill 0.69-0.74 per variable (latent-128 prior, 1024 modes; 0.87-0.89 at 100 stations).

The covariance is shrunk towards its isotropic part, per variable c (weights w_c in [0, 1], a_c = sqrt(w_c)):

    B_eta(w) = A M Mᵀ A + D_r(w) S Sᵀ D_r(w),   A = diag(a_c on the rows of variable c),
    D_r(w)² = max(recon_std² − diag(A M Mᵀ A), 0),

so the variance a weight takes from the modes moves to the isotropic Gaussian part and diag(B_eta) is unchanged
(Ledoit-Wolf-style shrinkage towards a structured target, with the weight chosen by held-out score instead of an
asymptotic formula). The weights maximise the **conditional log score** on the validation days (days the decoder
never trained on, inside the training years): for random station sets of each size in :attr:`WeightFit.sizes`
(area-uniform grid points), the residual at other random target points is predicted from the exact residual at the
stations by Gaussian conditioning under B_eta(w), and the score is the mean Gaussian log density of the true
residual under that prediction, averaged over variables, targets, days and networks (a proper score: it rewards a
predicted variance that matches the error as well as an accurate mean). Coordinate ascent over
:attr:`WeightFit.candidates`, variable by variable.

The weights are applied by scaling each variable's rows of the stored modes by a_c (:func:`weight_modes`), so the
checkpoint format and the assimilation are unchanged; ``provenance["residual_modes"]["weights"]`` records them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from ..grid import Grid

__all__ = ["WeightFit", "fit_mode_weights", "weight_modes"]

NUGGET = 1e-4  # relative jitter on the stations' covariance diagonal: keeps the Gaussian kernel's Cholesky stable


@dataclass(frozen=True)
class WeightFit:
    """How the weights are fitted: station-set ``sizes`` (points per network), ``networks`` random sets per size,
    ``targets`` prediction points per set, the ``candidates`` for each weight, coordinate-ascent ``sweeps`` and the
    ``seed`` of the point draws."""

    sizes: tuple[int, ...] = (25, 100, 400)
    networks: int = 2
    targets: int = 200
    candidates: tuple[float, ...] = (1.0, 0.75, 0.5, 0.35, 0.25, 0.125, 0.0)
    sweeps: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or any(int(n) < 1 for n in self.sizes):
            raise ValueError(f"sizes={self.sizes!r} must be positive station counts")
        for name in ("networks", "targets", "sweeps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        if not self.candidates or any(not 0.0 <= float(w) <= 1.0 for w in self.candidates):
            raise ValueError(f"candidates={self.candidates!r} must be weights in [0, 1]")


class _Network:
    """One random station set with its targets: the per-variable-pair blocks of M Mᵀ and the smoother's
    correlation over the N = n + targets points (computed once; B_eta(w) is then a weighted sum)."""

    def __init__(self, idx: np.ndarray, n: int, modes: np.ndarray, rs2: np.ndarray, table: np.ndarray,
                 nlon: int, residuals: np.ndarray) -> None:
        C = modes.shape[1]
        self.n, self.N, self.C = n, idx.size, C
        j, i = idx // nlon, idx % nlon
        self.corr = table[j[:, None], j[None, :], (i[:, None] - i[None, :]) % nlon]  # (N, N)
        m = modes[:, :, idx]  # (k, C, N)
        self.mm = np.einsum("kcp,kdq->cdpq", m, m)  # (C, C, N, N)
        self.m2 = (m ** 2).sum(0)  # (C, N)
        self.rs2 = rs2[:, idx]  # (C, N)
        self.r = residuals[:, :, idx]  # (T, C, N)

    def predict(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Squared errors (T, C, N − n) of the targets' residuals predicted from the stations' under B_eta(w),
        and the predicted variances (C, N − n)."""
        a = np.sqrt(w)
        n, N, C = self.n, self.N, self.C
        dr = np.sqrt(np.clip(self.rs2 - w[:, None] * self.m2, 0.0, None))  # (C, N)
        B = (a[:, None, None, None] * a[None, :, None, None]) * self.mm
        B[np.arange(C), np.arange(C)] += dr[:, :, None] * self.corr[None] * dr[:, None, :]
        B = B.transpose(0, 2, 1, 3).reshape(C * N, C * N)
        o = (np.arange(C)[:, None] * N + np.arange(n)[None, :]).ravel()
        t = (np.arange(C)[:, None] * N + np.arange(n, N)[None, :]).ravel()
        boo = B[np.ix_(o, o)]
        boo[np.diag_indices_from(boo)] *= 1.0 + NUGGET
        try:
            cf = np.linalg.cholesky(boo)
        except np.linalg.LinAlgError:
            raise ValueError(f"the residual covariance at {n} stations is not positive definite (min diagonal "
                             f"{float(np.diag(boo).min()):.3g}): recon_std must be positive wherever stations "
                             "are drawn") from None
        bot = B[np.ix_(o, t)]
        v = solve_triangular(cf, bot, lower=True)  # L⁻¹ B_ot
        var = np.clip(B[t, t] - (v ** 2).sum(0), 1e-12, None)  # (C (N - n),)
        y = self.r[:, :, :n].reshape(self.r.shape[0], -1)  # (T, C n)
        pred = solve_triangular(cf, y.T, lower=True).T @ v  # (T, C (N - n))
        err2 = (self.r[:, :, n:].reshape(y.shape[0], -1) - pred) ** 2
        return err2.reshape(-1, C, N - n), var.reshape(C, N - n)

    def score(self, w: np.ndarray) -> np.ndarray:
        """The mean conditional log score per variable (C,) under B_eta(w): mean of
        −½ (e² / v + log 2π v) over days and targets."""
        err2, var = self.predict(w)
        return (-0.5 * (err2 / var + np.log(2 * np.pi * var))).mean(axis=(0, 2))

    def moments(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean squared error and mean predicted variance per variable (C,) under B_eta(w)."""
        err2, var = self.predict(w)
        return err2.mean(axis=(0, 2)), var.mean(axis=1)


def fit_mode_weights(modes: np.ndarray, recon_std: np.ndarray, residuals: np.ndarray, grid: Grid,
                     length_scale_km: float, fit: WeightFit | None = None) -> tuple[np.ndarray, dict]:
    """The weights w (C,) of the residual modes that maximise the validation days' conditional log score.

    ``modes``: (k, C, nlat, nlon) residual modes, ``recon_std``: (C, nlat, nlon) residual std, ``residuals``:
    (T, C, nlat, nlon) decoder residuals x − g(mu(x)) of held-out days, all in standardised anomaly units;
    ``length_scale_km``: L of the isotropic part (the assimilation's default). On a grid with fewer than
    max(sizes) + targets points, a quarter of the points are targets and the station counts are capped at the
    rest (``info["sizes"]``, ``info["targets"]``). Returns ``weights`` float64 (C,)
    and ``info`` {"weights", "score", "score_unweighted", "spread_skill", "spread_skill_unweighted", "n_days",
    "sizes", "networks", "targets"} (scores: mean log score per variable at the fitted and at unit weights;
    spread/skill: sqrt(mean predicted variance / mean squared error) per size and variable).
    """
    from ..da.ensemble import GaussianSmoother

    fit = fit or WeightFit()
    modes = np.asarray(modes, dtype=np.float64)
    rs = np.asarray(recon_std, dtype=np.float64)
    r = np.asarray(residuals, dtype=np.float64)
    C, nlat, nlon = rs.shape
    if modes.ndim != 4 or modes.shape[1:] != rs.shape:
        raise ValueError(f"modes must be (k, {C}, {nlat}, {nlon}), got {modes.shape}")
    if r.ndim != 4 or r.shape[1:] != rs.shape or r.shape[0] < 1:
        raise ValueError(f"residuals must be (days >= 1, {C}, {nlat}, {nlon}), got {r.shape}")
    if not (np.isfinite(r).all() and np.isfinite(modes).all() and np.isfinite(rs).all()):
        raise ValueError("modes, recon_std or residuals hold non-finite values")
    npts = nlat * nlon
    if npts < 8:
        raise ValueError(f"the grid has {npts} points; fitting mode weights needs at least 8")
    # a small grid takes a quarter of its points as targets and caps the station counts at the rest
    targets = min(int(fit.targets), npts // 4)
    sizes = sorted({min(int(n), npts - targets) for n in fit.sizes})
    table = GaussianSmoother(grid, length_scale_km).correlation_table()
    m, rs2, rr = modes.reshape(modes.shape[0], C, npts), rs.reshape(C, npts) ** 2, r.reshape(r.shape[0], C, npts)
    p = np.repeat(np.cos(np.deg2rad(grid.lat)).clip(0, None), nlon)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(fit.seed), 23])))
    nets = [(n, _Network(rng.choice(npts, size=n + targets, replace=False, p=p / p.sum()), n, m, rs2, table,
                         nlon, rr)) for n in sizes for _ in range(fit.networks)]

    def scores(w: np.ndarray) -> np.ndarray:
        return np.mean([net.score(w) for _, net in nets], axis=0)

    w = np.ones(C)
    unit = best = scores(w)
    for _ in range(fit.sweeps):
        changed = False
        for c in range(C):
            for cand in fit.candidates:
                if cand == w[c]:
                    continue
                trial = w.copy()
                trial[c] = float(cand)
                s = scores(trial)
                if s.mean() > best.mean() + 1e-9:
                    best, w, changed = s, trial, True
        if not changed:
            break
    info = {"weights": [float(x) for x in w], "score": [float(x) for x in best],
            "score_unweighted": [float(x) for x in unit],
            "spread_skill": _spread_skill(nets, w, sizes), "spread_skill_unweighted":
                _spread_skill(nets, np.ones(C), sizes),
            "n_days": int(r.shape[0]), "sizes": sizes, "networks": int(fit.networks), "targets": targets}
    return w, info


def _spread_skill(nets: list, w: np.ndarray, sizes) -> dict:
    """sqrt(mean predicted variance / mean squared error) per variable, per station count (a str key)."""
    out = {}
    for size in sizes:
        num = den = 0.0
        for n, net in nets:
            if n == size:
                e2, var = net.moments(w)
                num, den = num + e2, den + var
        out[str(int(size))] = [float(x) for x in np.sqrt(den / num)]
    return out


def weight_modes(modes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A M: each variable's rows of ``modes`` (k, C, nlat, nlon) scaled by sqrt(w_c); float32."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (modes.shape[1],) or not np.all((w >= 0) & (w <= 1)):
        raise ValueError(f"weights must be {modes.shape[1]} values in [0, 1], got {weights!r}")
    return (np.asarray(modes, dtype=np.float64) * np.sqrt(w)[None, :, None, None]).astype(np.float32)


def weigh_prior_modes(prior, anomalies: np.ndarray, fit: WeightFit | None = None, batch: int = 128) -> dict:
    """Fit the mode weights of ``prior`` on ``anomalies`` (T, C, nlat, nlon) of held-out days (standardised) and
    scale ``prior.recon_modes`` by them in place; records and returns the fit's ``info`` in
    ``prior.provenance["residual_modes"]["weights"...]``. ValueError if the prior has no residual modes."""
    import torch

    from ..da.ensemble import default_length_scale_km
    from .repr_time import representation_residual

    if prior.recon_modes is None:
        raise ValueError("the prior has no residual modes to weight (train it with residual_modes > 0)")
    a = np.asarray(anomalies)
    if a.ndim != 4 or a.shape[1:] != tuple(prior.shape):
        raise ValueError(f"anomalies must be (time, {', '.join(map(str, prior.shape))}), got {a.shape}")
    # x − g(mu(x)) with the VAE's own decoder (prior.reconstruct's; a flow prior's decode would take u)
    r = representation_residual(prior.model.encode, prior.model.decode,
                                torch.as_tensor(a, dtype=torch.float32, device=prior.device), batch)
    w, info = fit_mode_weights(prior.recon_modes, prior.recon_std, r, prior.grid,
                               default_length_scale_km(prior.grid), fit)
    prior.recon_modes = weight_modes(prior.recon_modes, w)
    prior.provenance = {**prior.provenance,
                        "residual_modes": {**prior.provenance.get("residual_modes", {}), **info}}
    return info


def add_mode_weights(prior, fields, fit: WeightFit | None = None):
    """A prior with weighted residual modes from one without (``config.residual_mode_weights`` False, e.g. a
    checkpoint from before the weights): fitted on the validation days of ``fields`` (the prior's training fields,
    time, lat, lon, physical; the prior's own block split and seed pick the days). Returns a new prior;
    ``prior`` is not modified. Refused for a prior without modes or whose modes are already weighted."""
    from ..grid import normalize_grid
    from .config import PriorConfig
    from .train import split_blocks

    if prior.config.residual_mode_weights:
        raise ValueError("the prior's residual modes are already weighted (config.residual_mode_weights=True)")
    if prior.recon_modes is None:
        raise ValueError("the prior has no residual modes to weight (train it with residual_modes > 0)")
    cfg = PriorConfig.model_validate({**prior.config.model_dump(), "residual_mode_weights": True})
    fields = normalize_grid(fields).sortby("time")
    prior.check_compatible(fields, prior.variables)
    _, val_idx = split_blocks(fields["time"].size, cfg.val_fraction, cfg.val_block_days, cfg.seed)
    out = prior.with_parts(cfg, transition=prior.transition, flow=prior.flow)
    weigh_prior_modes(out, prior.anomalies(fields.isel(time=val_idx)), fit)
    return out
