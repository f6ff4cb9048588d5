"""The header walk that finds an instance's UIDs agrees with pydicom, or steps aside.

``scan_uids`` may return None (then pydicom parses), but whenever it answers, its UIDs
must be the ones pydicom reads. Checked on every file pydicom ships, on our phantoms in
both VR encodings with nested sequences of defined and undefined length, and on
thousands of corrupted variants of a real header.
"""

from __future__ import annotations

import random
import struct
import warnings
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

from dicom_node.store.uid_scan import WANTED, scan_uids
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


# -- inputs where pydicom reads differently from a plain walk ------------------------------

_CT = b"1.2.840.10008.5.1.4.1.1.2"
_REAL = {0x00080016: _CT, 0x00080018: b"1.2.3.4", 0x0020000D: b"1.2.3", 0x0020000E: b"1.2.3.9"}
_FAKE = {0x00080016: _CT, 0x00080018: b"6.6.6", 0x0020000D: b"6.6", 0x0020000E: b"6.6.7"}
_LONG = {b"OB", b"OW", b"SQ", b"UN", b"UT"}


def _el(tag: int, value: bytes, vr: bytes | None = None) -> bytes:
    """One element, implicit VR (``vr`` None) or explicit VR, value padded to even length."""
    if len(value) % 2:
        value += b"\x00"
    if vr is None:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
    if vr in _LONG:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _head(tag: int, length: int) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)


def _uids(uids: dict[int, bytes], explicit: bool) -> bytes:
    return b"".join(_el(tag, value, b"UI" if explicit else None) for tag, value in uids.items())


def _never_disagrees(body: bytes, implicit: bool) -> None:
    found = scan_uids(body, implicit)
    if found is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about what it works around
            assert found == _pydicom_uids(body, implicit)


def test_explicit_vr_data_on_an_implicit_vr_context_is_left_to_pydicom() -> None:
    """pydicom reads a dataset whose first element looks explicit as explicit VR even
    when implicit was negotiated; walked as implicit, an empty first element (length
    bytes 'CS\\0\\0' = 21315) would send the scan into the pixel data."""
    body = (
        _el(0x00080005, b"", b"CS") + _uids(_REAL, explicit=True) + _el(0x00200013, b"1", b"IS")
        + _el(0x7FE00010, bytes(range(256)) * 200, b"OW")
    )  # fmt: skip
    _never_disagrees(body, implicit=True)


def test_implicit_undefined_length_element_that_is_no_sequence() -> None:
    """An implicit-VR element of undefined length whose dictionary VR is not SQ: pydicom
    takes its value up to the first delimiter bytes, even inside an item's value."""
    hidden = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + _uids(_FAKE, explicit=False)
    body = (
        _head(0x00080012, 0xFFFFFFFF) + _head(0xFFFEE000, 0xFFFFFFFF) + _el(0x00080100, hidden)
        + _head(0xFFFEE00D, 0) + _head(0xFFFEE0DD, 0) + _uids(_REAL, explicit=False)
        + _el(0x00200013, b"1")
    )  # fmt: skip
    _never_disagrees(body, implicit=True)


@pytest.mark.parametrize("implicit", [True, False])
def test_item_whose_element_runs_past_the_item_length(implicit: bool) -> None:
    """A defined-length item in an undefined-length sequence: pydicom reads the item's
    last element whole and goes on from its end, not from the item's declared end."""
    vr = None if implicit else b"UI"
    number = _el(0x00200013, b"1", None if implicit else b"IS")
    # Past the item's declared end: what a walk that skips by item length would read.
    tail = (
        _head(0xFFFEE0DD, 0) + _el(0x0020000D, _FAKE[0x0020000D], vr)
        + _el(0x0020000E, _FAKE[0x0020000E], vr) + number
    )  # fmt: skip
    inner = (
        _head(0x00081150, len(tail))
        if implicit
        else struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", len(tail))
    )
    sequence = (
        _head(0x00081140, 0xFFFFFFFF)
        if implicit
        else struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    )
    body = (
        _el(0x00080016, _REAL[0x00080016], vr) + _el(0x00080018, _REAL[0x00080018], vr)
        + sequence + _head(0xFFFEE000, len(inner)) + inner + tail + _head(0xFFFEE0DD, 0)
        + _el(0x0020000D, _REAL[0x0020000D], vr) + _el(0x0020000E, _REAL[0x0020000E], vr)
        + number
    )  # fmt: skip
    _never_disagrees(body, implicit)
