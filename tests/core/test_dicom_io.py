"""Reading series: HU, slice order from geometry, duplicates, quirks and bad input."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ctfactory import SENTINEL_ID, SENTINEL_NAME, ct_dataset, write_series
from pydicom.uid import RLELossless, generate_uid

from models.dicom_io import (
    iter_dicom_files,
    order_slices,
    read_series,
    scan_headers,
    slice_normal,
    stored_to_hu,
)
from models.errors import ModelsError, SeriesError


def ramp_volume(n: int, size: int = 8) -> np.ndarray:
    """Slice k holds the constant value 10*k HU, so order is readable from pixels."""
    return np.stack([np.full((size, size), 10.0 * k) for k in range(n)])


def read(folder: Path):  # type: ignore[no-untyped-def]
    return read_series(scan_headers(iter_dicom_files(folder)).headers)


def test_hu_from_slope_and_intercept(tmp_path: Path) -> None:
    vol = np.stack([np.array([[-1000.0, 0.0], [40.0, 1500.0]])] * 3)
    write_series(tmp_path, vol)
    series = read(tmp_path)
    assert series.hu.dtype == np.float32
    np.testing.assert_array_equal(series.hu[1], vol[1])


@pytest.mark.parametrize(
    "order", ["sorted", "reversed", "shuffled"], ids=["sorted", "reversed", "shuffled"]
)
def test_order_recovered_from_positions(tmp_path: Path, order: str) -> None:
    n = 12
    idx = list(range(n))
    if order == "reversed":
        idx.reverse()
    elif order == "shuffled":
        random.Random(3).shuffle(idx)
    _, uids = write_series(tmp_path, ramp_volume(n), order=idx)
    series = read(tmp_path)
    np.testing.assert_array_equal(series.hu[:, 0, 0], 10.0 * np.arange(n))
    assert series.sop_uids == uids
    assert np.all(np.diff(series.positions_mm) > 0)


def test_feet_first_orientation_sorted_inferior_to_superior(tmp_path: Path) -> None:
    write_series(tmp_path, ramp_volume(10), orientation=(-1, 0, 0, 0, 1, 0), order=range(9, -1, -1))
    series = read(tmp_path)
    np.testing.assert_array_equal(series.hu[:, 0, 0], 10.0 * np.arange(10))


def test_tilted_gantry_sorted_along_normal(tmp_path: Path) -> None:
    t = math.radians(20)
    orientation = (1, 0, 0, 0, math.cos(t), -math.sin(t))
    normal = slice_normal(orientation)
    assert normal[2] == pytest.approx(math.cos(t))
    idx = list(range(10))
    random.Random(1).shuffle(idx)
    write_series(tmp_path, ramp_volume(10), orientation=orientation, order=idx)
    series = read(tmp_path)
    np.testing.assert_array_equal(series.hu[:, 0, 0], 10.0 * np.arange(10))


def test_duplicate_positions_dropped_and_counted(tmp_path: Path) -> None:
    study, series_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "a", ramp_volume(6), study_uid=study, series_uid=series_uid)
    # Same series, same positions for slices 0..2, new SOP UIDs: a re-sent subset.
    write_series(tmp_path / "b", ramp_volume(3), study_uid=study, series_uid=series_uid)
    series = read(tmp_path)
    assert series.n_slices == 6
    assert series.duplicates_dropped == 3


def test_rsna_signedness_quirk_is_corrected(tmp_path: Path) -> None:
    """Unsigned 12-bit, intercept 0, yet air stored as two's complement (4096 - 1000)."""
    hu = np.array([[-1000.0, -20.0], [35.0, 1200.0]])
    stored = np.where(hu < 0, hu + 4096, hu).astype(np.uint16)
    ds = ct_dataset(hu, study_uid=generate_uid(), series_uid=generate_uid(), intercept=0.0)
    ds.PixelData = stored.tobytes()
    path = tmp_path / "quirk.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = pydicom.dcmread(path).pixel_array
    assert raw.max() > 3000  # naive HU would call air dense bone
    series = read_series(scan_headers([path]).headers)
    np.testing.assert_array_equal(series.hu[0], hu)
    assert series.quirk_corrected == 1


