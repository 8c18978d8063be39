"""The Icechunk engine of the reanalysis archive (``archive.engine: icechunk``; ARCHITECTURE.md, "the archive
protocol"): the same template, layout, CF attributes and done flags as the Zarr store, kept in an Icechunk
repository whose branch ``main`` only ever moves by whole commits.

- Readers open the last commit of ``main`` (:func:`read_store`): they never see a half-written day.
- The commit unit is a block of days: the block task opens one writable session (:func:`writable_session`),
  forks it once per day (``session.fork()``, pickled to a Dask worker, written there with the ordinary region
  writes of :func:`latentda.archive.write_day`, pickled back), merges the forks of the days that succeeded and
  commits once (:func:`commit`). A crash before the commit loses only that block's days; their done flags were
  never committed, so the next run redoes exactly those.
- Without a session (the plain library loop) :func:`latentda.archive.write_day` commits each day on its own.
- Concurrent, uncooperative writers (two backfills of one archive): a commit that finds ``main`` moved is rebased
  and retried (``BasicConflictSolver``, the committing writer's chunks win; a day's bytes are the same whoever
  writes it). Icechunk's local file-system storage cannot update a branch atomically between processes, so local
  commits (and creation) are serialised by an exclusive ``flock`` on the sibling file ``.<repo name>.commit-lock``
  (Icechunk creates repositories only in empty directories); object stores use Icechunk's own conditional
  writes.

Storage: a local path, or ``s3://bucket/prefix`` with the archive's ``storage_options`` (``key``, ``secret``,
``token``, ``endpoint_url``, ``client_kwargs.region_name``; the AWS environment variables fill in what is missing,
as for the Zarr store: :func:`latentda.storage.resolve_storage_options`). Time travel: every commit is a snapshot
(``icechunk.Repository.ancestry``, ``readonly_session(snapshot_id=...)``); :func:`history` lists them.
No orchestration import.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit

from . import storage

__all__ = ["BRANCH", "is_repository", "may_create_in", "repository_storage", "open_repository", "read_store",
           "writable_session", "commit", "create", "history"]

BRANCH = "main"
_LOGS = {"quiet": False}


def _icechunk():
    import icechunk

    if not _LOGS["quiet"] and "ICECHUNK_LOG" not in os.environ:
        icechunk.set_logs_filter("error")  # its warning about concurrent local commits is handled here (flock)
        _LOGS["quiet"] = True
    return icechunk


def _local_path(url: str) -> str:
    return os.path.abspath(storage.strip_protocol(url) if str(url).startswith("file://") else str(url))


def is_repository(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when ``url`` holds an Icechunk repository (its ``refs`` and ``snapshots`` prefixes), else False."""
    if not storage.is_remote(url):
        p = _local_path(url)
        return os.path.isdir(os.path.join(p, "refs")) and os.path.isdir(os.path.join(p, "snapshots"))
    return storage.exists(storage.join(url, "refs"), storage_options or None) and \
        storage.exists(storage.join(url, "snapshots"), storage_options or None)


#: What a local repository directory holds (Icechunk's prefixes and the commit lock): anything else is foreign.
_REPO_ENTRIES = frozenset({"refs", "snapshots", "manifests", "transactions", "chunks", "config.yaml"})


