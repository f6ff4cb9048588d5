"""pynetdicom event handlers: answer fast, never raise.

Each handler is bound once as ``(event, handler)`` and returns a DICOM status. The
C-STORE handler never decodes pixels, runs a model or opens a connection: it reads the
UIDs, stores the bytes durably (:meth:`dicom_node.store.spool.Spool.put`) and answers.
Statuses (PS3.4 B.2.3): 0x0000 Success only once the file and its index row are
durable; 0xA700 Out of Resources when the disk guard refuses or a write fails (the
sender keeps its copy and may retry); 0xA900 / 0xC000 for a dataset we cannot place.
Every refusal carries its reason in the response's Error Comment (0000,0902), the same
text the log line has (:mod:`dicom_node.net.store_answer`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_node.logs import study_key
from dicom_node.metrics import NodeMetrics
from dicom_node.net.sessions import Session, Sessions
from dicom_node.net.store_answer import StoreAnswer, error_comment
from dicom_node.store.index import IndexDBError
from dicom_node.store.spool import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    BadInstance,
    Spool,
    SpoolFull,
    Stored,
    parse_dataset,
    part10_header,
)

log = logging.getLogger(__name__)


#: Called after a Success is decided (the scheduler's debounced deadline); must not raise.
StoredCallback = Callable[[Stored], None]


def _calling_aet(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except AttributeError:
        return ""


class BusyAssociations:
    """Which associations are inside a C-STORE handler right now.

    A graceful stop waits for these (their image is being made durable) but may abort an
    idle association at once: a PACS often keeps one open for reuse, and waiting for it
    would hold shutdown for the whole grace period. Nothing unacknowledged is lost: a
    sender retries what it got no Success for.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[int, int] = {}

    def enter(self, assoc: object) -> None:
        with self._lock:
            self._busy[id(assoc)] = self._busy.get(id(assoc), 0) + 1

    def leave(self, assoc: object) -> None:
        with self._lock:
            n = self._busy.get(id(assoc), 0) - 1
            if n > 0:
                self._busy[id(assoc)] = n
            else:
                self._busy.pop(id(assoc), None)

    def is_busy(self, assoc: object) -> bool:
        with self._lock:
            return id(assoc) in self._busy


