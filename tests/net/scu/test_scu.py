"""C-STORE SCU against real peers: pynetdicom SCPs in-process and a closed port."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from peers import free_port
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from results.results_support import (
    SENTINEL_ID,
    SENTINEL_NAME,
    RecordingSCP,
    Storescp,
    make_prediction,
)

from dicom_node.config import Destination
from dicom_node.errors import PermanentError, TransientError
from dicom_node.net.scu import (
    PermanentDeliveryError,
    ScuTimeouts,
    TransientDeliveryError,
    associate,
    backoff_seconds,
    required_contexts,
    send,
)
from dicom_node.results.report import build_results
from models.checkpoint import CheckpointMeta
from models.dicom_io import CTSeries
from models.network import NetworkConfig
from train.data.phantoms import WrittenStudy

FAST = ScuTimeouts(connect_s=5, acse_s=5, dimse_s=5, network_s=5)


def _dest(port: int, ae: str = "PACS") -> Destination:
    return Destination(name="pacs", ae_title=ae, host="127.0.0.1", port=port)


def _files(phantom: WrittenStudy, n: int = 3) -> list[Path]:
    return list(phantom.main.files[:n])


def test_send_files_stores_each_once(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp()
    files = _files(phantom)
    result = send(_dest(scp.port), files, calling_ae_title="ICHNODE", timeouts=FAST)
    want = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert list(result.sent) == want
    assert [str(ds.SOPInstanceUID) for ds in scp.received] == want
    assert result.warnings == ()


def test_send_datasets_keeps_their_transfer_syntax(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp()
    ds = pydicom.dcmread(phantom.main.files[0])
    send(_dest(scp.port), [ds], timeouts=FAST)
    assert scp.received[0].file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_contexts_are_exactly_the_needed_pairs(phantom: WrittenStudy) -> None:
    files = _files(phantom, 4)
    ctxs = required_contexts(files)
    assert len(ctxs) == 1
    meta = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ctxs[0].abstract_syntax == meta.SOPClassUID
    assert ctxs[0].transfer_syntax == [meta.file_meta.TransferSyntaxUID]
    other = Dataset()
    other.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    other.SOPInstanceUID = "1.2.3.4"
    other.file_meta = pydicom.dataset.FileMetaDataset()
    other.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert len(required_contexts([*files, other, other])) == 2


def test_tcp_nodelay_is_set_on_the_association_socket(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp()
    assoc = associate(_dest(scp.port), required_contexts(_files(phantom, 1)), timeouts=FAST)
    try:
        sock = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


# pynetdicom 3.0.4 drops (does not close) its socket when connect() fails
# (transport.AssociationSocket.connect: ``self.socket = None`` after a failed shutdown);
# the node's AE closes it (scp.NodeAE). An unclosed socket would be a ResourceWarning,
# which -W error turns into a failure of this test.
def test_connection_refused_is_transient(phantom: WrittenStudy) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(TransientDeliveryError) as info:
        send(_dest(port), _files(phantom, 1), timeouts=FAST)
    assert isinstance(info.value, TransientError)
    assert "cannot connect" in info.value.reason


def test_out_of_resources_is_transient_and_stops(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp(status=0xA700)
    with pytest.raises(TransientDeliveryError) as info:
        send(_dest(scp.port), _files(phantom, 3), timeouts=FAST)
    assert info.value.status == 0xA700
    assert info.value.sent == ()
    assert "0xA700" in str(info.value)


def test_cannot_understand_is_permanent(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp(status=0xC000)
    with pytest.raises(PermanentDeliveryError) as info:
        send(_dest(scp.port), _files(phantom, 2), timeouts=FAST)
    assert isinstance(info.value, PermanentError)
    assert info.value.status == 0xC000
    assert "refused 2 of 2" in str(info.value)


def test_unknown_calling_ae_is_permanent(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp(require_calling_aet=["SOMEONEELSE"])
    with pytest.raises(PermanentDeliveryError) as info:
        send(_dest(scp.port), _files(phantom, 1), calling_ae_title="ICHNODE", timeouts=FAST)
    assert "rejected" in info.value.reason
    assert "Calling AE title not recognised" in info.value.reason
    assert scp.received == []


def test_transient_rejection_when_peer_is_busy(
    start_scp: Callable[..., RecordingSCP], phantom: WrittenStudy
) -> None:
    scp = start_scp()
    scp.server.ae.maximum_associations = 1
    files = _files(phantom, 1)
    held = associate(_dest(scp.port), required_contexts(files), timeouts=FAST)
    try:
        with pytest.raises(TransientDeliveryError) as info:
            send(_dest(scp.port), files, timeouts=FAST)
        assert "rejected" in info.value.reason
    finally:
        held.release()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP listener that accepts and never speaks: the handshake must time out."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conns.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_handshake_timeout_is_transient(silent_listener: int, phantom: WrittenStudy) -> None:
    quick = ScuTimeouts(connect_s=2, acse_s=0.5, dimse_s=1, network_s=1)
    with pytest.raises(TransientDeliveryError):
        send(_dest(silent_listener), _files(phantom, 1), timeouts=quick)


def test_no_patient_data_in_errors_or_logs(
    start_scp: Callable[..., RecordingSCP],
    phantom: WrittenStudy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    for status in (0xA700, 0xC000):
        scp = start_scp(status=status)
        with pytest.raises((TransientError, PermanentError)) as info:
            send(_dest(scp.port), _files(phantom, 2), timeouts=FAST)
        messages.append(str(info.value))
    scp = start_scp()
    send(_dest(scp.port), _files(phantom, 2), timeouts=FAST)
    uid = str(pydicom.dcmread(phantom.main.files[0], stop_before_pixels=True).SOPInstanceUID)
    ours = [r for r in caplog.records if r.name.startswith("dicom_node")]
    assert ours, "the SCU logs its deliveries"
    text = "\n".join(messages + [f"{r.getMessage()} {r.__dict__}" for r in ours])
    for secret in (SENTINEL_NAME, SENTINEL_ID, uid):
        assert secret not in text


def test_empty_input_sends_nothing() -> None:
    result = send(_dest(free_port()), [])
    assert result.sent == ()


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_seconds(a, 10, 100) for a in range(1, 7)] == [10, 20, 40, 80, 100, 100]
    assert backoff_seconds(10_000, 1, 3600) == 3600
    with pytest.raises(ValueError):
        backoff_seconds(0)


def test_dcmtk_storescp_receives_sr_and_sc(
    storescp: Storescp,
    tmp_path: Path,
    ct_series: CTSeries,
    source_headers: list[Dataset],
) -> None:
    meta = CheckpointMeta(network=NetworkConfig(backbone="resnet18"), model_uid="2.25.42")
    pred = make_prediction(ct_series, ("subarachnoid",))
    files = build_results(pred, source_headers, ct_series, meta).save(tmp_path / "out")
    dest = Destination(
        name="dcmtk", ae_title=storescp.ae_title, host="127.0.0.1", port=storescp.port
    )
    result = send(dest, [files["sr"], files["sc"]], timeouts=FAST)
    want = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files.values()}
    assert set(result.sent) == want
    got = {}
    for path in storescp.out_dir.iterdir():
        ds = pydicom.dcmread(path)
        got[str(ds.SOPInstanceUID)] = ds
    assert set(got) == want
    for kind, path in files.items():
        sent = pydicom.dcmread(path)
        received = got[str(sent.SOPInstanceUID)]
        assert received.SOPClassUID == sent.SOPClassUID, kind
        assert received.StudyInstanceUID == sent.StudyInstanceUID
    sc = next(ds for ds in got.values() if ds.Modality == "OT")
    assert sc.pixel_array.shape == (1024, 1024, 3)
