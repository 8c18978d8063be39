"""latentda.storage: URL helpers, credential resolution and redaction (no network, no orchestration)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import xarray as xr

from latentda import storage
from latentda.storage import MASK, redact

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
AKID = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("url, remote", [
    ("s3://bucket/archive.zarr", True),
    ("memory://x/y", True),
    ("gs://b/k", True),
    ("simplecache::s3://bucket/key", True),
    ("/tmp/archive.zarr", False),
    ("relative/dir", False),
    ("file:///tmp/archive.zarr", False),
    ("local:///tmp/x", False),
])
def test_is_remote(url, remote):
    assert storage.is_remote(url) is remote


def test_join_and_strip():
    assert storage.join("s3://b/root/", "a.zarr", "/time/") == "s3://b/root/a.zarr/time"
    assert storage.strip_protocol("s3://b/k") == "b/k"
    assert storage.strip_protocol("file:///tmp/x") == "/tmp/x"


def test_resolve_from_env_fills_missing_only():
    env = {"AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "tok-123456789",
           "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-1"}
    opts = storage.resolve_storage_options("s3://b/x", None, env=env)
    assert opts == {"endpoint_url": "http://127.0.0.1:9", "client_kwargs": {"region_name": "eu-west-1"},
                    "key": AKID, "secret": SECRET, "token": "tok-123456789", "use_listings_cache": False}
    # explicit options win over the environment; boto spellings are accepted; client_kwargs endpoint honoured
    opts = storage.resolve_storage_options(
        "s3://b/x", {"aws_access_key_id": "K2", "aws_secret_access_key": "S2",
                     "client_kwargs": {"endpoint_url": "http://127.0.0.1:7"}}, env=env)
    assert opts["key"] == "K2" and opts["secret"] == "S2" and opts["endpoint_url"] == "http://127.0.0.1:7"
    assert "endpoint_url" not in opts["client_kwargs"]
    # anonymous access takes no credentials; generic AWS_ENDPOINT_URL is the fallback endpoint
    opts = storage.resolve_storage_options("s3://b/x", {"anon": True},
                                           env={"AWS_ACCESS_KEY_ID": AKID, "AWS_ENDPOINT_URL": "http://h:1"})
    assert opts == {"anon": True, "endpoint_url": "http://h:1", "use_listings_cache": False}
    assert storage.resolve_storage_options("s3://b/x", {"use_listings_cache": True}, env={})["use_listings_cache"]
    # other protocols are left alone, the caller's dict is not modified
    so = {"client_kwargs": {"a": 1}}
    assert storage.resolve_storage_options("gs://b/x", so, env=env) == so
    storage.resolve_storage_options("s3://b/x", so, env=env)
    assert so == {"client_kwargs": {"a": 1}}


def test_resolve_rejects_non_mapping():
    with pytest.raises(TypeError, match="storage_options must be a mapping"):
        storage.resolve_storage_options("s3://b/x", ["key", "secret"])


def test_memory_roundtrip_open_mapper_zarr():
    url = "memory://latentda-test-storage/ds.zarr"
    with storage.open("memory://latentda-test-storage/blob.bin", "wb") as f:
        f.write(b"abc")
    with storage.open("memory://latentda-test-storage/blob.bin", "rb") as f:
        assert f.read() == b"abc"
    assert storage.exists("memory://latentda-test-storage/blob.bin")
    m = storage.get_mapper("memory://latentda-test-storage/map")
    m["k"] = b"v"
    assert bytes(m["k"]) == b"v"
    ds = xr.Dataset({"t": (("time", "x"), np.arange(6.0).reshape(2, 3))})
    ds.to_zarr(storage.zarr_store(url), mode="w", zarr_format=3, consolidated=False)
    back = xr.open_zarr(storage.zarr_store(url, read_only=True), consolidated=False)
    np.testing.assert_array_equal(back["t"].values, ds["t"].values)


def test_zarr_store_local(tmp_path):
    assert storage.zarr_store(tmp_path / "a.zarr") == str(tmp_path / "a.zarr")
    assert storage.zarr_store(f"file://{tmp_path}/a.zarr") == f"{tmp_path}/a.zarr"


# ------------------------------------------------------------------------------------------------- redact
def test_redact_nested_config():
    cfg = {
        "archive": {"url": "s3://bucket/out.zarr",
                    "storage_options": {"key": AKID, "secret": SECRET, "token": None,
                                        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000",
                                                          "region_name": "us-east-1"}}},
        "db": {"password": "hunter2", "user": "me", "Aws-Secret-Access-Key": SECRET},
        "keys": ["air_temperature"], "chunk_key_encoding": "default", "tokenizer": "none",
        "list": [{"client_secret": "abc"}, ("x", {"api_key": "k"})],
    }
    out = redact(cfg)
    so = out["archive"]["storage_options"]
    assert so["key"] == MASK and so["secret"] == MASK and so["token"] is None
    assert so["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us-east-1"}
    assert out["db"] == {"password": MASK, "user": "me", "Aws-Secret-Access-Key": MASK}
    assert out["keys"] == ["air_temperature"] and out["chunk_key_encoding"] == "default"
    assert out["tokenizer"] == "none"
    assert out["list"] == [{"client_secret": MASK}, ("x", {"api_key": MASK})]
    assert cfg["archive"]["storage_options"]["secret"] == SECRET  # input untouched
    assert SECRET not in json.dumps(out) and AKID not in json.dumps(out)


@pytest.mark.parametrize("text, leaked", [
    ("s3://me:" + SECRET + "@host/bucket/x.zarr", SECRET),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=" + AKID + "&X-Amz-Signature=deadbeef99&n=1", AKID),
    ('config {"secret": "' + SECRET + '", "url": "s3://b"}', SECRET),
    ("storage_options={'key': '" + AKID + "', 'secret': '" + SECRET + "'}", SECRET),
    ("aws_secret_access_key = " + SECRET, SECRET),
    ("password: " + SECRET, SECRET),
])
def test_redact_strings(text, leaked):
    out = redact(text)
    assert leaked not in out
    assert MASK in out


def test_redact_keeps_harmless_text_and_types():
    assert redact("air_temperature over 2005-01-01..2005-12-31") == "air_temperature over 2005-01-01..2005-12-31"
    P = namedtuple("P", "a b")
    assert redact(P("x", {"secret": "y"})) == P("x", {"secret": MASK})
    assert redact(3.5) == 3.5 and redact(None) is None
    arr = np.arange(3)
    assert redact({"a": arr})["a"] is arr


def test_redact_scrubs_env_secret_values_anywhere():
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "short"}
    out = redact({"note": f"opened with {SECRET} today", "other": "short words"}, env=env)
    assert out == {"note": f"opened with {MASK} today", "other": "short words"}  # short values not scrubbed
    assert redact("abc XYZ-secret-value-1 def", extra_secrets=["XYZ-secret-value-1"]) == f"abc {MASK} def"


def test_redact_pydantic_model():
    pydantic = pytest.importorskip("pydantic")

    class Archive(pydantic.BaseModel):
        url: str
        storage_options: dict

    out = redact(Archive(url="s3://b/x", storage_options={"secret": SECRET}))
    assert out == {"url": "s3://b/x", "storage_options": {"secret": MASK}}


def test_redacting_filter_masks_log_records(caplog):
    logger = logging.getLogger("latentda.test.redact")
    filt = storage.RedactingFilter(extra_secrets=[SECRET])
    logger.addFilter(filt)
    try:
        with caplog.at_level(logging.INFO, logger="latentda.test.redact"):
            logger.info("opening %s with %s", "s3://b/x", {"key": AKID, "secret": SECRET})
            logger.info("raw value %s", SECRET)
    finally:
        logger.removeFilter(filt)
    assert SECRET not in caplog.text and AKID not in caplog.text
    assert "s3://b/x" in caplog.text


def test_storage_imports_no_orchestration():
    code = ("import sys, latentda.storage; bad = [m for m in ('prefect', 'distributed', 'intake', 'prefect_dask', "
            "'tasks', 'flows') if m in sys.modules]; print(bad); raise SystemExit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_log_redaction_masks_every_handler(monkeypatch):
    """flows.install_log_redaction (called by prefect_api) puts the filter on every handler: Prefect's console
    and API handlers and any other, so a secret logged by any module is masked before it is written or sent."""
    import io

    import prefect  # noqa: F401 - configures Prefect's handlers, as in every flow process

    from flows import install_log_redaction

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("latentda.test.handler")
    logger.addHandler(handler)
    logger.propagate = False
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    try:
        assert install_log_redaction() >= 1
        assert install_log_redaction() == 0  # idempotent
        logger.warning("leaked %s into a log call", SECRET)
    finally:
        logger.removeHandler(handler)
    assert SECRET not in buf.getvalue() and "leaked *** into a log call" in buf.getvalue()
    prefect_handlers = [h for name in ("prefect", "prefect.flow_runs", "prefect.task_runs")
                        for h in logging.getLogger(name).handlers]
    assert prefect_handlers
    assert all(any(isinstance(f, storage.RedactingFilter) for f in h.filters) for h in prefect_handlers)


def test_hide_prefect_tracebacks_keeps_one_line_on_the_console():
    """Without --debug the CLI hides the traceback Prefect's engines log for a failed run (console handlers only);
    the message line stays, and other loggers keep their tracebacks."""
    import io

    from flows import _OneLineErrors, hide_prefect_tracebacks

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    engine, other = logging.getLogger("prefect.test_engine"), logging.getLogger("latentda.test_other")
    for lg in (engine, other):
        lg.addHandler(handler)
        lg.propagate = False
    try:
        def log_failure(logger):
            try:
                raise RuntimeError("boom in a task")
            except RuntimeError:
                logger.error("Encountered exception during execution: %s", "RuntimeError('boom in a task')",
                             exc_info=True)

        log_failure(engine)
        assert "Traceback" in buf.getvalue()  # before: Prefect's record carries the traceback
        assert hide_prefect_tracebacks() >= 1
        buf.truncate(0), buf.seek(0)
        log_failure(engine)
        assert "Encountered exception during execution" in buf.getvalue() and "Traceback" not in buf.getvalue()
        buf.truncate(0), buf.seek(0)
        log_failure(other)
        assert "Traceback" in buf.getvalue()
    finally:
        for lg in (engine, other):
            lg.removeHandler(handler)
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for h in getattr(lg, "handlers", []):  # the rest of the session sees Prefect's handlers as they were
                h.filters = [f for f in h.filters if not isinstance(f, _OneLineErrors)]
