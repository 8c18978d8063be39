"""Quality control of observations against the prior ensemble (background check) and QC bookkeeping.

Row-level checks (non-finite values, impossible coordinates, duplicates, unknown variables, other days) are done by
:func:`latentda.obs.schema.validate_observations`. This module adds the *gross departure* (background) check

    reject row k  if  |y_k - H(x̄_b)_k| > k_qc * sqrt(sigma_k^2 + var_b(H x)_k)

where ``x̄_b`` is the prior (background) ensemble mean, ``sigma_k`` the observation error standard deviation and
``var_b(H x)_k`` the background variance at the observation (ensemble variance plus any representation-error
variance; :func:`latentda.da.assimilate` floors it at the climatological variance), with reason
``"gross_departure"``. Rejected rows keep their row and get a reason, never dropped silently.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from .schema import QC_OK, QC_REASONS


class AllObservationsRejected(ValueError):
    """A day's observations were present but every one was rejected by QC (policy
    ``AssimilationOptions.on_all_rejected="fail"``). ``counts``: rows per QC reason, as :func:`qc_counts`."""

    def __init__(self, day: str, counts: Mapping[str, int]) -> None:
        self.day, self.counts = str(day), dict(counts)
        n = sum(v for k, v in self.counts.items() if k not in ("used", "wrong_time"))
        super().__init__(day, self.counts)
        self._msg = (f"all {n} observation(s) of {self.day} were rejected by QC ({format_counts(self.counts)}); "
                     "fix the observations, or set assimilation.options.on_all_rejected: prior to write the day "
                     "from the prior alone")

    def __str__(self) -> str:
        return self._msg


def format_counts(counts: Mapping[str, int]) -> str:
    """``"lat_out_of_range: 30, wrong_time: 2"``: the QC reasons with their row counts, largest first, ``used``
    left out; ``"none"`` when no row was rejected."""
    items = sorted(((k, int(v)) for k, v in counts.items() if k != "used" and v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k}: {v}" for k, v in items) or "none"


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float; ValueError unless it is a positive number (``inf`` disables the check)."""
    try:
        k = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"qc_threshold={threshold!r} must be a positive number (use float('inf') to disable "
                         "the gross departure check)") from None
    if math.isnan(k) or k <= 0:
        raise ValueError(f"qc_threshold={threshold!r} must be a positive number (use float('inf') to disable "
                         "the gross departure check)")
    return k


def gross_departure_mask(departure: np.ndarray, obs_variance: np.ndarray, background_variance: np.ndarray,
                         threshold: float) -> np.ndarray:
    """Boolean mask (n,) of gross departures: ``|d| > threshold * sqrt(sigma^2 + var_b)``.

    ``departure``: y - H(x̄_b), (n,) physical units; ``obs_variance``: sigma^2 (n,); ``background_variance``:
    var_b(H x) (n,), same units squared. Non-finite departures are flagged too.
    """
    departure = np.asarray(departure, dtype=np.float64)
    scale = np.sqrt(np.asarray(obs_variance, dtype=np.float64) + np.asarray(background_variance, dtype=np.float64))
    k = check_threshold(threshold)
    if departure.shape != scale.shape:
        raise ValueError(f"departure shape {departure.shape} != variance shape {scale.shape}")
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(departure) | (np.abs(departure) > k * scale)


def mark(table: pd.DataFrame, rows: np.ndarray, mask: np.ndarray, reason: str) -> pd.DataFrame:
    """Set ``qc = reason`` on ``table`` rows ``rows[mask]`` that are still usable (in place; returns ``table``)."""
    if reason not in QC_REASONS:
        raise ValueError(f"unknown QC reason {reason!r}; known reasons: {sorted(QC_REASONS)}")
    rows = np.asarray(rows)[np.asarray(mask, dtype=bool)]
    if rows.size:
        col = table["qc"].to_numpy(dtype=object).copy()
        sel = rows[col[rows] == QC_OK]
        col[sel] = reason
        table["qc"] = col.astype(str)
    return table


def qc_counts(table: pd.DataFrame) -> dict[str, int]:
    """Counts of rows per QC reason, ``used`` for usable rows; every reason that occurs is listed."""
    counts = table["qc"].replace({QC_OK: "used"}).value_counts()
    out = {str(k): int(v) for k, v in counts.items()}
    out.setdefault("used", 0)
    return dict(sorted(out.items()))


def rejected_count(table: pd.DataFrame, exclude: Mapping[str, object] | tuple[str, ...] = ("wrong_time",)) -> int:
    """Rows rejected by QC, not counting the reasons in ``exclude`` (by default rows of other days)."""
    qc = table["qc"].to_numpy(dtype=object)
    return int(np.sum((qc != QC_OK) & ~np.isin(qc, list(exclude))))
