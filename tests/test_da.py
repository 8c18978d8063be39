"""Tests of latent data assimilation (latentda.da) and observation QC (latentda.obs.qc)."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from latentda.analysis import DIAGNOSTICS
from latentda.da import assimilate
from latentda.da.cost import LatentCost
from latentda.da.ensemble import GaussianSmoother, RepresentationError
from latentda.da.solver import minimize_batched
from latentda.grid import Grid
from latentda.obs.operator import PointOperator
from latentda.obs.qc import AllObservationsRejected
from latentda.prior import residual_modes
from latentda.testing import synthetic_fields, synthetic_observations, tiny_prior

#: Held-out truth: days 400.. of the synthetic series whose first 400 days trained ``tiny_prior``.
HELD_OUT = 400


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These tests are many tiny decoder calls: on a shared 2-core machine one thread is several times faster than
    two fighting threads. Restored afterwards, so other test modules keep their setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prior():
    return tiny_prior(0)


@pytest.fixture(scope="module")
def fields():
    return synthetic_fields(ntime=HELD_OUT + 20, seed=0)


def _day(fields, k: int) -> pd.Timestamp:
    return pd.Timestamp(fields["time"].values[HELD_OUT + k])


def _truth(prior, fields, k: int) -> np.ndarray:
    """Held-out truth (C, nlat, nlon), physical units, on day HELD_OUT + k."""
    return np.stack([fields[v].isel(time=HELD_OUT + k).values for v in prior.variables])


def _obs(fields, k: int, n: int, seed: int, variables=None) -> pd.DataFrame:
    return synthetic_observations(fields, n=n, seed=seed, time=_day(fields, k), variables=variables)


def _obs_from(prior, field: np.ndarray, n: int, seed: int, day: pd.Timestamp, error: float = 1.0) -> pd.DataFrame:
    """Noise-free observations of ``field`` (C, nlat, nlon) at ``n`` random points for every variable."""
    rng = np.random.default_rng(seed)
    lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(0, 360, n)
    frames = []
    for c, v in enumerate(prior.variables):
        op = PointOperator(prior.grid, lat, lon, np.full(n, c), nchannels=len(prior.variables))
        frames.append(pd.DataFrame({"time": day, "lat": lat, "lon": lon, "value": op.apply_np(field[None])[0],
                                    "error": error, "station_id": [f"S{k}" for k in range(n)], "variable": v}))
    return pd.concat(frames, ignore_index=True)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("time", "lat", "lon", "value", "error", "variable")})


def _rmse(ds, prior, truth: np.ndarray, day, variables=None) -> float:
    """Area-weighted RMSE of the analysis mean in climatological standard deviations."""
    std = prior.climatology_tensors(day)[1].cpu().numpy()
    w = prior.grid.weights()[:, None]
    err = [((ds[v].values[0] - truth[c]) / std[c]) ** 2 * w
           for c, v in enumerate(prior.variables) if variables is None or v in variables]
    return float(np.sqrt(np.mean(err)))


# -- cost --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full_r", [False, True])
def test_cost_gradient_matches_central_differences(prior, fields, full_r):
    day = _day(fields, 0)
    obs = _obs(fields, 0, 15, 1)
    C = len(prior.variables)
    ch = np.array(obs["variable"].map({v: k for k, v in enumerate(prior.variables)}).to_numpy())
    op = PointOperator(prior.grid, obs["lat"], obs["lon"], ch, nchannels=C)
    mean, std = prior.climatology_tensors(day)
    g = torch.Generator().manual_seed(3)
    zp = torch.randn(3, prior.latent_dim, generator=g)
    target = torch.tensor(obs["value"].to_numpy(), dtype=torch.float32).expand(3, -1).contiguous()
    sig = torch.tensor(obs["error"].to_numpy(), dtype=torch.float32)
    if full_r:
        rep = RepresentationError(prior.grid, torch.as_tensor(prior.recon_std) * std, 2000.0)
        R = rep.at_observations(op).cov + torch.diag(sig.double() ** 2)
        assert not torch.allclose(R, torch.diag(torch.diag(R)))  # correlated representation error
        cost = LatentCost(prior, op, mean, std, zp, target, chol=torch.linalg.cholesky(R).float())
    else:
        cost = LatentCost(prior, op, mean, std, zp, target, sigma=sig)
    z = zp + 0.5 * torch.randn(3, prior.latent_dim, generator=g)
    f, grad = cost.value_and_grad(z)
    assert f.shape == (3,) and grad.shape == z.shape and torch.isfinite(grad).all()
    h = 1e-2
    for _ in range(4):
        v = torch.randn(3, prior.latent_dim, generator=g)
        v = v / v.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            fd = (cost(z + h * v) - cost(z - h * v)) / (2 * h)
        an = (grad * v).sum(-1)
        np.testing.assert_allclose(fd.numpy(), an.numpy(), rtol=2e-2, atol=1e-2 * float(grad.norm(dim=-1).max()))


def test_cost_value_is_the_documented_formula(prior, fields):
    day, obs = _day(fields, 0), _obs(fields, 0, 12, 2)
    ch = np.array(obs["variable"].map({v: k for k, v in enumerate(prior.variables)}).to_numpy())
    op = PointOperator(prior.grid, obs["lat"], obs["lon"], ch, nchannels=len(prior.variables))
    mean, std = prior.climatology_tensors(day)
    g = torch.Generator().manual_seed(5)
    zp, z = torch.randn(2, prior.latent_dim, generator=g), torch.randn(2, prior.latent_dim, generator=g)
    y = np.array(obs["value"].to_numpy(), dtype=np.float64)
    sig = np.array(obs["error"].to_numpy(), dtype=np.float64)
    target = torch.tensor(np.stack([y, y + sig]))
    with torch.no_grad():
        hx = op.apply_np(prior.to_physical(prior.decode(z), day).numpy().astype(np.float64))  # (2, n)
    prior_term = 0.5 * ((z - zp).double() ** 2).sum(-1).numpy()
    expected = prior_term + 0.5 * (((target.numpy() - hx) / sig) ** 2).sum(-1)
    cost = LatentCost(prior, op, mean, std, zp, target, sigma=torch.tensor(sig))
    with torch.no_grad():
        np.testing.assert_allclose(cost(z).numpy(), expected, rtol=1e-5)
    R = np.diag(sig ** 2) + 0.3 * np.exp(-np.subtract.outer(y, y) ** 2)  # any SPD matrix
    r = target.numpy() - hx
    expected = prior_term + 0.5 * np.einsum("bi,bi->b", r, np.linalg.solve(R, r.T).T)
    cost = LatentCost(prior, op, mean, std, zp, target, chol=torch.linalg.cholesky(torch.tensor(R)))
    with torch.no_grad():
        np.testing.assert_allclose(cost(z).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("n_modes", [0, 3])
def test_representation_increment_is_the_gaussian_conditional_mean(n_modes):
    """D S Gᵀ R⁻¹ r (+ M (H M)ᵀ R⁻¹ r with residual modes) equals B Hᵀ (H B Hᵀ + R_o)⁻¹ r with
    B = D S Sᵀ D + M Mᵀ built densely (and G Gᵀ = H B Hᵀ, diag = variance_at_observations)."""
    grid = Grid.regular(8, 16)
    g = torch.Generator().manual_seed(2)
    amp = 0.5 + torch.rand(2, 8, 16, generator=g)
    modes = torch.randn(n_modes, 2, 8, 16, generator=g) if n_modes else None
    rep = RepresentationError(grid, amp, 3000.0, modes=modes)
    assert rep.n_modes == n_modes
    rng = np.random.default_rng(0)
    n = 9
    op = PointOperator(grid, rng.uniform(-89, 89, n), rng.uniform(0, 360, n), rng.integers(0, 2, n), nchannels=2)
    npts = 2 * 8 * 16
    zero_m = torch.zeros(npts, n_modes) if n_modes else None
    Sd = rep.sample(torch.eye(npts).reshape(npts, 2, 8, 16), zero_m).reshape(npts, npts).double()  # rows: D S e_k
    B = Sd.T @ Sd  # Cov(eta) = (D S)(D S)ᵀ
    if n_modes:
        Md = modes.reshape(n_modes, npts).double()
        B = B + Md.T @ Md
        # the modes part of a sample is sum_k w_k M_k
        w = torch.randn(1, n_modes, generator=g)
        only_modes = rep.sample(torch.zeros(1, 2, 8, 16), w)
        torch.testing.assert_close(only_modes.reshape(1, npts), w @ modes.reshape(n_modes, npts))
        with pytest.raises(ValueError, match="white_modes"):
            rep.sample(torch.zeros(1, 2, 8, 16))
    Hm = torch.tensor(op.to_sparse().toarray())
    ob = rep.at_observations(op)
    torch.testing.assert_close(ob.cov, Hm @ B @ Hm.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rep.variance_at_observations(op), np.diag(ob.cov.numpy()), rtol=1e-5)
    R = ob.cov + torch.eye(n) * 0.3
    r = torch.tensor(rng.standard_normal((1, n)))
    expected = (B @ Hm.T @ torch.linalg.solve(R, r.T)).T.reshape(1, 2, 8, 16)
    got = rep.increment(ob, torch.linalg.solve(R, r.T).T.float())
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-4)


def test_gauss_newton_preconditioner_inverts_the_gauss_newton_hessian(prior, fields):
    day, obs = _day(fields, 0), _obs(fields, 0, 15, 1)
    ch = np.array(obs["variable"].map({v: k for k, v in enumerate(prior.variables)}).to_numpy())
    op = PointOperator(prior.grid, obs["lat"], obs["lon"], ch, nchannels=len(prior.variables))
    mean, std = prior.climatology_tensors(day)
    sig = torch.tensor(obs["error"].to_numpy(), dtype=torch.float32)
    d = prior.latent_dim
    cost = LatentCost(prior, op, mean, std, torch.zeros(2, d), torch.zeros(2, len(obs)), sigma=sig)
    P = cost.gauss_newton_preconditioner()
    J = torch.autograd.functional.jacobian(lambda z: cost.observe(z[None])[0], torch.zeros(d))  # (n, d)
    A = torch.eye(d) + (J / sig[:, None]).T @ (J / sig[:, None])
    torch.testing.assert_close(P @ A, torch.eye(d), rtol=0, atol=2e-2)
    assert float(torch.linalg.eigvalsh(P).min()) > 0


def test_solver_finds_quadratic_minimum_per_member():
    g = torch.Generator().manual_seed(0)
    M, d = 5, 6
    A = torch.randn(M, d, d, generator=g)
    Hs = torch.eye(d) + torch.einsum("mij,mkj->mik", A, A) * torch.linspace(0.1, 50, M)[:, None, None]
    b = torch.randn(M, d, generator=g)

    def fg(z, idx):
        Hz = torch.einsum("mij,mj->mi", Hs[idx], z)
        return 0.5 * (z * Hz).sum(-1) - (b[idx] * z).sum(-1), Hz - b[idx]

    res = minimize_batched(fg, torch.zeros(M, d), max_iter=200, tol=1e-4, ftol=0.0)
    exact = torch.linalg.solve(Hs, b)
    assert res.converged.all()
    torch.testing.assert_close(res.z, exact, rtol=1e-3, atol=1e-3)
    assert res.iterations.min() < res.iterations.max()  # members stop independently
    assert res.evaluations < 100  # a handful of batched evaluations, not thousands of Adam steps


def test_solver_with_exact_preconditioner_takes_one_newton_step():
    g = torch.Generator().manual_seed(1)
    M, d = 4, 7
    A = torch.randn(d, d, generator=g)
    Hs = torch.eye(d) + 10 * A @ A.T
    b = torch.randn(M, d, generator=g)

    def fg(z, idx):
        Hz = z @ Hs
        return 0.5 * (z * Hz).sum(-1) - (b[idx] * z).sum(-1), Hz - b[idx]

    res = minimize_batched(fg, torch.zeros(M, d), max_iter=50, tol=1e-4, ftol=0.0, h0=torch.linalg.inv(Hs))
    torch.testing.assert_close(res.z, torch.linalg.solve(Hs, b.T).T, rtol=1e-3, atol=1e-3)
    assert res.converged.all() and res.iterations.max() <= 2
    plain = minimize_batched(fg, torch.zeros(M, d), max_iter=50, tol=1e-4, ftol=0.0)
    assert plain.iterations.max() > res.iterations.max()


# -- smoother / representation error --------------------------------------------------------------------------
def test_smoother_is_unit_variance_and_transpose_is_adjoint():
    grid = Grid.regular(16, 32)
    S = GaussianSmoother(grid, 2000.0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4000, 16, 32, generator=g)
    x = S.apply(w)
    np.testing.assert_allclose(x.var(0).numpy(), 1.0, atol=0.08)
    # neighbours are correlated, far points are not
    c_near = float((x[:, 8, 0] * x[:, 8, 1]).mean())
    c_far = float((x[:, 8, 0] * x[:, 8, 16]).mean())
    assert c_near > 0.5 and abs(c_far) < 0.1
    u, v = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    torch.testing.assert_close((S.apply(u) * v).sum(), (u * S.apply_transpose(v)).sum(), rtol=1e-4, atol=1e-4)


# -- assimilate -------------------------------------------------------------------------------------------------
def test_zero_innovation_leaves_member_at_its_prior(prior, fields):
    day = _day(fields, 1)
    kw = dict(members=4, seed=7, keep_members=True, representation_error="none", perturb_obs=False)
    ds0 = assimilate(prior, _empty(), day, **kw)
    field0 = np.stack([ds0[f"{v}_members"].values[0, 0] for v in prior.variables]).astype(np.float64)
    obs = _obs_from(prior, field0, 40, 2, day)
    ds = assimilate(prior, obs, day, **kw)
    for v in prior.variables:
        a, b = ds[f"{v}_members"].values[0], ds0[f"{v}_members"].values[0]
        spread = float(np.abs(b[1:] - b[0]).max())
        np.testing.assert_allclose(a[0], b[0], atol=1e-3 * spread)  # member 0 saw its own field: unchanged
        assert np.abs(a[1:] - b[1:]).max() > 0.1 * spread  # the others moved towards it
    assert ds["fit_after"].item() < 0.5 * ds["fit_before"].item()


def test_more_observations_do_not_raise_analysis_error(prior, fields):
    err: dict[int, list[float]] = {0: [], 8: [], 60: []}
    for k in range(2):
        day, truth = _day(fields, k), _truth(prior, fields, k)
        obs = _obs(fields, k, 60, 10 + k)
        for n in err:  # nested networks: the first n stations of the same 60
            sub = obs[obs["station_id"].isin(obs["station_id"].unique()[:n])]
            ds = assimilate(prior, sub, day, members=6, seed=k)
            err[n].append(_rmse(ds, prior, truth, day))
    e = {n: float(np.mean(v)) for n, v in err.items()}
    assert e[60] < e[8] < e[0], e


def test_spread_matches_error_on_held_out_truth(prior, fields):
    """Spread/skill near 1 with the representation-error model; pure latent RTO is under-dispersive."""
    M = 16
    stats = {}
    for mode in ("augmented", "none"):
        mse, var = [], []
        for k in range(8):
            day, truth = _day(fields, k), _truth(prior, fields, k)
            ds = assimilate(prior, _obs(fields, k, 30, 100 + k), day, members=M, seed=k, representation_error=mode)
            std = prior.climatology_tensors(day)[1].cpu().numpy()
            w = prior.grid.weights()[:, None]
            for c, v in enumerate(prior.variables):
                mse.append(np.mean(((ds[v].values[0] - truth[c]) / std[c]) ** 2 * w))
                var.append(np.mean((ds[f"{v}_spread"].values[0] / std[c]) ** 2 * w))
        stats[mode] = np.sqrt(np.mean(var) * (M + 1) / M) / np.sqrt(np.mean(mse))
    assert 0.7 < stats["augmented"] < 1.3, stats
    assert stats["none"] < 0.75 * stats["augmented"], stats


def test_representation_error_is_conditioned_on_the_observations(prior, fields):
    """"augmented" = "likelihood" members (same z_m) plus eta_m; eta_m, updated by the residuals, improves the fit."""
    for k in range(2):
        day, obs = _day(fields, k), _obs(fields, k, 30, k)
        kw = dict(members=8, seed=k, keep_members=True)
        a = assimilate(prior, obs, day, **kw)
        b = assimilate(prior, obs, day, representation_error="likelihood", **kw)
        assert a["fit_after"].item() < 0.95 * b["fit_after"].item()
        v = prior.variables[0]
        eta = a[f"{v}_members"].values - b[f"{v}_members"].values
        assert np.abs(eta).max() > 0 and (eta.std(axis=1) > 0).all()


def test_deterministic_and_seed_dependent(prior, fields):
    day, obs = _day(fields, 2), _obs(fields, 2, 20, 3)
    a = assimilate(prior, obs, day, members=4, seed=1, keep_members=True)
    b = assimilate(prior, obs, day, members=4, seed=1, keep_members=True)
    c = assimilate(prior, obs, day, members=4, seed=2, keep_members=True)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    v = prior.variables[0]
    assert not np.array_equal(a[f"{v}_members"].values, c[f"{v}_members"].values)
    assert a.attrs == b.attrs and a.attrs["latentda:prior_checksum"] == prior.checksum()


def test_residual_modes_enter_the_analysis(prior, fields):
    """A prior with residual modes (fitted on its training days) gives a different, deterministic analysis whose
    attributes name the modes; residual_modes=False gives the isotropic model's analysis bit for bit."""
    modes, info = residual_modes(prior, prior.anomalies(fields.isel(time=slice(0, HELD_OUT))), 6)
    assert modes.shape == (6, *prior.shape) and 0 < info["explained_fraction"] < 1
    pm = copy.copy(prior)  # the cached tiny prior must not be modified
    pm.recon_modes = modes
    day, obs = _day(fields, 2), _obs(fields, 2, 20, 3)
    kw = dict(members=4, seed=1, keep_members=True)
    a = assimilate(pm, obs, day, **kw)
    b = assimilate(pm, obs, day, **kw)
    off = assimilate(pm, obs, day, residual_modes=False, **kw)
    iso = assimilate(prior, obs, day, **kw)
    v = prior.variables[0]
    for k in a.data_vars:
        np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)
        np.testing.assert_array_equal(off[k].values, iso[k].values, err_msg=k)
    assert not np.allclose(a[f"{v}_members"].values, iso[f"{v}_members"].values)
    assert a.attrs["latentda:residual_modes"] == 6 and iso.attrs["latentda:residual_modes"] == 0
    assert a["fit_after"].item() < a["fit_before"].item()


