"""Reference receiver for bench/ingest.py: a bare pynetdicom Storage SCP.

What a minimal pynetdicom receiver costs: every storage SOP class, the handler writes
the received bytes (File Meta + dataset) to a file and answers Success, no fsync, no
index. TCP_NODELAY is set on each accepted socket (without it every image waits ~40 ms
for a delayed ACK on loopback); everything else is pynetdicom's defaults. It is the
floor our node's protocol handling stands on, not a peer in durability.

Usage: python bench/bare_pynetdicom_scp.py PORT OUT_DIR
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts


def main() -> None:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)

    def on_open(event: Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(  # type: ignore[union-attr]
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )

    def on_store(event: Event) -> int:
        sop = event.request.AffectedSOPInstanceUID
        (out / f"{sop}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.maximum_associations = 16
    ae.supported_contexts = AllStoragePresentationContexts
    ae.start_server(
        ("127.0.0.1", port), block=True,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)],
    )  # fmt: skip


if __name__ == "__main__":
    main()
