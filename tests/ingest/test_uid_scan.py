"""The header walk that finds an instance's UIDs agrees with pydicom, or steps aside.

``scan_uids`` may return None (then pydicom parses), but whenever it answers, its UIDs
must be the ones pydicom reads. Checked on every file pydicom ships, on our phantoms in
both VR encodings with nested sequences of defined and undefined length, and on
thousands of corrupted variants of a real header.
"""

from __future__ import annotations

import random
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicom_node.uid_scan import WANTED, scan_uids
from train.data.phantoms import PhantomSpec, write_study


def _pydicom_uids(body: bytes, implicit: bool) -> dict[int, bytes]:
    ds = read_dataset(BytesIO(body), implicit, True, stop_when=lambda t, vr, n: int(t) > 0x0020000E)
    out = {}
    for tag in WANTED:
        elem = ds.get_item(tag)
        if elem is not None:
            out[tag] = elem.value
    return out


def _encode(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _agrees(body: bytes, implicit: bool) -> bool:
    """True if the scan answered; fails the test if its answer differs from pydicom's."""
    found = scan_uids(body, implicit)
    if found is None:
        return False
    assert found == _pydicom_uids(body, implicit)
    return True


def test_agrees_with_pydicom_on_every_shipped_little_endian_file() -> None:
    answered = 0
    # The files in pydicom's package only: get_testdata_files() would try to download more.
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    for name in sorted(shipped.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(name, force=True)
            ts = ds.file_meta.TransferSyntaxUID
            if not ts.is_little_endian or ts.is_deflated:
                continue
            raw = Path(name).read_bytes()
            start = raw.find(b"DICM")
            if start != 128:
                continue
        except Exception:  # noqa: BLE001 - pydicom ships deliberately broken files
            continue
        meta_len = int.from_bytes(raw[140:144], "little")
        body = raw[144 + meta_len :]
        answered += _agrees(body, ts.is_implicit_VR)
    assert answered > 50  # the walk handles the common case itself


@pytest.mark.parametrize("implicit", [False, True])
def test_nested_sequences_of_defined_and_undefined_length(implicit: bool) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "9.9.9"  # a nested SOP Instance UID must not be taken
    inner = Dataset()
    inner.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.InstanceNumber = 1
    for undefined in (False, True):
        ds.ReferencedImageSequence.is_undefined_length = undefined
        for it in ds.ReferencedImageSequence:
            it.is_undefined_length_sequence_item = undefined
        body = _encode(ds, implicit)
        assert _agrees(body, implicit)
        assert scan_uids(body, implicit) == {
            0x00080016: b"1.2.840.10008.5.1.4.1.1.2\x00",
            0x00080018: b"1.2.3.4.5\x00",
            0x0020000D: b"1.2.3\x00",
            0x0020000E: b"1.2.3.4\x00",
        }


def test_answers_none_when_the_data_ends_before_series_uid() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.StudyInstanceUID = "1.2"
    body = _encode(ds, False)
    assert scan_uids(body, False) is None
    assert scan_uids(body[:-3], False) is None


def test_corrupted_headers_never_disagree_with_pydicom(tmp_path: Path) -> None:
    study = write_study(tmp_path, PhantomSpec(seed=3, n_slices=1, size=16))
    raw = study.main.files[0].read_bytes()
    meta_len = int.from_bytes(raw[140:144], "little")
    explicit = raw[144 + meta_len :]
    implicit = _encode(pydicom.dcmread(study.main.files[0]), True)
    rng = random.Random(20261127)
    answered = 0
    for body, is_implicit in ((explicit, False), (implicit, True)):
        header_end = body.find(b"\xe0\x7f\x10\x00")  # pixel data: mutate the header only
        for _ in range(1500):
            data = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(header_end)] = rng.randrange(256)
            found = scan_uids(bytes(data), is_implicit)
            if found is None:
                continue
            try:
                expected = _pydicom_uids(bytes(data), is_implicit)
            except Exception:  # noqa: BLE001 - pydicom refuses it: the UIDs were still read
                continue
            # The scan is blind to values and VRs it does not need, like pydicom's raw read.
            assert found == expected
            answered += 1
    assert answered > 1000
