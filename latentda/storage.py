"""Where bytes live: local paths and fsspec URLs (``s3://``, ``gs://``, ``memory://`` ...), and keeping secrets out.

No orchestration imports: only the standard library, fsspec (and zarr for :func:`zarr_store`).

The archive, the training data and the prior checkpoint can each be a local path or a URL.  For S3 the
credentials come, in this order, from

1. ``storage_options`` given with the URL (``key``, ``secret``, ``token``, ``endpoint_url`` or
   ``client_kwargs: {endpoint_url: ...}``), then
2. the standard AWS environment variables ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
   ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``), ``AWS_DEFAULT_REGION``, then
3. whatever else botocore finds (``~/.aws/credentials``, ``AWS_PROFILE``, an instance role).

Prefer 2 or 3: credentials kept in the environment never enter a run config, a flow parameter, a log line, a
provenance attribute or a catalog.  Whatever does carry credentials goes through :func:`redact` before it is
written anywhere; :class:`RedactingFilter` is a last line of defence for log records (``flows.install_log_redaction``
puts it on every handler of a flow process).
"""
from __future__ import annotations

import copy

import logging
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec
from fsspec.utils import get_protocol

__all__ = [
    "MASK",
    "bucket_of",
    "name_buckets",
    "RedactingFilter",
    "filesystem",
    "get_mapper",
    "is_remote",
    "is_sensitive_key",
    "join",
    "open",
    "redact",
    "resolve_storage_options",
    "strip_protocol",
    "zarr_store",
]

MASK = "***"

_LOCAL_PROTOCOLS = frozenset({"file", "local"})

# Keys whose values are secrets.  Names are compared lower-case with '-' and ' ' read as '_'; a key is secret
# when it is one of _SECRET_EXACT or when one of its '_'-separated parts spells one of _SECRET_PARTS
# (``aws_secret_access_key`` -> 'secret'; ``x-amz-security-token`` -> 'token'), so 'chunk_key_encoding',
# 'keys' or 'tokenizer' are left alone.
_SECRET_EXACT = frozenset({
    "key", "auth", "authorization", "connection_string", "sas", "sig", "signature", "pwd", "passwd",
    "aws_access_key_id", "access_key_id", "account_key", "client_secret", "private_key", "api_key", "apikey",
    "x_amz_credential", "x_amz_signature", "x_amz_security_token",
})
_SECRET_PARTS = ("secret", "password", "passwd", "token", "credential", "credentials", "signature",
                 "apikey", "api_key", "access_key", "private_key", "account_key", "session_token")

# Environment variables whose values must never be written anywhere, even inside free text.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                   "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON")
_MIN_SCRUB_LEN = 8  # shorter env values ("testing") would mangle ordinary words


