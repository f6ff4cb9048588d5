"""C-STORE SCU: send our results (SR, Secondary Capture) to one destination.

One call of :func:`send` opens one association, proposes exactly the presentation
contexts the objects need (their SOP Class with the transfer syntax they are encoded
in, DICOM PS3.8 9.3.2.2), stores each object once and releases. Failures are sorted
into the two kinds the worker acts on:

* :class:`TransientDeliveryError` (a :class:`~dicom_node.errors.TransientError`): the
  peer may take the objects later - connection refused or timed out, association
  aborted, rejected "transient" (PS3.8 9.3.4, result 2), C-STORE status 0xA7xx "Out of
  Resources" or 0x0213 "Resource limitation" (PS3.4 B.2.3, PS3.7 C). Retried with
  :func:`backoff_seconds` by the worker's persistent jobs.
* :class:`PermanentDeliveryError` (a :class:`~dicom_node.errors.PermanentError`):
  retrying cannot help - association rejected permanently (e.g. our calling AE title
  is not known to the PACS), a presentation context refused, C-STORE 0xC0xx "Cannot
  understand", 0xA9xx "Data set does not match SOP class" or any other refusal.

Messages name statuses, counts and AE titles, never patient data or instance UIDs.

pynetdicom does not set ``TCP_NODELAY``; without it the small PDUs of the association
handshake and each C-STORE response wait on Nagle's algorithm plus the peer's delayed
ACK (tens of ms per exchange). It is set in an ``EVT_CONN_OPEN`` handler, which
pynetdicom calls right after ``connect()`` and before the A-ASSOCIATE-RQ goes out.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from dicom_node.config import Destination
from dicom_node.errors import PermanentError, TransientError
from dicom_node.net import tls
from dicom_node.net.scp import node_ae

log = logging.getLogger(__name__)

#: DICOM PS3.8 9.3.1: at most 128 presentation contexts per association (odd IDs 1..255).
MAX_CONTEXTS = 128

#: C-STORE statuses that mean "try again later" besides 0xA7xx (PS3.7 Annex C).
_TRANSIENT_STATUSES = frozenset({0x0213})  # Resource limitation


@dataclass(frozen=True, slots=True)
class ScuTimeouts:
    """Seconds to wait before giving up; each expiry is a transient failure.

    ``connect_s`` bounds the TCP connect, ``acse_s`` the association handshake,
    ``dimse_s`` each C-STORE response, ``network_s`` any silence on the socket.
    """

    connect_s: float = 10.0
    acse_s: float = 30.0
    dimse_s: float = 60.0
    network_s: float = 60.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one successful :func:`send` stored.

    ``sent`` holds the SOP Instance UIDs acknowledged with success or warning (for the
    index, not for logs); ``warnings`` the (position in the input, status) of objects
    stored with a warning status (0xB000 coercion, 0xB006, 0xB007).
    """

    destination: str
    sent: tuple[str, ...]
    warnings: tuple[tuple[int, int], ...]
    elapsed_s: float


class _DeliveryFailure:
    """Fields shared by both failure kinds, for the delivery row in the index."""

    reason: str
    status: int | None
    sent: tuple[str, ...]

    def _init_fields(self, reason: str, status: int | None, sent: Sequence[str]) -> None:
        self.reason = reason
        self.status = status
        self.sent = tuple(sent)


class TransientDeliveryError(_DeliveryFailure, TransientError):
    """The destination may accept the objects later: retry with backoff."""

    def __init__(self, reason: str, *, status: int | None = None, sent: Sequence[str] = ()):
        super().__init__(reason)
        self._init_fields(reason, status, sent)


class PermanentDeliveryError(_DeliveryFailure, PermanentError):
    """Retrying cannot help: the delivery is marked ``failed`` with ``reason``."""

    def __init__(self, reason: str, *, status: int | None = None, sent: Sequence[str] = ()):
        super().__init__(reason)
        self._init_fields(reason, status, sent)


