"""Bounds for the pynetdicom engine's associations, installed through its hooks.

pynetdicom's acceptor (3.0) has four gaps the native engine does not (RELIABILITY.md,
"Slow senders and protocol abuse"); each is closed here per association, without a fork:

* **No whole-PDU deadline.** Its DUL thread reads a PDU with blocking ``recv`` calls
  until every byte is in, so a peer trickling one byte a second holds the association
  (and, before the request is complete, its acceptor thread spins in ``kill()``)
  forever. :meth:`AssociationGuard.recv` replaces the socket wrapper's ``recv`` and
  :meth:`AssociationGuard.read_pdu` marks where a PDU starts: the request must be
  complete within ``acse_timeout_s`` of the connection, every later PDU within
  ``pdu_timeout_s`` of its first byte. A cut answers A-ABORT (source 2) and ends the read
  as a closed connection would, so the state machine frees the association.
* **The slot outlives the connection.** The acceptor thread waits ``acse_timeout_s``
  for the A-ASSOCIATE-RQ primitive even when the connection ended before one came
  (garbage, a truncated request, a closed peer). :meth:`AssociationGuard.on_transition`
  (``EVT_FSM_TRANSITION``) wakes it as soon as the state machine is back in Sta1.
* **Threads die of undecodable input.** A state-machine action that raises (an A-ABORT
  with an unknown source, an AE title that is not ASCII, a command set without Command
  Field) ends the DUL thread with an unhandled exception. :meth:`run_dul` and
  :meth:`run_association` contain it: one log line (peer and error class), an A-ABORT,
  the association counted as aborted, the socket closed.
* **Sockets dropped, not closed.** ``AssociationSocket._shutdown_socket`` skips
  ``close()`` when ``shutdown()`` fails (a peer that reset, a connect that was refused),
  leaving the descriptor to the garbage collector. :func:`close_socket` closes it in
  every case; :func:`guard_socket` installs it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pynetdicom import evt
from pynetdicom.events import Event

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

#: A-ABORT, source 2 (service provider), reason 0 (not specified): PS3.8 9.3.8.
A_P_ABORT: Final = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"
#: How long an A-ABORT may take to leave when an association is cut.
ABORT_SEND_S: Final = 1.0
#: The most one ``recv`` asks for (pynetdicom asks for 4 KiB at a time).
RECV_MAX: Final = 262144
#: How long a failed association thread waits for its DUL thread to stop.
DUL_STOP_S: Final = 2.0


def close_socket(sock: socket.socket | None) -> None:
    """Shut a socket down and close it; either step may fail (a peer that reset, a
    socket never connected) without skipping the other."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def guard_socket(assoc_socket: AssociationSocket) -> None:
    """Make ``assoc_socket`` close its socket whenever pynetdicom shuts it down.

    Installed on the instance (``_shutdown_socket`` is what ``close()``, ``connect()`` on
    failure and ``Association.abort()`` call), for requestors before they connect."""

    def shutdown_and_close() -> None:
        close_socket(assoc_socket.socket)

    assoc_socket._shutdown_socket = shutdown_and_close  # type: ignore[method-assign]


def _peer(assoc: Association) -> str:
    try:
        info = assoc.requestor.address_info
        return f"{info.address}:{info.port}" if info is not None else ""
    except AttributeError:
        return ""


def _calling_aet(assoc: Association) -> str:
    try:
        return str(assoc.requestor.ae_title or "")
    except (AttributeError, UnicodeDecodeError, ValueError):
        return ""


