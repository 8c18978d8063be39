"""Per-day progress of a backfill (flows/progress.py): the Prefect progress artifact is created, updated as days
finish (at most every ARTIFACT_INTERVAL_S seconds, always on the last day) and reaches 100 %."""
from __future__ import annotations

import prefect.artifacts as artifacts

from flows.progress import DayProgress


def _fake_artifacts(monkeypatch) -> list[float]:
    updates: list[float] = []
    monkeypatch.setattr(artifacts, "create_progress_artifact", lambda progress, key, description: "artifact-id")
    monkeypatch.setattr(artifacts, "update_progress_artifact", lambda aid, progress: updates.append(progress))
    return updates


def test_progress_artifact_throttled_and_complete(monkeypatch):
    updates = _fake_artifacts(monkeypatch)
    with DayProgress(5, bar=False) as p:
        for d in range(5):
            p.day_done(f"2005-01-0{d + 1}", RuntimeError("x") if d == 2 else None)
    assert p.done == 5 and p.failed == 1
    assert updates == [20.0, 100.0]  # the first day (the interval had passed), then only the last


def test_progress_artifact_every_day_without_throttle(monkeypatch):
    updates = _fake_artifacts(monkeypatch)
    monkeypatch.setattr(DayProgress, "ARTIFACT_INTERVAL_S", 0.0)
    with DayProgress(4, bar=False) as p:
        for d in range(4):
            p.day_done(f"2005-01-0{d + 1}")
    assert updates == [25.0, 50.0, 75.0, 100.0]
