"""Anchor for RELIABILITY.md: what dcmtk storescp does with a trickling peer, an
idle association and a second association while one is open (no ``--fork``).

Starts ``/usr/bin/storescp`` (socket timeout 3 s, ACSE timeout 3 s, DIMSE timeout 3 s) on
a free loopback port and prints one JSON line per case: how long until storescp closed
the connection (or that it had not after the guard).

    PYTHONPATH=$PWD:$PWD/tests .venv/bin/python bench/storescp_anchor.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time

from net.test_acceptor import RawPeer
from nodes import PEER_ENV, terminate
from peers import free_port

GUARD_S = 30.0
STORESCP = "/usr/bin/storescp"


def _closed_after(peer: RawPeer, stream: bytes, per_byte_s: float | None) -> float | None:
    """Send ``stream`` (trickled if ``per_byte_s``); seconds until the peer closed."""

    def trickle() -> None:
        for byte in stream:
            try:
                peer.sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(per_byte_s or 0)

    if per_byte_s is None:
        peer.send(stream)
    else:
        threading.Thread(target=trickle, daemon=True).start()
    start = time.monotonic()
    try:
        peer.wait_closed()
    except TimeoutError:
        return None
    return round(time.monotonic() - start, 2)


def main() -> int:
    port = free_port()
    out = tempfile.mkdtemp(prefix="storescp-")
    args = [STORESCP, "-ts", "3", "-ta", "3", "-td", "3", "-od", out, "-aet", "ICHNODE", str(port)]
    proc = subprocess.Popen(
        args, env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        results = []
        with RawPeer(port, timeout=GUARD_S) as peer:
            results.append(
                ("trickled A-ASSOCIATE-RQ, 1 byte/s", _closed_after(peer, peer.associate_rq(), 1.0))
            )
        with RawPeer(port, timeout=GUARD_S) as peer:
            peer.associate()
            results.append(("accepted association, never used", _closed_after(peer, b"", None)))
        with RawPeer(port, timeout=GUARD_S) as peer:
            peer.associate()
            body = b"\x00" * 4096
            pdata = b"\x04\x00" + (len(body)).to_bytes(4, "big") + body
            results.append(("P-DATA-TF trickled, 1 byte/s", _closed_after(peer, pdata, 1.0)))
        with RawPeer(port, timeout=GUARD_S) as first:
            first.associate()
            with RawPeer(port, timeout=5) as second:
                start = time.monotonic()
                second.send(second.associate_rq())
                try:
                    got = second.read_pdu()
                    what = f"answered PDU type 0x{got[0]:02X}" if got else "closed"
                except TimeoutError:
                    what = "no answer within 5 s (queued behind the open association)"
                results.append(
                    (
                        f"second association while one is open: {what}",
                        round(time.monotonic() - start, 2),
                    )
                )
        for case, seconds in results:
            sys.stdout.write(
                json.dumps({"case": case, "seconds": seconds, "guard_s": GUARD_S}) + "\n"
            )
        return 0
    finally:
        terminate(proc)


if __name__ == "__main__":
    sys.exit(main())
