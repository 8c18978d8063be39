"""Held-Suarez demo data generator (dinosaur spectral dynamical core).

Runs the Held-Suarez (1994) dry benchmark as in dinosaur's own ``held_suarez`` notebook (isothermal rest start
with a seeded surface-pressure bump, ``imex_rk_sil3`` time stepping, exponential spectral filter), discards a
spin-up, then keeps one instantaneous snapshot per day of the lowest model level:

* ``air_temperature``  (K)
* ``eastward_wind``    (m s-1)
* ``northward_wind``   (m s-1)
* ``surface_air_pressure`` (Pa)

regridded conservatively from the model's Gaussian grid to a regular equiangular (lat, lon) grid and written as
a CF-conventions netCDF file, packed as int16 with scale/offset and compressed (shuffle + zlib).

The model has no seasons, land or orography: statistics are zonally symmetric and stationary. Dates follow a plain
(proleptic Gregorian) calendar starting at ``SimSettings.start`` only so that downstream code sees real dates.

dinosaur and JAX are imported inside functions: ``import latentda`` must not need the ``sim`` extra.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Packing step per variable (units of the variable): int16 with this scale factor.
PACK_SCALE = {
    "air_temperature": 0.1,
    "eastward_wind": 0.1,
    "northward_wind": 0.1,
    "surface_air_pressure": 10.0,
}

CF_ATTRS = {
    "air_temperature": dict(units="K", standard_name="air_temperature",
                            long_name="air temperature at the lowest model level"),
    "eastward_wind": dict(units="m s-1", standard_name="eastward_wind",
                          long_name="eastward wind at the lowest model level"),
    "northward_wind": dict(units="m s-1", standard_name="northward_wind",
                           long_name="northward wind at the lowest model level"),
    "surface_air_pressure": dict(units="Pa", standard_name="surface_air_pressure",
                                 long_name="surface air pressure"),
}


#: One line per SimSettings field for ``latentda simulate --help``.
SIM_HELP = {"truncation": "spectral truncation of dinosaur's Grid (T31: 48 x 96 Gaussian nodes)",
            "layers": "equidistant sigma levels", "dt_minutes": "model time step, minutes",
            "spinup_days": "days from rest discarded before the first kept day",
            "start": "first kept date, YYYY-MM-DD", "days": "number of kept daily snapshots",
            "seed": "PRNG seed of the initial bump", "nlat": "output latitudes (equiangular cell centres)",
            "nlon": "output longitudes", "p0_pa": "reference surface pressure p0 of the rest state, Pa",
            "p1_pa": "p1 of dinosaur's isothermal rest atmosphere (the initial bump), Pa",
            "filter_tau": "time scale of the exponential step filter", "filter_order": "order of that filter",
            "filter_cutoff": "cutoff of that filter (fraction of the truncation)"}


@dataclasses.dataclass(frozen=True)
class SimSettings:
    """Everything that determines the generated data (recorded in the file's attributes).

    truncation: spectral truncation name of dinosaur's ``Grid`` (``"T31"``: 48 x 96 Gaussian nodes).
    layers: equidistant sigma levels. dt_minutes: model time step. spinup_days: discarded days from rest.
    start: first kept date (ISO). days: number of kept daily snapshots. seed: PRNG seed of the initial bump.
    nlat, nlon: output equiangular grid (cell centres, 180/nlat degrees apart).
    """

    truncation: str = "T31"
    layers: int = 12
    dt_minutes: float = 20.0
    spinup_days: int = 150
    start: str = "2000-01-01"
    days: int = 2192  # 2000-01-01 .. 2005-12-31
    seed: int = 0
    nlat: int = 48
    nlon: int = 96
    p0_pa: float = 1.0e5
    p1_pa: float = 5.0e3
    filter_tau: float = 0.0087504
    filter_order: float = 1.5
    filter_cutoff: float = 0.8

    def to_attrs(self) -> dict[str, Any]:
        return {f"latentda:sim_{k}": v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "SimSettings":
        """Rebuild the settings recorded by :meth:`to_attrs` in a generated file."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = f"latentda:sim_{f.name}"
            if key not in attrs:
                raise KeyError(f"attribute {key!r} missing: the file was not written by latentda.sim")
            value = attrs[key]
            kwargs[f.name] = type(f.default)(value.item() if hasattr(value, "item") else value)
        return cls(**kwargs)


def _build_model(s: SimSettings):
    """Return (coords, specs, initial_state, step_fn, steps_per_day, ref_temps) for settings ``s``."""
    import jax
    import dinosaur

    units = dinosaur.scales.units
    grid = getattr(dinosaur.spherical_harmonic.Grid, s.truncation)()
    coords = dinosaur.coordinate_systems.CoordinateSystem(
        horizontal=grid, vertical=dinosaur.sigma_coordinates.SigmaCoordinates.equidistant(s.layers))
    specs = dinosaur.primitive_equations.PrimitiveEquationsSpecs.from_si()
    p0 = s.p0_pa * units.pascal
    init_fn, aux = dinosaur.primitive_equations_states.isothermal_rest_atmosphere(
        coords=coords, physics_specs=specs, p0=p0, p1=s.p1_pa * units.pascal)
    state = init_fn(jax.random.PRNGKey(s.seed))
    ref_temps = aux[dinosaur.xarray_utils.REF_TEMP_KEY]
    orography = dinosaur.primitive_equations.truncated_modal_orography(
        aux[dinosaur.xarray_utils.OROGRAPHY], coords)
    primitive = dinosaur.primitive_equations.PrimitiveEquations(ref_temps, orography, coords, specs)
    forcing = dinosaur.held_suarez.HeldSuarezForcing(
        coords=coords, physics_specs=specs, reference_temperature=ref_temps, p0=p0)
    equations = dinosaur.time_integration.compose_equations([primitive, forcing])
    dt = specs.nondimensionalize(s.dt_minutes * units.minute)
    step = dinosaur.time_integration.imex_rk_sil3(equations, dt)
    step = dinosaur.time_integration.step_with_filters(step, [
        dinosaur.time_integration.exponential_step_filter(
            coords.horizontal, dt, tau=s.filter_tau, order=s.filter_order, cutoff=s.filter_cutoff)])
    steps_per_day = int(round(24 * 60 / s.dt_minutes))
    if abs(steps_per_day * s.dt_minutes - 24 * 60) > 1e-9:
        raise ValueError(f"dt_minutes={s.dt_minutes} does not divide a day; pick a divisor of 1440")
    return coords, specs, state, step, steps_per_day, ref_temps


def _surface_fields_fn(coords, specs, ref_temps) -> Callable:
    """Map a modal state to the lowest-level nodal (T [K], u, v [m/s], ps [Pa]), each (nlon, nlat)."""
    import jax.numpy as jnp
    import dinosaur

    units = dinosaur.scales.units
    t_scale = float(specs.dimensionalize(1.0, units.degK).magnitude)
    v_scale = float(specs.dimensionalize(1.0, units.meter / units.second).magnitude)
    p_scale = float(specs.dimensionalize(1.0, units.pascal).magnitude)
    t_ref = float(np.asarray(ref_temps)[-1])

    def fn(state):
        u, v = dinosaur.spherical_harmonic.vor_div_to_uv_nodal(
            coords.horizontal, state.vorticity[-1:], state.divergence[-1:])
        temp = coords.horizontal.to_nodal(state.temperature_variation[-1:])[0] + t_ref
        ps = jnp.exp(coords.horizontal.to_nodal(state.log_surface_pressure)[0])
        return jnp.stack([temp * t_scale, u[0] * v_scale, v[0] * v_scale, ps * p_scale])

    return fn


def simulate(settings: SimSettings, out: str | os.PathLike, *, chunk_days: int = 73,
             progress: bool = True) -> Path:
    """Run the model for ``settings`` and write the packed netCDF file ``out``.

    Progress is checkpointed to ``<out>.partial.npz`` after each chunk of ``chunk_days`` days, so an interrupted
    run resumes where it stopped (the model state is saved too, so the result is identical).
    Returns the path written.
    """
    import jax
    import jax.numpy as jnp
    import dinosaur

    # full float32 matmuls: GPUs would otherwise use TF32 in the spectral transforms (a no-op on CPU)
    jax.config.update("jax_default_matmul_precision", "highest")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.npz")
    coords, specs, state, step, steps_per_day, ref_temps = _build_model(settings)
    surface = _surface_fields_fn(coords, specs, ref_temps)

    def run(n_days: int):
        return jax.jit(dinosaur.time_integration.trajectory_from_step(
            step, outer_steps=n_days, inner_steps=steps_per_day, post_process_fn=surface))

    leaves, treedef = jax.tree_util.tree_flatten(state)
    kept: list[np.ndarray] = []
    done_days = 0  # days integrated so far, spin-up included
    total = settings.spinup_days + settings.days
    if partial.exists():
        z = np.load(partial)
        if json.loads(str(z["settings"])) != dataclasses.asdict(settings):
            raise ValueError(f"{partial} was written with other settings; delete it to start again")
        leaves = [jnp.asarray(z[f"leaf{i}"]) for i in range(len(leaves))]
        kept = [z["kept"]] if z["kept"].size else []
        done_days = int(z["done_days"])
        state = jax.tree_util.tree_unflatten(treedef, leaves)
    t0 = time.time()
    start_done = done_days
    while done_days < total:
        n = min(chunk_days, total - done_days)
        state, traj = run(n)(state)
        traj = np.asarray(traj)  # (n, 4, nlon, nlat): snapshot at the end of each day
        first_kept_day = settings.spinup_days  # day index (1-based end-of-day) of the first kept snapshot
        day_idx = np.arange(done_days + 1, done_days + n + 1)
        keep = day_idx > first_kept_day
        if keep.any():
            kept.append(traj[keep])
        done_days += n
        if not np.all(np.isfinite(traj)):
            raise FloatingPointError(f"model blew up before day {done_days}: reduce dt_minutes")
        flat = jax.tree_util.tree_leaves(state)
        allkept = np.concatenate(kept) if kept else np.zeros((0,), np.float32)
        np.savez(partial, settings=json.dumps(dataclasses.asdict(settings)), done_days=done_days,
                 kept=allkept, **{f"leaf{i}": np.asarray(x) for i, x in enumerate(flat)})
        kept = [allkept] if allkept.size else []
        if progress:
            rate = (time.time() - t0) / max(done_days - start_done, 1)
            print(f"[simulate] day {done_days}/{total} ({rate:.2f} s/day, "
                  f"eta {rate * (total - done_days) / 60:.1f} min)", file=sys.stderr, flush=True)
    fields = np.concatenate(kept)[: settings.days]
    ds = to_dataset(fields, coords.horizontal, settings)
    write_packed(ds, out)
    partial.unlink(missing_ok=True)
    return out


def _target_grid(s: SimSettings):
    import dinosaur
    return dinosaur.spherical_harmonic.Grid(latitude_nodes=s.nlat, longitude_nodes=s.nlon,
                                            latitude_spacing="equiangular")


def to_dataset(fields: np.ndarray, source_grid, s: SimSettings):
    """Regrid (time, 4, nlon_src, nlat_src) model output conservatively and wrap it as a CF xarray Dataset."""
    import xarray as xr
    import dinosaur

    target = _target_grid(s)
    regrid = dinosaur.horizontal_interpolation.ConservativeRegridder(source_grid, target)
    out = np.stack([np.asarray(regrid(fields[i])) for i in range(fields.shape[0])])  # (t, 4, lon, lat)
    out = out.transpose(0, 1, 3, 2)  # (t, 4, lat, lon)
    lat = np.rad2deg(target.latitudes)
    lon = np.rad2deg(target.longitudes)
    time_index = np.datetime64(s.start, "ns") + np.arange(fields.shape[0]) * np.timedelta64(1, "D")
    data_vars = {
        name: (("time", "lat", "lon"), out[:, k].astype(np.float64), CF_ATTRS[name])
        for k, name in enumerate(PACK_SCALE)
    }
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": ("time", time_index, {"standard_name": "time", "long_name": "time"}),
            "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}),
            "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}),
        },
    )
    import dinosaur as _d
    from importlib.metadata import version

    ds.attrs.update({
        "Conventions": "CF-1.8",
        "title": "latentda demo data: Held-Suarez dry dynamical core, lowest model level, daily snapshots",
        "source": f"dinosaur {version('dinosaur')} spectral primitive equations with Held-Suarez (1994) forcing",
        "comment": ("Idealised model with no seasons, land or orography: the calendar is a plain "
                    "proleptic Gregorian one starting at the first kept day, for convenience only. "
                    "Fields are instantaneous daily snapshots, conservatively regridded from the "
                    f"{s.truncation} Gaussian grid."),
        "history": f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} "
                   "generated by `latentda simulate`",
        "latentda:generator": "latentda.sim.heldsuarez",
        "latentda:zonally_symmetric": 1,   # no land, orography or seasons: read by latentda.prior.train
        "latentda:resolution": f"{s.truncation} L{s.layers}",
        "latentda:step_minutes": s.dt_minutes,
        "latentda:seed": s.seed,
        "latentda:spinup_days": s.spinup_days,
        "latentda:created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "latentda:platform": _platform(),
        **s.to_attrs(),
    })
    return ds


