"""C-STORE into a running node from dcmtk storescu and pynetdicom: what lands on disk,
in the index, in the logs; and what is refused."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom.config
import pytest
from nodes import (
    NODE_AET,
    SENTINEL_ID,
    SENTINEL_NAME,
    Node,
    dataset_bytes,
    make_study,
    raw_store,
    storescu,
    wait_for,
)
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.net.scp import TRANSFER_SYNTAXES, set_nodelay_on_open
from train.data.phantoms import WrittenStudy

# Transfer syntax -> the storescu option that proposes it (dcmtk proposes only
# uncompressed syntaxes unless told; it would otherwise decompress before sending).
TS_UNDER_TEST = {
    "1.2.840.10008.1.2.1": (),  # explicit VR little endian
    "1.2.840.10008.1.2": ("-xi",),  # implicit VR little endian
    "1.2.840.10008.1.2.1.99": ("-xd",),  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50": ("-xy",),  # JPEG baseline
    "1.2.840.10008.1.2.4.70": ("-xs",),  # JPEG lossless process 14 SV1
    "1.2.840.10008.1.2.4.80": ("-xt",),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("-xu",),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("-xv",),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("-xw",),  # JPEG 2000
    "1.2.840.10008.1.2.5": ("-xr",),  # RLE lossless
}


#: The receive engines (node.engine): the native acceptor and pynetdicom's server, its
#: fallback; tests marked with this run against both.
ENGINES = pytest.mark.parametrize("engine", ["native", "pynetdicom"])


def test_every_required_transfer_syntax_is_offered() -> None:
    assert set(TS_UNDER_TEST) <= {str(t) for t in TRANSFER_SYNTAXES}


@ENGINES
@pytest.mark.parametrize("ts", list(TS_UNDER_TEST))
def test_storescu_in_each_transfer_syntax_is_stored_as_received(
    engine: str, ts: str, ts_variants: dict[str, list[Path]], start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine})
    files = ts_variants[ts]
    proc = storescu(node.port, files, extra=TS_UNDER_TEST[ts])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = dcmread(files[0], stop_before_pixels=True)
    study = node.wait_state(str(ref.StudyInstanceUID), "complete")
    assert study.instances == len(files)
    assert study.series == 1
    for src in files:
        sds = dcmread(src, stop_before_pixels=True)
        stored = (
            node.root / "spool" / str(sds.StudyInstanceUID) / str(sds.SeriesInstanceUID)
            / f"{sds.SOPInstanceUID}.dcm"
        )  # fmt: skip
        got = dcmread(stored, stop_before_pixels=True)
        assert str(got.file_meta.TransferSyntaxUID) == ts  # no transcoding on the way in
        if ts == str(DeflatedExplicitVRLittleEndian):
            # storescu inflates and re-deflates: equal content, maybe other zlib bytes.
            assert dcmread(stored).PixelData == dcmread(src).PixelData
        else:
            assert dataset_bytes(stored) == dataset_bytes(src)


@ENGINES
def test_duplicates_are_stored_once_and_answered_success(
    engine: str, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine})
    files = phantom.main.files
    assert storescu(node.port, files).returncode == 0
    node.wait_state(phantom.study_uid, "complete")
    before = {p: p.stat().st_mtime_ns for p in node.spool_files()}
    proc = storescu(node.port, files + files[:2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in node.spool_files()} == before
    study = node.study(phantom.study_uid)
    assert study.instances == len(files)
    assert study.state == "complete"  # duplicates do not reopen a study
    assert "store.duplicate" in node.log.getvalue()


def test_study_split_over_associations_interleaved_with_another(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    a = make_study(tmp_path / "a", seed=11, n_slices=6)
    b = make_study(tmp_path / "b", seed=12, n_slices=6)
    node = start_node(study={"quiet_seconds": 1.5})
    fa, fb = a.main.files, b.main.files
    results: dict[str, int] = {}

    def send(name: str, files: list[Path]) -> None:
        results[name] = storescu(node.port, files, aet=name).returncode

    t1 = threading.Thread(target=send, args=("FIRST", [*fa[:3], *fb[:3], fa[3]]))
    t2 = threading.Thread(target=send, args=("SECOND", [*fb[3:], *fa[4:]]))
    t1.start()
    t2.start()
    t1.join()
    t2.join()
    assert results == {"FIRST": 0, "SECOND": 0}
    for study, n in ((a, len(fa)), (b, len(fb))):
        done = node.wait_state(study.study_uid, "complete")
        assert done.instances == n
        assert done.generation == 1  # completed once, after both associations
        assert done.completed_at >= done.last_received + 1.5


def test_late_instance_reopens_a_complete_study(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    study = make_study(tmp_path / "s", seed=13, n_slices=3)
    node = start_node()
    assert storescu(node.port, study.main.files[:2]).returncode == 0
    first = node.wait_state(study.study_uid, "complete")
    assert first.generation == 1
    assert storescu(node.port, study.main.files[2:]).returncode == 0
    second = wait_for(
        lambda: (s := node.study(study.study_uid)).generation == 2 and s.state == "complete" and s,
        what="second completion",
    )
    assert second.instances == 3
    assert "study.reopened" in node.log.getvalue()


def _secondary_capture(path: Path, study_uid: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = SENTINEL_NAME
    ds.PatientID = SENTINEL_ID
    ds.ConversionType = "WSD"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_study_without_ct_is_accepted_then_skipped_with_reason(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    node = start_node()
    uid = generate_uid()
    sc = _secondary_capture(tmp_path / "sc.dcm", uid)
    assert storescu(node.port, [sc]).returncode == 0
    study = node.wait_state(uid, "skipped")
    assert study.instances == 1
    assert study.eligible_instances == 0
    assert study.reason is not None
    assert "Secondary Capture" in study.reason


def _file_with_body(path: Path, body: bytes, sop_uid: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes() + body)
    return path


@ENGINES
def test_corrupt_and_hostile_instances_never_crash_the_node(
    engine: str, tmp_path: Path, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine})
    sop = generate_uid()
    garbage = _file_with_body(
        tmp_path / "garbage.dcm", b"\x08\x00\x16\x00UI\xff\xff" + bytes(50), sop
    )
    assert raw_store(node.port, garbage) in (0xC000, 0xA900)
    # A syntactically fine dataset whose Study UID would climb out of the spool.
    good = dcmread(phantom.main.files[0])
    hostile = tmp_path / "hostile.dcm"
    settings = pydicom.config.settings
    old = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        good.StudyInstanceUID = "1.2.3/../../../etc"
        good.save_as(hostile, enforce_file_format=True)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = old
    assert raw_store(node.port, hostile) == 0xC000
    assert not any("etc" in p.parts for p in (node.root / "spool").rglob("*"))
    # The node still works.
    assert storescu(node.port, phantom.main.files).returncode == 0
    node.wait_state(phantom.study_uid, "complete")
    assert len(node.spool_files()) == len(phantom.main.files)


def test_sentinel_patient_data_never_reaches_the_logs(
    phantom: WrittenStudy, tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"allowed_calling_aets": ["SENDER"]})
    assert storescu(node.port, phantom.main.files).returncode == 0
    storescu(node.port, phantom.main.files[:1], aet="INTRUDER")  # rejected
    sc = _secondary_capture(tmp_path / "sc.dcm", generate_uid())
    assert storescu(node.port, [sc]).returncode == 0
    node.wait_state(phantom.study_uid, "complete")
    text = node.log.getvalue()
    assert "store" in text or "study.complete" in text  # the capture does see the node
    for secret in (SENTINEL_NAME, SENTINEL_ID, "SENTINEL", "LEAKCHECK", phantom.study_uid):
        assert secret not in text


@ENGINES
def test_disallowed_calling_aet_is_rejected(
    engine: str, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"allowed_calling_aets": ["PACS1"], "engine": engine})
    proc = storescu(node.port, phantom.main.files, aet="STRANGER")
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in proc.stdout + proc.stderr
    assert node.spool_files() == []
    # pynetdicom's engine logs the rejection from its own thread, maybe after the
    # peer has read it: poll.
    logged = "reason=calling-ae-not-recognised"
    wait_for(lambda: logged in node.log.getvalue(), what="the rejection logged")
    assert storescu(node.port, phantom.main.files, aet="PACS1").returncode == 0


@ENGINES
def test_wrong_called_aet_is_rejected(
    engine: str, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine})
    proc = storescu(node.port, phantom.main.files, aec="SOMEONEELSE")
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stdout + proc.stderr
    assert node.spool_files() == []
    logged = "reason=called-ae-not-recognised"
    wait_for(lambda: logged in node.log.getvalue(), what="the rejection logged")


def test_disk_guard_answers_out_of_resources_and_logs_once(
    phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(storage={"min_free_disk_mb": 1 << 40})  # a petabyte free: never
    proc = storescu(node.port, phantom.main.files)
    out = proc.stdout + proc.stderr
    assert "Refused: OutOfResources" in out, out
    assert node.spool_files() == []
    assert node.study(phantom.study_uid) is None
    assert node.log.getvalue().count("event=store.disk_guard") == 1


def test_spool_size_limit_also_guards(
    phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(storage={"max_spool_gb": 1e-6})  # about 1 kB
    proc = storescu(node.port, phantom.main.files)
    assert "Refused: OutOfResources" in proc.stdout + proc.stderr
    assert node.spool_files() == []


@ENGINES
def test_tcp_nodelay_on_accepted_and_opened_sockets(
    engine: str, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine})
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1", node.port, ae_title=NODE_AET,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_on_open)],
    )  # fmt: skip
    assert assoc.is_established
    try:
        ours = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        acceptor, server = node.service.acceptor, node.service.server
        if acceptor is not None:
            sock = wait_for(lambda: acceptor.associations, what="acceptor thread")[0].sock
        else:
            assert server is not None
            accepted = wait_for(lambda: server.active_associations, what="acceptor thread")
            sock = accepted[0].dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


@ENGINES
def test_max_associations_rejects_the_extra_one(
    engine: str, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"max_associations": 1, "engine": engine})
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert first.is_established
    try:
        second = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert second.is_rejected
    finally:
        first.release()
    logged = "reason=local-limit-exceeded"
    wait_for(lambda: logged in node.log.getvalue(), what="the rejection logged")
