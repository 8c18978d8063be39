"""latentda.sequential.amortised: Finn's stochastic analysis network, trained for a few seconds on tiny data."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentda.sequential import TwinConfig, make_twin, run_twin
from latentda.sequential.amortised import (AmortisedConfig, AmortisedMethod, AnalysisNet, fair_crps, load_net,
                                           train_amortised)
from latentda.sequential.methods import LETKF

TINY = AmortisedConfig(members=6, hidden=16, window=5, data_cycles=120, rounds=2, steps=60, batch=4)
SETUP = TwinConfig(n=12, cycles=10, spinup=0, seed=11)


@pytest.fixture(scope="module")
def trained():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    teacher = LETKF(members=6, infl=1.05, radius=3.0)
    net, info = train_amortised(SETUP, TINY, teacher=teacher, log=lambda m: None)
    yield net, info, teacher
    torch.set_num_threads(old)


def test_fair_crps_of_a_point_ensemble_is_the_absolute_error_and_rewards_spread():
    t = torch.zeros(1, 3)
    point = torch.ones(1, 4, 3)
    assert float(fair_crps(point, t)) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    calibrated = torch.randn(2000, 8, 1, generator=g)
    truth = torch.randn(2000, 1, generator=g)
    assert float(fair_crps(calibrated, truth)) < float(fair_crps(0.2 * calibrated, truth))


def test_training_is_deterministic_and_members_differ(trained):
    net, info, teacher = trained
    assert info["steps"] == 2 * TINY.steps and not info["stopped_early"]
    net2, _ = train_amortised(SETUP, TINY, teacher=teacher, log=lambda m: None)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    twin = make_twin(SETUP)
    E = twin.truth[1] + torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Ea = AmortisedMethod(net).analyse(E, twin.obs[0], twin, torch.Generator().manual_seed(2))
    assert Ea.shape == E.shape and Ea.dtype == torch.float64
    assert float(Ea.std(0).mean()) > 0.05  # independent noise per member gives distinct members


def test_trained_network_analysis_beats_its_background(trained):
    net, _, _ = trained
    twin = make_twin(TwinConfig(n=12, cycles=60, spinup=20, seed=99))
    free = run_twin(_NoAnalysis(6), twin, seed=3)
    amort = run_twin(AmortisedMethod(net), twin, seed=3)
    assert amort.rmse < 0.7 * free.rmse, (amort.rmse, free.rmse)  # untrained (zero output layer) = free run


class _NoAnalysis:
    def __init__(self, members: int):
        self.members = members

    def analyse(self, E, y, twin, generator):
        return E

    def spread(self, E) -> float:
        return float(E.std(0).mean())


def test_save_load_round_trip(tmp_path, trained):
    net, _, _ = trained
    net.save(tmp_path / "net.pt")
    back = load_net(tmp_path / "net.pt")
    xb = torch.randn(1, 6, 12, dtype=torch.float64)
    y = torch.randn(1, 12, dtype=torch.float64)
    eps = net.noise(1, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert torch.equal(back(xb, y, eps), net(xb, y, eps))


def test_bad_config_names_the_value():
    with pytest.raises(ValueError, match="members=1"):
        AmortisedConfig(members=1)
    with pytest.raises(ValueError, match="window must be odd"):
        AmortisedConfig(window=4)
    with pytest.raises(ValueError, match="steps"):
        AmortisedConfig(steps=0)
    with pytest.raises(ValueError, match=r"obs_std has shape \(3,\)"):
        AnalysisNet(AmortisedConfig(), torch.eye(4), torch.ones(3))


def _random_net(n: int, window: int, stride: int, obs_std: float = 0.7, seed: int = 0) -> AnalysisNet:
    """An untrained net with all weights random (the output layer too, zero at construction)."""
    torch.manual_seed(seed)
    H = torch.eye(n)[::stride]
    net = AnalysisNet(AmortisedConfig(members=6, hidden=16, layers=2, window=window, infl=1.03), H,
                      torch.full((H.shape[0],), obs_std))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("n,window,stride", [(12, 5, 1), (12, 5, 2), (12, 13, 3)])
def test_analysis_plan_equals_the_training_forward_pass(n, window, stride):
    net = _random_net(n, window, stride)
    plan = AmortisedMethod(net).plan
    g = torch.Generator().manual_seed(5)
    E = 2.3 + 3.6 * torch.randn(6, n, generator=g, dtype=torch.float64)
    y = 2.3 + 3.6 * torch.randn(net.p, generator=g, dtype=torch.float64)
    eps = torch.randn(6, net.p, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = net(E[None], y[None], eps[None].float())[0]
    out = plan(E, y, eps)
    assert out.dtype == torch.float64 and out.shape == E.shape
    assert float((out - E).abs().max()) > 0.1  # the random gains do change the members
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_amortised_method_draws_the_noise_of_the_network():
    net = _random_net(12, 5, 2)
    twin = make_twin(replace(SETUP, obs_stride=2))
    E = twin.truth[1] + torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = AmortisedMethod(net).analyse(E, twin.obs[0], twin, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(E[None], twin.obs[0][None], net.noise(1, torch.Generator().manual_seed(2), E.device))[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_amortised_method_bad_input_names_the_value():
    net = _random_net(12, 5, 1)
    method = AmortisedMethod(net)
    twin = make_twin(SETUP)
    with pytest.raises(ValueError, match="N=1"):
        method.analyse(torch.zeros(1, 12, dtype=torch.float64), twin.obs[0], twin, torch.Generator())
    with pytest.raises(ValueError, match="float32"):
        method.analyse(torch.zeros(6, 12), twin.obs[0], twin, torch.Generator())
    blurred = AnalysisNet(AmortisedConfig(members=6, hidden=8, window=3), 0.5 * torch.eye(4), torch.ones(4))
    with pytest.raises(ValueError, match=r"column sums \[0.5, 0.5, 0.5, 0.5\]"):
        AmortisedMethod(blurred)


def test_speed_bench_times_both_methods_on_the_same_inputs(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_l96_speed", Path(__file__).resolve().parents[1] / "bench" / "l96_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    AnalysisNet(AmortisedConfig(members=40, hidden=8), torch.eye(40), torch.ones(40)).save(tmp_path / "net.pt")
    old = torch.get_num_threads()
    try:
        out = bench.main(["--amortised-net", str(tmp_path / "net.pt"), "--cycles", "6", "--spinup", "2",
                          "--json", str(tmp_path / "s.json"), "--profile", str(tmp_path / "p.txt")])
    finally:
        torch.set_num_threads(old)
    assert set(out["ms"]) == {"forecast", "letkf_n40", "amortised", "amortised_forward", "letkf_n40_alone",
                              "amortised_alone", "letkf_n40_cycle", "amortised_cycle"}
    assert all(v["median"] > 0 for v in out["ms"].values()) and all(v > 0 for v in out["cpu_ms"].values())
    assert out["ratio_analysis"] == pytest.approx(out["ms"]["letkf_n40"]["median"] / out["ms"]["amortised"]["median"])
    text = (tmp_path / "p.txt").read_text()
    assert all(f"== {name}: 6 analyses" in text for name in ("letkf_n40", "amortised", "amortised_forward"))
    small = tmp_path / "small.pt"
    AnalysisNet(AmortisedConfig(members=6), torch.eye(40), torch.ones(40)).save(small)
    with pytest.raises(SystemExit, match="N = 6"):
        bench.main(["--amortised-net", str(small)])
