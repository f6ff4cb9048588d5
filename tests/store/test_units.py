"""Pieces of the ingest path on their own: UID checks, log format, index, completion."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pytest

from dicom_node.logs import KeyValueFormatter, study_key
from dicom_node.pipeline.assembly import Assembler
from dicom_node.store.index import SCHEMA_VERSION, Index, InstanceRow, StudyRow
from dicom_node.store.spool import Spool
from dicom_node.store.uids import InvalidUID, check_uid, is_strict_uid, is_valid_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.mark.parametrize(
    "value",
    ["1.2.3", "2.25.1234567890", "1." + "2" * 62, "0.0"],
)
def test_valid_uids(value: str) -> None:
    assert check_uid(value, "x") == value


@pytest.mark.parametrize(
    "value",
    ["", "1.2.a", "1..2", "../etc", "1.2/3", ".1", "1.2.", "1." + "2" * 63, "1.2\x003", None, 5],
)
def test_invalid_uids_never_pass(value: object) -> None:
    assert not is_valid_uid(value)
    with pytest.raises(InvalidUID) as info:
        check_uid(value, "Study Instance UID")
    assert "Study Instance UID" in str(info.value)
    if isinstance(value, str) and value:
        assert value not in str(info.value)  # the value is never echoed


def test_uid_padding_is_stripped_and_leading_zeros_are_lax() -> None:
    assert check_uid(b"1.2.3\x00", "x") == "1.2.3"
    assert is_valid_uid("1.02.3")
    assert not is_strict_uid("1.02.3")


def test_formatter_prints_extra_fields_and_no_exception_message() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(KeyValueFormatter())
    logger = logging.getLogger("test.ingest.fmt")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("store.ok", extra={"study": "abc", "note": "two words"})
        try:
            raise ValueError("PATIENT^SECRET")
        except ValueError:
            logger.exception("store.failed")
    finally:
        logger.removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert "event=store.ok" in lines[0]
    assert "study=abc" in lines[0]
    assert 'note="two words"' in lines[0]
    assert "exc_type=ValueError" in lines[1]
    assert "SECRET" not in buf.getvalue()


def test_study_key_is_keyed_and_stable() -> None:
    a = study_key("1.2.3", "k1")
    assert a == study_key("1.2.3", "k1")
    assert a != study_key("1.2.3", "k2")
    assert len(a) == 12
    assert "1.2.3" not in a


def _row(sop: str, study: str = "1.2", t: float = 100.0, cls: str = CT) -> InstanceRow:
    return InstanceRow(sop, study, "1.2.1", cls, "1.2.840.10008.1.2.1", cls == CT, 10,
                       f"{study}/1.2.1/{sop}.dcm", t)  # fmt: skip


def test_index_schema_states_and_reopen(index_target: str | Path) -> None:
    index = Index(index_target)
    assert index.schema_version == SCHEMA_VERSION
    first = index.record(_row("1.2.1.1"))
    assert first.inserted
    assert first.new_study
    assert not index.record(_row("1.2.1.1")).inserted  # duplicate
    assert index.record(_row("1.2.1.2", t=101.0)).generation == 1
    study = index.study("1.2")
    assert study is not None
    assert (study.instances, study.series, study.state) == (2, 1, "receiving")
    # A stale view (older last_received) cannot complete the study.
    assert not index.finish_receiving("1.2", 1, 100.0, "complete")
    assert index.finish_receiving("1.2", 1, 101.0, "complete")
    late = index.record(_row("1.2.1.3", t=200.0))
    assert late.reopened
    assert late.generation == 2
    reopened = index.study("1.2")
    assert reopened is not None
    assert reopened.state == "receiving"
    index.close()
    again = Index(index_target)  # reopening keeps rows and schema
    assert again.schema_version == SCHEMA_VERSION
    assert len(again.studies()) == 1
    again.close()


class FakeScheduler:
    """Our own Rescheduler protocol, recorded."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[str, float]] = []
        self.forgotten: list[str] = []

    def schedule_completion(self, study_uid: str, at: float) -> None:
        self.scheduled.append((study_uid, at))

    def forget(self, study_uid: str) -> None:
        self.forgotten.append(study_uid)


def test_completion_waits_for_quiet_then_calls_hooks(
    tmp_path: Path, index_target: str | Path
) -> None:
    index = Index(index_target)
    spool = Spool(tmp_path / "spool", index, min_free_mb=0, journal_segment_mb=None)
    sched = FakeScheduler()
    seen: list[StudyRow] = []
    asm = Assembler(index, spool, sched, quiet_seconds=30, hash_key="k", hooks=[seen.append])
    index.record(_row("1.2.1.1", t=1000.0))
    index.record(_row("1.2.1.2", t=1010.0))
    # The job fired on the first image's deadline; images came later: deadline moves.
    assert asm.complete("1.2", now=1030.0) == "rescheduled"
    assert sched.scheduled == [("1.2", 1040.0)]
    assert asm.complete("1.2", now=1040.0) == "complete"
    assert [s.study_uid for s in seen] == ["1.2"]
    assert asm.complete("1.2", now=1050.0) == "not_receiving"
    assert len(seen) == 1
    index.close()


