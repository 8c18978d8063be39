#!/usr/bin/env python
"""How much of the next day a latent transition can predict, linear vs a small MLP, and how much the representation
error persists from day to day: the two limits of the window latent analysis (README, "What the neighbouring days
hold").

On the training years 2000-2004 of the shipped Held-Suarez data and a trained day prior (``--prior``), with the
prior's own block split (``latentda.prior.train.split_blocks``: the validation blocks are never fitted):

* **One-day latent R²** ``1 − Σ‖u_{t+1} − f(u_t)‖² / Σ‖u_{t+1}‖²`` of whitened posterior samples u (as
  ``latentda.prior.transition.fit_transition`` draws them: ``--samples`` per day, ``--rotations`` zonal rotations)
  for the linear transition f(u) = A u (least squares, what the window prior uses) and for
  f(u) = A u + MLP(u) (one hidden layer of ``--hidden`` tanh units, Adam, weight decay; the epoch is chosen on the
  even validation blocks, R² reported on the odd ones, so nothing reported was tuned on). Two-day R² of A² as well.
* **Persistence of the representation error** r_t = x_t − g(μ(x_t)) (what the decoder of the encoded mean misses,
  standardised units): the area-weighted mean over grid points of the lag-1 correlation of r per variable, beside
  that of the anomalies x. The window analysis takes r independent from day to day.

    PYTHONPATH=$PWD .venv/bin/python bench/latent_transition.py --prior out/prior_hs128.pt --threads 1 \\
        --out out/latent_transition.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

DATA = ROOT / "latentda" / "data" / "heldsuarez_t31_daily.nc"
TRAIN = ("2000-01-01", "2004-12-31")


def encode_all(prior, X, batch: int = 64):
    """(mu, sd, residual) of every day: posterior mean and std (T, d), and x − g(mu) (T, C, nlat, nlon)."""
    import torch

    mus, sds, res = [], [], []
    with torch.no_grad():
        for k in range(0, X.shape[0], batch):
            x = X[k:k + batch]
            mu, logvar = prior.encode(x)
            mus.append(mu.double().numpy())
            sds.append(torch.exp(0.5 * logvar).double().numpy())
            res.append((x - prior.decode(mu)).numpy())
    return np.concatenate(mus), np.concatenate(sds), np.concatenate(res)


def r2(u1: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - ((u1 - pred) ** 2).sum() / (u1 ** 2).sum())


def fit_mlp(A, u0, u1, v0, v1, hidden: int, epochs: int, seed: int):
    """u1 ≈ A u0 + MLP(u0) (A fixed), trained on (u0, u1); returns (per-epoch R² on (v0, v1), predict function)."""
    import torch

    torch.manual_seed(seed)
    d = u0.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, d))
    torch.nn.init.zeros_(net[2].weight)
    torch.nn.init.zeros_(net[2].bias)
    At = torch.tensor(A, dtype=torch.float32)
    U0, U1 = torch.tensor(u0, dtype=torch.float32), torch.tensor(u1, dtype=torch.float32)
    V0 = torch.tensor(v0, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    curve, states = [], []
    for _ in range(epochs):
        perm = torch.randperm(U0.shape[0], generator=g)
        for k in range(0, perm.numel(), 512):
            i = perm[k:k + 512]
            loss = ((U1[i] - U0[i] @ At.T - net(U0[i])) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            curve.append(r2(v1, (V0 @ At.T + net(V0)).double().numpy()))
        states.append({k: v.clone() for k, v in net.state_dict().items()})

    def predict(w0, epoch):
        net.load_state_dict(states[epoch])
        with torch.no_grad():
            x = torch.tensor(w0, dtype=torch.float32)
            return (x @ At.T + net(x)).double().numpy()
    return curve, predict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", required=True)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--rotations", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import torch

    import latentda
    from latentda.grid import normalize_grid
    from latentda.prior.train import split_blocks
    from latentda.prior.repr_time import lag_correlation
    from latentda.prior.transition import lag_pairs

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    prior = latentda.load_prior(a.prior, device="cpu")
    fields = normalize_grid(xr.open_dataset(DATA)).sortby("time")[prior.variables].sel(time=slice(*TRAIN)).load()
    times = fields["time"].values
    cfg = prior.config
    train_idx, val_idx = split_blocks(times.size, cfg.val_fraction, cfg.val_block_days, cfg.seed)
    X = torch.as_tensor(prior.anomalies(fields))
    nlon = X.shape[-1]
    rng = np.random.default_rng(np.random.SeedSequence([a.seed, 11]))
    tr, va = lag_pairs(times, train_idx, 1), lag_pairs(times, val_idx, 1)
    # validation blocks alternate: even blocks choose the epoch, odd blocks report
    block = np.cumsum(np.r_[0, np.diff(va) > 1])
    va_sel, va_rep = va[block % 2 == 0], va[block % 2 == 1]
    u = {"tr": ([], []), "sel": ([], []), "rep": ([], [])}
    residual = mu0 = None
    for k in range(a.rotations):
        shift = int(round(k * nlon / a.rotations))
        mu, sd, res = encode_all(prior, X.roll(shift, dims=-1))
        if k == 0:
            residual, mu0 = res, mu
        for name, first in (("tr", tr), ("sel", va_sel), ("rep", va_rep)):
            for _ in range(a.samples):
                z0 = mu[first] + sd[first] * rng.standard_normal(mu[first].shape)
                z1 = mu[first + 1] + sd[first + 1] * rng.standard_normal(mu[first].shape)
                u[name][0].append(z0)
                u[name][1].append(z1)
    z = {n: (np.concatenate(p0), np.concatenate(p1)) for n, (p0, p1) in u.items()}
    C0 = np.cov(np.concatenate(z["tr"]), rowvar=False)
    lam, V = np.linalg.eigh(0.5 * (C0 + C0.T))
    W = (V / np.sqrt(np.maximum(lam, 1e-8))) @ V.T
    w = {n: (p0 @ W, p1 @ W) for n, (p0, p1) in z.items()}
    u0, u1 = w["tr"]
    A = np.linalg.solve(u0.T @ u0, u0.T @ u1).T
    linear = {n: r2(w[n][1], w[n][0] @ A.T) for n in w}
    t0 = time.perf_counter()
    curve, predict = fit_mlp(A, u0, u1, *w["sel"], a.hidden, a.epochs, a.seed)
    best = int(np.argmax(curve))
    mlp = {"train": r2(u1, predict(u0, best)), "val_select": curve[best], "val_report": r2(w["rep"][1],
                                                                                            predict(w["rep"][0], best))}
    # two-day skill of the linear chain on the report blocks (pairs t, t + 2 inside them)
    two = np.intersect1d(va_rep, va_rep - 1)
    two_day = r2((mu0[two + 2] @ W), (mu0[two] @ W) @ (A @ A).T) if two.size else float("nan")
    result = {
        "prior": a.prior, "latent_dim": int(prior.latent_dim), "pairs": {"train": int(tr.size),
                                                                          "val_select": int(va_sel.size),
                                                                          "val_report": int(va_rep.size)},
        "samples": a.samples, "rotations": a.rotations,
        "one_day_r2_linear": {"train": linear["tr"], "val_select": linear["sel"], "val_report": linear["rep"]},
        "one_day_r2_mlp": mlp, "mlp": {"hidden": a.hidden, "epochs": a.epochs, "best_epoch": best + 1,
                                       "curve_val_select": [round(c, 4) for c in curve],
                                       "fit_seconds": round(time.perf_counter() - t0, 1)},
        "two_day_r2_linear_of_means": two_day,
        "lag1_correlation": {"variables": list(prior.variables),
                             "anomaly": lag_correlation(X.numpy(), tr, 1, fields["lat"].values),
                             "representation_error": lag_correlation(residual, tr, 1, fields["lat"].values)},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
