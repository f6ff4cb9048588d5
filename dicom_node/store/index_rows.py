"""The index's rows as the rest of the node sees them, its states and its errors.

Plain frozen dataclasses, free of any database type: the worker, the web side and the
CLI read these and never a database row (:mod:`dicom_node.store.index` makes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from dicom_node.errors import NodeError
from dicom_node.store.series_outcome import SeriesOutcome

StudyState = Literal["receiving", "complete", "queued", "processing", "done", "failed", "skipped"]
STATES: Final[tuple[StudyState, ...]] = (
    "receiving",
    "complete",
    "queued",
    "processing",
    "done",
    "failed",
    "skipped",
)

Dialect = Literal["sqlite", "postgresql"]


DeliveryState = Literal["pending", "sent", "failed"]


class IndexDBError(NodeError):
    """The index database cannot be opened or written."""


#: What every "the index is lost or damaged" message tells the admin to do.
REINDEX_HINT: Final = (
    "stop the node and run `dicom-node reindex --config <config.yaml>` to rebuild it "
    "from the spool (results already delivered are not sent again)"
)


class IndexDamagedError(IndexDBError):
    """The index file is missing while the spool holds files, or SQLite finds it damaged:
    the node refuses to start rather than forget what it received and did."""


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """What the index knows about one stored instance."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    eligible: bool
    size: int
    path: str  # relative to the spool folder
    received: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Recorded:
    """Outcome of :meth:`Index.record`: was the instance new, and what the study became."""

    inserted: bool
    new_study: bool
    reopened: bool
    generation: int


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study as listed by ``dicom-node studies``."""

    study_uid: str
    state: str
    reason: str | None
    generation: int
    instances: int
    eligible_instances: int
    series: int
    size: int
    first_received: float
    last_received: float
    state_changed: float
    completed_at: float | None
    findings: dict[str, Any] | None = None
    deliveries: tuple[DeliveryRow, ...] = ()
    #: Every series of the study with the worker's choice (empty until it chose).
    series_choice: tuple[SeriesOutcome, ...] = ()
    #: The worker processing it, and until when its lease runs (``processing`` only).
    claimed_by: str | None = None
    lease_until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "state": self.state,
            "instances": self.instances,
            "eligible_instances": self.eligible_instances,
            "series": self.series,
            "size_bytes": self.size,
            "reason": self.reason,
            "generation": self.generation,
            "first_received": iso(self.first_received),
            "last_received": iso(self.last_received),
            "state_changed": iso(self.state_changed),
            "completed_at": iso(self.completed_at) if self.completed_at is not None else None,
            "findings": self.findings,
            "series_choice": [o.to_json() for o in self.series_choice],
            "deliveries": {d.destination: d.to_json() for d in self.deliveries},
            "claimed_by": self.claimed_by,
            "lease_until": iso(self.lease_until) if self.lease_until is not None else None,
        }


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """The state of sending one study's results to one destination."""

    study_uid: str
    destination: str
    generation: int
    state: str
    attempts: int
    last_error: str | None
    updated: float
    #: When the next attempt is due (pending rows only).
    next_attempt: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "generation": self.generation,
            "updated": iso(self.updated),
            "next_attempt": iso(self.next_attempt) if self.next_attempt is not None else None,
        }


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One action a user took on a study (``reprocess``, ``resend``) and its outcome."""

    study_uid: str
    at: float
    user: str
    action: str
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "user": self.user, "action": self.action,
                "outcome": self.outcome}  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One process registered in the index: its role, where it runs, what it loads, and
    when it last said it was alive (``load`` is whatever the process reports, as JSON)."""

    worker_id: str
    role: str
    host: str
    pid: int
    device: str | None
    model_uid: str | None
    started: float
    heartbeat: float
    load: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "role": self.role,
            "host": self.host,
            "pid": self.pid,
            "device": self.device,
            "model_uid": self.model_uid,
            "started": iso(self.started),
            "heartbeat": iso(self.heartbeat),
            "load": self.load,
        }


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