@dataclass(frozen=True, slots=True)
class StoreHandler:
    """EVT_C_STORE: validate, store durably, index, then Success."""

    spool: Spool
    hash_key: str
    on_stored: StoredCallback | None = None
    busy: BusyAssociations | None = None
    metrics: NodeMetrics | None = None
    #: Open associations and the studies they store (holds a study's completion).
    sessions: Sessions | None = None

    def __call__(self, event: Event) -> int | Dataset:
        """pynetdicom's handler: the status, as a status dataset with Error Comment
        (which pynetdicom copies into the C-STORE-RSP) when there is a reason to give."""
        if self.busy is None:
            answer = self._store(event)
        else:
            self.busy.enter(event.assoc)
            try:
                answer = self._store(event)
            finally:
                self.busy.leave(event.assoc)
        if not answer.comment:
            return answer.status
        status = Dataset()
        status.Status = answer.status
        status.ErrorComment = answer.comment
        return status

    def _store(self, event: Event) -> StoreAnswer:
        try:
            raw = event.encoded_dataset(include_meta=False)
            req = cast(C_STORE, event.request)
            sop_class = str(req.AffectedSOPClassUID or "").rstrip("\x00 ") or None
            sop_instance = str(req.AffectedSOPInstanceUID or "").rstrip("\x00 ") or None
            transfer_syntax = str(event.context.transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - a handler never raises: pynetdicom would abort
            log.error("store.failed", extra={"stage": "parse", "error": type(exc).__name__})
            return StoreAnswer(
                CANNOT_UNDERSTAND,
                error_comment(f"unreadable C-STORE request ({type(exc).__name__})"),
            )
        session = self.sessions.get(event.assoc) if self.sessions is not None else None
        return self.store(
            raw, transfer_syntax, sop_class, sop_instance, _calling_aet(event), session=session
        )

    def store(
        self, data: bytes | memoryview, transfer_syntax: str, sop_class: str | None,
        sop_instance: str | None, calling_aet: str, *, session: Session | None = None,
    ) -> StoreAnswer:  # fmt: skip
        """Store one dataset as it came over the wire; returns the DIMSE status and,
        for a refusal, its reason for the Error Comment (no patient data).

        Both receive engines end here: the native acceptor passes a view of its receive
        buffer (valid until this returns), pynetdicom's handler the encoded dataset.
        ``session`` is the association it came on: a new instance makes that association
        hold its study's completion while it is open and sending.
        """
        answer = self._store_bytes(
            data, transfer_syntax, sop_class, sop_instance, calling_aet, session
        )
        if self.metrics is not None and answer.status != SUCCESS:
            self.metrics.store_refused(answer.status)
        return answer

    def _store_bytes(
        self, data: bytes | memoryview, transfer_syntax: str, sop_class: str | None,
        sop_instance: str | None, calling_aet: str, session: Session | None,
    ) -> StoreAnswer:  # fmt: skip
        try:
            ref = parse_dataset(
                data, transfer_syntax, command_sop_class=sop_class,
                command_sop_instance=sop_instance,
            )  # fmt: skip
            header = part10_header(ref, calling_aet)
        except BadInstance as exc:
            log.warning(
                "store.rejected",
                extra={"status": f"0x{exc.status:04X}", "error": str(exc),
                       "calling_aet": calling_aet},
            )  # fmt: skip
            return StoreAnswer(exc.status, error_comment(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a handler never raises
            log.error("store.failed", extra={"stage": "parse", "error": type(exc).__name__})
            return StoreAnswer(
                CANNOT_UNDERSTAND, error_comment(f"unreadable dataset ({type(exc).__name__})")
            )
        try:
            stored = self.spool.put(ref, data, header=header)
        except SpoolFull as exc:
            # logged once a minute by the spool's guard; each sender is told every time
            return StoreAnswer(OUT_OF_RESOURCES, error_comment(str(exc)))
        except (OSError, IndexDBError) as exc:
            log.error(
                "store.failed",
                extra={"stage": "write", "error": type(exc).__name__,
                       "study": study_key(ref.study_uid, self.hash_key)},
            )  # fmt: skip
            return StoreAnswer(
                OUT_OF_RESOURCES, error_comment(f"spool write failed ({type(exc).__name__})")
            )
        except Exception as exc:  # noqa: BLE001 - never raise into pynetdicom
            log.error("store.failed", extra={"stage": "write", "error": type(exc).__name__})
            return StoreAnswer(
                OUT_OF_RESOURCES, error_comment(f"spool write failed ({type(exc).__name__})")
            )
        if not stored.recorded.inserted:
            log.info("store.duplicate", extra={"study": study_key(ref.study_uid, self.hash_key)})
        elif stored.recorded.new_study or stored.recorded.reopened:
            log.info(
                "study.reopened" if stored.recorded.reopened else "study.receiving",
                extra={
                    "study": study_key(ref.study_uid, self.hash_key),
                    "generation": stored.recorded.generation,
                    "calling_aet": calling_aet,
                },
            )
        if self.metrics is not None:
            self.metrics.instance_stored(len(data), duplicate=not stored.recorded.inserted)
        if self.sessions is not None and stored.recorded.inserted:
            self.sessions.stored(session, ref.study_uid)
        if self.on_stored is not None and stored.recorded.inserted:
            try:
                self.on_stored(stored)
            except Exception as exc:  # noqa: BLE001 - the image is safe; start-up reconciliation reschedules
                log.error("store.notify_failed", extra={"error": type(exc).__name__})
        return StoreAnswer(SUCCESS)


def handle_echo(event: Event) -> int:
    """EVT_C_ECHO: Verification SOP Class (PS3.4 Annex A) always succeeds."""
    return SUCCESS


@dataclass(frozen=True, slots=True)
class RejectLogger:
    """EVT_REJECTED: say why, per PS3.8 7.1.1.9 reasons, without any patient data."""

    ae_title: str
    allowed_calling: Sequence[str] = field(default_factory=tuple)
    require_called: bool = True
    metrics: NodeMetrics | None = None

    def __call__(self, event: Event) -> None:
        calling = _calling_aet(event)
        try:
            primitive = event.assoc.requestor.primitive
            called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        except AttributeError:
            called = ""
        # Same order as pynetdicom's ACSE: a wrong called AE overrides the calling check.
        reason = "local-limit-exceeded"
        if self.allowed_calling and calling.strip() not in self.allowed_calling:
            reason = "calling-ae-not-recognised"
        if self.require_called and called != self.ae_title:
            reason = "called-ae-not-recognised"
        if self.metrics is not None:
            self.metrics.association_refused(reason)
        log.warning(
            "assoc.rejected",
            extra={"reason": reason, "calling_aet": calling, "called_aet": called,
                   "peer": _peer(event)},
        )  # fmt: skip


def _peer(event: Event) -> str:
    try:
        info = event.assoc.requestor.address_info
        return f"{info.address}:{info.port}" if info is not None else ""
    except AttributeError:
        return ""


@dataclass(frozen=True, slots=True)
class AssociationLog:
    """EVT_ACCEPTED and EVT_RELEASED / EVT_ABORTED: one log line each (peer AE and
    address only) and the open-associations gauge; with ``sessions``, the association's
    lifecycle (opened, each PDU received, closed) for study completion."""

    metrics: NodeMetrics | None = None
    sessions: Sessions | None = None

    def accepted(self, event: Event) -> None:
        if self.sessions is not None:
            self.sessions.open(event.assoc)
        if self.metrics is not None:
            self.metrics.association_accepted()
        log.info("assoc.accepted", extra={"calling_aet": _calling_aet(event), "peer": _peer(event)})

    def pdu_received(self, event: Event) -> None:
        """EVT_PDU_RECV: the association is sending (see :mod:`dicom_node.net.sessions`)."""
        if self.sessions is not None:
            self.sessions.touch(event.assoc)

    def closed(self, event: Event) -> None:
        """EVT_CONN_CLOSE: the connection is gone, however the association ended."""
        if self.sessions is not None:
            self.sessions.end(event.assoc)

    def ended(self, event: Event) -> None:
        """The association ended (a study may still continue)."""
        if self.sessions is not None:
            self.sessions.end(event.assoc)
        if self.metrics is not None:
            self.metrics.association_ended()
        log.info(
            "assoc.ended",
            extra={"calling_aet": _calling_aet(event), "how": event.event.name,
                   "peer": _peer(event)},
        )  # fmt: skip
