"""Protocol abuse (issue 13), bounded and on loopback: random and truncated PDUs,
connections and associations that are never used, a peer trickling one byte a second,
more associations than ``node.max_associations``, peers gone mid-dataset. After each,
dcmtk echoscu must get a C-ECHO answered; its round trip is measured (``EchoProbe``) and
reported, not asserted (a loaded 2-core machine is no place for timed assertions).

Edges tested one at a time elsewhere are not repeated here (tests/net/test_acceptor.py):
a malformed PDU after accept answered with A-P-ABORT, a bad first PDU, a peer gone
mid-dataset (one cut point, native), the idle association after network_timeout_s
(native), connections past the slack closed unread.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from net.test_acceptor import RawPeer
from nodes import NODE_AET, Node, dataset_bytes, wait_for
from peers import free_port
from pydicom import dcmread
from pynetdicom import pdu as ul_pdu
from reliability.abuse_support import (
    KINDS,
    EchoProbe,
    after_accept,
    connect,
    hostile,
    open_connections,
    reset,
    spooled,
    store_stream,
)

from dicom_node.config import Destination
from dicom_node.net.scu import PermanentDeliveryError, ScuTimeouts, TransientDeliveryError, send
from train.data.phantoms import WrittenStudy

ENGINES = ("native", "pynetdicom")
SEED = 1313
CASES_PER_KIND = 6
#: A freed connection is waited for this long at most (a hang guard, not a figure).
FREED_GUARD_S = 60.0
#: Refused associations per reason in the socket-count test.
REFUSALS = 10


@pytest.fixture(scope="module")
def probe() -> Iterator[EchoProbe]:
    echo = EchoProbe()
    yield echo
    echo.write()


def _sop(path: Path) -> tuple[str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _drain(peer: RawPeer) -> None:
    """Stop sending and read until the node closes (guarded by the socket timeout)."""
    with contextlib.suppress(OSError):
        peer.sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError, AssertionError):
        peer.wait_closed()


def _all_freed(node: Node) -> None:
    wait_for(lambda: open_connections(node) == 0, FREED_GUARD_S, "every connection freed")


@pytest.mark.parametrize("engine", ENGINES)
def test_random_and_truncated_pdus_leave_the_node_answering(
    start_node: Callable[..., Node], phantom: WrittenStudy, probe: EchoProbe, engine: str
) -> None:
    """Seeded hostile streams of seven kinds, each on its own connection; the peer then
    stops sending. The node must end every connection, store nothing, raise nothing
    (pytest fails a test on a thread's unhandled exception), and answer C-ECHO after each.

    ``acse_timeout_s`` is twice the guard of the wait for each connection to be freed,
    so a slot freed by that timer instead of by the peer's close fails the test
    (pynetdicom's engine did so before :mod:`dicom_node.net.scp_guard`).
    """
    node = start_node(node={"engine": engine, "acse_timeout_s": 2 * FREED_GUARD_S})
    path = phantom.main.files[0]
    sop_class, sop_instance = _sop(path)
    store = store_stream(sop_class, sop_instance, dataset_bytes(path), 16384)
    rng = random.Random(SEED)
    with connect(node.port) as template:
        associate_rq = template.associate_rq()
    for kind in KINDS:
        for _ in range(CASES_PER_KIND):
            stream = hostile(rng, kind, associate_rq, store)
            with connect(node.port) as peer:
                if after_accept(kind):
                    peer.associate()
                with contextlib.suppress(OSError):  # the node may close before all is sent
                    peer.send(stream)
                _drain(peer)
            _all_freed(node)
            probe(node, f"{engine}: {kind}")
    _all_freed(node)
    assert spooled(node) == []
    log = node.log.getvalue()
    assert "event=assoc.failed" not in log  # no unexpected exception in any association
    # Undecodable input is one line each, naming the peer and the error (the seed's
    # streams include some on both engines; pynetdicom's come from its DUL thread).
    errors = [line for line in log.splitlines() if "event=assoc.protocol_error" in line]
    assert errors
    assert all("peer=127.0.0.1:" in line and "error=" in line for line in errors), errors


@pytest.mark.parametrize("engine", ENGINES)
def test_connections_and_associations_never_used_are_freed(
    start_node: Callable[..., Node], probe: EchoProbe, engine: str
) -> None:
    """Three bare TCP connections (never an A-ASSOCIATE-RQ) and three accepted
    associations that never send a request: acse_timeout_s frees the first, the idle
    (network) timeout the second. The node answers C-ECHO meanwhile and after."""
    node = start_node(node={"engine": engine, "acse_timeout_s": 2, "network_timeout_s": 2})
    held: list[RawPeer] = []
    try:
        for i in range(6):
            peer = connect(node.port, timeout=FREED_GUARD_S)
            if i % 2:
                peer.associate()
            held.append(peer)
        probe(node, f"{engine}: while 6 unused connections are open")
        for peer in held:
            seen = peer.wait_closed()  # returns once the node closed it (or the guard fails)
            assert all(raw[0] == 0x07 for raw in seen), seen  # nothing, or an A-ABORT
    finally:
        for peer in held:
            peer.close()
    _all_freed(node)
    probe(node, f"{engine}: after unused connections were freed")


@pytest.mark.parametrize("engine", ENGINES)
def test_one_byte_a_second_is_cut_by_the_whole_pdu_deadline(
    start_node: Callable[..., Node], phantom: WrittenStudy, probe: EchoProbe, engine: str
) -> None:
    """A peer that sends a C-STORE one byte a second never trips the per-recv (network)
    timeout; ``pdu_timeout_s`` from the PDU's first byte frees it. The same for an
    A-ASSOCIATE-RQ trickled before accept (``acse_timeout_s`` in all). Both engines
    (pynetdicom's through :mod:`dicom_node.net.scp_guard`)."""
    node = start_node(
        node={"engine": engine, "pdu_timeout_s": 3, "acse_timeout_s": 3,
              "network_timeout_s": 20},
    )  # fmt: skip
    path = phantom.main.files[0]
    store = store_stream(*_sop(path), dataset_bytes(path), 16384)
    for phase in ("associate-rq", "p-data"):
        with connect(node.port, timeout=FREED_GUARD_S) as peer:
            stream = peer.associate_rq()
            if phase == "p-data":
                peer.associate()
                stream = store
            cut = threading.Event()

            def trickle(
                peer: RawPeer = peer, stream: bytes = stream, cut: threading.Event = cut
            ) -> None:
                deadline = time.monotonic() + FREED_GUARD_S
                for byte in stream:
                    if time.monotonic() > deadline:
                        return
                    try:
                        peer.sock.send(bytes([byte]))
                    except OSError:
                        cut.set()
                        return
                    time.sleep(1.0)

            sender = threading.Thread(target=trickle, daemon=True)
            started = time.monotonic()
            sender.start()
            seen = peer.wait_closed()  # the node closes; the guard is the socket timeout
            freed_after = time.monotonic() - started
            probe.note(f"{engine}: one-byte-a-second {phase} freed after (s)", freed_after)
            assert all(raw[0] == 0x07 for raw in seen), seen
            assert freed_after < FREED_GUARD_S
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)
            sender.join(FREED_GUARD_S)
        probe(node, f"{engine}: after a one-byte-a-second {phase}")
    log = node.log.getvalue()
    assert "deadline=acse_timeout_s" in log
    assert "deadline=pdu_timeout_s" in log
    _all_freed(node)
    assert spooled(node) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_associations_over_the_limit_are_rejected_at_once(
    start_node: Callable[..., Node], probe: EchoProbe, engine: str
) -> None:
    """max_associations 2, two held open: every further request gets A-ASSOCIATE-RJ
    (rejected-transient, service-provider presentation, local limit exceeded) at once,
    not a place in a queue. Once the held ones release, C-ECHO works again."""
    node = start_node(node={"engine": engine, "max_associations": 2})
    held = [connect(node.port) for _ in range(2)]
    try:
        for peer in held:
            peer.associate()
        for _ in range(5):
            with connect(node.port) as extra:
                asked = time.monotonic()
                extra.send(extra.associate_rq())
                got = extra.read_pdu()  # the socket timeout is the hang guard
                probe.note(f"{engine}: A-ASSOCIATE-RJ over the limit (s)", time.monotonic() - asked)
                assert got is not None
                assert got[0] == 0x03, got  # A-ASSOCIATE-RJ
                rj = ul_pdu.A_ASSOCIATE_RJ()
                rj.decode(got[1])
                assert (rj.result, rj.source, rj.reason_diagnostic) == (2, 3, 2)
    finally:
        for peer in held:
            with contextlib.suppress(OSError, AssertionError):
                peer.send(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
                peer.wait_closed()
            peer.close()
    _all_freed(node)
    probe(node, f"{engine}: after associations over the limit")


@pytest.mark.parametrize("engine", ENGINES)
def test_peer_gone_at_seeded_points_of_a_dataset_leaves_no_file(
    start_node: Callable[..., Node], phantom: WrittenStudy, probe: EchoProbe, engine: str
) -> None:
    """A C-STORE cut at seeded byte offsets (inside PDU headers, PDV headers and data),
    by a FIN or an RST: no instance and no temporary file stays in the spool."""
    node = start_node(node={"engine": engine})
    path = phantom.main.files[0]
    sop_class, sop_instance = _sop(path)
    store = store_stream(sop_class, sop_instance, dataset_bytes(path), 2048)
    rng = random.Random(SEED + 1)
    for i in range(8):
        cut_at = rng.randint(1, len(store) - 1)
        with connect(node.port) as peer:
            peer.associate()
            peer.send(store[:cut_at])
            if i % 2:
                reset(peer.sock)
            else:
                peer.sock.close()
        _all_freed(node)
        assert spooled(node) == [], f"a file left after a cut at byte {cut_at}"
        probe(node, f"{engine}: after a peer gone mid-dataset")


def _sockets() -> int:
    """Sockets this process (the test and the node in it) holds open now."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since the listing
            count += fd.readlink().name.startswith("socket:")
    return count


@pytest.mark.parametrize("engine", ENGINES)
def test_refused_associations_leave_no_socket_open(
    start_node: Callable[..., Node], probe: EchoProbe, engine: str
) -> None:
    """A-ASSOCIATE-RJ for an unknown called AE title, an unknown calling AE title, a
    known calling AE title from a host not its own, and over ``max_associations``, ten of
    each, the peer closing by FIN or by RST after the
    answer: once the node has let go of them, it holds no more sockets than before."""
    callers = ["PROBE", "RAWPEER", {"ae_title": "FARAWAY", "hosts": ["192.0.2.1"]}]
    node = start_node(
        node={"engine": engine, "max_associations": 1, "allowed_calling_aets": callers}
    )
    probe(node, f"{engine}: before refused associations")
    _all_freed(node)
    before = _sockets()

    def refused(called: str, calling: str, i: int) -> None:
        with connect(node.port) as peer:
            peer.send(peer.associate_rq(called=called, calling=calling))
            got = peer.read_pdu()  # the socket timeout is the hang guard
            assert got is not None
            assert got[0] == 0x03, got  # A-ASSOCIATE-RJ
            if i % 2:
                reset(peer.sock)

    for i in range(REFUSALS):
        refused("NOTTHENODE", "RAWPEER", i)
        refused(NODE_AET, "STRANGER", i)
        refused(NODE_AET, "FARAWAY", i)
    _all_freed(node)
    with connect(node.port) as held:
        held.associate()
        for i in range(REFUSALS):
            refused(NODE_AET, "RAWPEER", i)  # over max_associations
    _all_freed(node)
    wait_for(lambda: _sockets() <= before, FREED_GUARD_S, "the refused connections' sockets closed")
    probe(node, f"{engine}: after refused associations")


@pytest.mark.parametrize("engine", ENGINES)
def test_refused_outgoing_associations_leave_no_socket_open(
    start_node: Callable[..., Node], phantom: WrittenStudy, engine: str
) -> None:
    """The node's Storage SCU (result delivery) refused: by a port nobody listens on
    (TCP RST) and by an SCP that answers A-ASSOCIATE-RJ (a node, called by a title not
    its own), ten of each. Every socket is closed by the node, not left to the garbage
    collector (an unclosed one is a ResourceWarning, an error under this suite's
    filters), and the process holds no more sockets than before."""
    node = start_node(node={"engine": engine})
    files = list(phantom.main.files[:1])
    nobody = free_port()
    timeouts = ScuTimeouts(connect_s=10, acse_s=10, dimse_s=10, network_s=10)
    before = _sockets()
    for _ in range(REFUSALS):
        with pytest.raises(TransientDeliveryError, match="cannot connect"):
            send(Destination(name="down", ae_title="PACS", host="127.0.0.1", port=nobody),
                 files, timeouts=timeouts)  # fmt: skip
        with pytest.raises(PermanentDeliveryError, match="rejected"):
            send(Destination(name="wrong", ae_title="NOTTHENODE", host="127.0.0.1",
                             port=node.port), files, timeouts=timeouts)  # fmt: skip
    _all_freed(node)
    wait_for(
        lambda: _sockets() <= before, FREED_GUARD_S, "the refused associations' sockets closed"
    )
