"""Foundation: import hygiene, grids, climatology/anomalies, observation schema and operator, station networks."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from latentda.grid import Grid, normalize_grid
from latentda.normalization import climatology_at, fit_climatology, from_anomalies, to_anomalies
from latentda.obs.operator import PointOperator
from latentda.obs.schema import validate_observations
from latentda.sim import stations


def test_import_latentda_pulls_no_orchestration():
    code = ("import sys, latentda, latentda.grid, latentda.normalization, latentda.obs, latentda.analysis, "
            "latentda.sim.stations\n"
            "bad = [m for m in ('prefect', 'prefect_dask', 'distributed', 'intake', 'tasks', 'flows') "
            "if m in sys.modules]\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import latentda pulled in {out.stdout.strip()}"


def test_latentda_sources_never_import_orchestration():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "latentda"
    pat = re.compile(r"^\s*(import|from)\s+(prefect|prefect_dask|distributed|intake|tasks|flows)\b", re.M)
    offenders = [str(p) for p in root.rglob("*.py") if pat.search(p.read_text())]
    assert offenders == []


REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _module_imports(path, package_root) -> set[str]:
    """latentda modules imported at module level (not inside functions: those are lazy on purpose)."""
    import ast

    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    pkg = parts if path.name == "__init__.py" else parts[:-1]
    if path.name == "__init__.py":
        pkg = parts[:-1]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith("latentda")}
    return out


def test_latentda_has_no_import_cycle():
    """Module-level imports inside latentda form a DAG (a package imports its own submodules: not a cycle)."""
    root = REPO_ROOT / "latentda"
    mods = {}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if p.name == "__init__.py" else rel.parts)
        mods[name] = p
    graph = {m: {i for i in _module_imports(p, root) if i in mods and i != m} for m, p in mods.items()}
    # a package's __init__ importing its children, and children importing their package, are how packages work
    graph = {m: {i for i in deps if not i.startswith(m + ".") and not m.startswith(i + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if not state.get(d):
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_tasks_are_thin_public_functions_take_at_most_three_parameters():
    import ast

    wide = []
    for p in (REPO_ROOT / "tasks").glob("*.py"):
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                n = len(node.args.args) + len(node.args.kwonlyargs) + len(node.args.posonlyargs)
                if n > 3:
                    wide.append(f"{p.name}:{node.name} ({n})")
    assert wide == []


def test_loading_a_run_config_does_not_import_torch():
    code = ("import sys; from latentda.config import load_config; load_config('deploy/demo.yaml'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "False"


def _seasonal_dataset(years=3, nlat=6, nlon=8, seed=0):
    rng = np.random.default_rng(seed)
    time = pd.date_range("2001-01-01", periods=365 * years, freq="D")
    doy = time.dayofyear.values
    lat = np.linspace(-75, 75, nlat)
    lon = np.arange(nlon) * 360 / nlon
    amp = 10 * np.cos(np.deg2rad(lat))[None, :, None]
    mean = 280 + amp * np.cos(2 * np.pi * (doy[:, None, None] - 200) / 365.25)
    std = 2 + np.sin(2 * np.pi * doy / 365.25)[:, None, None] ** 2
    x = mean + std * rng.standard_normal((time.size, nlat, nlon))
    return xr.Dataset({"t": (("time", "lat", "lon"), x, {"units": "K"})},
                      coords={"time": time, "lat": lat, "lon": lon}), mean, std


def test_climatology_follows_seasonal_cycle():
    ds, mean, std = _seasonal_dataset(years=6)
    clim = fit_climatology(ds, ["t"], n_harmonics=3)
    m, s = climatology_at(clim, "t", ds.time.values)
    assert np.sqrt(np.mean((m - mean) ** 2)) < 0.25  # noise std ~2 K, 6 years
    assert np.abs(s.mean(axis=(1, 2)) - std[:, 0, 0]).mean() < 0.2
    # without harmonics the annual cycle (10 K amplitude) is missed
    m0, _ = climatology_at(fit_climatology(ds, ["t"], n_harmonics=0), "t", ds.time.values)
    assert np.sqrt(np.mean((m0 - mean) ** 2)) > 3


def test_anomaly_round_trip_is_exact():
    ds, _, _ = _seasonal_dataset(years=2)
    clim = fit_climatology(ds, ["t"], n_harmonics=2)
    anom = to_anomalies(ds, clim)
    assert abs(float(anom.t.mean())) < 0.05 and abs(float(anom.t.std()) - 1) < 0.05
    back = from_anomalies(anom, clim)
    np.testing.assert_allclose(back.t.values, ds.t.values, rtol=0, atol=1e-10)
    assert back.t.attrs["units"] == "K"


def test_climatology_errors_name_the_problem():
    ds, _, _ = _seasonal_dataset(years=1)
    with pytest.raises(KeyError, match="nope"):
        fit_climatology(ds, ["nope"])
    bad = ds.copy(deep=True)
    bad["t"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_climatology(bad, ["t"])


def test_normalize_grid_descending_lat_and_negative_lon():
    lat = np.array([60.0, 0.0, -60.0])
    lon = np.array([-90.0, 0.0, 90.0, 180.0])
    ds = xr.Dataset({"t": (("latitude", "longitude"), np.arange(12.0).reshape(3, 4))},
                    coords={"latitude": lat, "longitude": lon})
    out = normalize_grid(ds)
    assert list(out.lat.values) == [-60, 0, 60]
    assert list(out.lon.values) == [0, 90, 180, 270]
    assert out.t.sel(lat=60, lon=270).item() == 0.0  # was (60, -90)
    with pytest.raises(ValueError, match="95"):
        normalize_grid(ds.assign_coords(latitude=[95.0, 0.0, -60.0]))


def test_grid_weights_and_validation():
    g = Grid.regular(48, 96)
    assert g.lat[0] == pytest.approx(-88.125) and g.lon[1] == pytest.approx(3.75)
    assert g.weights().mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ascending"):
        Grid(g.lat[::-1], g.lon)


def test_operator_exact_on_linear_fields_and_across_dateline():
    g = Grid.regular(24, 48)
    lat = np.array([-80.0, -10.3, 0.0, 33.3, 80.1])
    lon = np.array([10.0, 100.1, 200.0, 300.7, 44.0])
    field = (2 * g.lat[:, None] + 0.5 * g.lon[None, :])[None]
    H = PointOperator(g, lat, lon)
    np.testing.assert_allclose(H.apply_np(field), 2 * lat + 0.5 * lon, atol=1e-9)
    # a field linear in longitude measured from the dateline (continuous across the 0/360 seam)
    lon_c = np.mod(g.lon - 180, 360)  # 180..355, 0..175: jump at lon=180, none at 0/360
    f2 = np.broadcast_to(lon_c, g.shape)[None]
    pts = np.array([359.0, 0.5, 1.0, -0.9])  # around Greenwich, written both ways
    H2 = PointOperator(g, np.zeros(4), pts)
    np.testing.assert_allclose(H2.apply_np(f2), np.mod(pts - 180, 360), atol=1e-9)
    # the same point given as -1 and 359 degrees
    assert PointOperator(g, [10.0], [-1.0]).apply_np(field * 0 + f2) == pytest.approx(
        PointOperator(g, [10.0], [359.0]).apply_np(f2))


def test_operator_poles_torch_and_sparse_agree():
    g = Grid.regular(12, 24)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 12, 24))
    lat = np.array([90.0, -90.0, 89.0, -88.0, 0.0])
    lon = np.array([0.0, 123.0, 10.0, 350.0, 359.99])
    H = PointOperator(g, lat, lon, channel=[0, 1, 0, 1, 1], nchannels=2)
    a = H.apply_np(x)
    np.testing.assert_allclose(a[:, 0], x[:, 0, -1].mean(axis=-1))  # north pole = zonal mean of last row
    np.testing.assert_allclose(a[:, 1], x[:, 1, 0].mean(axis=-1))
    xt = torch.tensor(x, requires_grad=True)
    b = H.apply_torch(xt)
    np.testing.assert_allclose(b.detach().numpy(), a, atol=1e-12)
    b.sum().backward()
    assert xt.grad is not None and float(xt.grad.abs().sum()) > 0
    c = (H.to_sparse() @ x.reshape(3, -1).T).T
    np.testing.assert_allclose(c, a, atol=1e-12)
    with pytest.raises(ValueError, match="95"):
        PointOperator(g, [95.0], [0.0])


def test_validate_observations_gives_reasons():
    t = pd.Timestamp("2005-01-03")
    df = pd.DataFrame({
        "time": [t] * 8 + [pd.Timestamp("2005-01-04")],
        "lat": [10.0, np.nan, 95.0, 10.0, 10.0, 20.0, 30.0, "abc", 10.0],
        "lon": [20.0, 0.0, 0.0, 20.0, 380.0, 0.0, 0.0, 0.0, 20.0],
        "value": [1.0, 1.0, 1.0, 1.0, 1.0, np.inf, 1.0, 1.0, 1.0],
        "error": [1.0] * 6 + [-1.0, 1.0, 1.0],
        "variable": ["t"] * 9,
    })
    out = validate_observations(df, variables=["t"], time=t)
    assert list(out.qc) == ["", "nonfinite_coordinate", "lat_out_of_range", "duplicate", "duplicate",
                            "nonfinite_value", "bad_error", "non_numeric", "wrong_time"]
    assert out.lon[4] == pytest.approx(20.0)
    with pytest.raises(ValueError, match=r"\['value'\]"):
        validate_observations(df.drop(columns="value"))
    with pytest.raises(ValueError, match="error"):
        validate_observations(df.drop(columns="error"), variables=["t"])
    extreme = validate_observations(pd.DataFrame({"time": [t] * 3, "lat": [0.0] * 3, "lon": [1e300, 5.0, 6.0],
                                                  "value": [1.0] * 3, "error": [1.0, 1e300, 1e-300],
                                                  "variable": ["t"] * 3}), variables=["t"], time=t)
    assert list(extreme.qc) == ["lon_out_of_range", "bad_error", "bad_error"]
    u = validate_observations(df.assign(variable="u"), variables=["t"], time=t)
    assert (u.qc.iloc[:1] == "unknown_variable").all()


def test_networks_are_seeded_and_valid():
    a, b = stations.random_network(500, seed=3), stations.random_network(500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(stations.random_network(500, seed=4))
    # area-uniform: about half the stations within 30 degrees of the equator
    assert 0.42 < (np.abs(a.lat) < 30).mean() < 0.58
    c = stations.clustered_network(1000, seed=0)
    assert c.lat.between(-90, 90).all() and c.lon.between(0, 360).all()
    # clustered: far more stations in the densest 10x10-degree box than a uniform network puts there
    h, _, _ = np.histogram2d(c.lat, c.lon, bins=[18, 36], range=[[-90, 90], [0, 360]])
    hu, _, _ = np.histogram2d(a.lat, a.lon, bins=[18, 36], range=[[-90, 90], [0, 360]])
    assert h.max() > 4 * hu.max() * 2  # 1000 vs 500 stations
    with pytest.raises(ValueError, match="station 1 latitude 91"):
        stations.make_network([0.0, 91.0], [0.0, 0.0])


def test_sample_observations_reproducible_per_day():
    ds, _, _ = _seasonal_dataset(years=1)
    ds = ds.rename(t="air_temperature")
    net = stations.random_network(30, seed=0)
    obs = stations.sample_observations(ds.isel(time=slice(0, 5)), net, ["air_temperature"], seed=7)
    assert len(obs) == 150 and set(obs.columns) >= {"time", "lat", "lon", "value", "error", "station_id",
                                                      "variable"}
    one = stations.sample_observations(ds.isel(time=slice(2, 3)), net, ["air_temperature"], seed=7)
    np.testing.assert_array_equal(one.value.values, obs[obs.time == ds.time.values[2]].value.values)
    truth = PointOperator(Grid.from_dataset(ds), net.lat, net.lon).apply_np(
        ds.air_temperature.isel(time=slice(0, 5)).values[:, None])
    resid = obs.value.values.reshape(5, 30) - truth
    assert 0.8 < resid.std() < 1.2  # DEFAULT_ERRORS: 1 K
    with pytest.raises(KeyError, match="nope"):
        stations.sample_observations(ds, net, ["nope"])


def test_errors_beyond_float32_are_rejected_as_bad_error():
    """The assimilation works in float32: an error whose 1/sigma^2 overflows or vanishes there is a bad_error (a
    fuzzed table with error 1e148 once gave a NaN analysis)."""
    t = pd.DataFrame({"time": ["2005-01-02"] * 5, "lat": [0.0] * 5, "lon": [1.0, 2, 3, 4, 5],
                      "value": [1.0] * 5, "error": [1e148, 1e20, 1e-25, 1.0, 1e6],
                      "station_id": list("abcde"), "variable": ["air_temperature"] * 5})
    out = validate_observations(t, ["air_temperature"])
    assert list(out["qc"]) == ["bad_error", "bad_error", "bad_error", "", ""]


def test_torch_threads_sets_the_count_even_when_torch_reports_it_already(monkeypatch):
    """torch.get_num_threads() reports OpenMP's count, which threadpoolctl/OMP_NUM_THREADS may have lowered while
    the MKL inside torch keeps an earlier set_num_threads: the day must always set it (bytes depended on it)."""
    import torch

    from latentda.runtime import torch_threads

    calls: list[int] = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    with torch_threads(1):
        assert calls == [1]
    assert calls == [1, 1]  # restored to what torch reported
