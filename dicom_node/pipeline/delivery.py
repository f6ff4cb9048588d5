"""Deliveries of results: durable, retried with backoff, once per destination.

A destination is a :class:`Channel`: a PACS (:class:`PacsChannel`, the SR/SC over C-STORE;
:class:`DicomwebChannel`, the same over STOW-RS) or a notification
(:mod:`dicom_node.pipeline.notifying`: webhook, HL7), each with the same retry policy keys
(``max_attempts``, ``retry_base_s``, ``retry_cap_s``).

Each (study, destination) has one row in the index's ``deliveries`` table and, while
``pending``, one durable timer ``deliver:<study digest>:<destination>``. A job
makes one attempt of its channel (a PACS: the saved SR/SC files through
:func:`dicom_node.net.scu.send`) and then:

* success -> ``sent`` (the same files, hence the same SOP Instance UIDs, are never sent
  again for this generation);
* transient failure (:class:`~dicom_node.errors.TransientError`: refused, timeout,
  abort, 0xA7xx, HTTP 5xx, HL7 AE) -> attempts + 1 and a new job at
  ``now + backoff`` (exponential), until ``max_attempts`` -> ``failed``;
* permanent failure (:class:`~dicom_node.errors.PermanentError`: our AE rejected,
  0xC0xx, HTTP 4xx, HL7 AR) -> ``failed`` after one attempt.

Never N files x M attempts in a tight loop: one association per attempt, one attempt
per job. Jobs carry only UIDs, the destination name and the runtime key, so they run
in a restarted node; a ``pending`` row without a job is rescheduled at start-up.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from dicom_node.config import Destination, DicomwebDestination
from dicom_node.errors import PermanentError, TransientError
from dicom_node.logs import study_key
from dicom_node.net.scu import ScuTimeouts, backoff_seconds, send
from dicom_node.net.stow import store
from dicom_node.pipeline.runtimes import Runtimes
from dicom_node.pipeline.scheduler import job_key
from dicom_node.store import study_marker
from dicom_node.store.index import DeliveryRow, DeliveryState, Index

log = logging.getLogger(__name__)

DELIVER_FUNC: Final = "dicom_node.pipeline.delivery:run_delivery_job"


def delivery_job_id(study_uid: str, destination: str) -> str:
    return f"deliver:{job_key(study_uid)}:{destination}"


class JobScheduler(Protocol):
    """What delivery needs of the scheduler (a Protocol so the two stay decoupled)."""

    def schedule_job(
        self, func: str, job_id: str, at: float, args: list[str], *, name: str
    ) -> None: ...

    def has_job(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class DeliverySettings:
    calling_ae_title: str
    timeouts: ScuTimeouts
    #: DICOM TLS context per destination name (built once at start-up, files checked).
    tls: Mapping[str, ssl.SSLContext] = field(default_factory=dict)


class RetryPolicy(Protocol):
    """The retry keys every destination's config has (``config._Retried``)."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def retry_base_s(self) -> float: ...
    @property
    def retry_cap_s(self) -> float: ...


class Channel(Protocol):
    """One destination of results: what it wants, and one attempt to send to it."""

    #: The row's ``destination`` in the index (a PACS's name, ``webhook:<name>``...).
    name: str

    @property
    def retry(self) -> RetryPolicy: ...

    def wants(self, files: dict[str, Path], findings: dict[str, Any] | None) -> bool:
        """Whether this study's results go here at all (checked once, at enqueue)."""
        ...

    def send(self, study_uid: str, result: dict[str, Any]) -> float:
        """One attempt; returns its seconds, raises TransientError or PermanentError."""
        ...


