"""Durable timers: a study's completion deadline and the retention sweep, via APScheduler.

Why a persistent job store: a node restarted mid-study must still complete that study
on time. Jobs live in an SQLAlchemy job store (``storage.jobs_db``, its own SQLite file,
so that job-store writes never wait on the C-STORE path's index lock). A job whose run
time passed while the node was down runs at start-up: ``misfire_grace_time=None``
(never too late) and ``coalesce=True`` (once, however many runs were missed).

Jobs name a module-level function by its text reference and carry only the study UID
and the runtime key (the config path): they must unpickle in a new process, where no
object of the old one exists.

Debounce: rewriting the job row for every image of a 500-slice study would cost more
than storing the image. :meth:`StudyScheduler.notify` rewrites it at most once per
``debounce_s`` per study; the job itself re-reads the study's last arrival and moves its
own deadline when images came later (see :func:`dicom_node.pipeline.assembly.run_complete_job`),
so no study completes before ``last instance + quiet``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.store.private import private_db_file, private_dir

log = logging.getLogger(__name__)

COMPLETE_FUNC: Final = "dicom_node.pipeline.assembly:run_complete_job"
RETENTION_FUNC: Final = "dicom_node.pipeline.assembly:run_retention_job"
RETENTION_JOB_ID: Final = "retention"
#: Text references that stored jobs of earlier releases name, and where each now lives.
#: Without this map APScheduler cannot restore such a job and deletes it: a study
#: pending completion or a result pending delivery would be dropped by an upgrade.
MOVED_FUNCS: Final = {
    "dicom_node.assembly:run_complete_job": COMPLETE_FUNC,
    "dicom_node.assembly:run_retention_job": RETENTION_FUNC,
    "dicom_node.delivery:run_delivery_job": "dicom_node.pipeline.delivery:run_delivery_job",
}


def job_key(study_uid: str) -> str:
    """The part of a job id that names a study: a digest, never the UID itself.

    APScheduler writes job ids into its own log lines (errors included, which no logger
    level hides), so an id must not carry a study UID.
    """
    return hashlib.sha256(study_uid.encode()).hexdigest()[:24]


def complete_job_id(study_uid: str) -> str:
    return f"complete:{job_key(study_uid)}"


class StudyScheduler:
    """Completion deadlines per study, kept in ``jobs_db`` across restarts."""

    def __init__(
        self,
        jobs_db: Path,
        *,
        quiet_seconds: float,
        runtime_key: str,
        debounce_s: float = 1.0,
        workers: int = 2,
    ) -> None:
        self.quiet_seconds = quiet_seconds
        self.runtime_key = runtime_key
        self.debounce_s = debounce_s
        private_dir(jobs_db.parent, tighten=False)
        private_db_file(jobs_db)
        self._jobs_db = jobs_db
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{jobs_db}")},
            # Deliveries get their own threads: a PACS timing out must never delay the
            # completion of studies.
            executors={
                "default": ThreadPoolExecutor(max_workers=workers),
                "delivery": ThreadPoolExecutor(max_workers=workers),
            },
            job_defaults={
                "coalesce": True,
                "misfire_grace_time": None,  # run however late: the node may have been down
                # Several runs of one study's job may overlap (a job moving its own
                # deadline); the index's guarded update makes that safe.
                "max_instances": 64,
            },
            timezone=UTC,
        )
        self._lock = threading.Lock()
        self._last_scheduled: dict[str, float] = {}
        # APScheduler's shutdown() holds its job-store lock while it waits for running
        # jobs; a running job that adds or removes a job (a deadline moving itself, a
        # delivery retry) would wait for that lock forever. The gate lets shutdown wait
        # for such a call to finish and refuses new ones once closing: what was not
        # rescheduled is rescheduled at the next start (receiving studies without a job).
        self._gate = threading.Lock()
        self._closing = False

    def start(self) -> None:
        """Start the timer thread; overdue jobs from the store run now."""
        moved = migrate_job_refs(self._jobs_db)
        if moved:
            log.info("scheduler.jobs_migrated", extra={"count": moved})
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop; with ``wait`` the running jobs finish first. Pending jobs stay stored."""
        with self._gate:
            self._closing = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    def _add_job(self, func: str, **kwargs: Any) -> bool:
        with self._gate:
            if self._closing:
                log.debug("scheduler.closing", extra={"job": kwargs.get("name", "")})
                return False
            self._scheduler.add_job(func, replace_existing=True, **kwargs)
            return True

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def notify(self, study_uid: str, received: float, *, force: bool = False) -> None:
        """An instance of ``study_uid`` arrived at ``received`` (epoch seconds).

        Moves the deadline to ``received + quiet`` unless it was moved less than
        ``debounce_s`` ago; ``force`` (new or reopened study) always moves it.
        """
        now = time.monotonic()
        with self._lock:
            last = self._last_scheduled.get(study_uid)
            if not force and last is not None and now - last < self.debounce_s:
                return
            self._last_scheduled[study_uid] = now
        self.schedule_completion(study_uid, received + self.quiet_seconds)

    def schedule_completion(self, study_uid: str, at: float) -> None:
        """(Re)place the one-shot ``complete:<digest>`` job to run at ``at`` (epoch seconds)."""
        self._add_job(
            COMPLETE_FUNC,
            trigger="date",
            run_date=datetime.fromtimestamp(at, UTC),
            args=[study_uid, self.runtime_key],
            id=complete_job_id(study_uid),
            name="complete",  # the name is logged by APScheduler: never a UID
        )

    def forget(self, study_uid: str) -> None:
        """Drop the debounce memory of a study (it completed)."""
        with self._lock:
            self._last_scheduled.pop(study_uid, None)

    def completion_time(self, study_uid: str) -> float | None:
        """When the study's completion job runs next (epoch seconds), if it has one."""
        job = self._scheduler.get_job(complete_job_id(study_uid))
        if job is None or job.next_run_time is None:
            return None
        return float(job.next_run_time.timestamp())

    def cancel_completion(self, study_uid: str) -> None:
        with self._gate, contextlib.suppress(JobLookupError):
            if not self._closing:
                self._scheduler.remove_job(complete_job_id(study_uid))
        self.forget(study_uid)

    def schedule_retention(self, interval_s: float) -> None:
        """The retention sweep, every ``interval_s`` seconds (first run one interval on)."""
        self._add_job(
            RETENTION_FUNC,
            trigger="interval",
            seconds=interval_s,
            args=[self.runtime_key],
            id=RETENTION_JOB_ID,
            name="retention",
        )

    def schedule_job(
        self, func: str, job_id: str, at: float, args: list[str], *, name: str
    ) -> None:
        """(Re)place a one-shot job ``func(*args)`` at ``at`` on the delivery executor.

        ``func`` is a text reference (``module:function``) so the job unpickles in a
        restarted node; ``name`` is logged by APScheduler, so it must never be a UID.
        """
        self._add_job(
            func,
            trigger="date",
            run_date=datetime.fromtimestamp(at, UTC),
            args=args,
            id=job_id,
            name=name,
            executor="delivery",
        )

    def has_job(self, job_id: str) -> bool:
        return self._scheduler.get_job(job_id) is not None


def migrate_job_refs(jobs_db: Path, moved: dict[str, str] = MOVED_FUNCS) -> int:
    """Point stored jobs that name a moved function at its new place; returns how many.

    Runs before the scheduler opens the store. APScheduler keeps each job as a pickled
    state dict whose ``func`` is the text reference; only that key is rewritten.
    """
    if not jobs_db.exists():
        return 0
    con = sqlite3.connect(jobs_db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "apscheduler_jobs" not in tables:
            return 0
        count = 0
        with con:
            for job_id, blob in con.execute(
                "SELECT id, job_state FROM apscheduler_jobs"
            ).fetchall():
                state = pickle.loads(blob)  # noqa: S301 - our own job store, as APScheduler reads it
                new = moved.get(state.get("func", ""))
                if new is None:
                    continue
                state["func"] = new
                con.execute(
                    "UPDATE apscheduler_jobs SET job_state = ? WHERE id = ?",
                    (pickle.dumps(state, pickle.HIGHEST_PROTOCOL), job_id),
                )
                count += 1
        return count
    finally:
        con.close()
