"""Enhanced CT and Legacy Converted Enhanced CT read as the classic series they came from.

The phantom's classic series is the reference: its multi-frame copies
(:mod:`enhanced_ct_support`) must be chosen by series choice and read to the same HU,
in the same inferior -> superior order, whatever order the frames are stored in and
whatever rescale each frame carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from enhanced_ct_support import legacy_enhanced, true_enhanced
from peers import dciodvfy_errors
from pydicom.uid import EnhancedCTImageStorage, JPEGLSLossless, RLELossless

from models.dicom_io import CTSeries, read_series, scan_headers
from models.enhanced_ct import LEGACY_CONVERTED_ENHANCED_CT_STORAGE
from models.errors import SeriesError
from models.series_choice import SeriesChoice, choose_series
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

N_SLICES = 12


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    out = tmp_path_factory.mktemp("classic")
    return write_study(out, PhantomSpec(seed=7, n_slices=N_SLICES, size=48, bleeds=("subdural",)))


def _read(path: Path) -> tuple[SeriesChoice, CTSeries]:
    scan = scan_headers([path])
    choice = choose_series(scan.headers)
    assert choice.eligible, choice.reason
    return choice, read_series(choice.headers, workers=1)


def test_true_enhanced_ct_is_read_in_position_order_with_per_frame_rescale(
    classic: WrittenStudy, tmp_path: Path
) -> None:
    reference = read_series(scan_headers(classic.main.files).headers, workers=1)
    path, order = true_enhanced(classic, tmp_path / "enh.dcm", seed=3)
    assert order != sorted(order)
    # Per-frame rescale that a reader using one shared rescale would get wrong.
    transforms = [
        f.PixelValueTransformationSequence[0]
        for f in pydicom.dcmread(path).PerFrameFunctionalGroupsSequence
    ]
    assert len({str(t.RescaleSlope) for t in transforms}) == 2
    assert len({str(t.RescaleIntercept) for t in transforms}) == N_SLICES
    assert dciodvfy_errors(path) == []  # an Enhanced CT as the standard defines it
    scan = scan_headers([path])
    assert len(scan.headers) == N_SLICES  # one header per frame
    assert {h.sop_class_uid for h in scan.headers} == {str(EnhancedCTImageStorage)}
    choice = choose_series(scan.headers)
    assert choice.eligible, choice.reason
    assert choice.chosen is not None
    assert choice.chosen.n_instances == N_SLICES
    assert choice.chosen.kernel == "H30S"  # from CT Reconstruction, a shared group
    series = read_series(choice.headers, workers=1)
    np.testing.assert_array_equal(series.hu, reference.hu)
    np.testing.assert_allclose(series.positions_mm, reference.positions_mm)
    assert series.pixel_spacing == reference.pixel_spacing
    # Slice z holds frame order.index(z) + 1 of the one instance.
    assert series.frame_numbers == [order.index(z) + 1 for z in range(N_SLICES)]
    assert set(series.sop_uids) == {str(pydicom.dcmread(path).SOPInstanceUID)}


def test_legacy_converted_enhanced_ct_reads_as_the_classic_series(
    classic: WrittenStudy, tmp_path: Path
) -> None:
    reference = read_series(scan_headers(classic.main.files).headers, workers=1)
    path = legacy_enhanced(classic, tmp_path / "legacy.dcm")
    assert pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == (
        LEGACY_CONVERTED_ENHANCED_CT_STORAGE
    )
    choice, series = _read(path)
    assert choice.chosen is not None
    assert choice.chosen.kernel == "H30S"  # a converted attribute
    np.testing.assert_array_equal(series.hu, reference.hu)
    np.testing.assert_allclose(series.positions_mm, reference.positions_mm)
    assert series.frame_numbers is not None
    assert sorted(series.frame_numbers) == list(range(1, N_SLICES + 1))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_enhanced_ct_decodes_to_the_same_hu(
    classic: WrittenStudy, tmp_path: Path, syntax: str
) -> None:
    native, _ = true_enhanced(classic, tmp_path / "enh.dcm", seed=4)
    ds = pydicom.dcmread(native)
    ds.compress(syntax, generate_instance_uid=False)
    compressed = tmp_path / "enh-compressed.dcm"
    ds.save_as(compressed, enforce_file_format=True)
    _, a = _read(native)
    _, b = _read(compressed)
    np.testing.assert_array_equal(a.hu, b.hu)


def _edited(src: Path, dst: Path, edit: object) -> Path:
    ds = pydicom.dcmread(src)
    edit(ds)  # type: ignore[operator]
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _shared(ds: pydicom.Dataset) -> pydicom.Dataset:
    return ds.SharedFunctionalGroupsSequence[0]  # type: ignore[no-any-return]


def test_series_choice_reads_frame_type_and_contrast_usage(
    classic: WrittenStudy, tmp_path: Path
) -> None:
    base, _ = true_enhanced(classic, tmp_path / "enh.dcm", seed=5)

    def localizer(ds: pydicom.Dataset) -> None:
        _shared(ds).CTImageFrameTypeSequence[0].FrameType = [
            "ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"
        ]  # fmt: skip

    def contrast(ds: pydicom.Dataset, administered: str) -> None:
        agent = pydicom.Dataset()
        agent.ContrastBolusAgentNumber = 1
        agent.CodeValue, agent.CodingSchemeDesignator = "C-B0322", "SRT"
        agent.CodeMeaning = "Iohexol"
        ds.ContrastBolusAgentSequence = [agent]
        usage = pydicom.Dataset()
        usage.ContrastBolusAgentNumber = 1
        usage.ContrastBolusAgentAdministered = administered
        _shared(ds).ContrastBolusUsageSequence = [usage]

    def flavor(ds: pydicom.Dataset, value: str) -> None:
        _shared(ds).CTImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", value, "NONE"]

    scout = _edited(base, tmp_path / "scout.dcm", localizer)
    arterial = _edited(base, tmp_path / "arterial.dcm", lambda ds: flavor(ds, "POST_CONTRAST"))
    (reason,) = choose_series(scan_headers([arterial]).headers).skipped.values()
    assert reason == "contrast-enhanced (ImageType/FrameType POST_CONTRAST)"
    post = _edited(base, tmp_path / "post.dcm", lambda ds: contrast(ds, "YES"))
    pre = _edited(base, tmp_path / "pre.dcm", lambda ds: contrast(ds, "NO"))
    assert choose_series(scan_headers([scout]).headers).reason == "no eligible axial CT series"
    choice = choose_series(scan_headers([post]).headers)
    assert not choice.eligible
    (reason,) = choice.skipped.values()
    assert reason.startswith("contrast-enhanced (ContrastBolusUsageSequence")
    (reason,) = choose_series(scan_headers([scout]).headers).skipped.values()
    assert reason == "localizer/scout"
    # Agents listed, none administered to these frames: a non-contrast series.
    assert choose_series(scan_headers([pre]).headers).eligible


def test_frames_that_cannot_be_placed_are_skipped_with_a_reason(
    classic: WrittenStudy, tmp_path: Path
) -> None:
    base, _ = true_enhanced(classic, tmp_path / "enh.dcm", seed=6)

    def drop_per_frame(ds: pydicom.Dataset) -> None:
        del ds.PerFrameFunctionalGroupsSequence

    def drop_position(ds: pydicom.Dataset) -> None:
        del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence

    unplaced = _edited(base, tmp_path / "unplaced.dcm", drop_per_frame)
    scan = scan_headers([unplaced])
    assert len(scan.headers) == 1  # kept, not lost
    assert not scan.unreadable
    (reason,) = choose_series(scan.headers).skipped.values()
    assert reason.startswith("multi-frame CT whose frames carry no Per-Frame Functional Groups")
    no_pos = _edited(base, tmp_path / "nopos.dcm", drop_position)
    (reason,) = choose_series(scan_headers([no_pos]).headers).skipped.values()
    assert reason == "slices without ImagePositionPatient/ImageOrientationPatient"
    with pytest.raises(SeriesError, match="lack position or orientation"):
        read_series(scan_headers([no_pos]).headers, workers=1)


def test_a_series_mixing_frames_and_single_slices_fails_with_a_reason(
    classic: WrittenStudy, tmp_path: Path
) -> None:
    """Not something a scanner writes; the read must say so rather than mix encodings."""
    base, _ = true_enhanced(classic, tmp_path / "enh.dcm", seed=8)

    def into_classic_series(ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID = classic.study_uid
        ds.SeriesInstanceUID = classic.main.series_uid
        for frame in ds.PerFrameFunctionalGroupsSequence:  # between the classic slices
            plane = frame.PlanePositionSequence[0]
            x, y, z = (float(v) for v in plane.ImagePositionPatient)
            plane.ImagePositionPatient = [x, y, z + 2.5]

    mixed = _edited(base, tmp_path / "mixed.dcm", into_classic_series)
    headers = scan_headers([*classic.main.files[:6], mixed]).headers
    with pytest.raises(SeriesError, match="series mixes 12 frames of multi-frame instances"):
        read_series(headers, workers=1)