def test_study_without_ct_is_skipped_with_reason(tmp_path: Path, index_target: str | Path) -> None:
    index = Index(index_target)
    spool = Spool(tmp_path / "spool", index, min_free_mb=0, journal_segment_mb=None)
    asm = Assembler(index, spool, FakeScheduler(), quiet_seconds=1, hash_key="k", hooks=[])
    index.record(_row("1.3.1.1", study="1.3", cls=SC))
    assert asm.complete("1.3", now=500.0) == "skipped"
    study = index.study("1.3")
    assert study is not None
    assert study.state == "skipped"
    assert study.reason is not None
    assert "Secondary Capture Image Storage" in study.reason
    index.close()


def test_retention_purges_processed_studies_only(tmp_path: Path, index_target: str | Path) -> None:
    index = Index(index_target)
    spool = Spool(tmp_path / "spool", index, min_free_mb=0, journal_segment_mb=None)
    for study in ("1.4", "1.5"):
        folder = tmp_path / "spool" / study / "1.2.1"
        folder.mkdir(parents=True)
        (folder / f"{study}.9.dcm").write_bytes(b"x" * 10)
        index.record(_row(f"{study}.9", study=study))
    index.set_state("1.4", "done")
    asm = Assembler(index, spool, FakeScheduler(), quiet_seconds=1, hash_key="k",
                    retention_days=1, hooks=[])  # fmt: skip
    assert asm.purge_expired(now=1e12) == 1
    assert index.study("1.4") is None
    assert not (tmp_path / "spool" / "1.4").exists()
    assert index.study("1.5") is not None  # still receiving: never purged
    index.close()


def test_part10_header_matches_what_pydicom_reads(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from dicom_node.store.spool import InstanceRef, parse_dataset, part10_header
    from dicom_node.store.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Rows = 2
    for implicit, ts in ((False, "1.2.840.10008.1.2.1"), (True, "1.2.840.10008.1.2")):
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, ds)
        raw = fp.getvalue()
        ref = parse_dataset(raw, ts, command_sop_class=CT, command_sop_instance="1.2.3.4.5")
        assert ref == InstanceRef("1.2.3", "1.2.3.4", "1.2.3.4.5", CT, ts)
        path = tmp_path / f"{int(implicit)}.dcm"
        path.write_bytes(part10_header(ref, "SENDER") + raw)
        back = dcmread(path)
        assert back.file_meta.TransferSyntaxUID == ts
        assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
        assert back.file_meta.SourceApplicationEntityTitle == "SENDER"
        assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert back.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
        assert back.Rows == 2


class _GatedIndex(Index):
    """An index whose ``study()`` read waits for the test (our own class, not a mock)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def study(self, study_uid: str) -> StudyRow | None:
        self.entered.set()
        self.release.wait(10)
        return super().study(study_uid)


def test_shutdown_while_a_job_moves_its_deadline_does_not_deadlock(tmp_path: Path) -> None:
    from dicom_node.pipeline.assembly import register_runtime, unregister_runtime
    from dicom_node.pipeline.scheduler import StudyScheduler

    index = _GatedIndex(tmp_path / "i.sqlite")
    index.record(_row("1.6.1", study="1.6", t=time.time() + 3600))  # due in an hour
    spool = Spool(tmp_path / "spool", index, min_free_mb=0, journal_segment_mb=None)
    sched = StudyScheduler(
        f"sqlite:///{tmp_path / 'jobs.sqlite'}", quiet_seconds=1, runtime_key="gate"
    )
    asm = Assembler(index, spool, sched, quiet_seconds=1, hash_key="k", hooks=[])
    register_runtime("gate", asm)
    try:
        sched.start()
        sched.schedule_completion("1.6", time.time())  # fires now, will want to move
        assert index.entered.wait(10)
        stopper = threading.Thread(target=sched.shutdown)
        stopper.start()
        deadline = time.monotonic() + 10
        while not sched._closing and time.monotonic() < deadline:
            time.sleep(0.01)
        index.release.set()  # the job now tries to reschedule during shutdown
        stopper.join(10)
        assert not stopper.is_alive(), "scheduler shutdown deadlocked"
    finally:
        index.release.set()
        unregister_runtime("gate")
    study = index.study("1.6")
    assert study is not None
    assert study.state == "receiving"  # rescheduled at the next start


def test_a_deflate_bomb_is_inflated_only_as_far_as_the_uids() -> None:
    """1 GiB of zeros after the UIDs, deflated to about 1 MB: parsed in bounded memory."""
    import tracemalloc
    import zlib

    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from dicom_node.store.spool import parse_dataset

    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    size = 1 << 30
    head = fp.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(head)]
    zeros = bytes(1 << 20)
    parts += [packer.compress(zeros) for _ in range(size >> 20)]
    parts.append(packer.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 2 << 20
    tracemalloc.start()
    try:
        ref = parse_dataset(bomb, "1.2.840.10008.1.2.1.99")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ref.study_uid == "1.2.3"
    assert ref.series_uid == "1.2.3.4"
    assert peak < 64 << 20
