"""The native acceptor at the protocol edges real peers rarely reach: fragmented PDVs,
tiny peer PDU limits, unsupported requests, malformed and unexpected PDUs, aborts,
release, idle timeout and a graceful stop. A raw-socket peer (:class:`RawPeer`) speaks
the Upper Layer by hand over real loopback sockets; pynetdicom's PDU classes only encode
the A-ASSOCIATE-RQ and decode the AC/RJ."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from types import TracebackType

import pytest
from nodes import NODE_AET, Node, dataset_bytes, run_tool, storescu, wait_for
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import pdu as ul_pdu
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicom_node.store.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ECHOSCU = "/usr/bin/echoscu"

# Presentation contexts every raw association proposes; FIND is not supported by the
# node, so context 7 is proposed and rejected.
CX_CT, CX_ECHO, CX_FIND = 1, 3, 7
CONTEXTS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (CX_CT, CTImageStorage, (ExplicitVRLittleEndian,)),
    (CX_ECHO, Verification, (ImplicitVRLittleEndian,)),
    (CX_FIND, StudyRootQueryRetrieveInformationModelFind, (ImplicitVRLittleEndian,)),
)

COMMAND, LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)


def _command_set(message: C_STORE_RQ | C_ECHO_RQ | C_FIND_RQ) -> bytes:
    raw = encode(message.command_set, True, True)
    assert raw is not None
    return raw


def store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _command_set(message)


def echo_rq(message_id: int = 1) -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _command_set(message)


def find_rq(message_id: int = 1) -> tuple[bytes, bytes]:
    """A C-FIND-RQ command set and its identifier (implicit VR LE), as a PACS sends them."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    encoded = encode(identifier, True, True)
    assert encoded is not None
    primitive = C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    primitive.Priority = 2
    primitive.Identifier = BytesIO(encoded)
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    return _command_set(message), encoded


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BxI", pdu_type, len(body)) + body


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU holding ``(context id, control header, fragment)`` PDVs."""
    items = b"".join(struct.pack(">IBB", len(f) + 2, cx, ctl) + f for cx, ctl, f in pdvs)
    return pdu(0x04, items)


def chunks(data: bytes, n: int) -> list[bytes]:
    """``data`` in ``n`` pieces of about equal size (odd sizes included: PDVs need not be
    even)."""
    assert len(data) >= n
    cuts = [len(data) * i // n for i in range(n + 1)]
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


class RawPeer:
    """An association requestor over a plain socket: every byte on the wire is ours."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.accepted: A_ASSOCIATE | None = None  # the node's A-ASSOCIATE-AC, once read

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                got = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not got:
                return None
            buf += got
        return bytes(buf)

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU as (type, whole PDU bytes); None once the node closed."""
        header = self._recv_exact(6)
        if header is None:
            return None
        pdu_type, length = struct.unpack(">BxI", header)
        body = self._recv_exact(length)
        assert body is not None, "connection closed inside a PDU"
        return pdu_type, header + body

    def associate_rq(
        self,
        *,
        max_pdu: int = 16384,
        calling: str = "RAWPEER",
        called: str = NODE_AET,
        application_context: str = APPLICATION_CONTEXT,
        contexts: Sequence[tuple[int, str, Sequence[str]]] = CONTEXTS,
    ) -> bytes:
        rq = A_ASSOCIATE()
        rq.application_context_name = application_context
        rq.calling_ae_title = calling
        rq.called_ae_title = called
        proposed = []
        for cx_id, abstract, syntaxes in contexts:
            cx = build_context(abstract, list(syntaxes))
            cx.context_id = cx_id
            proposed.append(cx)
        rq.presentation_context_definition_list = proposed
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = max_pdu
        rq.user_information = [max_length]
        out = ul_pdu.A_ASSOCIATE_RQ()
        out.from_primitive(rq)
        return bytes(out.encode())

    def associate(self, max_pdu: int = 16384) -> dict[int, str]:
        """Send A-ASSOCIATE-RQ, expect AC; returns accepted context id -> transfer syntax."""
        self.send(self.associate_rq(max_pdu=max_pdu))
        got = self.read_pdu()
        assert got is not None, "node closed instead of accepting"
        assert got[0] == 0x02, f"expected A-ASSOCIATE-AC, got {got!r}"
        ac = ul_pdu.A_ASSOCIATE_AC()
        ac.decode(got[1])
        primitive = ac.to_primitive()
        self.accepted = primitive
        return {
            int(cx.context_id): str(cx.transfer_syntax[0])
            for cx in primitive.presentation_context_definition_results_list
            if cx.result == 0 and cx.context_id is not None
        }

    def read_response(self) -> tuple[Dataset, list[int]]:
        """Read P-DATA-TF PDUs up to the last command fragment; return the decoded
        command set and the length field of each PDU it came in."""
        payload = b""
        lengths: list[int] = []
        while True:
            got = self.read_pdu()
            assert got is not None, "node closed instead of answering"
            pdu_type, raw = got
            assert pdu_type == 0x04, f"expected P-DATA-TF, got {raw!r}"
            lengths.append(len(raw) - 6)
            pos, last = 6, False
            while pos < len(raw):
                item_length, _cx, control = struct.unpack_from(">IBB", raw, pos)
                assert control & COMMAND, "a response never carries a dataset here"
                payload += raw[pos + 6 : pos + 4 + item_length]
                last = bool(control & LAST)
                pos += 4 + item_length
            if last:
                return read_dataset(BytesIO(payload), True, True), lengths

    def echo(self, message_id: int = 1) -> int:
        self.send(p_data((CX_ECHO, COMMAND | LAST, echo_rq(message_id))))
        response, _ = self.read_response()
        assert response.CommandField == 0x8030
        assert response.MessageIDBeingRespondedTo == message_id
        return int(response.Status)

    def wait_closed(self) -> list[bytes]:
        """Everything the node sends until it closes the connection (whole PDUs)."""
        seen = []
        while (got := self.read_pdu()) is not None:
            seen.append(got[1])
        return seen


def _is_provider_abort(pdus: list[bytes]) -> bool:
    return len(pdus) == 1 and pdus[0][0] == 0x07 and pdus[0][8] == 2


@pytest.fixture
def ct_file(phantom: WrittenStudy) -> Path:
    path = phantom.main.files[0]
    assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        ExplicitVRLittleEndian
    )
    return path


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    return start_node()


def _sop(path: Path) -> tuple[str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _spooled(node: Node) -> list[Path]:
    """Every file under the spool, temporary ones included."""
    return sorted(p for p in (node.root / "spool").rglob("*") if p.is_file())


def _assert_still_stores(node: Node, path: Path) -> None:
    proc = storescu(node.port, [path])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(p.name == f"{_sop(path)[1]}.dcm" for p in node.spool_files())


def _log_event(node: Node, event: str) -> str:
    """The first log line of ``event`` (polled: the node logs from its own threads)."""

    def line() -> str | None:
        return next((ln for ln in node.log.getvalue().splitlines() if f"event={event}" in ln), None)

    return str(wait_for(line, 20, event))


# -- DIMSE over fragmented P-DATA ----------------------------------------------------------


def test_c_store_split_over_many_pdvs_and_pdus_is_stored_byte_identical(
    node: Node, ct_file: Path
) -> None:
    sop_class, sop_instance = _sop(ct_file)
    command = store_rq(sop_class, sop_instance, message_id=77)
    data = dataset_bytes(ct_file)
    cmd = chunks(command, 3)
    ds = chunks(data, 7)
    with RawPeer(node.port) as peer:
        accepted = peer.associate()
        assert accepted == {CX_CT: ExplicitVRLittleEndian, CX_ECHO: ImplicitVRLittleEndian}
        # Command: one PDU with two PDVs, then one with the last.
        peer.send(p_data((CX_CT, COMMAND, cmd[0]), (CX_CT, COMMAND, cmd[1])))
        peer.send(p_data((CX_CT, COMMAND | LAST, cmd[2])))
        # Dataset: a PDU of one PDV, one of three, one of two, and the last one alone;
        # sent as one write, so the node's reads straddle PDU boundaries too.
        peer.send(
            p_data((CX_CT, 0, ds[0]))
            + p_data((CX_CT, 0, ds[1]), (CX_CT, 0, ds[2]), (CX_CT, 0, ds[3]))
            + p_data((CX_CT, 0, ds[4]), (CX_CT, 0, ds[5]))
        )
        peer.send(p_data((CX_CT, LAST, ds[6])))
        response, _ = peer.read_response()
        assert response.CommandField == 0x8001
        assert response.MessageIDBeingRespondedTo == 77
        assert response.Status == 0x0000
        assert response.AffectedSOPInstanceUID == sop_instance
        assert peer.echo() == 0x0000
    (stored,) = node.spool_files()
    assert stored.name == f"{sop_instance}.dcm"
    assert dataset_bytes(stored) == data


def test_c_find_is_answered_unrecognised_and_the_association_stays_usable(
    node: Node, ct_file: Path
) -> None:
    command, identifier = find_rq(message_id=5)
    first, second = chunks(identifier, 2)
    sop_class, sop_instance = _sop(ct_file)
    with RawPeer(node.port) as peer:
        peer.associate()
        # On an accepted context (the node accepts no FIND context at all); the
        # identifier that every C-FIND-RQ carries comes in two fragments.
        peer.send(
            p_data((CX_ECHO, COMMAND | LAST, command), (CX_ECHO, 0, first))
            + p_data((CX_ECHO, LAST, second))
        )
        response, _ = peer.read_response()
        assert response.CommandField == 0x8020
        assert response.MessageIDBeingRespondedTo == 5
        assert response.Status == 0x0211
        assert peer.echo(message_id=6) == 0x0000
        # A store after it is whole: the dropped identifier left nothing behind.
        peer.send(p_data((CX_CT, COMMAND | LAST, store_rq(sop_class, sop_instance))))
        peer.send(p_data((CX_CT, LAST, dataset_bytes(ct_file))))
        assert peer.read_response()[0].Status == 0x0000
    assert "command_field=0x0020" in _log_event(node, "assoc.unsupported_request")
    (stored,) = node.spool_files()
    assert dataset_bytes(stored) == dataset_bytes(ct_file)


def test_store_on_another_sop_class_context_is_refused(node: Node, ct_file: Path) -> None:
    """A CT image sent on an MR context is answered 0x0122 and not stored."""
    sop_class, sop_instance = _sop(ct_file)
    cx_mr = 5
    with RawPeer(node.port) as peer:
        peer.send(
            peer.associate_rq(
                contexts=[*CONTEXTS, (cx_mr, MRImageStorage, (ExplicitVRLittleEndian,))]
            )
        )
        got = peer.read_pdu()
        assert got is not None
        assert got[0] == 0x02
        peer.send(p_data((cx_mr, COMMAND | LAST, store_rq(sop_class, sop_instance))))
        peer.send(p_data((cx_mr, LAST, dataset_bytes(ct_file))))
        response, _ = peer.read_response()
        assert response.Status == 0x0122
        assert peer.echo() == 0x0000
    assert "SOP class differs from its presentation context" in node.log.getvalue()
    assert node.spool_files() == []


def test_response_is_split_to_a_tiny_peer_maximum_length(node: Node, ct_file: Path) -> None:
    sop_class, sop_instance = _sop(ct_file)
    with RawPeer(node.port) as peer:
        peer.associate(max_pdu=64)
        peer.send(p_data((CX_CT, COMMAND | LAST, store_rq(sop_class, sop_instance))))
        peer.send(p_data((CX_CT, LAST, dataset_bytes(ct_file))))
        response, lengths = peer.read_response()
        assert response.Status == 0x0000
        assert response.AffectedSOPInstanceUID == sop_instance
        assert len(lengths) > 1
        assert max(lengths) <= 64
        assert peer.echo() == 0x0000


# -- protocol errors: A-P-ABORT, then the node carries on ------------------------------------


@pytest.mark.parametrize(
    ("after_associate", "why"),
    [
        pytest.param(pdu(0x09, b"\x00" * 4), "unexpected PDU type 0x09", id="unknown-pdu-type"),
        pytest.param(pdu(0x01, b"\x00" * 4), "unexpected PDU type 0x01", id="second-associate"),
        pytest.param(
            p_data((CX_CT, 0, b"\x08\x00\x18\x00")),
            "dataset fragment without its request",
            id="dataset-without-command",
        ),
        pytest.param(
            p_data((CX_FIND, COMMAND | LAST, echo_rq())),
            "context that was not accepted",
            id="rejected-context",
        ),
        pytest.param(
            p_data((99, COMMAND | LAST, echo_rq())),
            "context that was not accepted",
            id="never-proposed-context",
        ),
        pytest.param(
            p_data((CX_ECHO, COMMAND | LAST, echo_rq()[:-3])),
            "truncated command element",
            id="malformed-command",
        ),
        pytest.param(
            pdu(0x04, struct.pack(">IBB", 100, CX_ECHO, 3) + b"\x00" * 4),
            "PDV length does not fit its PDU",
            id="pdv-longer-than-pdu",
        ),
    ],
)
def test_protocol_error_is_answered_with_a_provider_abort(
    node: Node, ct_file: Path, after_associate: bytes, why: str
) -> None:
    with RawPeer(node.port) as peer:
        peer.associate()
        peer.send(after_associate)
        assert _is_provider_abort(peer.wait_closed())
    line = _log_event(node, "assoc.protocol_error")
    assert why in line
    _assert_still_stores(node, ct_file)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(p_data((1, COMMAND | LAST, echo_rq())), id="p-data"),
        pytest.param(bytes(range(200, 256)), id="random-bytes"),
        pytest.param(pdu(0x01, b"\xff" * 80), id="undecodable-associate-rq"),
        pytest.param(struct.pack(">BxI", 0x01, 1 << 30), id="huge-associate-rq"),
    ],
)
def test_bad_first_pdu_is_aborted_and_the_node_survives(
    node: Node, ct_file: Path, first: bytes
) -> None:
    with RawPeer(node.port) as peer:
        peer.send(first)
        assert _is_provider_abort(peer.wait_closed())
    _log_event(node, "assoc.protocol_error")
    _assert_still_stores(node, ct_file)


@pytest.mark.parametrize(("a_abort", "how"), [(True, '"aborted by peer"'), (False, "closed")])
def test_peer_gone_mid_dataset_stores_nothing(
    node: Node, ct_file: Path, a_abort: bool, how: str
) -> None:
    sop_class, sop_instance = _sop(ct_file)
    data = dataset_bytes(ct_file)
    with RawPeer(node.port) as peer:
        peer.associate()
        peer.send(p_data((CX_CT, COMMAND | LAST, store_rq(sop_class, sop_instance))))
        peer.send(p_data((CX_CT, 0, data[: len(data) // 2])))
        if a_abort:
            peer.send(pdu(0x07, b"\x00\x00\x00\x00"))  # A-ABORT, service user
            assert peer.wait_closed() == []
    assert f"how={how}" in _log_event(node, "assoc.ended")
    assert _spooled(node) == []  # no instance, no temporary file
    _assert_still_stores(node, ct_file)
    assert [p.name for p in _spooled(node)] == [f"{sop_instance}.dcm"]


def test_release_is_answered_with_release_rp(node: Node) -> None:
    with RawPeer(node.port) as peer:
        peer.associate()
        assert peer.echo() == 0
        peer.send(pdu(0x05, b"\x00" * 4))
        assert peer.wait_closed() == [bytes([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0])]
    assert "how=released" in _log_event(node, "assoc.ended")


def test_idle_association_is_aborted_after_network_timeout(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(node={"network_timeout_s": 1})
    with RawPeer(node.port) as peer:
        peer.associate()
        seen = peer.wait_closed()  # blocks until the node gives up on us (socket: 30 s)
    assert seen == [] or _is_provider_abort(seen)
    _log_event(node, "assoc.timeout")


# -- association negotiation and other peers ----------------------------------------------


def test_wrong_application_context_is_rejected(node: Node) -> None:
    with RawPeer(node.port) as peer:
        peer.send(peer.associate_rq(application_context="1.2.3.4.5.6"))
        seen = peer.wait_closed()
    assert [raw[0] for raw in seen] == [0x03], seen  # A-ASSOCIATE-RJ, then close
    rj = ul_pdu.A_ASSOCIATE_RJ()
    rj.decode(seen[0])
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 2)
    assert "reason=application-context-not-supported" in _log_event(node, "assoc.rejected")


def test_dcmtk_echoscu_succeeds(node: Node) -> None:
    proc = run_tool(
        [ECHOSCU, "-v", "-aet", "ECHOER", "-aec", NODE_AET, "127.0.0.1", str(node.port)]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_graceful_stop_aborts_an_idle_raw_association_promptly(node: Node) -> None:
    with RawPeer(node.port) as peer:
        peer.associate()
        assert peer.echo() == 0
        stopper = threading.Thread(target=node.service.stop, kwargs={"grace_s": 3600.0})
        stopper.start()
        stopper.join(120)  # far below the grace period: stop must not wait it out
        assert not stopper.is_alive(), "stop waited for an idle association"
        seen = peer.wait_closed()
    assert seen == [] or _is_provider_abort(seen)


def test_instance_over_the_size_limit_is_refused_and_the_next_one_stored(
    tmp_path: Path, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    """A 2 MB image against a 1 MB limit: read, dropped, 0xA700; the association goes on."""
    node = start_node(node={"max_instance_mb": 1})
    big = write_study(tmp_path / "big", PhantomSpec(seed=5, n_slices=1, size=1024))
    (big_file,) = big.main.files
    assert big_file.stat().st_size > 1 << 20
    small = phantom.main.files[0]
    proc = storescu(node.port, [big_file, small], extra=("--no-halt",))
    out = proc.stdout + proc.stderr
    assert "Refused: OutOfResources" in out, out
    stored_files = node.spool_files()
    assert len(stored_files) == 1, out
    (stored,) = stored_files
    assert dataset_bytes(stored) == dataset_bytes(small)
    assert "event=store.too_large" in node.log.getvalue()


def test_connections_past_the_slack_are_closed_unread(start_node: Callable[..., Node]) -> None:
    """Silent connections cannot pile up threads: past max_associations plus a slack of
    at least 4, the node closes new ones at once; the held ones still work afterwards."""
    node = start_node(node={"max_associations": 1})
    acceptor = node.service.acceptor
    assert acceptor is not None
    held: list[socket.socket] = []
    try:
        for _ in range(acceptor.max_connections):
            held.append(socket.create_connection(("127.0.0.1", node.port)))
        wait_for(lambda: len(acceptor.associations) == acceptor.max_connections, what="connections")
        with socket.create_connection(("127.0.0.1", node.port)) as extra:
            extra.settimeout(30)
            assert extra.recv(1) == b""  # closed by the node without a word
        assert "reason=too-many-connections" in node.log.getvalue()
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: not acceptor.associations, what="held connections to end")
    with RawPeer(node.port) as peer:
        peer.associate()
        assert peer.echo() == 0x0000


def test_accept_names_the_node_and_its_maximum_pdu(start_node: Callable[..., Node]) -> None:
    """The A-ASSOCIATE-AC carries our Implementation Class UID and Version Name (not
    pynetdicom's: it is not pynetdicom answering) and the configured maximum PDU size."""
    node = start_node(node={"max_pdu_size": 65536})
    with RawPeer(node.port) as peer:
        peer.associate()
        ac = peer.accepted
        assert ac is not None
        assert ac.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        names = [
            item.implementation_version_name
            for item in ac.user_information
            if isinstance(item, ImplementationVersionNameNotification)
        ]
        assert names == [IMPLEMENTATION_VERSION_NAME]
        assert ac.maximum_length_received == 65536


def test_one_huge_fragment_of_a_refused_instance_does_not_grow_memory(
    start_node: Callable[..., Node], ct_file: Path
) -> None:
    """A dataset fragment can be as long as a PDU's 32-bit length; one that is dropped
    (past max_instance_mb) must be read through a bounded buffer, not allocated whole:
    otherwise one PDV header makes the node allocate gigabytes."""
    node = start_node(node={"max_instance_mb": 1})
    sop_class, sop_instance = _sop(ct_file)
    huge = p_data((CX_CT, LAST, bytes(32 << 20)))  # built before memory is traced
    with RawPeer(node.port) as peer:
        peer.associate()
        peer.send(p_data((CX_CT, COMMAND | LAST, store_rq(sop_class, sop_instance))))
        tracemalloc.start()
        try:
            peer.send(huge)
            response, _ = peer.read_response()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.Status == 0xA700
        assert peak < 8 << 20, f"{peak >> 20} MiB allocated to drop one fragment"
        assert peer.echo() == 0x0000
    assert node.spool_files() == []


def test_stop_does_not_wait_on_a_peer_that_reads_no_responses(
    start_node: Callable[..., Node],
) -> None:
    """A peer that sends requests but never reads the answers fills the node's send
    buffer, and the association's thread waits in a send. A stop must still end that
    association at once, not wait with it for network_timeout_s."""
    node = start_node(node={"network_timeout_s": 3600})
    with RawPeer(node.port) as peer:
        peer.associate()
        batch = p_data((CX_ECHO, COMMAND | LAST, echo_rq())) * 512
        peer.sock.settimeout(5)  # a send that waits this long: the node reads no more
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < 1 << 30:
                peer.sock.sendall(batch)
                sent += len(batch)
        stopper = threading.Thread(
            target=node.service.stop, kwargs={"grace_s": 3600.0}, daemon=True
        )
        stopper.start()
        stopper.join(120)  # far below both timeouts: stop must not wait them out
        assert not stopper.is_alive(), "stop waited on an association blocked in a send"
