"""MLLP (HL7 Minimal Lower Layer Protocol): ``0x0B <message> 0x1C 0x0D`` over TCP.

One connection per message: connect, send the framed message, read until the end of
one framed answer (the ACK), close. ``TCP_NODELAY`` because a message and its ACK are
one small write each way, which Nagle's algorithm would hold back for the peer's
delayed ACK. No answer within the timeout is a transient failure: the message may or
may not have been taken, and the receiver de-duplicates on MSH-10, which stays the same
for every attempt of one study's generation.
"""

from __future__ import annotations

import socket
import time
from typing import Final

from dicom_node.notify.report import TransientNotifyError

START: Final = b"\x0b"
END: Final = b"\x1c\x0d"
_MAX_ACK: Final = 1 << 20  # an ACK is a few hundred bytes; more is a confused peer


def frame(message: bytes) -> bytes:
    return START + message + END


def unframe(data: bytes) -> bytes:
    """The message inside one MLLP frame (bytes before the start block are ignored)."""
    start = data.find(START)
    end = data.find(END, start + 1)
    if start < 0 or end < 0:
        raise ValueError("not an MLLP frame")
    return data[start + 1 : end]


def exchange(host: str, port: int, message: bytes, timeout_s: float) -> bytes:
    """Send one message and return the receiver's answer (unframed), within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(frame(message))
            data = b""
            while END not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    raise TransientNotifyError("HL7 receiver closed the connection without ACK")
                data += chunk
                if len(data) > _MAX_ACK:
                    raise TransientNotifyError("HL7 receiver sent no ACK frame")
    except TimeoutError:
        raise TransientNotifyError(f"no HL7 ACK within {timeout_s:g} s") from None
    except OSError as exc:
        raise TransientNotifyError(f"cannot reach HL7 receiver ({type(exc).__name__})") from None
    try:
        return unframe(data)
    except ValueError:
        raise TransientNotifyError("HL7 receiver sent no ACK frame") from None
