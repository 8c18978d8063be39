"""Window prior and windowed latent assimilation (issue 9): the window operator, k = 0 bit-identity with the per-day
analysis, the linear-Gaussian AR(1) toy against the Kalman smoother, bad input, checkpoints, the linear smoother."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

import latentda
from latentda.baselines.smoother import SmootherModel, fit_smoother, linear_smoother
from latentda.da import rto, rto_steps
from latentda.da.window import assimilate_window, window_operator
from latentda.grid import Grid
from latentda.normalization import fit_climatology
from latentda.obs.window import window_coverage, window_days, window_observation_hash, window_table
from latentda.prior import add_window, load_prior
from latentda.testing import TINY_PRIOR_CONFIG, linear_ar1_prior, synthetic_observations, tiny_prior


def _digest(ds) -> str:
    h = hashlib.sha256()
    for v in sorted(ds.data_vars):
        if v not in ("window_days_observed", "obs_outside_window"):
            h.update(v.encode())
            h.update(np.ascontiguousarray(ds[v].values).tobytes())
    return h.hexdigest()


def test_window_operator_reads_each_rows_own_day():
    grid = Grid.regular(8, 16)
    T, C = 3, 2
    x = np.zeros((T * C, 8, 16))
    for t in range(T):
        for c in range(C):
            x[t * C + c] = 100 * t + c  # constant field identifying (day, variable)
    day_index = np.array([2, 0, 1, 2, 0])
    channel = np.array([0, 1, 1, 1, 0])
    op = window_operator(grid, np.linspace(-50, 50, 5), np.linspace(0, 300, 5), channel, day_index, C, T)
    np.testing.assert_allclose(op.apply_np(x), 100 * day_index + channel)
    with pytest.raises(ValueError, match="day_index"):
        window_operator(grid, [0.0], [0.0], [0], [3], C, T)


@pytest.mark.parametrize("options", [{}, {"representation_error": "none"},
                                     {"representation_error": "likelihood", "precondition": False},
                                     {"covariance_form": "grid"}])
def test_window_zero_is_bit_identical_to_the_per_day_analysis(fields, options):
    prior = tiny_prior(0)
    day = fields.time.values[101]
    obs = synthetic_observations(fields, n=30, seed=1, time=fields.time.values[100:103])
    per_day = rto.assimilate(prior, obs, day, members=6, seed=3, keep_members=True, **options)
    windowed = assimilate_window(prior, obs, day, members=6, seed=3, keep_members=True, window=0, **options)
    assert _digest(windowed) == _digest(per_day)
    assert int(windowed["obs_outside_window"][0]) == 120 and int(windowed["window_days_observed"][0]) == 1


@pytest.mark.parametrize("neighbours,tolerance", [("nonlinear", 2e-3), ("linearised", 5e-3)])
def test_window_covariance_forms_agree(fields, window_prior, neighbours, tolerance):
    """Each day's R_t of the block-diagonal window R (representation error independent between days) in the dense
    ("obs") or grid-space Woodbury ("grid") form: the same analysis to round-off (the signed whitening of the grid
    blocks concatenates across days); with the neighbouring days linearised at the posterior mode, to the mode
    solve's tolerance (the two forms' modes differ by their round-off, and the members' model is linearised there)."""
    day = fields.time.values[120]
    obs = synthetic_observations(fields, n=15, seed=4, time=fields.time.values[[119, 121]])  # none on day d
    runs = {form: latentda.assimilate(window_prior, obs, day, members=4, seed=2, keep_members=True,
                                      covariance_form=form, tol=1e-3, repr_time_correlation="none",
                                      window_neighbours=neighbours)
            for form in ("obs", "grid")}
    assert int(runs["grid"]["window_days_observed"][0]) == 2
    assert runs["grid"].attrs["latentda:window_neighbours"] == neighbours
    for v in ("air_temperature", "eastward_wind"):
        np.testing.assert_allclose(runs["grid"][f"{v}_members"].values, runs["obs"][f"{v}_members"].values,
                                   rtol=0, atol=tolerance * float(runs["obs"][f"{v}_spread"].mean()))
    prior_only = latentda.assimilate(window_prior, obs.iloc[:0], day, members=4, seed=2)
    assert float(runs["grid"]["air_temperature_spread"].mean()) < float(prior_only["air_temperature_spread"].mean())


def test_window_option_is_validated_by_the_options_model(fields, window_prior):
    from latentda.da.options import AssimilationOptions

    day, obs = fields.time.values[50], synthetic_observations(fields, n=5, seed=0, time=fields.time.values[50])
    with pytest.raises(ValueError, match="per-day analysis; use latentda.assimilate"):
        rto.assimilate(tiny_prior(0), obs, day, members=2, window=1)
    with pytest.raises(ValueError, match="window=True"):
        assimilate_window(window_prior, obs, day, members=2, window=True)
    a = latentda.assimilate(window_prior, obs, day, members=2, max_iter=3, options=AssimilationOptions(window=0))
    assert a.attrs["latentda:method"] == "latent_rto" and a.attrs["latentda:window"] == 0