class PacsChannel:
    """A PACS: the SR and/or SC files of the result over one association per attempt."""

    def __init__(self, dest: Destination, settings: DeliverySettings) -> None:
        self.name = dest.name
        self.retry = dest
        self.dest = dest
        self.settings = settings

    def wants(self, files: dict[str, Path], findings: dict[str, Any] | None) -> bool:
        return any(kind in files for kind in self.dest.send)

    def send(self, study_uid: str, result: dict[str, Any]) -> float:
        res = send(
            self.dest,
            _result_files(self.dest.send, result),
            calling_ae_title=self.settings.calling_ae_title,
            timeouts=self.settings.timeouts,
            ssl_context=self.settings.tls.get(self.dest.name),
        )
        return res.elapsed_s


class DicomwebChannel:
    """An archive over STOW-RS: the SR and/or SC of the result in one POST per attempt."""

    def __init__(self, dest: DicomwebDestination) -> None:
        self.name = dest.name
        self.retry = dest
        self.dest = dest

    def wants(self, files: dict[str, Path], findings: dict[str, Any] | None) -> bool:
        return any(kind in files for kind in self.dest.send)

    def send(self, study_uid: str, result: dict[str, Any]) -> float:
        return store(self.dest, _result_files(self.dest.send, result))


def _result_files(kinds: Sequence[str], result: dict[str, Any]) -> list[Path]:
    """The result's files of ``kinds`` (``sr``, ``sc``) that a destination takes; all of
    them must still be there (retention may have removed them: nothing to retry for)."""
    files = [Path(result["files"][k]) for k in kinds if k in result["files"]]
    if any(not p.is_file() for p in files):
        raise PermanentError("result files are missing")
    return files


def destination_channel(
    dest: Destination | DicomwebDestination, settings: DeliverySettings
) -> Channel:
    """The channel of one configured destination, by its ``kind``."""
    if isinstance(dest, DicomwebDestination):
        return DicomwebChannel(dest)
    return PacsChannel(dest, settings)


