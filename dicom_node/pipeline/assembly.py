"""When a study is complete, and what happens then.

PS3.4 gives a C-STORE SCP no signal that a study is whole: studies come over one or many
associations, in any order, interleaved with others. So a study is complete when no
instance of it arrived for ``study.quiet_seconds``, except that an association which
stored instances of it and is still open and sending (a PDU less than
``quiet_seconds`` ago) holds it: the quiet period then counts from that association's
release or abort (:class:`Holds`, kept by :mod:`dicom_node.net.sessions`). An open
association that went silent holds nothing: the deadline counts from its last instance.
The deadline is a durable timer (:mod:`dicom_node.pipeline.scheduler`); this
module holds what the job does.

On completion a study with no eligible instance (no CT image) ends ``skipped`` with a
reason; otherwise it becomes ``complete`` and every registered :class:`CompletionHook`
is called with it. The processing queue of the next stage plugs in as such a hook
(it moves the study on to ``queued``); without one, ``complete`` is where it stays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Final, Protocol

from pydicom.uid import UID

from dicom_node.logs import study_key
from dicom_node.pipeline.runtimes import Runtimes
from dicom_node.store.index import Index, StudyRow, StudyState
from dicom_node.store.spool import Spool

log = logging.getLogger(__name__)

#: Processed studies the retention sweep may purge (``failed`` is the dead-letter state:
#: kept as long, so an admin can look, then purged too).
PURGEABLE_STATES: Final = ("done", "skipped", "failed")


class CompletionHook(Protocol):
    """Called once per completed study generation, from a scheduler thread.

    Must not block for long (hand the study to a queue); an exception is logged and the
    study stays ``complete``.
    """

    def __call__(self, study: StudyRow) -> None: ...


class Holds(Protocol):
    """What keeps a study open beyond its last instance: the associations sending it."""

    def held_until(self, study_uid: str, idle_s: float, now: float) -> float:
        """The latest activity (epoch seconds) of an association holding the study: the
        last PDU of an open one active within ``idle_s``, or the end of one; 0.0 if none."""
        ...

    def forget(self, study_uid: str) -> None: ...


class Rescheduler(Protocol):
    """The part of the scheduler a completion needs (a Protocol so tests can fake it)."""

    def schedule_completion(self, study_uid: str, at: float) -> None: ...

    def forget(self, study_uid: str) -> None: ...


_HOOKS: list[CompletionHook] = []
_HOOKS_LOCK = threading.Lock()


def register_completion_hook(hook: CompletionHook) -> None:
    """Add a hook that every :class:`Assembler` created afterwards calls by default."""
    with _HOOKS_LOCK:
        _HOOKS.append(hook)


def unregister_completion_hook(hook: CompletionHook) -> None:
    with _HOOKS_LOCK:
        if hook in _HOOKS:
            _HOOKS.remove(hook)


def registered_hooks() -> tuple[CompletionHook, ...]:
    with _HOOKS_LOCK:
        return tuple(_HOOKS)


def _class_names(uids: Sequence[str]) -> str:
    return ", ".join(sorted({UID(u).name or u for u in uids}))


class Assembler:
    """Decides completion for one node (one index, one spool, one scheduler)."""

    def __init__(
        self,
        index: Index,
        spool: Spool,
        scheduler: Rescheduler,
        *,
        quiet_seconds: float,
        hash_key: str,
        retention_days: float = 7.0,
        hooks: Sequence[CompletionHook] | None = None,
        holds: Holds | None = None,
    ) -> None:
        self.index = index
        self.spool = spool
        self.scheduler = scheduler
        self.quiet_seconds = quiet_seconds
        self.hash_key = hash_key
        self.retention_days = retention_days
        self._hooks = tuple(hooks) if hooks is not None else None
        self.holds = holds

    @property
    def hooks(self) -> tuple[CompletionHook, ...]:
        return self._hooks if self._hooks is not None else registered_hooks()

    def complete(self, study_uid: str, now: float | None = None) -> str:
        """Complete ``study_uid`` if it has been quiet long enough; returns the outcome.

        Outcomes: ``complete``, ``skipped``, ``rescheduled`` (images came after the job was
        set: the deadline moves to ``last + quiet``), ``not_receiving`` (already done, or
        gone), ``raced`` (an image was committed meanwhile: checked again).
        """
        key = study_key(study_uid, self.hash_key)
        for _ in range(3):
            now = time.time() if now is None else now
            study = self.index.study(study_uid)
            if study is None or study.state != "receiving":
                self.scheduler.forget(study_uid)
                return "not_receiving"
            due = study.last_received + self.quiet_seconds
            held = False
            if self.holds is not None:
                until = self.holds.held_until(study_uid, self.quiet_seconds, now)
                if until + self.quiet_seconds > due:
                    due, held = until + self.quiet_seconds, True
            if now < due:
                self.scheduler.schedule_completion(study_uid, due)
                log.debug(
                    "study.deadline_moved",
                    extra={"study": key, "in_s": round(due - now, 2),
                           "by": "association" if held else "instance"},
                )  # fmt: skip
                return "rescheduled"
            state: StudyState
            reason: str | None
            if study.eligible_instances == 0:
                classes = self.index.sop_classes(study_uid)
                reason = f"no CT image in study (received: {_class_names(classes)})"
                state = "skipped"
            else:
                reason, state = None, "complete"
            if self.index.finish_receiving(
                study_uid, study.generation, study.last_received, state, reason
            ):
                self.scheduler.forget(study_uid)
                if self.holds is not None:
                    self.holds.forget(study_uid)
                log.info(
                    "study.complete" if state == "complete" else "study.skipped",
                    extra={
                        "study": key,
                        "generation": study.generation,
                        "instances": study.instances,
                        "series": study.series,
                        "reason": reason or "",
                    },
                )
                if state == "complete":
                    done = self.index.study(study_uid)
                    if done is not None:
                        self._call_hooks(done, key)
                return state
            now = None  # raced with an arriving image: look again
        return "raced"

    def _call_hooks(self, study: StudyRow, key: str) -> None:
        for hook in self.hooks:
            try:
                hook(study)
            except Exception as exc:  # noqa: BLE001 - a hook's failure must not lose the completion
                log.error(  # the exception's type only: its message may quote data
                    "study.hook_failed", extra={"study": key, "error": type(exc).__name__}
                )

    def purge_expired(self, now: float | None = None) -> int:
        """Delete processed studies whose last state change is older than retention."""
        now = time.time() if now is None else now
        limit = now - self.retention_days * 86400.0
        n = 0
        for study in self.index.studies(PURGEABLE_STATES):
            if study.state_changed < limit:
                freed = self.spool.purge_study(study.study_uid)
                log.info(
                    "study.purged",
                    extra={"study": study_key(study.study_uid, self.hash_key), "bytes": freed},
                )
                n += 1
        return n


# -- what the durable jobs call ---------------------------------------------------------

ASSEMBLERS: Runtimes[Assembler] = Runtimes()


def register_runtime(key: str, assembler: Assembler) -> None:
    """Make ``assembler`` the one that jobs carrying ``key`` (the config path) reach."""
    ASSEMBLERS.register(key, assembler)


def unregister_runtime(key: str) -> None:
    ASSEMBLERS.unregister(key)


def run_complete_job(study_uid: str, runtime_key: str) -> None:
    """Job body of ``complete:<study digest>``: a module-level function, named by its timer.

    If no node of this process serves ``runtime_key`` (it is starting or stopping),
    nothing is lost: start-up schedules every ``receiving`` study
    that has no job.
    """
    assembler = ASSEMBLERS.get(runtime_key)
    if assembler is None:
        log.warning("study.job_orphaned", extra={"runtime": runtime_key})
        return
    try:
        assembler.complete(study_uid)
    except Exception as exc:  # noqa: BLE001 - top of a job: log and let start-up reconciliation retry
        log.error(
            "study.complete_failed",
            extra={"study": study_key(study_uid, assembler.hash_key), "error": type(exc).__name__},
        )


def run_retention_job(runtime_key: str) -> None:
    """Job body of the retention sweep."""
    assembler = ASSEMBLERS.get(runtime_key)
    if assembler is None:
        return
    try:
        assembler.purge_expired()
    except Exception as exc:  # noqa: BLE001 - top of a job
        log.error("retention.failed", extra={"error": type(exc).__name__})
