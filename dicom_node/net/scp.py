"""The SCP's contexts and the pynetdicom engine: an AE with every storage SOP class,
our transfer syntaxes, TCP_NODELAY.

:func:`build_ae` defines what both receive engines accept (the native acceptor,
:mod:`dicom_node.net.acceptor`, negotiates against its contexts); the server and latency
tuning below serve ``node.engine: pynetdicom``; :func:`set_nodelay` and :func:`echo`
are shared.

Presentation contexts: all of pynetdicom's storage SOP classes (so a routing rule that
also sends SR, Secondary Capture or MR never fails an association; those instances are
stored and marked not eligible) plus Verification (PS3.4 Annex A). Transfer syntaxes
are the ones the issue names, accepted as-is: nothing is transcoded on the way in.

TCP_NODELAY: pynetdicom leaves Nagle's algorithm on. A C-STORE response is a small
write after a small write; with Nagle plus the peer's delayed ACK each one waits for
the ACK timer (~40 ms on Linux loopback), which caps a sender at ~25 images/s. We set
it on every accepted socket (:class:`NodelayAssociationServer`) and on sockets we open
(:func:`set_nodelay_on_open`, bound to ``EVT_CONN_OPEN`` of an outgoing association).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

import pynetdicom.association
import pynetdicom.dul
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AddressInformation, AssociationSocket, ThreadedAssociationServer

from dicom_node.config import NodeSection
from dicom_node.metrics import NodeMetrics
from dicom_node.net import tls
from dicom_node.net.scp_guard import bounded_acceptor, guard_socket
from dicom_node.store.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

#: Accepted transfer syntaxes (PS3.5 Annex A, PS3.6 Table A-1), in our order of preference.
#: pynetdicom picks, for each proposed context, the first of *these* that the sender offers.
#: A sender (dcmtk storescu, for one) proposes a compressed file's own syntax together with
#: the uncompressed ones in a single context; preferring encoded syntaxes keeps the file as
#: it was (no transcoding by the sender, no decoder needed there). Uncompressed ones last.
TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    DeflatedExplicitVRLittleEndian,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,  # process 14, selection value 1: the common lossless JPEG
    JPEGLossless,  # process 14
    RLELossless,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGBaseline8Bit,  # process 1
    JPEGExtended12Bit,  # process 2 & 4: 12-bit lossy JPEG (seen on CT)
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

VERIFICATION_SYNTAXES: Final = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def set_nodelay(sock: Any) -> None:
    """Set TCP_NODELAY on a socket (or an SSL socket around one); TCP only."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay_on_open(event: Event) -> None:
    """EVT_CONN_OPEN handler for associations we request (SCU side)."""
    try:
        set_nodelay(event.assoc.dul.socket.socket)  # type: ignore[union-attr]
    except (AttributeError, OSError) as exc:
        log.warning("net.nodelay_failed", extra={"error": type(exc).__name__})


#: The longest pynetdicom's DUL thread of one of our associations waits when idle: it
#: waits in ``select()`` on its socket and a wake pipe, so incoming PDUs and outgoing
#: primitives wake it at once; this only bounds how late it notices its timers (ARTIM,
#: network timeout) and a stop request.
DUL_IDLE_WAIT_S: Final = 0.02


class _WakingQueue(queue.Queue[Any]):
    """A pynetdicom queue that wakes the thread reading it on every put."""

    def __init__(self, wake: threading.Event | _DulWaker) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