class Deliverer:
    """Sends results of one node to its configured destinations (PACS and notifications)."""

    def __init__(
        self,
        index: Index,
        scheduler: JobScheduler,
        channels: list[Channel],
        *,
        runtime_key: str,
        hash_key: str,
        results_dir: Path | None = None,
    ) -> None:
        self.index = index
        #: where each study's durable state marker is kept (None: no markers)
        self.results_dir = results_dir
        self.scheduler = scheduler
        self.channels = {c.name: c for c in channels}
        self.runtime_key = runtime_key
        self.hash_key = hash_key
        self._lock = threading.Lock()

    def enqueue(self, study_uid: str, generation: int, files: dict[str, Path]) -> None:
        """New results of ``generation``: one pending delivery per destination, sent now."""
        study = self.index.study(study_uid)
        findings = study.findings if study is not None else None
        for channel in self.channels.values():
            if not channel.wants(files, findings):
                continue
            now = time.time()
            self.index.set_delivery(
                study_uid, channel.name, generation, "pending", 0, None, next_attempt=now
            )
            self._schedule(study_uid, channel.name, now)

    def reconcile(self) -> int:
        """At start-up: give every pending delivery without a job one (after a crash or a
        lost job store), and enqueue the results of ``done`` studies whose deliveries were
        never enqueued (a crash between recording a result and enqueuing its delivery)."""
        n = 0
        for row in self.index.deliveries(states=("pending",)):
            if not self.scheduler.has_job(delivery_job_id(row.study_uid, row.destination)):
                now = time.time()
                self.index.set_delivery(
                    row.study_uid, row.destination, row.generation, "pending", row.attempts,
                    row.last_error, next_attempt=now,
                )  # fmt: skip
                self._schedule(row.study_uid, row.destination, now)
                n += 1
        if n:
            log.info("delivery.rescheduled", extra={"n": n})
        lost = 0
        for study in self.index.studies(("done",)):
            result = self.index.result(study.study_uid)
            if result is None:
                continue
            generation = int(result["generation"])
            if any(d.generation == generation for d in study.deliveries):
                continue  # enqueued for this generation (whatever became of it)
            files = {str(k): Path(v) for k, v in result["files"].items()}
            self.enqueue(study.study_uid, generation, files)
            lost += 1
        if lost:
            log.info("delivery.enqueued_at_start", extra={"studies": lost})
        return n + lost

    def _schedule(self, study_uid: str, destination: str, at: float) -> None:
        self.scheduler.schedule_job(
            DELIVER_FUNC,
            delivery_job_id(study_uid, destination),
            at,
            [study_uid, destination],  # the running process appends its runtime key
            name="deliver",
        )

    def attempt(self, study_uid: str, destination: str) -> str:
        """One delivery attempt; returns the resulting state (or ``skip``)."""
        with self._lock:  # one attempt per (node) at a time: no duplicate sends of a row
            return self._attempt(study_uid, destination)

    def _attempt(self, study_uid: str, destination: str) -> str:
        key = study_key(study_uid, self.hash_key)
        row = self.index.delivery(study_uid, destination)
        channel = self.channels.get(destination)
        if row is None or row.state != "pending":
            return "skip"
        if channel is None:
            self._record(row, "failed", row.attempts, "destination no longer configured", key)
            return "failed"
        result = self.index.result(study_uid)
        if result is None or int(result["generation"]) != row.generation:
            self._record(row, "failed", row.attempts, "superseded by a newer result", key)
            return "failed"
        attempts = row.attempts + 1
        retry = channel.retry
        try:
            seconds = channel.send(study_uid, result)
        except TransientError as exc:
            if attempts >= retry.max_attempts:
                self._record(row, "failed", attempts, f"gave up after {attempts}: {exc}", key)
                return "failed"
            delay = backoff_seconds(attempts, retry.retry_base_s, retry.retry_cap_s)
            due = time.time() + delay
            self._record(row, "pending", attempts, str(exc), key, retry_in=delay, due=due)
            self._schedule(study_uid, destination, due)
            return "pending"
        except PermanentError as exc:
            self._record(row, "failed", attempts, str(exc), key)
            return "failed"
        self._record(row, "sent", attempts, None, key, seconds=seconds)
        return "sent"

    def _record(
        self,
        row: DeliveryRow,
        state: DeliveryState,
        attempts: int,
        error: str | None,
        key: str,
        *,
        retry_in: float | None = None,
        due: float | None = None,
        seconds: float | None = None,
    ) -> None:
        self.index.set_delivery(
            row.study_uid, row.destination, row.generation, state, attempts, error,
            next_attempt=due, same_generation=True,  # a newer result's row stays as it is
        )  # fmt: skip
        if self.results_dir is not None:
            # a sent result stays sent even if the index is lost (reindex reads it back)
            study_marker.save(self.index, self.results_dir, row.study_uid)
        fields: dict[str, object] = {
            "study": key,
            "destination": row.destination,
            "state": state,
            "attempts": attempts,
        }
        if error:
            fields["error"] = error
        if retry_in is not None:
            fields["retry_in_s"] = round(retry_in, 1)
        if seconds is not None:
            fields["send_s"] = round(seconds, 3)
        level = logging.INFO if state == "sent" else logging.WARNING
        log.log(level, "delivery.attempt", extra=fields)


DELIVERERS: Runtimes[Deliverer] = Runtimes()


def register_deliverer(key: str, deliverer: Deliverer) -> None:
    DELIVERERS.register(key, deliverer)


def unregister_deliverer(key: str) -> None:
    DELIVERERS.unregister(key)


def run_delivery_job(study_uid: str, destination: str, runtime_key: str) -> None:
    """Job body of ``deliver:<study digest>:<destination>`` (module-level: a timer names it by
    text reference; ``runtime_key`` is the one of the process that runs it)."""
    deliverer = DELIVERERS.get(runtime_key)
    if deliverer is None:
        log.warning("delivery.job_orphaned", extra={"runtime": runtime_key})
        return
    try:
        deliverer.attempt(study_uid, destination)
    except Exception as exc:  # noqa: BLE001 - top of a job: the row stays pending, reconciled
        log.error("delivery.crashed", extra={"error": type(exc).__name__})
