"""Create a new store so that concurrent creators never see a half-made one (issue 11 item 5).

Local paths: the store is written complete under a temporary sibling name (``.<name>.creating-XXXX``) and renamed
into place with one ``os.rename``, which is atomic on a POSIX file system and fails when another process already
renamed its copy there (``ENOTEMPTY``/``EEXIST``): exactly one creator wins, the others find a complete store.
Object stores have no rename: the store is created with Zarr's create-if-absent mode (``w-``), so a second creator
gets "exists" instead of deleting the first one's group (``mode="w"`` did that: issue 11 finding 6), and
:func:`wait_until` lets it wait for the winner to finish. No orchestration import.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable

from . import storage

__all__ = ["create_local", "create_remote", "wait_until", "ALREADY_EXISTS"]


def _already_exists_errors() -> tuple[type[BaseException], ...]:
    from zarr.errors import ContainsArrayError, ContainsGroupError

    return (FileExistsError, ContainsGroupError, ContainsArrayError)


#: What Zarr raises when ``mode="w-"`` finds a store (filled lazily: zarr is imported on first use).
ALREADY_EXISTS: tuple[type[BaseException], ...] = ()


def _local_path(url: str) -> str:
    return storage.strip_protocol(url) if str(url).startswith("file://") else str(url)


def create_local(url: str, write: Callable[[str], None], replace_stale: bool = False) -> bool:
    """Create the local store ``url`` by ``write(tmp_path)`` into a temporary sibling, then one atomic rename.

    ``replace_stale``: a half-made store at ``url`` (no day written) is moved aside and removed first. Returns True
    if this call created the store, False if another process's store got there first (ours is discarded).
    """
    path = os.path.abspath(_local_path(url))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.creating-", dir=parent)
    try:
        write(tmp)
        if replace_stale:
            aside = f"{path}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, aside)
                shutil.rmtree(aside, ignore_errors=True)
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, path)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def create_remote(write: Callable[[], None]) -> bool:
    """Run ``write()`` (a Zarr ``mode="w-"`` write of the store); False if the store already exists (another
    creator was first), True if this call created it."""
    global ALREADY_EXISTS
    if not ALREADY_EXISTS:
        ALREADY_EXISTS = _already_exists_errors()
    try:
        write()
    except ALREADY_EXISTS:
        return False
    return True


def wait_until(ready: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.2) -> bool:
    """Poll ``ready()`` until it is true or ``timeout_s`` passed; returns its last value (errors count as
    not ready: the other creator may be half-way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return True
        except Exception:  # noqa: BLE001 - a store being created can fail to open in many ways
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