def test_ar1_toy_window_prior_gives_the_kalman_smoother():
    prior, _ = linear_ar1_prior(rho=0.8, window=1, seed=0)
    A = prior.transition.A
    assert np.allclose(np.diag(A), 0.8, atol=0.05) and np.abs(A - np.diag(np.diag(A))).max() < 0.05
    rng = np.random.default_rng(5)
    day, T, n, sig, M = pd.Timestamp("2001-06-01"), 3, 3, 1.0, 400
    rows = [dict(time=t, lat=rng.uniform(-60, 60), lon=rng.uniform(0, 360), value=rng.normal(0, 1.5), error=sig,
                 station_id=f"s{i}", variable="air_temperature")
            for t in window_days(day, 1) for i in range(n)]
    obs = pd.DataFrame(rows)
    out = assimilate_window(prior, obs, day, members=M, seed=1, representation_error="none", tol=1e-4,
                            keep_members=True)
    # the Kalman smoother (BLUE over the stacked latents) of the same chain, mapped to the centre day's field
    d = prior.latent_dim
    Cm = prior.transition.chain_matrix(T)
    Pz = Cm @ Cm.T
    P = prior.patterns.double().numpy()
    op = window_operator(prior.grid, obs.lat.values, obs.lon.values, np.zeros(len(obs), int),
                         np.repeat(np.arange(T), n), 1, T)
    Hs, npix = op.to_sparse().toarray(), P.shape[1]
    G = np.hstack([Hs[:, t * npix:(t + 1) * npix] @ P.T for t in range(T)])
    K = Pz @ G.T @ np.linalg.inv(G @ Pz @ G.T + sig ** 2 * np.eye(len(obs)))
    m, S = K @ obs.value.values, Pz - K @ G @ Pz
    mean_f = m[d:2 * d] @ P
    var_f = np.einsum("in,ij,jn->n", P, S[d:2 * d, d:2 * d], P)
    ens = out["air_temperature_members"].values[0].reshape(M, -1).astype(np.float64)
    z = (ens.mean(0) - mean_f) / np.sqrt(var_f / M)
    assert np.abs(z).max() < 4.0
    ratio = ens.var(0, ddof=1) / var_f
    assert np.abs(ratio - 1).max() < 4 * np.sqrt(2 / (M - 1))
    # and the smoother is not the filter: the neighbours' observations moved the centre day
    alone = assimilate_window(prior, obs[obs.time == day], day, members=M, seed=1, representation_error="none",
                              tol=1e-4)
    assert float(alone["air_temperature_spread"].mean()) > float(out["air_temperature_spread"].mean()) * 1.02


def test_linearised_neighbours_are_exact_for_a_linear_decoder():
    """The members' solve with the neighbouring days linearised at the mode (the default) is the full window RTO
    when the decoder is linear (the AR(1) toy): the same members to the solver's tolerance."""
    prior, _ = linear_ar1_prior(rho=0.8, window=1, seed=0)
    rng = np.random.default_rng(3)
    day = pd.Timestamp("2001-06-01")
    obs = pd.DataFrame([dict(time=t, lat=rng.uniform(-60, 60), lon=rng.uniform(0, 360), value=rng.normal(0, 1.5),
                             error=0.5, station_id=f"s{i}", variable="air_temperature")
                        for t in window_days(day, 1) for i in range(4)])
    runs = {nb: assimilate_window(prior, obs, day, members=8, seed=1, representation_error="none", tol=1e-5,
                                  keep_members=True, window_neighbours=nb) for nb in ("linearised", "nonlinear")}
    assert runs["linearised"].attrs["latentda:window_neighbours"] == "linearised"
    assert runs["nonlinear"].attrs["latentda:window_neighbours"] == "nonlinear"
    lin, full = (runs[nb]["air_temperature_members"].values for nb in ("linearised", "nonlinear"))
    spread = float(runs["nonlinear"]["air_temperature_spread"].mean())
    np.testing.assert_allclose(lin, full, rtol=0, atol=1e-3 * spread)