def test_no_usable_observation_returns_prior_and_flags_no_obs(prior, fields):
    day = _day(fields, 3)
    kw = dict(members=4, seed=3, keep_members=True)
    ds0 = assimilate(prior, _empty(), day, **kw)
    v0 = prior.variables[0]
    bad = pd.DataFrame({"time": [day, day - pd.Timedelta(days=1)], "lat": [10.0, 0.0], "lon": [0.0, 0.0],
                        "value": [np.nan, 280.0], "error": [1.0, 1.0], "variable": v0})
    with pytest.raises(AllObservationsRejected, match=r"all 1 observation\(s\) of .*nonfinite_value: 1"):
        assimilate(prior, bad, day, **kw)  # the default policy: a day with all rows rejected fails
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = assimilate(prior, bad, day, on_all_rejected="prior", **kw)
    assert int(ds["no_obs"].item()) == 1 and int(ds["obs_used"].item()) == 0
    assert int(ds["obs_rejected"].item()) == 1  # the other day's row is counted under wrong_time only
    assert json.loads(ds.attrs["latentda:qc"]) == {"nonfinite_value": 1, "used": 0, "wrong_time": 1}
    assert int(ds0["no_obs"].item()) == 1 and json.loads(ds0.attrs["latentda:qc"]) == {"used": 0}
    with torch.no_grad():  # the prior ensemble: decoded z_p plus representation noise, around the prior
        sample = prior.to_physical(prior.decode(torch.randn(256, prior.latent_dim,
                                                            generator=torch.Generator().manual_seed(0))), day)
    for c, v in enumerate(prior.variables):
        np.testing.assert_array_equal(ds[f"{v}_members"].values, ds0[f"{v}_members"].values)
        assert np.all(ds[f"{v}_spread"].values > 0)
        clim_sd = float(sample[:, c].std(0).mean())
        assert 0.3 * clim_sd < float(ds[f"{v}_spread"].mean()) < 3 * clim_sd


