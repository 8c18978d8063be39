"""Run configuration: validation (unknown keys, impossible values, named), path resolution, hash, demo config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from latentda.config import ConfigError, RunConfig, config_from_dict, config_hash, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "deploy" / "demo.yaml"


def _minimal(**extra) -> dict:
    d = {"variables": ["air_temperature"], "archive": {"start": "2005-01-01", "end": "2005-01-31"}}
    d.update(extra)
    return d


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_demo_config_validates():
    cfg = load_config(DEMO)
    assert isinstance(cfg, RunConfig)
    assert cfg.catalog.fields == "heldsuarez_daily" and cfg.catalog.observations == "pseudo_obs_clustered"
    assert cfg.archive.chunks.time == 1
    assert str(cfg.backfill.start) == "2005-01-01" and str(cfg.backfill.end) == "2005-01-31"
    # relative paths resolved against deploy/
    assert cfg.catalog.path == str(REPO / "catalogs" / "demo.yaml")
    assert cfg.archive_url == str(REPO / "out" / "demo" / "reanalysis.zarr")
    assert cfg.output_catalog == str(REPO / "catalogs" / "reanalysis.yaml")
    assert Path(cfg.catalog.path).exists()
    # demo training is capped for a CPU
    assert cfg.prior.max_minutes is not None and cfg.prior.max_minutes <= 5
    assert len(cfg.hash) == 64


@pytest.mark.parametrize("data, key", [
    (_minimal(colour="blue"), "colour"),
    (_minimal(archive={"start": "2005-01-01", "end": "2005-01-31", "urll": "x"}), "archive.urll"),
    (_minimal(cluster={"profile": "local", "nworkers": 2}), "cluster.nworkers"),
    (_minimal(prior={"epoch": 3}), "prior.epoch"),
])
def test_unknown_key_refused_with_its_name(tmp_path, data, key):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    msg = str(info.value)
    assert f"{key}: unknown key" in msg
    assert "allowed keys" in msg


@pytest.mark.parametrize("patch, key", [
    ({"archive": {"start": "2005-01-01", "end": "2005-01-31", "chunks": {"time": 8}}}, "archive.chunks.time"),
    ({"assimilation": {"members": 1}}, "assimilation.members"),
    ({"cluster": {"n_workers": 0}}, "cluster.n_workers"),
    ({"archive": {"start": "2005-02-01", "end": "2005-01-01"}}, "archive"),
    ({"evaluation": {"holdout_fraction": 1.0}}, "evaluation.holdout_fraction"),
    ({"prior": {"val_fraction": 1.5}}, "prior.val_fraction"),
    ({"prior": {"device": "tpu"}}, "prior.device"),
    ({"prior": {"device": "mps"}}, "prior.device"),
    ({"assimilation": {"options": {"representation_error": "full"}}}, "assimilation.options.representation_error"),
    ({"assimilation": {"options": {"max_iter": -1}}}, "assimilation.options.max_iter"),
    ({"cluster": {"profile": "address"}}, "cluster"),
    ({"variables": []}, "variables"),
    ({"assimilation": {"members": "many"}}, "assimilation.members"),
])
def test_impossible_value_refused_with_its_name(tmp_path, patch, key):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, _minimal(**patch)))
    assert f"  {key}:" in str(info.value)


def test_prior_section_is_prior_config_itself():
    """Every PriorConfig field is accepted in the run config's prior: section, with PriorConfig's defaults."""
    from latentda.prior.config import PriorConfig

    non_default = {"residual_modes": 8, "zonal_symmetry": True, "max_channel_mult": 2, "num_threads": 1,
                   "n_down": 2, "max_minutes": 1.5}
    assert set(PriorConfig.model_fields) - {"path"} <= set(RunConfig.model_fields["prior"].annotation.model_fields)
    cfg = config_from_dict(_minimal(prior=dict(non_default, path="p.pt")))
    pc = PriorConfig.model_validate(cfg.prior.prior_config())
    assert {k: getattr(pc, k) for k in non_default} == non_default
    assert PriorConfig.model_validate(config_from_dict(_minimal()).prior.prior_config()) == PriorConfig()


def test_assimilation_options_typed_and_passed_through():
    from latentda.da.options import AssimilationOptions

    cfg = config_from_dict(_minimal(assimilation={"options": {"max_iter": 25, "qc_threshold": float("inf")}}))
    opts = cfg.assimilation.options
    assert isinstance(opts, AssimilationOptions) and opts.max_iter == 25 and opts.qc_threshold == float("inf")
    # what the flows hand to workers (JSON) validates back to the same options
    assert AssimilationOptions.model_validate(opts.model_dump(mode="json")) == opts


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="keep_members=8 exceeds assimilation.members=4"):
        config_from_dict(_minimal(assimilation={"members": 4},
                                  archive={"start": "2005-01-01", "end": "2005-01-31", "keep_members": 8}))
    with pytest.raises(ConfigError, match="outside the archive period"):
        config_from_dict(_minimal(backfill={"start": "2004-12-31", "end": "2005-01-02"}))
    cfg = config_from_dict(_minimal(assimilation={"members": 6},
                                    archive={"start": "2005-01-01", "end": "2005-01-31", "members_to_keep": True}))
    assert cfg.members_to_keep == 6


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("variables: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("!!python/object/apply:os.system ['echo hi']\n")  # safe_load refuses python tags
    with pytest.raises(ConfigError):
        load_config(p)


def test_relative_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "cfgdir"
    sub.mkdir()
    p = _write(sub, _minimal(workdir="../work", catalog={"path": "cat.yaml"},
                             archive={"start": "2005-01-01", "end": "2005-01-02", "url": "s3://bucket/a.zarr"}))
    cfg = load_config(p)
    assert cfg.workdir == str(tmp_path / "work")
    assert cfg.catalog.path == str(sub / "cat.yaml")
    assert cfg.archive_url == "s3://bucket/a.zarr"  # URLs untouched
    assert cfg.prior_path == os.path.join(str(tmp_path / "work"), "prior.pt")


def test_config_hash_stable_without_secrets_and_runtime_sections(tmp_path):
    base = _minimal(archive={"start": "2005-01-01", "end": "2005-01-31", "url": "s3://b/a.zarr",
                             "storage_options": {"endpoint_url": "http://127.0.0.1:9", "key": "AK", "secret": "S"}})
    a = config_from_dict(base)
    b = config_from_dict(dict(base, archive=dict(base["archive"], storage_options={
        "endpoint_url": "http://127.0.0.1:9", "key": "OTHER", "secret": "OTHER"})))
    assert a.hash == b.hash  # secrets do not enter the hash
    c = config_from_dict(dict(base, cluster={"n_workers": 7}))
    assert a.hash == c.hash  # nor where the run goes
    d = config_from_dict(dict(base, assimilation={"members": 8}))
    assert a.hash != d.hash
    red = a.redacted()
    assert red["archive"]["storage_options"] == {"endpoint_url": "http://127.0.0.1:9"}
    assert "AK" not in str(red)
    # hash of the config as written: independent of where the file lives
    p1 = _write(tmp_path, _minimal(workdir="w"))
    (tmp_path / "x").mkdir()
    p2 = _write(tmp_path / "x", _minimal(workdir="w"))
    assert load_config(p1).hash == load_config(p2).hash == config_from_dict(_minimal(workdir="w")).hash
    assert config_hash(RunConfig.model_validate(_minimal(workdir="w"))) == load_config(p1).hash


def test_config_hash_without_a_window_is_that_of_before_windows():
    """PriorConfig.window = 0 and the option window = None (the defaults) leave the hash of a config as it was
    before windows existed; choosing a window changes it."""
    cfg = RunConfig.model_validate(_minimal())
    before = cfg.model_dump(mode="json")
    del before["prior"]["window"], before["assimilation"]["options"]["window"]
    assert config_hash(before) == config_hash(cfg)
    assert config_hash(RunConfig.model_validate(_minimal(prior={"window": 1}))) != config_hash(cfg)
    windowed = _minimal(assimilation={"options": {"window": 0}})
    assert config_hash(RunConfig.model_validate(windowed)) != config_hash(cfg)
    with pytest.raises(ConfigError, match="window"):
        config_from_dict(_minimal(prior={"window": -1}))


def test_overrides_merge(tmp_path):
    p = _write(tmp_path, _minimal())
    cfg = load_config(p, {"assimilation": {"members": 12}, "cluster": {"n_workers": 3}})
    assert cfg.assimilation.members == 12 and cfg.cluster.n_workers == 3
    with pytest.raises(ConfigError, match="assimilation.members"):
        load_config(p, {"assimilation": {"members": 0}})