def test_linearised_neighbours_decode_the_centre_day_only(fields, window_prior, monkeypatch):
    """With a nonlinear decoder the linearised members' solve decodes far fewer latents (the centre day's, not the
    window's three days') and gives nearly the same analysis; without the preconditioner (no mode to linearise at)
    the window is solved in full and the attribute says so."""
    day = fields.time.values[150]
    obs = synthetic_observations(fields, n=20, seed=2, time=fields.time.values[149:152])
    decoded, in_members_solve = [], []
    original, minimize = type(window_prior).decode, rto_steps.minimize_batched

    def counting(self, z):
        if any(in_members_solve):
            decoded.append(int(z.shape[0]) if z.ndim == 2 else 1)
        return original(self, z)

    def members_solve(fun_grad, z0, **kwargs):  # the members' solve (the mode solve has one member)
        in_members_solve.append(z0.shape[0] > 1)
        try:
            return minimize(fun_grad, z0, **kwargs)
        finally:
            in_members_solve.clear()

    monkeypatch.setattr(type(window_prior), "decode", counting)
    monkeypatch.setattr(rto_steps, "minimize_batched", members_solve)
    runs, counts = {}, {}
    for nb in ("linearised", "nonlinear"):
        decoded.clear()
        runs[nb] = latentda.assimilate(window_prior, obs, day, members=8, seed=2, keep_members=True,
                                       window_neighbours=nb)
        counts[nb] = sum(decoded)
    assert 0 < counts["linearised"] < 0.5 * counts["nonlinear"], counts
    for v in ("air_temperature", "eastward_wind"):
        diff = np.abs(runs["linearised"][v].values - runs["nonlinear"][v].values).mean()
        assert diff < 0.05 * float(runs["nonlinear"][f"{v}_spread"].mean()), (v, diff)
    plain = latentda.assimilate(window_prior, obs, day, members=4, seed=2, precondition=False)
    assert plain.attrs["latentda:window_neighbours"] == "nonlinear"


def test_observations_outside_the_window_are_ignored_and_counted(fields, window_prior):
    day = pd.Timestamp(fields.time.values[120])
    inside = synthetic_observations(fields, n=20, seed=2, time=fields.time.values[119:122])
    outside = synthetic_observations(fields, n=20, seed=3, time=fields.time.values[[110, 125]])
    a = latentda.assimilate(window_prior, inside, day, members=4, seed=0)
    b = latentda.assimilate(window_prior, pd.concat([outside, inside], ignore_index=True), day, members=4, seed=0)
    assert _digest(a) == _digest(b)
    assert int(b["obs_outside_window"][0]) == len(outside) and int(a["obs_outside_window"][0]) == 0
    assert int(b["window_days_observed"][0]) == 3
    assert b.attrs["latentda:method"] == "latent_rto_window" and b.attrs["latentda:window"] == 1
    # near the end of the record: only d − 1 and d observed
    end = latentda.assimilate(window_prior, inside[inside.time <= day], day, members=4, seed=0)
    assert int(end["window_days_observed"][0]) == 2 and int(end["no_obs"][0]) == 0


def test_window_and_day_priors_are_refused_by_the_other_caller(fields, window_prior):
    day, obs = fields.time.values[50], synthetic_observations(fields, n=5, seed=0, time=fields.time.values[50])
    with pytest.raises(ValueError, match=r"per-day analysis\) needs a day prior.*is a window prior \(window=1"):
        rto.assimilate(window_prior, obs, day)
    with pytest.raises(ValueError, match=r"needs a window prior.*is a day prior \(window=0\)"):
        assimilate_window(tiny_prior(0), obs, day, window=2)
    with pytest.raises(ValueError, match=r"needs a window prior.*is a day prior \(window=0\)"):
        latentda.assimilate(tiny_prior(0), obs, day, window=1)
    with pytest.raises(ValueError, match="already is a window prior"):
        add_window(window_prior, fields, 2)
    with pytest.raises(ValueError, match="window=-1"):
        assimilate_window(window_prior, obs, day, window=-1)


def test_window_prior_checkpoint_round_trip_and_old_checkpoints(tmp_path, fields, window_prior):
    path = tmp_path / "w.pt"
    sha = window_prior.save(str(path))
    back = load_prior(str(path), device="cpu")
    assert back.window == 1 and back.checksum() == sha
    np.testing.assert_array_equal(back.transition.A, window_prior.transition.A)
    assert 0 < back.transition.info["one_day_r2"] < 1
    day_path = tmp_path / "d.pt"
    tiny_prior(0).save(str(day_path))
    old = torch.load(str(day_path), weights_only=True)
    assert "transition" not in old and '"window"' in old["meta_json"]
    old["meta_json"] = old["meta_json"].replace('"window": 0, ', "")  # a checkpoint from before windows
    assert '"window"' not in old["meta_json"]
    torch.save(old, str(day_path))
    assert load_prior(str(day_path), device="cpu").window == 0
    with pytest.raises(ValueError, match="window"):
        latentda.PriorConfig(window=-1)


def test_train_prior_with_window_fits_a_transition(fields):
    prior = latentda.train_prior(fields, dict(TINY_PRIOR_CONFIG, seed=0, window=1, epochs=2), progress=False)
    assert prior.window == 1 and prior.transition.latent_dim == prior.latent_dim
    info = prior.transition.info
    assert info["pairs_train"] > 300 and np.isfinite(info["one_day_r2"])
    # and the representation error's correlation in time, per variable, from the same training pairs
    assert prior.transition.repr_rho.shape == (2,) and info["repr_time"]["pairs_lag1"] == info["pairs_train"]