def _norm(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", str(name).strip().lower())


def is_sensitive_key(name: Any) -> bool:
    """True when a mapping key or query parameter named ``name`` holds a secret (``secret``, ``key``, ...)."""
    if not isinstance(name, str):
        return False
    n = _norm(name)
    if n in _SECRET_EXACT:
        return True
    return any(re.search(rf"(^|_){re.escape(p)}(_|$)", n) for p in _SECRET_PARTS)


# --------------------------------------------------------------------------------------------- URLs / fsspec
def is_remote(url: str | os.PathLike) -> bool:
    """True for an fsspec URL that is not the local file system (``s3://b/k``, ``memory://x``, ``gs://...``).

    Plain paths, ``file://`` URLs and chained local URLs are not remote.
    """
    s = os.fspath(url)
    if "://" not in s:
        return False
    # chained URLs ("simplecache::s3://bucket/key"): remote when any link names a non-local protocol
    protocols = [part.split("://", 1)[0].lower() for part in s.split("::") if "://" in part]
    return any(p not in _LOCAL_PROTOCOLS for p in protocols)


def bucket_of(url: str | os.PathLike) -> str | None:
    """The bucket (first path element after the protocol) of a remote URL: ``s3://b/k/x.zarr`` -> ``b``;
    None for a local path."""
    s = os.fspath(url)
    if not is_remote(s):
        return None
    last = [part for part in s.split("::") if "://" in part][-1]
    return last.split("://", 1)[1].split("/", 1)[0] or None


def name_buckets(message: str, urls: Mapping[str, str | None]) -> str:
    """``message`` plus the object-store bucket(s) it may concern, for an error raised deep in s3fs/zarr that does
    not name one: ``urls`` maps a role (``archive``, ``prior``, ...) to its URL; local and None URLs are left out,
    and nothing is added when the message already names every bucket."""
    named: dict[str, list[str]] = {}
    for role, url in urls.items():
        b = bucket_of(url) if url else None
        if b:
            named.setdefault(b, []).append(f"{role} {redact(url)}")
    missing = {b: roles for b, roles in named.items() if b not in message}
    if not missing:
        return message
    return message + " [object store: " + "; ".join(f"bucket {b!r} ({', '.join(r)})" for b, r in missing.items()) + "]"


def strip_protocol(url: str | os.PathLike) -> str:
    """The path part of ``url`` as its file system sees it (``s3://b/k`` -> ``b/k``; ``file:///x`` -> ``/x``)."""
    s = os.fspath(url)
    fs_cls = fsspec.get_filesystem_class(get_protocol(s))
    return fs_cls._strip_protocol(s)


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a local path or a URL (never ``os.path.join`` a URL: it breaks on Windows)."""
    s = os.fspath(base)
    if not is_remote(s):
        return os.path.join(s, *parts)
    return "/".join([s.rstrip("/"), *(p.strip("/") for p in parts)])


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def resolve_storage_options(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
                            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fsspec storage options to open ``url`` with: ``storage_options`` completed from the environment.

    For ``s3://`` URLs, a missing ``key``/``secret``/``token``/``endpoint_url`` is taken from the standard AWS
    variables (see the module docstring); explicit options win.  ``anon: true`` suppresses credentials.  The
    directory-listing cache is off unless asked for (``use_listings_cache``): the archive is written by other
    processes.  Other protocols get their options unchanged.  The result holds secrets: pass it to fsspec, never log it
    (``redact(result)`` first).

    Raises
    ------
    TypeError
        when ``storage_options`` is not a mapping.
    """
    if storage_options is None:
        storage_options = {}
    if not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a mapping such as {{'anon': True}}, got "
                        f"{type(storage_options).__name__}; fix the archive/data section of the run config")
    opts: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in storage_options.items()}
    s = os.fspath(url)
    if get_protocol(s) not in ("s3", "s3a"):
        return opts
    e = _env(env)
    client_kwargs = dict(opts.get("client_kwargs") or {})
    endpoint = opts.pop("endpoint_url", None) or client_kwargs.get("endpoint_url") \
        or e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
        client_kwargs.pop("endpoint_url", None)
    region = client_kwargs.get("region_name") or e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    # Other processes write the archive: a cached directory listing would hide arrays and chunks they add
    # (a reader that listed a Zarr group while it was being created kept seeing it empty). Opt back in with
    # use_listings_cache: true for read-only data that never changes.
    opts.setdefault("use_listings_cache", False)
    if opts.get("anon"):
        return opts
    # s3fs spells them key/secret/token; accept the boto spellings too.
    for boto_name, s3fs_name in (("aws_access_key_id", "key"), ("aws_secret_access_key", "secret"),
                                 ("aws_session_token", "token")):
        if boto_name in opts:
            opts.setdefault(s3fs_name, opts.pop(boto_name))
    if "profile" not in opts:
        for env_name, s3fs_name in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                                    ("AWS_SESSION_TOKEN", "token")):
            if s3fs_name not in opts and e.get(env_name):
                opts[s3fs_name] = e[env_name]
    return opts


def filesystem(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
               env: Mapping[str, str] | None = None):
    """``(fs, path)``: the fsspec file system for ``url`` (credentials resolved) and the path inside it."""
    s = os.fspath(url)
    opts = resolve_storage_options(s, storage_options, env)
    fs, path = fsspec.core.url_to_fs(s, **opts)
    return fs, path


def get_mapper(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
               create: bool = False, env: Mapping[str, str] | None = None):
    """An fsspec key/value mapper over ``url`` (for libraries that want a MutableMapping)."""
    s = os.fspath(url)
    return fsspec.get_mapper(s, create=create, **resolve_storage_options(s, storage_options, env))


def open(url: str | os.PathLike, mode: str = "rb", storage_options: Mapping[str, Any] | None = None,
         env: Mapping[str, str] | None = None, **kwargs):  # noqa: A001 - mirrors fsspec.open
    """``fsspec.open`` with resolved storage options; use as ``with storage.open(url, "rb") as f: ...``.

    Writes to object storage become visible when the file is closed (one PUT), so a reader never sees a
    half-written checkpoint.
    """
    s = os.fspath(url)
    return fsspec.open(s, mode, **resolve_storage_options(s, storage_options, env), **kwargs)


def exists(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
           env: Mapping[str, str] | None = None) -> bool:
    """Whether ``url`` (a file or a directory/prefix) exists."""
    fs, path = filesystem(url, storage_options, env)
    return fs.exists(path)


