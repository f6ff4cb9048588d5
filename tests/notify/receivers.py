"""Real receivers of notifications on loopback ports, in threads of the test process.

``HttpReceiver``: ``http.server`` that checks ``X-ICH-Signature`` against the secret
and answers the next status of its script (then 200). ``MllpReceiver``: a TCP listener
that reads MLLP frames, parses each message with hl7apy and answers the next MSA-1 code
of its script (then AA) in an ACK built with hl7apy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hl7apy.core import Message
from hl7apy.parser import parse_message

SECRET = "test-secret-0123456789abcdef"


@dataclass
class Request:
    body: bytes
    signature_ok: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    server: ThreadingHTTPServer
    script: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ich"

    @classmethod
    def start(cls) -> HttpReceiver:
        holder: list[HttpReceiver] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(self.headers.get("X-ICH-Signature", ""), expected)
                receiver = holder[0]
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    if not ok:
                        status = 401
                    receiver.requests.append(Request(body, ok, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's log capture is for the node only

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        receiver = cls(server)
        holder.append(receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return receiver

    def taken(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class MllpReceiver:
    sock: socket.socket
    script: list[str] = field(default_factory=list)
    messages: list[tuple[Message, str]] = field(default_factory=list)  # (message, our answer)
    lock: threading.Lock = field(default_factory=threading.Lock)
    silent: bool = False  # read and never answer (the node's timeout is tested)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @classmethod
    def start(cls) -> MllpReceiver:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        receiver = cls(sock)
        threading.Thread(target=receiver._serve, daemon=True).start()
        return receiver

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            with conn:
                data = b""
                while b"\x1c\x0d" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b"\x1c\x0d" not in data:
                    continue
                text = data[data.index(b"\x0b") + 1 : data.index(b"\x1c\x0d")].decode("utf-8")
                msg = parse_message(text, find_groups=True)
                with self.lock:
                    code = self.script.pop(0) if self.script else "AA"
                    self.messages.append((msg, code))
                if self.silent:
                    conn.recv(1)  # until the node gives up and closes
                    continue
                conn.sendall(b"\x0b" + ack(msg, code).encode() + b"\x1c\x0d")

    def taken(self) -> list[tuple[Message, str]]:
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.sock.close()


def ack(msg: Message, code: str) -> str:
    """An ACK^R01 (v2.5) of ``msg`` with MSA-1 ``code``, as a receiver would answer."""
    answer = Message("ACK", version="2.5")
    answer.msh.msh_3 = "RIS"
    answer.msh.msh_9 = "ACK^R01^ACK"
    answer.msh.msh_10 = "A" + msg.msh.msh_10.value[:19]
    answer.msh.msh_11 = "P"
    answer.msh.msh_12 = "2.5"
    answer.msa.msa_1 = code
    answer.msa.msa_2 = msg.msh.msh_10.value
    if code != "AA":
        answer.msa.msa_3 = "order unknown"
    text: str = answer.to_er7()
    return text