def test_window_helpers(fields):
    obs = synthetic_observations(fields, n=3, seed=0, time=fields.time.values[10:16])
    d = fields.time.values[12]
    assert list(window_days(d, 1).strftime("%d")) == ["12", "13", "14"]
    assert window_coverage(obs, window_days(d, 1)) == {"window_days_observed": 3,
                                                       "obs_outside_window": len(obs) - len(window_table(obs, d, 1))}
    h = window_observation_hash(obs, d, 1)
    assert h == window_observation_hash(obs.sample(frac=1.0, random_state=0).sort_index(), d, 1)
    changed = obs.copy()
    changed.loc[changed.time == pd.Timestamp(fields.time.values[13]), "value"] += 1.0
    assert window_observation_hash(changed, d, 1) != h
    assert window_observation_hash(changed, d, 0) == window_observation_hash(obs, d, 0)
    with pytest.raises(ValueError, match="window"):
        window_days(d, 1.5)


def test_linear_smoother_uses_the_neighbouring_days(fields, tmp_path):
    train, test = fields.isel(time=slice(0, 330)), fields.isel(time=slice(330, 400))
    clim = fit_climatology(train, list(fields.data_vars), 2)
    model = fit_smoother(train, clim, list(fields.data_vars), rank=12)
    assert 0.3 < model.one_day_r2 < 0.9  # the synthetic modes are AR(1) with lag-1 correlation 0.8
    assert SmootherModel.load(model.save(tmp_path / "s.npz")).phi.shape == (12, 12)
    errs = {0: [], 1: []}
    for i in range(5, 60, 6):
        day = test.time.values[i]
        obs = synthetic_observations(test, n=40, seed=i, time=test.time.values[[i - 1, i + 1]])  # none on day
        truth = test["air_temperature"].sel(time=day).values
        for k in errs:
            out = linear_smoother(model, obs, day, members=3, seed=0, window=k)
            errs[k].append(np.sqrt(np.mean((out["air_temperature"].values[0] - truth) ** 2)))
        assert int(out["window_days_observed"][0]) == 2
    assert np.mean(errs[1]) < 0.8 * np.mean(errs[0])


def test_day_loop_with_a_window_prior_writes_preliminary_then_final(fields, window_prior, tmp_path):
    """Issue 9 item 4 with a window prior (k = 1): the day whose d + 1 is not observed yet is written preliminary,
    the run after d + 1's observations arrive rewrites it as final, a further run changes nothing."""
    from latentda import archive
    from latentda.backfill import DaySettings, assimilate_days, observations_for_day
    from latentda.obs.window import window_observation_hash

    days = fields.time.values[120:123]
    obs = synthetic_observations(fields, n=20, seed=2, time=fields.time.values[119:123])
    url = str(tmp_path / "w.zarr")
    archive.create_archive(url, archive.archive_spec(window_prior, str(days[0])[:10], str(days[-1])[:10], 4))
    settings = DaySettings(url=url, members=4, seed=0, options={"max_iter": 10})
    t = pd.to_datetime(obs["time"]).dt.normalize()
    d1 = pd.Timestamp(days[1])
    early = obs[(t <= d1).values]                    # the record ends on day 1: day 1's window (d1 + 1) is open
    assert assimilate_days(window_prior, early, days[:2], settings, skip_done=True) == \
        [str(pd.Timestamp(d).date()) for d in days[:2]]
    st = archive.day_states(url, None, days[0], days[1])
    assert list(st["status"]) == [archive.FINAL, archive.PRELIMINARY]
    ds = archive.open_archive(url)
    assert int(ds[archive.WINDOW_OBSERVED].sel(time=d1)) == 2  # d1 - 1 and d1
    assert assimilate_days(window_prior, early, days[:2], settings, skip_done=True) == []  # window still open
    assert assimilate_days(window_prior, obs, days[:2], settings, skip_done=True) == [str(d1.date())]
    st = archive.day_states(url, None, days[0], days[1])
    assert list(st["status"]) == [archive.FINAL, archive.FINAL]
    ds = archive.open_archive(url)
    assert int(ds[archive.WINDOW_OBSERVED].sel(time=d1)) == 3
    assert archive.hexdigest(ds.obs_sha256.sel(time=d1).values) == window_observation_hash(obs, d1, 1)
    assert len(observations_for_day(obs, d1, window=1)) == int((t.between(d1 - pd.Timedelta(days=1),
                                                                          d1 + pd.Timedelta(days=1))).sum())
    assert assimilate_days(window_prior, obs, days[:2], settings, skip_done=True) == []