def _platform() -> str:
    """JAX version, backend, device kind and matmul precision: bitwise reproduction needs the same platform."""
    import jax

    dev = jax.devices()[0]
    return (f"jax {jax.__version__}, backend {jax.default_backend()}, device {dev.device_kind}, "
            f"matmul precision {jax.config.jax_default_matmul_precision or 'default'}")


def write_packed(ds, out: str | os.PathLike) -> Path:
    """Write ``ds`` as netCDF4 with int16 packing (``PACK_SCALE``), byte shuffle and zlib level 9."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoding = {}
    for name, scale in PACK_SCALE.items():
        if name not in ds:
            continue
        vals = ds[name].values
        mid = float(np.round((np.nanmax(vals) + np.nanmin(vals)) / 2 / scale) * scale)
        if (np.nanmax(vals) - np.nanmin(vals)) / scale > 65000:
            raise ValueError(f"{name}: range {np.nanmin(vals)}..{np.nanmax(vals)} too wide for int16 at {scale}")
        encoding[name] = dict(dtype="int16", scale_factor=scale, add_offset=mid, _FillValue=np.int16(-32768),
                              zlib=True, complevel=9, shuffle=True, chunksizes=(min(365, ds.sizes["time"]), ds.sizes["lat"], ds.sizes["lon"]))
    encoding["time"] = dict(units=f"days since {str(ds.time.values[0])[:10]}", calendar="proleptic_gregorian",
                            dtype="int32")
    tmp = out.with_name(out.name + ".tmp")
    ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding, format="NETCDF4")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m latentda.sim.heldsuarez OUT [--days N] [--spinup-days N] [--seed N] [--from FILE]``."""
    import argparse

    p = argparse.ArgumentParser(prog="latentda simulate", description=__doc__.splitlines()[0],
                                epilog="Each option overrides one field of SimSettings; the settings are recorded "
                                       "in the output file's attributes.")
    p.add_argument("out", help="output netCDF file of daily fields")
    p.add_argument("--from", dest="from_file", help="reproduce the settings recorded in this generated file")
    for f in dataclasses.fields(SimSettings):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None, metavar=f.name.upper(),
                       help=f"{SIM_HELP[f.name]} (default {f.default})")
    a = p.parse_args(argv)
    if a.from_file:
        import xarray as xr
        with xr.open_dataset(a.from_file) as ds:
            base = SimSettings.from_attrs(ds.attrs)
    else:
        base = SimSettings()
    over = {f.name: getattr(a, f.name) for f in dataclasses.fields(SimSettings) if getattr(a, f.name) is not None}
    simulate(dataclasses.replace(base, **over), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
