"""A refused C-STORE says why: the reason is in the response's Error Comment (0000,0902).

Each refusal is provoked on a running node (both receive engines) and read back by a
real peer: pynetdicom's SCU (``status.ErrorComment``) and dcmtk ``storescu -d`` (its
debug dump of the C-STORE-RSP). The offending values are patient sentinels, so a
comment that quoted a value would leak them: it must not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pydicom.config
import pytest
from nodes import SENTINEL_ID, SENTINEL_NAME, Node, raw_store_response, storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import MRImageStorage
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_node.net import dimse
from dicom_node.net.store_answer import MAX_ERROR_COMMENT, error_comment
from train.data.phantoms import WrittenStudy

ENGINES = pytest.mark.parametrize("engine", ["native", "pynetdicom"])
SECRETS = (SENTINEL_NAME, SENTINEL_ID, "SENTINEL", "LEAKCHECK")


@contextmanager
def _lenient() -> Iterator[None]:
    """Let pydicom write the invalid values a broken sender would send."""
    settings = pydicom.config.settings
    old = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = old


def _variant(src: Path, out: Path, change: Callable[[Dataset], None]) -> Path:
    """A phantom slice (patient name and ID are the sentinels) with ``change`` applied."""
    ds = dcmread(src)
    assert (ds.PatientName, ds.PatientID) == (SENTINEL_NAME, SENTINEL_ID)
    command_sop_class = ds.SOPClassUID
    with _lenient():
        change(ds)
        # Written as is: the File Meta keeps the slice's SOP Class (the C-STORE's own).
        ds.file_meta.MediaStorageSOPClassUID = command_sop_class
        ds.save_as(out, enforce_file_format=False)
    return out


def _store(port: int, path: Path) -> Dataset:
    """C-STORE ``path``'s bytes as they are (chunked: never decoded or fixed on this side)
    under its File Meta's SOP Class/Instance; the response's status dataset."""
    response: Dataset = raw_store_response(port, path, calling="ERRCOMMENT")
    return response


def _no_study_uid(ds: Dataset) -> None:
    del ds.StudyInstanceUID


def _patient_name_as_series_uid(ds: Dataset) -> None:
    ds.SeriesInstanceUID = str(SENTINEL_NAME)


def _long_study_uid(ds: Dataset) -> None:
    ds.StudyInstanceUID = "1.2." + "9" * 70  # PS3.5 9.1: at most 64 characters


def _other_sop_class(ds: Dataset) -> None:
    # The File Meta (hence the C-STORE command) still says CT Image Storage.
    ds.SOPClassUID = MRImageStorage


#: Refusal kind -> (how the slice is broken, status, the Error Comment).
REFUSALS = {
    "study-uid-missing": (_no_study_uid, 0xC000, "Study Instance UID is missing"),
    "patient-name-as-uid": (
        _patient_name_as_series_uid, 0xC000, "Series Instance UID is not a UID",
    ),
    "uid-too-long": (_long_study_uid, 0xC000, "Study Instance UID is not a UID"),
    "sop-class-mismatch": (
        _other_sop_class, 0xA900, "SOP Class UID differs from the C-STORE request",
    ),
}  # fmt: skip


@ENGINES
@pytest.mark.parametrize("kind", list(REFUSALS))
def test_refusal_reason_reaches_a_pynetdicom_sender(
    engine: str, kind: str, phantom: WrittenStudy, tmp_path: Path,
    start_node: Callable[..., Node],
) -> None:  # fmt: skip
    change, status, comment = REFUSALS[kind]
    node = start_node(node={"engine": engine})
    bad = _variant(phantom.main.files[0], tmp_path / "bad.dcm", change)
    rsp = _store(node.port, bad)
    assert rsp.Status == status
    assert rsp.ErrorComment == comment
    assert not any(secret in rsp.ErrorComment for secret in SECRETS)
    assert node.spool_files() == []
    # What the sender is told is what the node logged (the same text, never a value).
    assert comment in node.log.getvalue()
    # The node still stores the good slices.
    assert rsp_ok(node.port, phantom.main.files[1])


def rsp_ok(port: int, path: Path) -> bool:
    return int(_store(port, path).Status) == 0x0000


#: dcmtk storescu -d prints each C-STORE-RSP ("DIMSE Status : 0xc000: ...") and then,
#: under "Status Detail", the response's other elements: the comment as an LO element.
_DCMTK_COMMENT = re.compile(r"\(0000,0902\) LO \[([^\]]*)\]")
_DCMTK_STATUS = re.compile(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})")


def _dcmtk_responses(port: int, files: list[Path]) -> tuple[list[int], list[str], str]:
    proc = storescu(port, files, extra=("-d", "--no-halt"))
    out = proc.stdout + proc.stderr
    return (
        [int(s, 16) for s in _DCMTK_STATUS.findall(out)],
        [c.rstrip() for c in _DCMTK_COMMENT.findall(out)],
        out,
    )


@ENGINES
def test_refusal_reasons_reach_dcmtk_storescu(
    engine: str, phantom: WrittenStudy, tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine})
    src = phantom.main.files[0]
    files = [
        _variant(src, tmp_path / "no-study.dcm", _no_study_uid),
        _variant(src, tmp_path / "name-uid.dcm", _patient_name_as_series_uid),
        _variant(src, tmp_path / "long-uid.dcm", _long_study_uid),
        phantom.main.files[1],
    ]
    statuses, comments, out = _dcmtk_responses(node.port, files)
    assert statuses == [0xC000, 0xC000, 0xC000, 0x0000], out
    # A Success carries no comment: three comments for the three refusals, in order.
    assert comments == [
        "Study Instance UID is missing",
        "Series Instance UID is not a UID",
        "Study Instance UID is not a UID",
    ], out
    for secret in SECRETS:
        assert not any(secret in c for c in comments)


@ENGINES
def test_out_of_resources_says_which_limit(
    engine: str, phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": engine}, storage={"min_free_disk_mb": 1 << 40})
    statuses, comments, out = _dcmtk_responses(node.port, phantom.main.files[:2])
    assert statuses == [0xA700, 0xA700], out
    assert comments == ["free disk below storage.min_free_disk_mb"] * 2, out
    assert node.spool_files() == []


def test_spool_size_limit_says_so(phantom: WrittenStudy, start_node: Callable[..., Node]) -> None:
    node = start_node(storage={"max_spool_gb": 1e-6})  # about 1 kB
    rsp = _store(node.port, phantom.main.files[0])
    assert (rsp.Status, rsp.ErrorComment) == (0xA700, "spool above storage.max_spool_gb")


def test_oversized_instance_is_told_the_limit(
    phantom: WrittenStudy, tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    node = start_node(node={"engine": "native", "max_instance_mb": 1})
    big = _variant(
        phantom.main.files[0], tmp_path / "big.dcm",
        lambda ds: setattr(ds, "PixelData", bytes(2 << 20)),
    )  # fmt: skip
    rsp = _store(node.port, big)
    assert (rsp.Status, rsp.ErrorComment) == (0xA700, "instance larger than node.max_instance_mb")


# -- the comment itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("Study Instance UID is missing", "Study Instance UID is missing"),
        (
            "Study Instance UID is not a UID (digits and dots, at most 64 characters)",
            "Study Instance UID is not a UID",
        ),
        (
            "no SOP Class, SOP Instance, Study or Series UID found: not a DICOM dataset, "
            "or one cut short or corrupt before them",
            "no SOP Class, SOP Instance, Study or Series UID found",
        ),
        ("a\\b\nc\x00d é", "a?b?c?d ?"),
        ("x" * 100, "x" * 61 + "..."),
    ],
)
def test_error_comment_fits_lo(reason: str, expected: str) -> None:
    comment = error_comment(reason)
    assert comment == expected
    assert len(comment) <= MAX_ERROR_COMMENT


def test_native_response_carries_the_comment_space_padded() -> None:
    request = dimse.Command(dimse.C_STORE_RQ, 7, True, CTImageStorage.encode(), b"1.2.3")
    raw = dimse.encode_response(request, 0xC000, "odd")
    assert b"odd " in raw  # LO pads with a space, never a NUL
    ds = read_dataset(BytesIO(raw), True, True)
    assert ds.ErrorComment == "odd"
    assert ds.Status == 0xC000
    assert ds.CommandGroupLength == len(raw) - 12
    assert "ErrorComment" not in read_dataset(
        BytesIO(dimse.encode_response(request, 0)), True, True
    )
