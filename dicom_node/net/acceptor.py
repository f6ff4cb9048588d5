"""The node's native DICOM Upper Layer acceptor: Storage and Verification SCP.

Why not pynetdicom's server: pynetdicom moves every PDU between two threads per
association (the DUL thread reads the socket, the association thread runs DIMSE) and
decodes each command with pydicom. Profiled on 500 CT images over one association, our
node's thread was busy 43 % of the wall time and the rest was hand-offs; a bare
pynetdicom receiver that only wrote bytes ran at a quarter of dcmtk's storescp. Here one
thread per association reads PDUs straight off the socket: dataset fragments land in
one reusable buffer (``recv_into``, no copies, no joins), the command set is read and
written by :mod:`dicom_node.net.dimse`, and the C-STORE response leaves as soon as the
store is durable. BENCHMARKS.md (Ingest) has the side-by-side numbers.

pynetdicom still does what it does well and what is rarely on the hot path: decoding
A-ASSOCIATE-RQ and encoding the AC/RJ PDUs, and presentation-context and role
negotiation (:func:`pynetdicom.presentation.negotiate_as_acceptor`), so the contexts
we accept are exactly those the pynetdicom engine accepts. ``node.engine: pynetdicom``
in the config switches back to pynetdicom's server as a whole.

Protocol (PS3.8 9 and Annex D, acceptor side): the first PDU must be A-ASSOCIATE-RQ
within ``acse_timeout_s``; rejections follow pynetdicom's (calling AE not recognised
1/1/3, called AE 1/1/7, too many associations 2/3/2); then P-DATA-TF carrying
C-STORE-RQ and C-ECHO-RQ, A-RELEASE-RQ (answered, then closed) and A-ABORT. Any other
request is answered "unrecognised operation" (0x0211); a malformed or unexpected PDU
is answered with A-P-ABORT and the connection closed. An association silent for
``network_timeout_s`` is aborted. Deadlines bound whole PDUs, not only each ``recv``: a
peer trickling one byte at a time would otherwise hold a thread and a slot forever.
The association request (from connect to a complete A-ASSOCIATE-RQ) has
``acse_timeout_s`` in all; every later PDU ``pdu_timeout_s`` from its first byte.
TCP_NODELAY is set on every accepted socket. A C-STORE on a context of another SOP
class is answered 0x0122; an instance larger than ``max_instance_mb`` is read, dropped
and answered 0xA700 (memory stays bounded). Every refusal carries its reason in the
response's Error Comment (0000,0902).
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from pynetdicom import pdu as ul_pdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicom_node.config import NodeSection
from dicom_node.metrics import NodeMetrics
from dicom_node.net import tls
from dicom_node.net.callers import REJECTIONS, CallerPolicy, peer_host
from dicom_node.net.dimse import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    MAX_COMMAND_BYTES,
    P_DATA_TF,
    PDU_HEADER,
    PDV_HEADER,
    SOP_CLASS_NOT_SUPPORTED,
    UNRECOGNIZED_OPERATION,
    Command,
    ProtocolError,
    abort_pdu,
    command_pdus,
    encode_response,
    parse_command,
    release_rp,
)
from dicom_node.net.scp import set_nodelay
from dicom_node.net.sessions import Session, Sessions
from dicom_node.net.store_answer import StoreAnswer
from dicom_node.store.spool import OUT_OF_RESOURCES, SUCCESS, RateLimitedLog
from dicom_node.store.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"
#: An A-ASSOCIATE-RQ larger than this is not a real one (thousands of contexts fit).
MAX_ASSOCIATE_RQ: Final = 1 << 20
#: A receive buffer grown past this by one large instance is dropped after it.
KEEP_BUFFER: Final = 64 << 20
#: Dataset bytes that are dropped (a refused instance) pass through at most this much.
DISCARD_BUFFER: Final = 1 << 20
_ACCEPT_POLL_S: Final = 0.2


class StoreFunction(Protocol):
    """Stores one received dataset and returns its DIMSE status and, for a refusal,
    the reason for the response's Error Comment (never raises)."""

    def __call__(
        self, data: memoryview, transfer_syntax: str, sop_class: str | None,
        sop_instance: str | None, calling_aet: str, *, session: Session | None = None,
    ) -> StoreAnswer: ...  # fmt: skip


