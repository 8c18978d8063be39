"""Small runtime helpers shared by the archive, the backfill loop, the prior and the pipeline: day normalisation,
content hashes, the git commit of the checkout, and a scoped torch thread count.

Standard library, numpy and pandas only (torch is imported inside :func:`torch_threads` when used).
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

__all__ = ["to_days", "table_hash", "git_sha", "torch_threads", "deep_merge"]


def to_days(values: Any) -> list[pd.Timestamp]:
    """Normalise a date, string or iterable of them to a list of midnight Timestamps (no time zone)."""
    if isinstance(values, (str, _dt.date, np.datetime64, pd.Timestamp)):
        values = [values]
    out = []
    for v in values:
        t = pd.Timestamp(v)
        if t.tzinfo is not None:
            t = t.tz_convert("UTC").tz_localize(None)
        out.append(t.normalize())
    return out


def table_hash(df: pd.DataFrame) -> str:
    """sha256 of a table's content (column names, dtypes and values, row order included), hex."""
    h = hashlib.sha256()
    cols = list(df.columns)
    h.update(json.dumps([[str(c), str(df[c].dtype)] for c in cols]).encode())
    if len(df):
        h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()



@functools.lru_cache(maxsize=8)
def git_sha(start: str | None = None) -> str:
    """The commit of the checkout holding this package (read from .git without running git); 'unknown' if none."""
    here = Path(start or __file__).resolve()
    for d in [here, *here.parents]:
        g = d / ".git"
        if g.is_file():  # worktree: "gitdir: PATH"
            txt = g.read_text().strip()
            if txt.startswith("gitdir:"):
                g = (d / txt.split(":", 1)[1].strip()).resolve()
        if not g.is_dir():
            continue
        try:
            head = (g / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head
            ref = head.split(":", 1)[1].strip()
            for base in (g, _common_dir(g)):
                p = base / ref
                if p.is_file():
                    return p.read_text().strip()
                packed = base / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            return line.split()[0]
        except OSError:
            return "unknown"
        return "unknown"
    return "unknown"


def _common_dir(g: Path) -> Path:
    c = g / "commondir"
    return (g / c.read_text().strip()).resolve() if c.is_file() else g


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (process-wide; restored afterwards). None: unchanged.

    Always calls ``torch.set_num_threads(n)``, even when ``torch.get_num_threads()`` already says ``n``: that
    reports OpenMP's count (which threadpoolctl or ``OMP_NUM_THREADS`` may have lowered), while the MKL linked into
    torch keeps the count of the last ``set_num_threads``; its GEMMs then round differently (measured: a day's
    analysis changed in the last bits after an earlier ``set_num_threads(2)`` in the same process).
    """
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (``update`` wins; None values in ``update`` are skipped)."""
    out = copy.deepcopy(dict(base))
    for k, v in (update or {}).items():
        if v is None:
            continue
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (pd.Timestamp, np.datetime64)):
        return str(obj)
    return str(obj)


def to_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, numpy scalars/arrays converted, anything else as str)."""
    return json.dumps(obj, sort_keys=True, default=_json_default)