def may_create_in(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether an existing ``url`` that is no repository yet may become one: a local directory holding nothing
    but Icechunk's entries (another creator half-way), or a prefix without a Zarr ``zarr.json``."""
    if storage.is_remote(url):
        return not storage.exists(storage.join(url, "zarr.json"), storage_options or None)
    p = _local_path(url)
    return os.path.isdir(p) and set(os.listdir(p)) <= _REPO_ENTRIES


def repository_storage(url: str, storage_options: Mapping[str, Any] | None = None):
    """Icechunk's ``Storage`` for ``url``: local file system, or S3 built from the archive's storage options.

    ValueError naming the URL for another protocol (Icechunk 1.1 here is wired for local paths and S3)."""
    ic = _icechunk()
    if not storage.is_remote(url):
        return ic.local_filesystem_storage(_local_path(url))
    parts = urlsplit(str(url))
    if parts.scheme not in ("s3", "s3a"):
        raise ValueError(f"archive.engine icechunk supports local paths and s3:// URLs, not "
                         f"{storage.redact(str(url))!r}; use archive.engine: zarr for other object stores")
    opts = storage.resolve_storage_options(url, storage_options)
    endpoint = opts.get("endpoint_url")
    region = (opts.get("client_kwargs") or {}).get("region_name")
    anonymous = bool(opts.get("anon"))
    return ic.s3_storage(bucket=parts.netloc, prefix=parts.path.strip("/") or None, region=region or "us-east-1",
                         endpoint_url=endpoint, allow_http=bool(endpoint and endpoint.startswith("http://")),
                         access_key_id=None if anonymous else opts.get("key"),
                         secret_access_key=None if anonymous else opts.get("secret"),
                         session_token=None if anonymous else opts.get("token"),
                         anonymous=anonymous or None, force_path_style=bool(endpoint))


def open_repository(url: str, storage_options: Mapping[str, Any] | None = None):
    """The ``icechunk.Repository`` at ``url`` (FileNotFoundError naming it when there is none)."""
    ic = _icechunk()
    st = repository_storage(url, storage_options)
    if not ic.Repository.exists(st):
        raise FileNotFoundError(f"no Icechunk repository at {storage.redact(str(url))!r}")
    return ic.Repository.open(st)


def read_store(url: str, storage_options: Mapping[str, Any] | None = None, snapshot_id: str | None = None):
    """A read-only Zarr store of the last commit of ``main`` (or of ``snapshot_id``: time travel)."""
    repo = open_repository(url, storage_options)
    if snapshot_id:
        return repo.readonly_session(snapshot_id=snapshot_id).store
    return repo.readonly_session(branch=BRANCH).store


def writable_session(url: str, storage_options: Mapping[str, Any] | None = None):
    """A writable session on ``main``: fork it per day (``session.fork()``), then :func:`commit`."""
    return open_repository(url, storage_options).writable_session(BRANCH)


@contextlib.contextmanager
def _commit_lock(url: str) -> Iterator[None]:
    """Exclusive lock of a local repository's commits (a no-op on an object store)."""
    if storage.is_remote(url):
        yield
        return
    parent, name = os.path.split(_local_path(url))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(os.path.join(parent, f".{name}.commit-lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def commit(url: str, session, message: str, forks: list | tuple = ()) -> str | None:
    """Merge ``forks`` (``ForkSession`` objects that were written) into ``session`` and commit it to ``main``.

    If another writer committed meanwhile, the session is rebased on it and the commit retried (its chunks win
    where both wrote the same day: the same bytes). Returns the new snapshot id, or None when nothing changed
    (every day of the block was already done)."""
    ic = _icechunk()
    if forks:
        session.merge(*forks)
    if not session.has_uncommitted_changes:
        return None
    with _commit_lock(url):
        return session.commit(message, rebase_with=ic.BasicConflictSolver(
            on_chunk_conflict=ic.VersionSelection.UseOurs))


def create(url: str, storage_options: Mapping[str, Any] | None, is_initialised: Callable[[Any], bool],
           write_template: Callable[[Any], None]) -> bool:
    """Create the repository at ``url`` (or open the one there) and commit the template in one commit.

    ``is_initialised(store)``: whether a store already holds a complete archive; ``write_template(store)`` writes
    it (metadata only). Returns True if this call committed the template, False if the repository already held
    one (another creator was first: the caller checks it against its spec). A repository left by a crash before
    its first commit holds no archive yet and is completed here."""
    ic = _icechunk()
    st = repository_storage(url, storage_options)
    with _commit_lock(url):
        try:
            repo = ic.Repository.open(st) if ic.Repository.exists(st) else ic.Repository.create(st)
        except ic.IcechunkError:  # created by another process at the same moment (object store): open it
            repo = ic.Repository.open(st)
        if is_initialised(repo.readonly_session(branch=BRANCH).store):
            return False
        session = repo.writable_session(BRANCH)
        write_template(session.store)
        try:
            session.commit("create the archive (template, metadata only)")
        except ic.ConflictError:  # another creator committed its template first
            return False
    return True


def history(url: str, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The commits of ``main``, newest first: ``{"id", "written_at", "message"}`` (time travel: open one with
    :func:`read_store` ``(url, snapshot_id=id)`` or :func:`latentda.archive.open_archive` ``(..., snapshot=id)``)."""
    repo = open_repository(url, storage_options)
    return [{"id": s.id, "written_at": s.written_at, "message": s.message} for s in repo.ancestry(branch=BRANCH)]
