"""Per-day progress of a backfill: a terminal bar (tqdm) and a Prefect progress artifact (days done / total)."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class DayProgress:
    """Counts finished days; ``with DayProgress(total, bar=True) as p: ... p.day_done(day, error)``.

    The Prefect progress artifact (``backfill-progress``) is created when a flow run is active and updated as days
    finish; the bar is shown when ``bar`` is true. Failed days count as finished (they are reported separately).
    """

    #: Seconds between two updates of the Prefect artifact (each is a call to the API; the last day always updates).
    ARTIFACT_INTERVAL_S = 2.0

    def __init__(self, total: int, bar: bool = True) -> None:
        self.total, self.done, self.failed = int(total), 0, 0
        self._last_update = 0.0
        self._bar = None
        self._artifact = None
        if bar and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="backfill", unit="day")

    def __enter__(self) -> "DayProgress":
        if self.total:
            try:
                from prefect.artifacts import create_progress_artifact

                self._artifact = create_progress_artifact(
                    progress=0.0, key="backfill-progress",
                    description=f"days assimilated of {self.total} to do in this run")
            except Exception as err:  # noqa: BLE001 - no flow run / API: the bar and logs still report
                log.debug("no progress artifact: %s", err)
        return self

    def day_done(self, day: str, error: BaseException | None = None) -> None:
        """One day finished (``error``: it failed)."""
        self.done += 1
        self.failed += error is not None
        if self._bar is not None:
            self._bar.update(1)
            if self.failed:
                self._bar.set_postfix(failed=self.failed)
        now = time.monotonic()
        due = self.done == self.total or now - self._last_update >= self.ARTIFACT_INTERVAL_S
        if self._artifact is not None and due:
            self._last_update = now
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=100.0 * self.done / self.total)
            except Exception as err:  # noqa: BLE001 - progress is best effort, never fails the run
                log.debug("progress artifact not updated: %s", err)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