class AssociationGuard:
    """The deadlines and the containment of one acceptor association (see the module).

    Built and installed by :meth:`install` in the acceptor's ``EVT_CONN_OPEN``, before
    the association's and its DUL's threads start. ``read_pdu`` and ``recv`` run in the
    DUL thread only (as the reads they replace), so they need no lock.
    """

    def __init__(self, assoc: Association, acse_timeout_s: float, pdu_timeout_s: float) -> None:
        self.assoc = assoc
        self.acse_timeout_s = acse_timeout_s
        self.pdu_timeout_s = pdu_timeout_s
        self.opened = time.monotonic()
        #: When the PDU being read began (its first byte was readable), or None.
        self.pdu_started: float | None = None
        #: Whether a whole PDU was read: until then the request's deadline applies.
        self.first_pdu_read = False
        #: Whether the DUL handed an A-ASSOCIATE request to the association thread.
        self.requested = False
        self.cut: str | None = None
        self._read_pdu_data: Callable[[], None] = assoc.dul._read_pdu_data
        self._dul_run: Callable[[], None] = assoc.dul.run
        self._assoc_run: Callable[[], None] = assoc.run

    @classmethod
    def install(
        cls, assoc: Association, acse_timeout_s: float, pdu_timeout_s: float
    ) -> AssociationGuard:
        guard = cls(assoc, acse_timeout_s, pdu_timeout_s)
        dul = assoc.dul
        assert dul.socket is not None
        guard_socket(dul.socket)
        dul.socket.recv = guard.recv  # type: ignore[method-assign]
        dul._read_pdu_data = guard.read_pdu  # type: ignore[method-assign]
        dul.run = guard.run_dul  # type: ignore[method-assign]
        assoc.run = guard.run_association  # type: ignore[method-assign]
        assoc.bind(evt.EVT_FSM_TRANSITION, guard.on_transition)
        return guard

    # -- deadlines (DUL thread) -------------------------------------------------------

    def read_pdu(self) -> None:
        """``DULServiceProvider._read_pdu_data``: called once the socket is readable,
        so the PDU's first byte is in; its whole-PDU deadline counts from here."""
        self.pdu_started = time.monotonic()
        try:
            self._read_pdu_data()
        finally:
            self.pdu_started = None
            self.first_pdu_read = True

    def _deadline(self) -> tuple[float, str]:
        if not self.first_pdu_read:
            return self.opened + self.acse_timeout_s, "acse_timeout_s"
        started = self.pdu_started if self.pdu_started is not None else time.monotonic()
        return started + self.pdu_timeout_s, "pdu_timeout_s"

    def recv(self, nr_bytes: int) -> bytearray:
        """``AssociationSocket.recv``: up to ``nr_bytes``, fewer if the connection ends or
        the deadline passes (then the peer gets A-ABORT and the read ends as if closed;
        pynetdicom's state machine takes it as a closed transport)."""
        raw = self.assoc.dul.socket.socket if self.assoc.dul.socket is not None else None
        buf = bytearray()
        if raw is None:
            return buf
        deadline, which = self._deadline()
        previous = raw.gettimeout()
        try:
            while len(buf) < nr_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._cut(raw, which)
                    break
                raw.settimeout(left)
                try:
                    # Grown as bytes arrive, never sized from the peer's length field.
                    got = raw.recv(min(nr_bytes - len(buf), RECV_MAX))
                except TimeoutError:
                    self._cut(raw, which)
                    break
                if not got:
                    break
                buf += got
        except OSError:
            pass  # reset or closed: what was read so far, as pynetdicom does on a close
        finally:
            with contextlib.suppress(OSError):
                raw.settimeout(previous)
        return buf

    def _cut(self, raw: socket.socket, which: str) -> None:
        self.cut = which
        log.warning(
            "assoc.timeout",
            extra={"calling_aet": _calling_aet(self.assoc), "peer": _peer(self.assoc),
                   "deadline": which, "engine": "pynetdicom"},
        )  # fmt: skip
        self._send_abort(raw)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _send_abort(raw: socket.socket | None) -> None:
        if raw is None:
            return
        with contextlib.suppress(OSError, ValueError):
            raw.settimeout(ABORT_SEND_S)
            raw.sendall(A_P_ABORT)

    # -- the slot (DUL thread) --------------------------------------------------------

    def on_transition(self, event: Event) -> None:
        """``EVT_FSM_TRANSITION``: once the state machine is back in Sta1 without having
        delivered an A-ASSOCIATE request, wake the association thread that waits for one
        (``receive_pdu`` returns None: it stops the DUL and closes the socket at once
        instead of after ``acse_timeout_s``)."""
        action = getattr(event, "action", "")
        if action == "AE-6":  # A-ASSOCIATE-RQ received and handed to the user
            self.requested = True
        elif getattr(event, "next_state", "") == "Sta1" and not self.requested:
            self._wake_acceptor()

    def _wake_acceptor(self) -> None:
        if not self.requested:
            self.requested = True  # once
            self.assoc.dul.to_user_queue.put(None)

    # -- containment ------------------------------------------------------------------

    def run_dul(self) -> None:
        """The DUL thread, with an exception (undecodable input reaching a state-machine
        action) ending the association instead of the thread dying unhandled."""
        try:
            self._dul_run()
        except Exception as exc:  # noqa: BLE001 - contained: one line, then cleaned up
            log.warning(
                "assoc.protocol_error",
                extra={"error": type(exc).__name__, "calling_aet": _calling_aet(self.assoc),
                       "peer": _peer(self.assoc), "engine": "pynetdicom"},
            )  # fmt: skip
            self._end(send_abort=True)

    def run_association(self) -> None:
        """The association thread, likewise; its DUL thread is stopped first."""
        try:
            self._assoc_run()
        except Exception as exc:  # noqa: BLE001 - contained: one line, then cleaned up
            log.error(
                "assoc.failed",
                extra={"error": type(exc).__name__, "calling_aet": _calling_aet(self.assoc),
                       "peer": _peer(self.assoc), "engine": "pynetdicom"},
            )  # fmt: skip
            dul = self.assoc.dul
            dul.kill_dul()
            raw = dul.socket.socket if dul.socket is not None else None
            if raw is not None:  # wakes a DUL blocked in recv
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RD)
            if dul.is_alive():
                dul.join(DUL_STOP_S)
            self._end(send_abort=not dul.is_alive())

    def _end(self, *, send_abort: bool) -> None:
        assoc = self.assoc
        dul = assoc.dul
        raw = dul.socket.socket if dul.socket is not None else None
        if send_abort:
            self._send_abort(raw)
        was_established = assoc.is_established
        assoc.is_established = False
        assoc.is_aborted = True
        if was_established:
            evt.trigger(assoc, evt.EVT_ABORTED, {})
        if dul.socket is not None:
            dul.socket._shutdown_socket()
        self._wake_acceptor()


def bounded_acceptor(pdu_timeout_s: float) -> Callable[[Event], Any]:
    """An ``EVT_CONN_OPEN`` handler installing an :class:`AssociationGuard` (acceptor
    side; ``acse_timeout_s`` is the association's own)."""

    def on_conn_open(event: Event) -> None:
        assoc = event.assoc
        acse = assoc.acse_timeout
        AssociationGuard.install(assoc, float(acse) if acse is not None else 30.0, pdu_timeout_s)

    return on_conn_open