class _DulWaker:
    """Lets a DUL thread sleep until its socket is readable or a primitive is queued.

    pynetdicom's DUL thread polls: check the socket, check the queue of primitives to
    send, sleep ``_run_loop_delay``, again. A short delay costs CPU on every idle loop
    of every association (four busy associations spent a tenth of a core on it); a
    long one delays every PDU. Waiting in ``select()`` on the socket and on a pipe that
    :meth:`set` writes to does neither. The pipe's descriptors are closed when the DUL
    object is collected, after its thread has ended (never while it may select on them).
    """

    def __init__(self, sock: socket.socket, owner: object) -> None:
        self.sock = sock
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        weakref.finalize(owner, _close_fds, self.r, self.w)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # pipe full (a wake is pending) or closed
            os.write(self.w, b"\0")

    def wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.sock.fileno(), self.r], [], [], timeout)
        except (OSError, ValueError):  # socket closed meanwhile: plain sleep
            time.sleep(min(timeout, 0.001))
            return
        if self.r in ready:
            try:
                while os.read(self.r, 4096):
                    pass
            except OSError:  # drained (EAGAIN)
                pass


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _ReactorClock:
    """Stands in for the ``time`` module inside ``pynetdicom.association`` and ``.dul``.

    pynetdicom's acceptor reactor polls its DIMSE queue with ``time.sleep(0.001)``
    between checks, and its DUL thread polls its socket and its queue of primitives
    the same way: a received C-STORE waits for the reactor's sleep before its handler
    runs, and its response for the DUL's sleep before it is sent. For our acceptor
    threads, ``sleep(s)`` becomes "wait up to ``s``, return early when there is work":
    an event for the reactor (a DIMSE message queued), ``select()`` for the DUL thread
    (see :class:`_DulWaker`). Same loops, same checks, less latency and less CPU. Every
    other thread (SCU associations, other code) sleeps as before.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wake = getattr(threading.current_thread(), "_ich_wake", None)
        if isinstance(wake, threading.Event):
            wake.wait(seconds)
            wake.clear()
        elif isinstance(wake, _DulWaker):
            wake.wait(seconds)
        else:
            time.sleep(seconds)


_CLOCK_LOCK = threading.Lock()


def _install_reactor_clock() -> None:
    with _CLOCK_LOCK:
        for module in (pynetdicom.association, pynetdicom.dul):
            if not isinstance(getattr(module, "time", None), _ReactorClock):
                setattr(module, "time", _ReactorClock())  # noqa: B010 - a module global, on purpose


def tune_acceptor(event: Event) -> None:
    """EVT_CONN_OPEN handler of our server: low-latency settings for this association.

    Runs in the acceptor's request thread before the association starts, so nothing
    else touches these objects yet.
    """
    assoc = event.assoc
    wake = threading.Event()
    assoc._ich_wake = wake  # type: ignore[attr-defined]
    assoc.dimse.msg_queue = _WakingQueue(wake)
    dul = assoc.dul
    raw = dul.socket.socket if dul.socket is not None else None
    if isinstance(raw, socket.socket) and not isinstance(raw, ssl.SSLSocket):
        waker = _DulWaker(raw, dul)
        dul._ich_wake = waker  # type: ignore[attr-defined]
        dul._run_loop_delay = DUL_IDLE_WAIT_S
        dul.to_provider_queue = _WakingQueue(waker)


class NodelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, setting TCP_NODELAY on each accepted connection.

    With an ``ssl_context`` (DICOM TLS), pynetdicom's own ``get_request`` would run the
    TLS handshake in the accept loop, where one client that never finishes it stops the
    server for everyone. Here the socket is wrapped without a handshake, and the
    handshake runs in the connection's own thread under ``ae.acse_timeout``.
    """

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        set_nodelay(client)
        if self.ssl_context is not None:
            try:
                client = tls.wrap_accepted(self.ssl_context, client)
            except OSError:
                client.close()
                raise
        return client, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            peer = _address(client_address)
            if tls.handshake(request, float(self.ae.acse_timeout or 30), peer) is not None:
                if self.metrics is not None:
                    self.metrics.association_refused("tls-handshake")
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """socketserver prints a traceback for a request that raised; one line instead
        (pynetdicom's ``process_request_thread`` then closes the socket)."""
        exc = sys.exc_info()[1]
        log.error(
            "assoc.failed",
            extra={"error": type(exc).__name__, "peer": _address(client_address),
                   "engine": "pynetdicom"},
        )  # fmt: skip

    #: Counts TLS handshake refusals (set by :func:`start_server`).
    metrics: NodeMetrics | None = None


def _address(client_address: Any) -> str:
    if isinstance(client_address, tuple):
        return ":".join(str(p) for p in client_address[:2])
    return str(client_address)


class NodeAE(AE):
    """pynetdicom's AE whose requested associations close their socket however they
    end: pynetdicom 3.0 drops it unclosed when ``connect()`` is refused (a PACS that is
    down), leaving the descriptor to the garbage collector (:func:`guard_socket`)."""

    def _create_socket(
        self, assoc: Association, address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:  # fmt: skip
        sock = super()._create_socket(assoc, address, tls_args)
        guard_socket(sock)
        return sock


def node_ae(ae_title: str) -> AE:
    """A pynetdicom AE that names this software (not pynetdicom) in its associations."""
    ae = NodeAE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae


def build_ae(node: NodeSection) -> AE:
    """An AE configured from ``node``: title, limits, timeouts, contexts, AE checks."""
    ae = node_ae(node.ae_title)
    ae.maximum_associations = node.max_associations
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.maximum_pdu_size = node.max_pdu_size
    # Titles only; hosts per AE are checked by callers.RequestedCheck (EVT_REQUESTED).
    ae.require_calling_aet = list(node.calling_titles)
    ae.require_called_aet = node.require_called_aet
    for cx in StoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification, list(VERIFICATION_SYNTAXES))
    return ae


def start_server(
    ae: AE, host: str, port: int, handlers: Sequence[EventHandlerType],
    *, ssl_context: ssl.SSLContext | None = None, metrics: NodeMetrics | None = None,
    pdu_timeout_s: float = 60.0,
) -> NodelayAssociationServer:  # fmt: skip
    """Bind and serve in a background thread; returns the server (port 0 picks one).

    With ``ssl_context`` the server speaks DICOM TLS (pynetdicom's ``ssl_context``,
    handshake per :class:`NodelayAssociationServer`). Every association is bounded as the
    native engine's are (:mod:`dicom_node.net.scp_guard`): the request within the AE's
    ``acse_timeout``, each later PDU within ``pdu_timeout_s`` of its first byte.
    """
    _install_reactor_clock()
    server = ae.make_server(
        (host, port),
        evt_handlers=[
            (evt.EVT_CONN_OPEN, tune_acceptor),
            (evt.EVT_CONN_OPEN, bounded_acceptor(pdu_timeout_s)),
            *handlers,
        ],
        server_class=NodelayAssociationServer,
        ssl_context=ssl_context,
    )
    assert isinstance(server, NodelayAssociationServer)
    server.metrics = metrics
    # AE.shutdown() and the server's own shutdown() expect it in the AE's list, as
    # AE.start_server(block=False) would have put it.
    ae._servers.append(server)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="dicom-node-scp",
        daemon=True,
    )  # fmt: skip
    thread.start()
    log.info(
        "scp.listening",
        extra={"ae_title": ae.ae_title, "host": host, "port": server.server_address[1],
               "engine": "pynetdicom", "tls": ssl_context is not None},
    )  # fmt: skip
    return server


def echo(
    host: str, port: int, ae_title: str, *, calling_aet: str = "ICHNODE", timeout_s: float = 30
) -> int | None:
    """C-ECHO a peer; returns its status (0x0000 is Success) or None if no association."""
    ae = node_ae(calling_aet)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        host, port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_on_open)]
    )
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()