def backoff_seconds(attempt: int, base: float = 30.0, cap: float = 3600.0) -> float:
    """Delay before retry number ``attempt`` (1 = the first retry): ``base * 2**(attempt-1)``.

    Capped at ``cap`` so a PACS that is down overnight is still tried every hour.
    Deterministic on purpose: the worker schedules a persistent job at ``now + delay``,
    and a restart must not change when it runs.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    exponent = min(attempt - 1, 62)  # 2**62 * base already exceeds any sane cap
    return float(min(cap, base * (2.0**exponent)))


@dataclass(frozen=True, slots=True)
class _Item:
    """One object to store: the dataset or file, and its (SOP Class, transfer syntax)."""

    payload: Dataset | Path
    sop_class: UID
    sop_instance: str
    transfer_syntax: UID


def _item(obj: Dataset | Path | str, index: int) -> _Item:
    if isinstance(obj, Dataset):
        meta = getattr(obj, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        if ts is None or "SOPClassUID" not in obj or "SOPInstanceUID" not in obj:
            raise PermanentDeliveryError(
                f"object {index + 1} lacks SOP Class/Instance UID or a file meta "
                "Transfer Syntax UID; cannot choose a presentation context"
            )
        return _Item(obj, UID(obj.SOPClassUID), str(obj.SOPInstanceUID), UID(ts))
    path = Path(obj)
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise PermanentDeliveryError(f"object {index + 1} is not a readable DICOM file") from exc
    try:
        return _Item(
            path,
            UID(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            UID(meta.TransferSyntaxUID),
        )
    except AttributeError as exc:
        raise PermanentDeliveryError(
            f"object {index + 1} has incomplete file meta information"
        ) from exc


def required_contexts(items: Sequence[Dataset | Path | str]) -> list[PresentationContext]:
    """One context per distinct (SOP Class, transfer syntax) of ``items``, first-seen order.

    Each context proposes exactly one transfer syntax, the one the object is encoded
    in, so nothing is transcoded on the way and the peer cannot pick another.
    """
    seen: dict[tuple[UID, UID], None] = {}
    for i, obj in enumerate(items):
        it = _item(obj, i)
        seen.setdefault((it.sop_class, it.transfer_syntax), None)
    if len(seen) > MAX_CONTEXTS:
        raise PermanentDeliveryError(
            f"{len(seen)} presentation contexts needed, at most {MAX_CONTEXTS} allowed"
        )
    return [build_context(sop, [ts]) for sop, ts in seen]


@dataclass
class _Watch:
    """Association events we act on: connection opened (set ``TCP_NODELAY`` then) and
    the A-ASSOCIATE-RJ fields, which pynetdicom logs but does not return."""

    connected: bool = False
    rejected_result: int | None = None
    rejected_text: str = ""

    def on_conn_open(self, event: Event) -> None:
        """``EVT_CONN_OPEN``: runs after ``connect()``, before the A-ASSOCIATE-RQ is sent."""
        self.connected = True
        sock = event.assoc.dul.socket
        raw = getattr(sock, "socket", None) if sock is not None else None
        if isinstance(raw, socket.socket):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_acse_recv(self, event: Event) -> None:
        """``EVT_ACSE_RECV``: keep result/source/reason of a rejection (PS3.8 9.3.4)."""
        prim = event.primitive  # type: ignore[attr-defined]
        if isinstance(prim, A_ASSOCIATE) and prim.result in (0x01, 0x02):
            self.rejected_result = int(prim.result)
            self.rejected_text = (
                f"{prim.result_str}; source: {prim.source_str}; reason: {prim.reason_str}"
            )


def associate(
    destination: Destination,
    contexts: Sequence[PresentationContext],
    *,
    calling_ae_title: str = "ICHNODE",
    timeouts: ScuTimeouts | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Association:
    """Open an association to ``destination`` with ``TCP_NODELAY`` set on its socket.

    Over DICOM TLS when the destination has ``tls``: with ``ssl_context`` (the node
    builds one per destination at start-up, relative paths resolved) or else one built
    here from ``destination.tls`` as written. A failed handshake (a PACS certificate
    that does not verify, or ours refused) yields no association: transient, like a
    PACS that is down (a certificate may be renewed), and retried with backoff.

    Raises :class:`TransientDeliveryError` or :class:`PermanentDeliveryError` when no
    association results. The caller must ``release()`` the returned association.
    """
    t = timeouts or ScuTimeouts()
    ae = node_ae(calling_ae_title)
    ae.connection_timeout = t.connect_s
    ae.acse_timeout = t.acse_s
    ae.dimse_timeout = t.dimse_s
    ae.network_timeout = t.network_s
    watch = _Watch()
    tls_args = None
    if destination.tls is not None:
        ctx = ssl_context if ssl_context is not None else tls.client_context(destination.tls)
        tls_args = (ctx, destination.host)
    assoc = ae.associate(
        destination.host,
        destination.port,
        contexts=list(contexts),
        ae_title=destination.ae_title,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, watch.on_conn_open),
            (evt.EVT_ACSE_RECV, watch.on_acse_recv),
        ],
        tls_args=tls_args,
    )
    if assoc.is_established:
        return assoc
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    if not watch.connected:
        raise TransientDeliveryError(f"cannot connect to {where} (refused, unreachable or timeout)")
    if assoc.is_rejected:
        text = watch.rejected_text or "rejected"
        if watch.rejected_result == 0x02:
            raise TransientDeliveryError(f"association rejected (transient) by {where}: {text}")
        raise PermanentDeliveryError(f"association rejected by {where}: {text}")
    if assoc.is_aborted:
        if not assoc.accepted_contexts and assoc.rejected_contexts:
            raise PermanentDeliveryError(
                f"{where} accepted none of the {len(contexts)} proposed presentation contexts"
            )
        raise TransientDeliveryError(f"association with {where} was aborted")
    raise TransientDeliveryError(f"association with {where} failed (timeout or connection lost)")


def _status_kind(status: int) -> str:
    """'success', 'warning', 'transient' or 'permanent' for a C-STORE status (PS3.4 B.2.3)."""
    if status == 0x0000:
        return "success"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    if 0xA700 <= status <= 0xA7FF or status in _TRANSIENT_STATUSES:
        return "transient"
    return "permanent"


def send(
    destination: Destination,
    datasets: Sequence[Dataset | Path | str],
    *,
    calling_ae_title: str = "ICHNODE",
    timeouts: ScuTimeouts | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """Store ``datasets`` (pydicom datasets with file meta, or DICOM files) at ``destination``.

    One association for all objects. A transient failure stops at once (the rest would
    fail the same way) and raises :class:`TransientDeliveryError`; a permanent refusal
    of one object does not stop the others, and :class:`PermanentDeliveryError` is
    raised at the end. Both carry ``sent``: the objects already stored, which a retry
    may send again safely (same SOP Instance UIDs, so the PACS deduplicates).
    """
    start = time.perf_counter()
    items = [_item(obj, i) for i, obj in enumerate(datasets)]
    if not items:
        return DeliveryResult(destination.name, (), (), 0.0)
    contexts = required_contexts([it.payload for it in items])
    assoc = associate(
        destination, contexts, calling_ae_title=calling_ae_title, timeouts=timeouts,
        ssl_context=ssl_context,
    )  # fmt: skip
    sent: list[str] = []
    warnings: list[tuple[int, int]] = []
    refused: list[str] = []
    first_refusal: int | None = None
    try:
        for i, it in enumerate(items):
            if not assoc.is_established:
                raise TransientDeliveryError(
                    f"association with {destination.name} ended after {len(sent)} of "
                    f"{len(items)} objects",
                    sent=sent,
                )
            try:
                rsp = assoc.send_c_store(it.payload)
            except ValueError:
                # pynetdicom: no accepted presentation context for this object
                refused.append(f"object {i + 1}: presentation context not accepted")
                continue
            except RuntimeError as exc:
                # pynetdicom: the association ended between our check and the request
                raise TransientDeliveryError(
                    f"association with {destination.name} ended after {len(sent)} of "
                    f"{len(items)} objects",
                    sent=sent,
                ) from exc
            status = rsp.get("Status") if rsp is not None else None
            if status is None:
                raise TransientDeliveryError(
                    f"no C-STORE response from {destination.name} for object {i + 1} of "
                    f"{len(items)} (timeout or abort)",
                    sent=sent,
                )
            code = int(status)
            kind = _status_kind(code)
            if kind in ("success", "warning"):
                sent.append(it.sop_instance)
                if kind == "warning":
                    warnings.append((i, code))
            elif kind == "transient":
                raise TransientDeliveryError(
                    f"{destination.name} answered C-STORE status 0x{code:04X} for object "
                    f"{i + 1} of {len(items)}",
                    status=code,
                    sent=sent,
                )
            else:
                first_refusal = code if first_refusal is None else first_refusal
                refused.append(f"object {i + 1}: status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed = time.perf_counter() - start
    if refused:
        log.warning(
            "delivery.refused",
            extra={"destination": destination.name, "n_refused": len(refused), "n_sent": len(sent)},
        )
        raise PermanentDeliveryError(
            f"{destination.name} refused {len(refused)} of {len(items)} objects: "
            + "; ".join(refused),
            status=first_refusal,
            sent=sent,
        )
    log.info(
        "delivery.sent",
        extra={"destination": destination.name, "n": len(sent), "elapsed_s": round(elapsed, 4)},
    )
    return DeliveryResult(destination.name, tuple(sent), tuple(warnings), elapsed)