@pytest.mark.parametrize("case", ["error_nan", "lat_95", "value_units"])
def test_all_rejected_day_fails_by_default_with_reasons_counted(prior, fields, case):
    """The bad-observation files of issue 11: every row of the day rejected -> AllObservationsRejected naming the
    reason and its count (not a silent prior-only day); ``on_all_rejected="prior"`` writes the prior, no_obs=1."""
    day = _day(fields, 4)
    obs = _obs(fields, 4, 12, 4)
    bad, reason = {"error_nan": (obs.assign(error=np.nan), "bad_error"),
                   "lat_95": (obs.assign(lat=95.0), "lat_out_of_range"),
                   "value_units": (obs.assign(value=[f"{v:.2f} K" for v in obs["value"]]), "non_numeric")}[case]
    with pytest.raises(AllObservationsRejected) as info:
        assimilate(prior, bad, day, members=2, seed=0, max_iter=3)
    assert info.value.counts[reason] == len(obs) and f"{reason}: {len(obs)}" in str(info.value)
    assert "on_all_rejected: prior" in str(info.value)
    ds = assimilate(prior, bad, day, members=2, seed=0, max_iter=3, on_all_rejected="prior")
    assert int(ds["no_obs"].item()) == 1 and json.loads(ds.attrs["latentda:qc"])[reason] == len(obs)


