"""latentda.sequential: Lorenz-96 sanity, the analysis steps against their exact references (Kalman filter, BLUE,
ETKF), input errors, determinism, and the --quick benchmark against DAPPER's published EnKF figure."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from latentda.sequential import (Lorenz96, TwinConfig, blue, enkf_pertobs, etkf, gaspari_cohn, inflate, letkf,
                                 make_twin, mean_with_ci, periodic_distances, rotate, run_twin, var3d)
from latentda.sequential.l96 import energy, leading_lyapunov, tendency
from latentda.sequential.methods import LETKF, EnKFPertObs

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one torch thread is several times faster than two on the shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _rand_spd(n: int, g: torch.Generator) -> torch.Tensor:
    A = torch.randn(n, n, generator=g, dtype=F64)
    return A @ A.T / n + 0.5 * torch.eye(n, dtype=F64)


def _linear_problem(seed: int = 0, n: int = 6, p: int = 4):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(p, n, generator=g, dtype=F64)
    R = torch.diag(0.5 + torch.rand(p, generator=g, dtype=F64))
    return g, H, R


# -- Lorenz-96 -----------------------------------------------------------------------------------------------
def test_l96_advection_conserves_energy_and_forced_run_has_climatological_energy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 40, generator=g, dtype=F64) * 3
    advection = tendency(x, 0.0) + x  # the quadratic term alone conserves ½Σx²
    assert torch.allclose((x * advection).sum(-1), torch.zeros(5, dtype=F64), atol=1e-10)
    model = Lorenz96()
    xs = model.trajectory(model.on_attractor(seed=2), 4000)
    e = float(energy(xs).mean())  # ½ (mean² + variance) ≈ ½ (2.3² + 13) for F = 8
    assert 8.0 < e < 10.5, e
    assert 2.0 < float(xs.mean()) < 2.7


def test_l96_lyapunov_time():
    model = Lorenz96()
    lam = leading_lyapunov(model, model.on_attractor(seed=3), steps=3000)
    assert 1.4 < lam < 1.95, lam  # published ≈ 1.67 / MTU for n = 40, F = 8: Lyapunov time ≈ 0.6 MTU


def test_model_rejects_bad_state():
    with pytest.raises(ValueError, match="n=40"):
        Lorenz96().step(torch.zeros(10, dtype=F64))
    with pytest.raises(ValueError, match="n=2"):
        Lorenz96(n=2)


# -- analysis steps against exact references ---------------------------------------------------------------
def test_enkf_with_huge_ensemble_on_linear_gaussian_model_equals_kalman_filter():
    g, H, R = _linear_problem(seed=4, n=5, p=3)
    n, N, cycles = 5, 40_000, 4
    Mlin = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0] * 1.05  # mildly unstable rotation
    m, P = torch.zeros(n, dtype=F64), _rand_spd(n, g)
    E = m + torch.randn(N, n, generator=g, dtype=F64) @ torch.linalg.cholesky(P).T
    truth = torch.randn(n, generator=g, dtype=F64)
    gp = torch.Generator().manual_seed(5)
    for _ in range(cycles):
        truth = truth @ Mlin.T
        y = truth @ H.T + torch.randn(3, generator=g, dtype=F64) @ R.sqrt()
        m, P, E = m @ Mlin.T, Mlin @ P @ Mlin.T, E @ Mlin.T
        K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + R)                 # Kalman filter
        m, P = m + (y - m @ H.T) @ K.T, (torch.eye(n, dtype=F64) - K @ H) @ P
        E = enkf_pertobs(E, y, H, R, gp)
    assert torch.allclose(E.mean(0), m, atol=0.03), (E.mean(0), m)
    assert torch.allclose(torch.cov(E.T), P, atol=0.03 * float(P.diagonal().max())), (torch.cov(E.T), P)


def test_etkf_matches_kalman_update_of_ensemble_statistics_exactly():
    g, H, R = _linear_problem(seed=6)
    E = torch.randn(12, 6, generator=g, dtype=F64)
    y = torch.randn(4, generator=g, dtype=F64)
    Ea = etkf(E, y, H, R)
    P = torch.cov(E.T)
    K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + R)
    assert torch.allclose(Ea.mean(0), E.mean(0) + (y - E.mean(0) @ H.T) @ K.T, atol=1e-10)
    assert torch.allclose(torch.cov(Ea.T), (torch.eye(6, dtype=F64) - K @ H) @ P, atol=1e-10)


def test_letkf_with_infinite_radius_equals_etkf_and_is_batched():
    g, H, R = _linear_problem(seed=7)
    E = torch.randn(3, 9, 6, generator=g, dtype=F64)  # 3 independent experiments
    y = torch.randn(3, 4, generator=g, dtype=F64)
    dist = torch.rand(6, 4, generator=g, dtype=F64) * 10
    assert torch.allclose(letkf(E, y, H, R, dist, math.inf), etkf(E, y, H, R), atol=1e-11)
    assert torch.allclose(letkf(E, y, H, R, dist, 1e6), etkf(E, y, H, R), atol=1e-6)
    assert torch.allclose(etkf(E, y, H, R)[1], etkf(E[1], y[1], H, R), atol=1e-12)


def test_letkf_leaves_variables_beyond_the_taper_unchanged():
    H = torch.eye(40, dtype=F64)[:5]
    R = torch.eye(5, dtype=F64)
    pos = torch.arange(40, dtype=F64)
    dist = periodic_distances(pos, pos[:5], 40.0)
    E = torch.randn(7, 40, generator=torch.Generator().manual_seed(8), dtype=F64)
    Ea = letkf(E, torch.zeros(5, dtype=F64), H, R, dist, radius=2.0)  # support 2·2·sqrt(10/3) ≈ 7.3 points
    assert torch.allclose(Ea[:, 15:30], E[:, 15:30], rtol=0, atol=1e-12)
    assert not torch.allclose(Ea[:, :5], E[:, :5])


def test_3dvar_on_a_linear_model_equals_oi():
    g, H, R = _linear_problem(seed=9, n=8, p=5)
    B = _rand_spd(8, g)
    xb = torch.randn(4, 8, generator=g, dtype=F64)
    y = torch.randn(4, 5, generator=g, dtype=F64)
    assert torch.allclose(var3d(xb, y, H, B, R), blue(xb, y, H, B, R), atol=1e-8)


def test_gaspari_cohn_taper():
    d = torch.linspace(0, 20, 2001, dtype=F64)
    c = gaspari_cohn(d, 3.0)
    assert float(c[0]) == 1.0 and float(c.min()) >= 0 and bool((c[1:] <= c[:-1] + 1e-15).all())
    assert float(c[d > 2 * 3.0 * math.sqrt(10 / 3)].abs().max()) == 0.0
    assert abs(float(gaspari_cohn(torch.tensor([3.0], dtype=F64), 3.0)) - math.exp(-0.5)) < 0.04
    assert float((c[1:] - c[:-1]).abs().max()) < 1e-2  # continuous


def test_inflation_and_rotation_keep_the_mean_and_scale_or_keep_the_covariance():
    E = torch.randn(10, 6, generator=torch.Generator().manual_seed(10), dtype=F64)
    Er = rotate(E, torch.Generator().manual_seed(11))
    assert torch.allclose(Er.mean(0), E.mean(0), atol=1e-12)
    assert torch.allclose(torch.cov(Er.T), torch.cov(E.T), atol=1e-12)
    assert not torch.allclose(Er, E)
    Ei = inflate(E, 1.5)
    assert torch.allclose(Ei.mean(0), E.mean(0)) and torch.allclose(torch.cov(Ei.T), 2.25 * torch.cov(E.T))


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_input_errors_name_the_value():
    g, H, R = _linear_problem(seed=12)
    E1 = torch.randn(1, 6, generator=g, dtype=F64)
    y = torch.zeros(4, dtype=F64)
    dist = torch.ones(6, 4, dtype=F64)
    for f in (lambda: enkf_pertobs(E1, y, H, R, torch.Generator()), lambda: etkf(E1, y, H, R),
              lambda: letkf(E1, y, H, R, dist, 2.0)):
        with pytest.raises(ValueError, match="N=1"):
            f()
    with pytest.raises(ValueError, match="members=1"):
        EnKFPertObs(members=1)
    E = torch.randn(5, 6, generator=g, dtype=F64)
    for radius in (0.0, -3.0):
        with pytest.raises(ValueError, match=f"radius={radius}"):
            letkf(E, y, H, R, dist, radius)
        with pytest.raises(ValueError, match=f"radius={radius}"):
            gaspari_cohn(dist, radius)
    with pytest.raises(ValueError, match=r"H has shape \(4, 5\)"):
        etkf(E, y, H[:, :5], R)
    with pytest.raises(ValueError, match=r"H has shape \(6, 4\)"):
        enkf_pertobs(E, y, H.T, R, torch.Generator())
    with pytest.raises(ValueError, match="p=4"):
        var3d(E, torch.zeros(5, 3, dtype=F64), H, torch.eye(6, dtype=F64), R)
    with pytest.raises(ValueError, match="infl=0"):
        inflate(E, 0.0)


# -- twin experiments ----------------------------------------------------------------------------------------
def test_confidence_interval_widens_with_autocorrelation():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(20_000)
    ar = np.zeros_like(white)
    for k in range(1, len(ar)):
        ar[k] = 0.9 * ar[k - 1] + math.sqrt(1 - 0.81) * white[k]
    _, ci_w = mean_with_ci(white)
    _, ci_a = mean_with_ci(ar)
    assert ci_w == pytest.approx(1.96 / math.sqrt(20_000), rel=0.05)
    assert ci_a / ci_w == pytest.approx(math.sqrt(1.9 / 0.1), rel=0.15)


def test_twin_runs_are_deterministic_and_letkf_beats_observations():
    cfg = TwinConfig(cycles=150, spinup=50, seed=5)
    twin = make_twin(cfg)
    method = LETKF(members=8, infl=1.04, rot=True, radius=4.0)
    r1, r2 = run_twin(method, twin, seed=1), run_twin(method, twin, seed=1)
    assert r1.error.tobytes() == r2.error.tobytes() and r1.spread.tobytes() == r2.spread.tobytes()
    assert r1.rmse < 0.5 and not r1.diverged  # far below the observation error 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g, H, R = _linear_problem(seed=13)
    E, y = torch.randn(2, 9, 6, generator=g, dtype=F64), torch.randn(2, 4, generator=g, dtype=F64)
    dist = torch.rand(6, 4, generator=g, dtype=F64) * 5
    cpu = letkf(E, y, H, R, dist, 2.0)
    gpu = letkf(E.cuda(), y.cuda(), H.cuda(), R.cuda(), dist.cuda(), 2.0)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-10)
    assert torch.allclose(var3d(E[0].cuda(), y[0].expand(9, -1).cuda(), H.cuda(), torch.eye(6, dtype=F64).cuda(),
                                R.cuda()).cpu(), blue(E[0], y[0].expand(9, -1), H, torch.eye(6, dtype=F64), R),
                          atol=1e-8)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_l96", REPO / "bench" / "l96.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_quick_reproduces_dapper_enkf_pertobs(tmp_path):
    out = _bench().main(["--quick", "--methods", "enkf_pertobs", "--json", str(tmp_path / "q.json")])
    r = out["results"]["enkf_pertobs"]
    assert out["config"]["cycles"] == 2000
    assert abs(r["rmse_a"] - 0.22) <= 0.1 * 0.22, r
    assert set(r) >= {"rmse_a", "spread", "s_per_cycle"} and (tmp_path / "q.json").is_file()


def test_bench_json_is_strict_for_diverged_runs():
    clean = _bench()._finite_or_null({"a": float("inf"), "b": {"c": float("nan"), "d": 1.5, "e": None}})
    assert clean == {"a": None, "b": {"c": None, "d": 1.5, "e": None}}
