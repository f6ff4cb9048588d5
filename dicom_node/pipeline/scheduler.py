"""Durable timers of a node: a study's completion deadline, delivery retries, retention.

Why durable: a node restarted mid-study must still complete that study on time, and a
result pending delivery must still be retried. Timers are rows of a ``timers`` table
(:mod:`dicom_node.pipeline.timers`), not APScheduler jobs: APScheduler 3 says its job
stores must never be shared between schedulers, and on PostgreSQL several processes
share the timers, each claiming due rows with ``FOR UPDATE SKIP LOCKED`` under a lease,
so a deadline or a retry survives the loss of any one process. SQLite (the single-node
default) and PostgreSQL run the same code: one mechanism for both.

Where the table lives (:func:`jobs_url`): on a single node, its own SQLite file
(``storage.jobs_db``), so that timer writes never wait on the C-STORE path's index lock;
with the index on PostgreSQL, in the index's database, shared by every process.

A timer overdue at start (the node was down) runs at once, and once however many runs it
missed. Jobs name a module-level function by text reference and carry plain arguments
without the runtime key: the process that *runs* a job appends its own runtime key (its
config path), so a job scheduled by a process that died runs in another one.

Debounce: rewriting the timer row for every image of a 500-slice study would cost more
than storing the image. :meth:`StudyScheduler.notify` rewrites it at most once per
``debounce_s`` per study; the job itself re-reads the study's last arrival and moves its
own deadline when images came later (see :func:`dicom_node.pipeline.assembly.run_complete_job`),
so no study completes before ``last instance + quiet``.

Upgrade: a ``jobs_db`` of an earlier release holds APScheduler's ``apscheduler_jobs``;
:meth:`StudyScheduler.start` imports them (:mod:`dicom_node.pipeline.legacy_jobs`, the
only user of the ``apscheduler`` dependency, which stays for that reason alone).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Final

from dicom_node.config import Settings
from dicom_node.pipeline.legacy_jobs import (
    COMPLETE_FUNC,
    DELIVER_FUNC,
    MOVED_FUNCS,
    RETENTION_FUNC,
    import_legacy_jobs,
)
from dicom_node.pipeline.timers import Dispatcher, Timer, TimerStore, open_engine

__all__ = [
    "ALL_KINDS",
    "COMPLETE_FUNC",
    "DELIVER_FUNC",
    "MOVED_FUNCS",
    "RETENTION_FUNC",
    "RETENTION_JOB_ID",
    "StudyScheduler",
    "complete_job_id",
    "default_owner",
    "job_key",
    "jobs_url",
]

log = logging.getLogger(__name__)

RETENTION_JOB_ID: Final = "retention"
#: Every kind of timer; a process runs those of its roles (``kinds``).
ALL_KINDS: Final = frozenset({"complete", "retention", "delivery"})


def jobs_url(settings: Settings) -> str:
    """Where the timers live: the index's database when that is PostgreSQL (shared by
    every process of the node), else ``storage.jobs_db``, an SQLite file of their own."""
    index = str(settings.storage.index_db)
    if index.startswith("postgresql://"):  # psycopg 3, as the index itself takes it
        return "postgresql+psycopg://" + index.removeprefix("postgresql://")
    if index.startswith("postgresql"):
        return index
    return f"sqlite:///{settings.resolve(settings.storage.jobs_db)}"


def default_owner(runtime_key: str, kinds: frozenset[str] = ALL_KINDS) -> str:
    """A lease owner id stable across restarts (host, config and roles), so a restarted
    process takes its own leases back at start instead of waiting for them to expire.

    Two processes on one host with the same config and roles must be given distinct
    owners: each would otherwise free the other's leases when it starts.
    """
    digest = hashlib.sha256(f"{runtime_key}\0{','.join(sorted(kinds))}".encode()).hexdigest()
    return f"{socket.gethostname()}:{digest[:16]}"


def job_key(study_uid: str) -> str:
    """The part of a job id that names a study: a digest, never the UID itself.

    Job ids are logged (a job that fails) and stored where the UID need not be.
    """
    return hashlib.sha256(study_uid.encode()).hexdigest()[:24]


def complete_job_id(study_uid: str) -> str:
    return f"complete:{job_key(study_uid)}"


class StudyScheduler:
    """Completion deadlines, delivery retries and the retention sweep, as timer rows."""

    def __init__(
        self,
        url: str,
        *,
        quiet_seconds: float,
        runtime_key: str,
        debounce_s: float = 1.0,
        workers: int = 2,
        kinds: frozenset[str] = ALL_KINDS,
        owner: str | None = None,
        poll_s: float = 0.5,
        lease_s: float = 60.0,
        legacy_jobs_db: Path | None = None,
    ) -> None:
        """``url``: SQLAlchemy URL of the timers' database (:func:`jobs_url`).
        ``kinds``: which timers this process runs (it may schedule any).
        ``legacy_jobs_db``: the SQLite job store of an earlier release to import at start
        when it is not ``url``'s own file."""
        unknown = kinds - ALL_KINDS
        if unknown:
            raise ValueError(f"unknown timer kinds: {sorted(unknown)}")
        self.quiet_seconds = quiet_seconds
        self.runtime_key = runtime_key
        self.debounce_s = debounce_s
        self.kinds = kinds
        self.owner = owner or default_owner(runtime_key, kinds)
        self._legacy_jobs_db = legacy_jobs_db
        self._store = TimerStore(open_engine(url))
        self._dispatcher = Dispatcher(
            self._store,
            owner=self.owner,
            kinds=kinds,
            runtime_key=runtime_key,
            workers=workers,
            poll_s=poll_s,
            lease_s=lease_s,
        )
        self._lock = threading.Lock()
        self._last_scheduled: dict[str, float] = {}
        # No scheduling once closing: a job finishing during shutdown that wants to move
        # its deadline is refused, and what was not rescheduled is rescheduled at the next
        # start (receiving studies and pending deliveries without a timer).
        self._gate = threading.Lock()
        self._closing = False
        self._started = False

    def start(self) -> None:
        """Import an earlier release's jobs, take back this owner's leases, start claiming;
        overdue timers run now."""
        moved = import_legacy_jobs(self._store, self._legacy_jobs_db, time.time())
        if moved:
            log.info("scheduler.jobs_migrated", extra={"count": moved})
        freed = self._store.release(self.owner)
        if freed:
            log.info("scheduler.leases_taken_back", extra={"count": freed})
        self._started = True
        self._dispatcher.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop claiming; with ``wait`` the running jobs finish first. Rows this process
        still holds are released for others; pending timers stay stored."""
        with self._gate:
            first, self._closing = not self._closing, True
        if first and self._started:
            self._dispatcher.stop(wait=wait)
            self._store.release(self.owner)
        if wait:  # (again after reads since: they opened connections)
            self._store.engine.dispose()

    @property
    def running(self) -> bool:
        return self._dispatcher.running

    def _set(self, timer: Timer) -> bool:
        with self._gate:
            if self._closing:
                log.debug("scheduler.closing", extra={"job": timer.kind})
                return False
            self._store.upsert(timer)
        if timer.kind in self.kinds:
            self._dispatcher.poke(timer.due)
        return True

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
        """(Re)place the one-shot ``complete:<digest>`` timer at ``at`` (epoch seconds)."""
        self._set(
            Timer(complete_job_id(study_uid), COMPLETE_FUNC, [study_uid], at, "default", "complete")
        )

    def forget(self, study_uid: str) -> None:
        """Drop the debounce memory of a study (it completed)."""
        with self._lock:
            self._last_scheduled.pop(study_uid, None)

    def completion_time(self, study_uid: str) -> float | None:
        """When the study's completion timer is due (epoch seconds), if it has one."""
        return self._store.due_of(complete_job_id(study_uid))

    def cancel_completion(self, study_uid: str) -> None:
        with self._gate:
            if not self._closing:
                self._store.delete(complete_job_id(study_uid))
        self.forget(study_uid)

    def schedule_retention(self, interval_s: float) -> None:
        """The retention sweep, every ``interval_s`` seconds (first run one interval on)."""
        self._set(
            Timer(
                RETENTION_JOB_ID,
                RETENTION_FUNC,
                [],
                time.time() + interval_s,
                "default",
                "retention",
                interval_s,
            )
        )

    def schedule_job(
        self, func: str, job_id: str, at: float, args: list[str], *, name: str
    ) -> None:
        """(Re)place a one-shot delivery timer ``func(*args, runtime_key)`` at ``at``.

        ``func`` is a text reference (``module:function``); ``args`` are plain strings
        without the runtime key (the running process appends its own); ``name`` is the
        kind of job for log lines, never a UID.
        """
        del name  # the kind ("delivery") names these rows
        self._set(Timer(job_id, func, args, at, "delivery", "delivery"))

    def has_job(self, job_id: str) -> bool:
        return self._store.due_of(job_id) is not None