def test_qc_reasons_counted_and_bad_rows_have_no_influence(prior, fields):
    day = _day(fields, 4)
    clean = _obs(fields, 4, 12, 4)
    v0 = prior.variables[0]
    row = clean[clean["variable"] == v0].iloc[0]

    def bad(**kw):
        r = row.copy()
        for k, val in kw.items():
            r[k] = val
        return r

    bad_rows = pd.DataFrame([bad(value=np.nan), bad(value=np.inf), bad(lat=95.0), row.copy(),
                             bad(variable="specific_humidity"), bad(time=day + pd.Timedelta(days=1)),
                             bad(value=row["value"] + 1000.0, lat=row["lat"] + 1.3)])
    dirty = pd.concat([clean.iloc[:7], bad_rows, clean.iloc[7:]], ignore_index=True)
    kw = dict(members=6, seed=5, keep_members=True)
    a = assimilate(prior, clean, day, **kw)
    b = assimilate(prior, dirty, day, **kw)
    counts = json.loads(b.attrs["latentda:qc"])
    assert counts == {"used": len(clean), "nonfinite_value": 2, "lat_out_of_range": 1, "duplicate": 1,
                      "unknown_variable": 1, "wrong_time": 1, "gross_departure": 1}
    assert int(b["obs_used"].item()) == len(clean) and int(b["obs_rejected"].item()) == 6
    for v in a.data_vars:
        if v != "obs_rejected":
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    # the gross-departure threshold is an option: with k = inf the +1000 K row is used (and hurts the fit)
    c = assimilate(prior, dirty, day, qc_threshold=np.inf, max_iter=3, **kw)
    assert "gross_departure" not in json.loads(c.attrs["latentda:qc"])
    assert int(c["obs_used"].item()) == len(clean) + 1