def test_correct_unsigned_data_untouched(tmp_path: Path) -> None:
    hu = np.array([[-1000.0, 3000.0]])
    ds = ct_dataset(hu, study_uid=generate_uid(), series_uid=generate_uid(), bits_stored=16)
    np.testing.assert_array_equal(stored_to_hu(ds, ds.pixel_array), hu)


def test_signed_12_bit_sign_extension(tmp_path: Path) -> None:
    hu = np.array([[-1000.0, 50.0]])
    ds = ct_dataset(
        hu, study_uid=generate_uid(), series_uid=generate_uid(), intercept=0.0, signed=True
    )
    path = tmp_path / "s.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_series(scan_headers([path]).headers).hu[0], hu)


def test_compressed_transfer_syntax_decodes(tmp_path: Path) -> None:
    vol = ramp_volume(3, size=16)
    paths, _ = write_series(tmp_path, vol)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p, enforce_file_format=True)
    series = read(tmp_path)
    np.testing.assert_array_equal(series.hu, vol.astype(np.float32))


def test_mixed_sizes_rejected(tmp_path: Path) -> None:
    study, ser = generate_uid(), generate_uid()
    write_series(tmp_path / "a", ramp_volume(3, 8), study_uid=study, series_uid=ser)
    ds = ct_dataset(np.zeros((16, 16)), study_uid=study, series_uid=ser, position=(0.0, 0.0, 99.0))
    ds.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    with pytest.raises(SeriesError, match="different sizes") as info:
        read(tmp_path)
    assert SENTINEL_NAME.split("^")[0] not in str(info.value)


def test_non_ct_rejected(tmp_path: Path) -> None:
    write_series(tmp_path, ramp_volume(3), modality="MR")
    with pytest.raises(SeriesError, match="not CT"):
        read(tmp_path)


def test_missing_pixel_data_rejected(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, ramp_volume(3))
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(SeriesError, match="no pixel data"):
        read(tmp_path)


def test_truncated_pixel_data_rejected(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, ramp_volume(3))
    ds = pydicom.dcmread(paths[0])
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(paths[0], enforce_file_format=True)
    with pytest.raises(ModelsError):
        read(tmp_path)


def test_not_dicom_files_are_listed_not_raised(tmp_path: Path) -> None:
    write_series(tmp_path, ramp_volume(2))
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    scan = scan_headers(iter_dicom_files(tmp_path))
    assert len(scan.headers) == 2
    assert [p.name for p in scan.unreadable] == ["notes.txt"]


def test_order_without_positions_uses_instance_number(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, ramp_volume(4), order=[3, 2, 1, 0])
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
        ds.save_as(p, enforce_file_format=True)
    ordered = order_slices(scan_headers(paths).headers)
    assert [h.instance_number for h in ordered.headers] == [1, 2, 3, 4]


def test_errors_and_logs_carry_no_patient_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    study, ser = generate_uid(), generate_uid()
    write_series(tmp_path / "a", ramp_volume(4), study_uid=study, series_uid=ser)
    write_series(tmp_path / "b", ramp_volume(2), study_uid=study, series_uid=ser)
    (tmp_path / "junk.bin").write_bytes(b"\0" * 200)
    series = read(tmp_path)
    assert series.duplicates_dropped == 2
    ds = ct_dataset(np.zeros((4, 4)), study_uid=study, series_uid=ser, modality="MR")
    ds.save_as(tmp_path / "mr.dcm", enforce_file_format=True)
    with pytest.raises(SeriesError) as info:
        read(tmp_path)
    text = caplog.text + str(info.value)
    for sentinel in (SENTINEL_NAME, SENTINEL_NAME.split("^")[0], SENTINEL_ID):
        assert sentinel not in text
