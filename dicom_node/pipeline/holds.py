"""Open associations hold their studies' deadlines when several receivers share a queue.

Why: one receiver answers a sender's association, but a study's completion job is a row
in the shared database that any receiver may run (:mod:`dicom_node.pipeline.scheduler`).
The receiver that runs it sees the study's last arrival in the index, not the other
receivers' open associations. A sender holding its association while it pauses longer
than ``quiet_seconds`` between instances (slow links, 400-image series) would then see its
study completed under its feet. So every receiver, a few times per quiet period, moves the
deadline of each study that one of its open, active associations holds to "last PDU +
quiet": the job then finds a deadline ahead of it and waits. On a single node (SQLite) the
assembler asks the process's own sessions instead (``shared=False``: no refresh).

The same thread sweeps once a minute for ``receiving`` studies without a deadline: a
deadline whose write failed (the database briefly unreachable after the instance's row
was committed) would otherwise wait for the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from dicom_node.net.sessions import Sessions
from dicom_node.pipeline.scheduler import StudyScheduler

log = logging.getLogger(__name__)

#: How often receiving studies are checked for a missing deadline.
SWEEP_EVERY_S: Final = 60.0


class HoldRefresher:
    """A daemon thread that pushes held studies' completion deadlines ahead."""

    def __init__(
        self,
        sessions: Sessions,
        scheduler: StudyScheduler,
        quiet_s: float,
        *,
        shared: bool,
        sweep: Callable[[], int],
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.sessions = sessions
        self.scheduler = scheduler
        self.quiet_s = quiet_s
        self.shared = shared
        self.sweep = sweep
        self.sweep_every_s = sweep_every_s
        #: A third of the quiet period: a deadline is refreshed twice before it is due.
        self.every_s = min(5.0, max(0.2, quiet_s / 3))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ich-holds", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refresh(self, now: float | None = None) -> int:
        """Move each held study's deadline to its last PDU + quiet; returns how many moved."""
        now = time.time() if now is None else now
        moved = 0
        for uid, last_pdu in self.sessions.active_holds(self.quiet_s, now).items():
            due = max(last_pdu, now) + self.quiet_s
            current = self.scheduler.completion_time(uid)
            if current is None or current < due - self.every_s:
                self.scheduler.schedule_completion(uid, due)
                moved += 1
        return moved

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.sweep_every_s
        while not self._stop.wait(self.every_s if self.shared else 1.0):
            try:
                if self.shared:
                    self.refresh()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_every_s
                    self.sweep()
            except Exception as exc:  # noqa: BLE001 - next round tries again
                log.error("holds.refresh_failed", extra={"error": type(exc).__name__})

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