def test_wind_only_observations_change_temperature(prior, fields):
    wind = [v for v in prior.variables if "wind" in v]
    temp = [v for v in prior.variables if "temp" in v][0]
    before, after = [], []
    for k in range(2):
        day, truth = _day(fields, 5 + k), _truth(prior, fields, 5 + k)
        kw = dict(members=8, seed=4)
        ds0 = assimilate(prior, _empty(), day, **kw)
        ds = assimilate(prior, _obs(fields, 5 + k, 40, 6, variables=wind), day, **kw)
        assert set(prior.variables) <= set(ds.data_vars)
        assert json.loads(ds.attrs["latentda:qc"])["used"] == 40 * len(wind)
        change = np.abs(ds[temp].values - ds0[temp].values).mean()
        assert change > 0.1 * float(ds0[f"{temp}_spread"].mean())
        before.append(_rmse(ds0, prior, truth, day, [temp]))
        after.append(_rmse(ds, prior, truth, day, [temp]))
    assert np.mean(after) < np.mean(before), (before, after)


def test_output_layout_matches_analysis_dataset(prior, fields):
    day, obs = _day(fields, 7), _obs(fields, 7, 20, 7)
    ds = assimilate(prior, obs, day, members=5, seed=0, keep_members=True)
    nlat, nlon = prior.grid.shape
    for v in prior.variables:
        assert ds[v].dims == ("time", "lat", "lon") and ds[v].shape == (1, nlat, nlon)
        assert ds[f"{v}_spread"].dims == ("time", "lat", "lon")
        assert ds[f"{v}_members"].dims == ("time", "member", "lat", "lon")
        assert ds[f"{v}_members"].shape == (1, 5, nlat, nlon)
        assert ds[v].attrs["units"] == prior.var_attrs[v]["units"]
        assert ds[v].dtype == np.float32
        assert np.isfinite(ds[v].values).all() and (ds[f"{v}_spread"].values > 0).all()
    for name in DIAGNOSTICS:
        assert ds[name].dims == ("time",) and np.isfinite(ds[name].values).all(), name
    assert ds["no_obs"].item() == 0 and ds["obs_used"].item() == len(obs)
    assert 0 < ds["converged_fraction"].item() <= 1 and ds["iterations"].item() > 0
    assert ds["fit_after"].item() < ds["fit_before"].item()
    assert ds.attrs["latentda:method"] == "latent_rto"
    assert ds["time"].values[0] == np.datetime64(day, "ns")
    no_members = assimilate(prior, obs, day, members=5, seed=0)
    assert not any(k.endswith("_members") for k in no_members.data_vars)
    np.testing.assert_array_equal(no_members[prior.variables[0]].values, ds[prior.variables[0]].values)


