"""Helpers of the protocol-abuse tests: the C-ECHO probe after each abuse (dcmtk echoscu,
timed), the node's open connections on either engine, and seeded hostile byte streams.

The raw Upper Layer peer and its PDU builders are the ones the acceptor's own edge tests
use (:mod:`net.test_acceptor`), not a second copy.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from net.test_acceptor import COMMAND, CX_CT, LAST, RawPeer, p_data, pdu, store_rq
from nodes import NODE_AET, Node, run_tool

ECHOSCU = "/usr/bin/echoscu"
#: A hang guard only: the round trip is measured and reported (RELIABILITY.md), not asserted.
ECHO_GUARD_S = 30.0
#: Where the measured round trips go when set (the report's figures come from this file).
REPORT_ENV = "ABUSE_ECHO_REPORT"


@dataclass
class EchoProbe:
    """C-ECHO with dcmtk echoscu after each abuse; keeps every round trip it measured."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def __call__(self, node: Node, what: str) -> float:
        args = [ECHOSCU, "-to", "10", "-ta", "10", "-td", "10", "-aet", "PROBE"]
        start = time.monotonic()
        proc = run_tool([*args, "-aec", NODE_AET, "127.0.0.1", str(node.port)], ECHO_GUARD_S)
        took = time.monotonic() - start
        assert proc.returncode == 0, f"C-ECHO after {what} failed: {proc.stdout}{proc.stderr}"
        self.samples.setdefault(what, []).append(took)
        return took

    def note(self, what: str, seconds: float) -> None:
        """Keep another measured figure (reported beside the round trips, not asserted)."""
        self.samples.setdefault(what, []).append(seconds)

    def write(self) -> None:
        """Append the samples as JSON lines to ``$ABUSE_ECHO_REPORT`` (if set)."""
        target = os.environ.get(REPORT_ENV)
        if not target or not self.samples:
            return
        load = os.getloadavg()[0]
        with Path(target).open("a", encoding="utf-8") as out:
            for what, times in self.samples.items():
                median = sorted(times)[len(times) // 2]
                row = {"case": what, "n": len(times), "max_s": round(max(times), 4),
                       "median_s": round(median, 4), "load1": round(load, 2)}  # fmt: skip
                out.write(json.dumps(row) + "\n")


def open_connections(node: Node) -> int:
    """Connections the node serves now (native acceptor or pynetdicom's server)."""
    service = node.service
    if service.acceptor is not None:
        return len(service.acceptor.associations)
    assert service.server is not None
    return len(service.server.active_associations)


def spooled(node: Node) -> list[Path]:
    """Every file under the spool, temporary ones included."""
    return sorted(p for p in (node.root / "spool").rglob("*") if p.is_file())


def connect(port: int, timeout: float = ECHO_GUARD_S) -> RawPeer:
    return RawPeer(port, timeout=timeout)


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a cut cable looks."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- seeded hostile streams ---------------------------------------------------------------

#: Each kind: (needs an established association first, builder).
KINDS = (
    "garbage",
    "random-pdu",
    "random-pdu-after-accept",
    "random-pdvs",
    "truncated-associate-rq",
    "truncated-store",
    "length-beyond-body",
)


def hostile(rng: random.Random, kind: str, associate_rq: bytes, store: bytes) -> bytes:
    """A stream of ``kind`` (after A-ASSOCIATE-AC for the ``*-after-accept`` and PDV kinds)."""
    if kind == "garbage":
        return rng.randbytes(rng.randint(1, 4096))
    if kind in ("random-pdu", "random-pdu-after-accept"):
        body = rng.randbytes(rng.randint(0, 512))
        pdu_type = rng.choice([rng.randint(0, 255), *range(1, 8)])
        return bytes(pdu(pdu_type, body))
    if kind == "random-pdvs":
        pdvs = [
            (rng.choice([CX_CT, rng.randint(0, 255)]), rng.randint(0, 3),
             rng.randbytes(rng.randint(0, 300)))
            for _ in range(rng.randint(1, 4))
        ]  # fmt: skip
        return bytes(p_data(*pdvs))
    if kind == "truncated-associate-rq":
        return associate_rq[: rng.randint(1, len(associate_rq) - 1)]
    if kind == "truncated-store":
        return store[: rng.randint(1, len(store) - 1)]
    if kind == "length-beyond-body":
        (pdu_type,) = struct.unpack_from(">B", associate_rq)
        body = associate_rq[6:]
        return struct.pack(">BxI", pdu_type, len(body) + rng.randint(1, 1 << 16)) + body
    raise ValueError(kind)


def after_accept(kind: str) -> bool:
    return kind in ("random-pdu-after-accept", "random-pdvs", "truncated-store")


def store_stream(sop_class: str, sop_instance: str, data: bytes, max_pdu: int) -> bytes:
    """A whole C-STORE (command, then the dataset in PDUs of at most ``max_pdu`` bytes)."""
    out = [p_data((CX_CT, COMMAND | LAST, store_rq(sop_class, sop_instance)))]
    step = max_pdu - 6
    for at in range(0, len(data), step):
        piece = data[at : at + step]
        out.append(p_data((CX_CT, LAST if at + step >= len(data) else 0, piece)))
    return b"".join(out)