def zarr_store(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
               read_only: bool = False, env: Mapping[str, str] | None = None):
    """What to give ``xr.open_zarr``/``to_zarr``/``zarr.open``: a path string locally, an ``FsspecStore`` for a URL."""
    s = os.fspath(url)
    if not is_remote(s):
        return strip_protocol(s) if s.startswith("file://") else s
    from zarr.storage import FsspecStore  # zarr 3

    return FsspecStore.from_url(s, storage_options=resolve_storage_options(s, storage_options, env),
                                read_only=read_only)


# ----------------------------------------------------------------------------------------------- redaction
_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@]+):(?P<pw>[^\s/@]+)@")
# name=value / "name": "value" / 'name': 'value' / name: value inside free text (JSON, YAML, repr, queries)
_KV_RE = re.compile(
    r"""(?P<q1>["']?)(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)(?P=q1)(?P<sep>\s*[:=]\s*)"""
    r"""(?P<q2>["']?)(?P<value>[^"'\s,;&}\])]+)(?P=q2)""")


def _secret_env_values(env: Mapping[str, str] | None) -> list[str]:
    e = _env(env)
    vals = [e.get(n, "") for n in SECRET_ENV_VARS]
    return sorted({v for v in vals if v and len(v) >= _MIN_SCRUB_LEN}, key=len, reverse=True)


def _redact_str(s: str, secrets: list[str]) -> str:
    for v in secrets:
        s = s.replace(v, MASK)
    s = _URL_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", s)

    def kv(m: re.Match) -> str:
        if not is_sensitive_key(m["name"]) or m["value"] == MASK:
            return m.group(0)
        return f"{m['q1']}{m['name']}{m['q1']}{m['sep']}{m['q2']}{MASK}{m['q2']}"

    s = _KV_RE.sub(kv, s)
    if "?" in s and "://" in s and " " not in s:  # a single URL: mask secret query parameters
        try:
            parts = urlsplit(s)
            if parts.query:
                q = [(k, MASK if is_sensitive_key(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
                s = urlunsplit(parts._replace(query=urlencode(q, safe="*")))
        except ValueError:
            pass
    return s


def redact(obj: Any, *, extra_secrets: list[str] | tuple[str, ...] = (), env: Mapping[str, str] | None = None,
           mask: str = MASK) -> Any:
    """A copy of ``obj`` safe to log, store as provenance or write into a catalog.

    - mapping keys that name secrets (``key``, ``secret``, ``token``, ``password``, ``aws_secret_access_key``,
      ``client_secret``, ... any nesting depth) get their value replaced by ``"***"``;
    - in strings, URL passwords (``s3://user:pw@host``), secret query parameters (``?X-Amz-Signature=``) and
      ``name=value`` / ``"name": "value"`` pairs with a secret name are masked;
    - the values of secret environment variables (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; 8+
      characters) and of ``extra_secrets`` are masked wherever they appear.

    Mappings, lists, tuples and sets are rebuilt; pydantic models are dumped first; other objects (numbers,
    arrays) are returned as they are.  ``obj`` itself is never modified.
    """
    secrets = sorted({s for s in extra_secrets if s} | set(_secret_env_values(env)), key=len, reverse=True)
    return _redact(obj, secrets, mask)


def _redact(obj: Any, secrets: list[str], mask: str) -> Any:
    if isinstance(obj, str):
        out = _redact_str(obj, secrets)
        return out if mask == MASK else out.replace(MASK, mask)
    if isinstance(obj, bytes):
        return obj
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic v2 model
        obj = obj.model_dump()
    if isinstance(obj, Mapping):
        return {k: (mask if is_sensitive_key(k) and v not in (None, "", {}) else _redact(v, secrets, mask))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_redact(v, secrets, mask) for v in obj]
        if isinstance(obj, list):
            return items
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, os.PathLike):
        return _redact(os.fspath(obj), secrets, mask)
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through :func:`redact` (message and arguments).

    ``logging.getLogger("prefect").addFilter(RedactingFilter())`` or on a handler, so that a secret that slipped
    into a log call is masked before any handler (console, Prefect API) sees it.
    """

    def __init__(self, extra_secrets: list[str] | tuple[str, ...] = (), name: str = ""):
        super().__init__(name)
        self.extra_secrets = tuple(extra_secrets)

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        red = redact(msg, extra_secrets=self.extra_secrets)
        if red != msg:
            record.msg, record.args = red, None
        return True


def redact_storage_options(opts: Mapping[str, Any] | None) -> dict[str, Any]:
    """``opts`` without the keys that hold secrets (key, secret, token, password, ...; nested too)."""
    out: dict[str, Any] = {}
    for k, v in (opts or {}).items():
        if is_sensitive_key(k):
            continue
        out[k] = redact_storage_options(v) if isinstance(v, Mapping) else copy.deepcopy(v)
    return out