def test_bad_arguments_raise_value_errors(prior, fields):
    day, obs = _day(fields, 0), _obs(fields, 0, 5, 0)
    with pytest.raises(ValueError, match="members"):
        assimilate(prior, obs, day, members=0)
    with pytest.raises(ValueError, match="qc_threshold"):
        assimilate(prior, obs, day, qc_threshold=-1)
    with pytest.raises(ValueError, match="unknown assimilate option"):
        assimilate(prior, obs, day, represntation_error="none")
    with pytest.raises(ValueError, match="representation_error"):
        assimilate(prior, obs, day, representation_error="maybe")
    with pytest.raises(ValueError, match="time"):
        assimilate(prior, obs, "not a date")
    with pytest.raises(ValueError, match="error"):
        assimilate(prior, obs.drop(columns="error"), day)


def test_options_model_and_dict_give_the_same_bytes(prior, fields):
    """assimilate takes AssimilationOptions, a dict or keywords: one model validates all three."""
    from latentda.da.options import AssimilationOptions

    obs, day = _obs(fields, 3, 40, seed=2), _day(fields, 3)
    a = assimilate(prior, obs, day, members=3, seed=1, options=AssimilationOptions(max_iter=5))
    b = assimilate(prior, obs, day, members=3, seed=1, options={"max_iter": 5})
    c = assimilate(prior, obs, day, members=3, seed=1, max_iter=5)
    for v in prior.variables:
        assert a[v].values.tobytes() == b[v].values.tobytes() == c[v].values.tobytes()
    with pytest.raises(ValueError, match="max_iters"):
        assimilate(prior, obs, day, members=3, options={"max_iters": 5})
