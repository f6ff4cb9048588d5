"""Header faults the bad-input corpus (tests/reliability) found unhandled, one by one:
BitsStored larger than BitsAllocated, bare datasets (no preamble, no File Meta), files
that are not DICOM (named with why), and receive-path refusals that say what was wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from ctfactory import ct_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from dicom_node.store.spool import BadInstance, parse_dataset
from models.decode import decode_slice, read_instance
from models.dicom_io import scan_headers
from models.errors import SeriesError


def _slice(path: Path, **changes: object) -> Path:
    ds = ct_dataset(np.full((8, 8), 40.0), study_uid=generate_uid(), series_uid=generate_uid())
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_bits_stored_above_bits_allocated_is_refused(tmp_path: Path) -> None:
    path = _slice(tmp_path / "a.dcm", BitsStored=20, HighBit=19)
    with pytest.raises(SeriesError, match="BitsStored 20 does not fit BitsAllocated 16"):
        decode_slice(path, 8, 8)


def test_bare_dataset_is_read_and_decoded(tmp_path: Path) -> None:
    part10 = _slice(tmp_path / "a.dcm")
    data = part10.read_bytes()
    meta_len = int.from_bytes(data[140:144], "little")
    bare = tmp_path / "bare"
    bare.write_bytes(data[128 + 4 + 12 + meta_len :])  # what old archives hold
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(bare)
    assert read_instance(bare).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert float(decode_slice(bare, 8, 8).hu.mean()) == pytest.approx(40.0)
    scan = scan_headers([bare])
    assert [h.path for h in scan.headers] == [bare]


def test_non_dicom_files_are_listed_with_why(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image\n" * 40)
    (tmp_path / "cut.dcm").write_bytes(_slice(tmp_path / "x.dcm").read_bytes()[:200])
    scan = scan_headers(sorted(p for p in tmp_path.iterdir() if p.name != "x.dcm"))
    assert not scan.headers
    assert set(scan.why) == {tmp_path / "notes.txt", tmp_path / "cut.dcm"}
    assert "not a DICOM file" in scan.why[tmp_path / "notes.txt"]
    assert scan.why[tmp_path / "cut.dcm"]  # truncated: a reason, whichever pydicom hits


def test_refusals_say_what_was_wrong() -> None:
    with pytest.raises(BadInstance, match="not a DICOM dataset"):
        parse_dataset(b"<html>" * 50, str(ExplicitVRLittleEndian))
    with pytest.raises(BadInstance, match="corrupt deflate stream"):
        parse_dataset(b"\xff" * 64, str(DeflatedExplicitVRLittleEndian))