class _Closed(Exception):  # noqa: N818 - control flow: the peer or a stop closed the socket
    """The connection is gone; the association ends without another word."""


class _DeadlinePassedError(TimeoutError):
    """A PDU (or the association request) took longer than its whole deadline."""


def _recv_into(sock: socket.socket, view: memoryview, deadline: float = math.inf) -> None:
    """Fill ``view``; each ``recv`` waits up to the socket timeout, and the whole read
    must be done by ``deadline`` (``time.monotonic``), checked after every ``recv``."""
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise _Closed
        view = view[n:]
        if view and time.monotonic() > deadline:
            raise _DeadlinePassedError


def _recv(sock: socket.socket, n: int, deadline: float = math.inf) -> bytearray:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf), deadline)
    return buf


def _writable(sock: socket.socket) -> bool:
    """Whether ``sock`` takes more bytes without waiting."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


@dataclass(frozen=True, slots=True)
class _Negotiated:
    contexts: dict[int, str]  # accepted context ID -> transfer syntax
    abstract: dict[int, str]  # accepted context ID -> abstract syntax (SOP class)
    peer_max_pdu: int


class Association:
    """One accepted connection, served by its own thread."""

    def __init__(self, server: Acceptor, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.calling_aet = ""
        self.established = False
        self._lock = threading.Lock()
        self._busy = False  # inside a store: its Success must not be cut off
        self._stop = False  # abort once the current store is answered
        self._closed = False
        #: Held while bytes go out, so that an A-ABORT never lands inside a response.
        self._send_lock = threading.Lock()
        self._buffer = bytearray()
        #: Set once established when the acceptor tracks sessions (study completion).
        self.session: Session | None = None
        self.thread = threading.Thread(target=self._run, name="dicom-node-assoc", daemon=True)

    # -- called from other threads -------------------------------------------------------

    def abort_if_idle(self) -> bool:
        """Abort now unless a store is in progress (then it aborts after answering it).

        Returns whether the association is already closed or was aborted here.
        """
        with self._lock:
            self._stop = True
            if self._busy:
                return False
            # Closed under the same lock as the busy check: a store cannot start between
            # them (it checks ``_closed`` under this lock) and end up done but unanswered.
            first = not self._closed
            self._closed = True
        if first:
            self._send_abort(source=2, reason=0)
        return True

    def abort(self) -> None:
        """Abort at once, busy or not (past a stop's grace period)."""
        with self._lock:
            self._stop = True
        self._abort(source=2, reason=0)

    # -- the association's own thread ---------------------------------------------------

    def _abort(self, source: int, reason: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._send_abort(source, reason)

    def _send_abort(self, source: int, reason: int) -> None:
        """A-ABORT if it can go out at once, then shut the socket down (``_closed`` set)."""
        # Never wait here: this may be a stop's thread, and a peer that reads nothing
        # would hold it for network_timeout_s. The A-ABORT goes out only if no response
        # is being sent (it would land inside it) and the send buffer takes it now.
        # Nor from another thread on a TLS socket: OpenSSL's connection object must not
        # be written while the association's thread reads it; shutdown alone ends it.
        foreign_tls = isinstance(self.sock, ssl.SSLSocket) and (
            threading.current_thread() is not self.thread
        )
        if (
            (self.established or source == 2)
            and not foreign_tls
            and self._send_lock.acquire(blocking=False)
        ):
            try:
                with contextlib.suppress(OSError, ValueError):
                    if _writable(self.sock):
                        self.sock.sendall(abort_pdu(source, reason))
            finally:
                self._send_lock.release()
        # Only shut down here: this may run in another thread (a stop) while the
        # association's own thread waits in recv(); shutdown wakes it, and that thread
        # closes the descriptor itself, so it is never closed under a running call.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _close_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _run(self) -> None:
        how = "closed"
        try:
            how = self._serve()
        except _Closed:
            how = "aborted" if self._stop else "closed"
        except TimeoutError as exc:
            deadline = "network_timeout_s"
            if isinstance(exc, _DeadlinePassedError):
                deadline = "pdu_timeout_s" if self.established else "acse_timeout_s"
            log.warning(
                "assoc.timeout",
                extra={"calling_aet": self.calling_aet, "peer": self.peer, "deadline": deadline},
            )
            self._abort(source=2, reason=0)
            how = "aborted"
        except ProtocolError as exc:
            log.warning(
                "assoc.protocol_error",
                extra={"error": str(exc), "calling_aet": self.calling_aet, "peer": self.peer},
            )
            self._abort(source=2, reason=exc.reason)
            how = "aborted"
        except OSError as exc:
            if not self._closed:
                log.warning(
                    "assoc.connection_error",
                    extra={"error": type(exc).__name__, "peer": self.peer},
                )
            how = "aborted"
        except Exception as exc:  # noqa: BLE001 - one bad association never takes the node down
            log.error("assoc.failed", extra={"error": type(exc).__name__, "peer": self.peer})
            self._abort(source=2, reason=0)
            how = "aborted"
        finally:
            with self._lock:
                self._closed = True
            self._close_socket()
            self.server._forget(self)
            if self.session is not None and self.server.sessions is not None:
                self.server.sessions.end(self)
            if self.established:
                self.server.metrics.association_ended()
                log.info(
                    "assoc.ended",
                    extra={"calling_aet": self.calling_aet, "how": how, "peer": self.peer},
                )

    def _serve(self) -> str:
        node = self.server.node
        if isinstance(self.sock, ssl.SSLSocket):
            # Here, not in the accept loop: a slow or bogus TLS client holds only this
            # thread, and only until the deadline (the A-ASSOCIATE-RQ's own, acse_timeout_s).
            failed = tls.handshake(self.sock, node.acse_timeout_s, self.peer)
            if failed is not None:
                self.server.metrics.association_refused("tls-handshake")
                return "tls-refused"
        self.sock.settimeout(node.acse_timeout_s)
        negotiated = self._associate()
        if negotiated is None:
            return "rejected"
        self.sock.settimeout(node.network_timeout_s)
        return self._messages(negotiated)

    def _associate(self) -> _Negotiated | None:
        """Read A-ASSOCIATE-RQ; answer AC (returns what was agreed) or RJ (None)."""
        deadline = time.monotonic() + self.server.node.acse_timeout_s
        pdu_type, length = PDU_HEADER.unpack(_recv(self.sock, PDU_HEADER.size, deadline))
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolError("first PDU is not A-ASSOCIATE-RQ", 2)
        if length > MAX_ASSOCIATE_RQ:
            raise ProtocolError("A-ASSOCIATE-RQ too large", 6)
        raw = bytes(PDU_HEADER.pack(pdu_type, length) + _recv(self.sock, length, deadline))
        pdu = ul_pdu.A_ASSOCIATE_RQ()
        try:
            pdu.decode(raw)
            rq = pdu.to_primitive()
        except Exception as exc:  # pynetdicom raises many types on bad input
            raise ProtocolError(f"undecodable A-ASSOCIATE-RQ ({type(exc).__name__})", 6) from exc
        node = self.server.node
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        self.calling_aet = calling
        reject: tuple[int, int, int, str] | None = None
        refusal = self.server.callers.refusal(calling, called, peer_host(self.peer))
        if (
            str(rq.application_context_name) != APPLICATION_CONTEXT
            and refusal != "called-ae-not-recognised"
        ):
            reject = (1, 1, 2, "application-context-not-supported")
        elif refusal is not None:
            reject = (*REJECTIONS[refusal], refusal)
        if reject is None and self.server._count() > node.max_associations:
            reject = (2, 3, 2, "local-limit-exceeded")
        if reject is not None:
            result, source, diagnostic, reason = reject
            rj = A_ASSOCIATE()
            rj.result, rj.result_source, rj.diagnostic = result, source, diagnostic
            out = ul_pdu.A_ASSOCIATE_RJ()
            out.from_primitive(rj)
            self.server.metrics.association_refused(reason)
            self._send(out.encode())
            log.warning(
                "assoc.rejected",
                extra={"reason": reason, "calling_aet": calling, "called_aet": called,
                       "peer": self.peer},
            )  # fmt: skip
            return None
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
        }
        results, ac_roles = negotiate_as_acceptor(
            rq.presentation_context_definition_list, self.server.contexts, roles or None
        )
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result, ac.result_source = 0, 1
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = node.max_pdu_size
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ac.user_information = [max_length, impl_uid, impl_name, *ac_roles]
        out_ac = ul_pdu.A_ASSOCIATE_AC()
        out_ac.from_primitive(ac)
        if self.server.sessions is not None:
            self.session = self.server.sessions.open(self)
        self._send(out_ac.encode())
        self.established = True
        self.server.metrics.association_accepted()
        log.info("assoc.accepted", extra={"calling_aet": calling, "peer": self.peer})
        accepted = {
            cx.context_id: cx
            for cx in results
            if cx.result == 0 and cx.context_id is not None and cx.transfer_syntax
        }
        return _Negotiated(
            {cid: str(cx.transfer_syntax[0]) for cid, cx in accepted.items()},
            {cid: str(cx.abstract_syntax) for cid, cx in accepted.items()},
            int(rq.maximum_length_received or 0),
        )

    def _messages(self, neg: _Negotiated) -> str:
        """The P-DATA loop; returns how the association ended."""
        sock = self.sock
        command = bytearray()
        pending: Command | None = None  # a request whose dataset is arriving
        pending_cx = 0
        oversize = False  # the pending instance passed node.max_instance_mb: dropped
        size = 0  # dataset bytes received so far into self._buffer
        header = bytearray(PDV_HEADER.size)
        header_view = memoryview(header)
        pdu_header = bytearray(PDU_HEADER.size)
        pdu_view = memoryview(pdu_header)
        pdu_timeout = self.server.node.pdu_timeout_s
        session = self.session
        while True:
            # Waiting for a PDU is bounded by the socket's network_timeout_s; once its
            # first byte is in, the whole PDU by pdu_timeout_s.
            _recv_into(sock, pdu_view[:1])
            deadline = time.monotonic() + pdu_timeout
            _recv_into(sock, pdu_view[1:], deadline)
            pdu_type, length = PDU_HEADER.unpack(pdu_header)
            if session is not None:
                session.touch()
            if pdu_type == A_RELEASE_RQ:
                _recv(sock, min(length, 4), deadline)
                with self._lock:
                    self._closed = True
                self._send(release_rp())
                return "released"
            if pdu_type == A_ABORT:
                return "aborted by peer"
            if pdu_type != P_DATA_TF:
                reason = 2 if 1 <= pdu_type <= 7 else 1  # unexpected / unrecognised PDU
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", reason)
            left = length
            while left > 0:
                if left < PDV_HEADER.size:
                    raise ProtocolError("PDV header past the end of its PDU", 6)
                _recv_into(sock, header_view, deadline)
                item_length, cx_id, control = PDV_HEADER.unpack(header)
                frag = item_length - 2
                left -= PDV_HEADER.size
                if frag < 0 or frag > left:
                    raise ProtocolError("PDV length does not fit its PDU", 6)
                left -= frag
                if cx_id not in neg.contexts:
                    raise ProtocolError("PDV on a context that was not accepted", 6)
                if control & 0x01:  # command fragment
                    if pending is not None or len(command) + frag > MAX_COMMAND_BYTES:
                        raise ProtocolError("unexpected command fragment", 6)
                    command += _recv(sock, frag, deadline)
                    if control & 0x02:
                        request = parse_command(command)
                        command.clear()
                        if request.has_dataset:
                            pending, pending_cx, size = request, cx_id, 0
                        else:
                            self._answer_without_dataset(request, cx_id, neg)
                    continue
                if pending is None or cx_id != pending_cx:
                    raise ProtocolError("dataset fragment without its request", 6)
                # The dataset of a request we do not serve (a C-FIND identifier, say) is
                # read and dropped: each fragment overwrites the last; answered at its end.
                keep = pending.command_field == C_STORE_RQ and not oversize
                if keep and size + frag > self.server.max_instance_bytes:
                    oversize, keep = True, False  # answered Out of Resources at its end
                if keep:
                    if size + frag > len(self._buffer):
                        grown = bytearray(max(size + frag, 2 * len(self._buffer), 1 << 20))
                        grown[:size] = self._buffer[:size]
                        self._buffer = grown
                    with memoryview(self._buffer) as view:
                        _recv_into(sock, view[size : size + frag], deadline)
                    size += frag
                else:  # one fragment may be gigabytes long: read it in bounded pieces
                    self._discard(frag, deadline)
                if session is not None:
                    session.touch()
                if control & 0x02:
                    request, pending = pending, None
                    if oversize:
                        oversize = False
                        log.warning(
                            "store.too_large",
                            extra={"limit_mb": self.server.node.max_instance_mb,
                                   "calling_aet": self.calling_aet},
                        )  # fmt: skip
                        self._send_response(
                            request, OUT_OF_RESOURCES, cx_id, neg,
                            "instance larger than node.max_instance_mb",
                        )  # fmt: skip
                        continue
                    if not keep:
                        self._answer_without_dataset(request, cx_id, neg)
                        continue
                    self._store(request, cx_id, size, neg)
                    if self._stop:
                        self._abort(source=2, reason=0)
                        return "aborted"

    def _discard(self, n: int, deadline: float) -> None:
        """Read and drop ``n`` bytes through the receive buffer, growing it to no more
        than :data:`DISCARD_BUFFER`."""
        if len(self._buffer) < min(n, DISCARD_BUFFER):
            self._buffer = bytearray(min(n, DISCARD_BUFFER))
        with memoryview(self._buffer) as view:
            while n:
                piece = min(n, len(view))
                _recv_into(self.sock, view[:piece], deadline)
                n -= piece

    def _answer_without_dataset(self, request: Command, cx_id: int, neg: _Negotiated) -> None:
        if request.command_field == C_CANCEL_RQ:
            return  # nothing of ours is cancellable: every request is answered at once
        status = SUCCESS if request.command_field == C_ECHO_RQ else UNRECOGNIZED_OPERATION
        if request.command_field != C_ECHO_RQ:
            log.warning(
                "assoc.unsupported_request",
                extra={"command_field": f"0x{request.command_field:04X}",
                       "calling_aet": self.calling_aet},
            )  # fmt: skip
        self._send_response(request, status, cx_id, neg)

    def _store(self, request: Command, cx_id: int, size: int, neg: _Negotiated) -> None:
        with self._lock:
            if self._closed:
                return
            self._busy = True
        try:
            if request.sop_class != neg.abstract[cx_id]:
                # PS3.7 C.5: a C-STORE travels on its SOP class's own context; on any
                # other, its bytes would be read with a syntax negotiated for something else.
                log.warning(
                    "store.rejected",
                    extra={"status": f"0x{SOP_CLASS_NOT_SUPPORTED:04X}",
                           "error": "SOP class differs from its presentation context",
                           "calling_aet": self.calling_aet},
                )  # fmt: skip
                self._send_response(
                    request, SOP_CLASS_NOT_SUPPORTED, cx_id, neg,
                    "SOP class differs from its presentation context",
                )  # fmt: skip
                return
            with memoryview(self._buffer) as view:
                answer = self.server.on_store(
                    view[:size], neg.contexts[cx_id], request.sop_class, request.sop_instance,
                    self.calling_aet, session=self.session,
                )  # fmt: skip
            self._send_response(request, answer.status, cx_id, neg, answer.comment)
        finally:
            with self._lock:
                self._busy = False
            if len(self._buffer) > KEEP_BUFFER:
                self._buffer = bytearray()

    def _send_response(
        self, request: Command, status: int, cx_id: int, neg: _Negotiated, comment: str = ""
    ) -> None:
        """Send the response; ``comment`` is its Error Comment (a refusal's reason)."""
        pdus = command_pdus(cx_id, encode_response(request, status, comment), neg.peer_max_pdu)
        self._send(pdus[0] if len(pdus) == 1 else b"".join(pdus))


class Acceptor:
    """Listens on ``node.host:node.port`` and serves each association in its own thread.

    With ``ssl_context`` it is the DICOM TLS port instead (``port``, by default
    ``node.tls.port``): accepted sockets are wrapped, and each association's thread
    runs the handshake first. ``siblings`` are the node's other acceptors: the
    association limit counts theirs too (one node, one limit).
    """

    def __init__(
        self, node: NodeSection, on_store: StoreFunction,
        contexts: Sequence[PresentationContext], metrics: NodeMetrics | None = None,
        sessions: Sessions | None = None,
        *, ssl_context: ssl.SSLContext | None = None, port: int | None = None,
    ) -> None:  # fmt: skip
        self.node = node
        #: Open associations and the studies they store (study completion waits on them).
        self.sessions = sessions
        self.ssl_context = ssl_context
        self.bind_port = port if port is not None else (
            node.tls.port if ssl_context is not None else node.port
        )  # fmt: skip
        self.callers = CallerPolicy.of(node)
        self.siblings: list[Acceptor] = []
        #: Counts associations (accepted, open, refused); a private set when none is given.
        self.metrics = metrics if metrics is not None else NodeMetrics()
        self.on_store = on_store
        self.contexts = list(contexts)
        self.max_instance_bytes = node.max_instance_mb << 20
        #: Open connections beyond this are closed unread (see :meth:`_accept_loop`).
        self.max_connections = node.max_associations + max(4, node.max_associations)
        self._refusals = RateLimitedLog(60.0, log)
        self._lock = threading.Lock()
        self._active: list[Association] = []
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return int(self._listener.getsockname()[1])

    @property
    def listening(self) -> bool:
        """Whether new associations are accepted (for the node's readiness probe)."""
        return self._accepting.is_set() and self._thread is not None and self._thread.is_alive()

    @property
    def associations(self) -> list[Association]:
        with self._lock:
            return list(self._active)

    def start(self) -> None:
        """Bind and listen; associations are accepted in a background thread."""
        family = socket.AF_INET6 if ":" in self.node.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.node.host, self.bind_port))
            listener.listen(max(16, self.node.max_associations * 2))
        except OSError:
            listener.close()
            raise
        listener.settimeout(_ACCEPT_POLL_S)
        self._listener = listener
        self._accepting.set()
        self._thread = threading.Thread(
            target=self._accept_loop, name="dicom-node-scp", daemon=True
        )
        self._thread.start()
        log.info(
            "scp.listening",
            extra={"ae_title": self.node.ae_title, "host": self.node.host, "port": self.port,
                   "engine": "native", "tls": self.ssl_context is not None},
        )  # fmt: skip

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while self._accepting.is_set():
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._accepting.is_set():
                    time.sleep(_ACCEPT_POLL_S)  # e.g. out of file descriptors: do not spin
                continue
            if self._count() >= self.max_connections:
                # A flood of connections (or one that never speaks) must not grow threads
                # without bound: past the slack, close at once instead of reading an
                # A-ASSOCIATE-RQ to reject. Up to then, extras get a proper rejection.
                self.metrics.association_refused("too-many-connections")
                self._refusals.warning(
                    "assoc.connection_refused", reason="too-many-connections",
                    limit=self.max_connections,
                )  # fmt: skip
                sock.close()
                continue
            try:
                sock.settimeout(None)
                set_nodelay(sock)
                if self.ssl_context is not None:
                    sock = tls.wrap_accepted(self.ssl_context, sock)
            except OSError:
                sock.close()
                continue
            assoc = Association(self, sock, f"{address[0]}:{address[1]}")
            with self._lock:
                self._active.append(assoc)
            try:
                assoc.thread.start()
            except RuntimeError:  # no thread to be had (process limit): refuse this one
                self._forget(assoc)
                sock.close()
                self.metrics.association_refused("no-thread")
                self._refusals.warning("assoc.connection_refused", reason="no-thread")
        listener.close()

    def _count(self) -> int:
        with self._lock:
            mine = len(self._active)
        return mine + sum(s._own_count() for s in self.siblings)

    def _own_count(self) -> int:
        with self._lock:
            return len(self._active)

    def _forget(self, assoc: Association) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._active.remove(assoc)

    def shutdown(self) -> None:
        """Accept no new associations (running ones continue)."""
        self._accepting.clear()
        if self._thread is not None:
            self._thread.join()

    def stop(self, grace_s: float) -> None:
        """Stop accepting; abort idle associations now, busy ones once their store is
        answered or at ``grace_s`` at the latest; wait for their threads."""
        self.shutdown()
        deadline = time.monotonic() + grace_s
        while True:
            remaining = [a for a in self.associations if not a.abort_if_idle()]
            if not remaining or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for assoc in self.associations:
            assoc.abort()
        for assoc in self.associations:
            assoc.thread.join(timeout=5.0)
