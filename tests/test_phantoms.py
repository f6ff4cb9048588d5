"""Synthetic head-CT phantoms: deterministic, labelled truthfully, valid DICOM on disk.

Every other test and the demo stand on these studies, so what is checked here is what they
rely on: same seed, same pixels and UIDs; a label is 1 exactly where blood was painted; the
files decode (in every transfer syntax offered) to the volume's HU; dciodvfy finds no error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from peers import dciodvfy_errors
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from train.data.phantoms import (
    LABELS,
    SUBTYPES,
    PhantomSpec,
    PhantomVolume,
    WrittenStudy,
    make_volume,
    random_spec,
    supported_transfer_syntaxes,
    write_study,
)

BONE_HU = 300


def _errors(path: Path) -> list[str]:
    """dciodvfy error lines for ``path``; a deflated file is inflated by dcmtk first.

    dicom3tools cannot read Deflated Explicit VR Little Endian, so for that syntax the
    dataset is checked after ``dcmconv`` rewrites it, unchanged, as explicit little endian.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        inflated = path.with_name(path.stem + "_inflated.dcm")
        subprocess.run(["dcmconv", "+te", str(path), str(inflated)], check=True)
        path = inflated
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    containing = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln]
    return sorted(set(containing) | set(dciodvfy_errors(path)))


def _hu(path: Path) -> npt.NDArray[np.int32]:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.int32)
    return arr * int(ds.RescaleSlope) + int(ds.RescaleIntercept)


def _runs(column: npt.NDArray[np.uint8]) -> int:
    """Number of contiguous runs of ones."""
    padded = np.concatenate([[0], column.astype(np.int8), [0]])
    return int((np.diff(padded) == 1).sum())


@pytest.fixture(scope="module")
def all_bleeds() -> tuple[PhantomVolume, PhantomVolume]:
    """The same head (seed) with every subtype, and without any."""
    base = PhantomSpec(seed=11, n_slices=20, size=256)
    with_bleeds = PhantomSpec(seed=11, n_slices=20, size=256, bleeds=SUBTYPES)
    return make_volume(with_bleeds), make_volume(base)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """A 12-slice study with all extra series, written once for the read-back tests."""
    out = tmp_path_factory.mktemp("study")
    spec = PhantomSpec(seed=3, n_slices=12, bleeds=("subdural", "intraventricular"))
    return write_study(out, spec, extra_series=("bone_thin", "localizer"), thin_slice_mm=2.5)


def test_labels_are_the_project_order() -> None:
    assert LABELS == (
        "any",
        "epidural",
        "intraparenchymal",
        "intraventricular",
        "subarachnoid",
        "subdural",
    )
    labels = pytest.importorskip("models.labels")
    assert labels.LABELS == LABELS


def test_volume_is_deterministic_per_seed() -> None:
    spec = PhantomSpec(seed=5, n_slices=6, size=128, bleeds=("epidural",))
    a, b = make_volume(spec), make_volume(spec)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.slice_labels, b.slice_labels)
    np.testing.assert_array_equal(a.z_positions, b.z_positions)
    other = make_volume(PhantomSpec(seed=6, n_slices=6, size=128, bleeds=("epidural",)))
    assert not np.array_equal(a.hu, other.hu)


def test_volume_geometry_and_tissue_values() -> None:
    spec = PhantomSpec(seed=2, n_slices=24, size=256)
    vol = make_volume(spec)
    assert vol.hu.shape == (24, 256, 256)
    assert vol.hu.dtype == np.int16
    assert vol.slice_labels.shape == (24, len(LABELS))
    assert vol.slice_labels.dtype == np.uint8
    assert not vol.slice_labels.any()
    assert vol.study_labels.tolist() == [0] * len(LABELS)
    np.testing.assert_allclose(np.diff(vol.z_positions), 5.0)
    assert vol.pixel_spacing_mm == pytest.approx(240.0 / 256)

    mid = vol.hu[12].astype(np.float32)
    assert abs(float(np.median(mid[:8, :8])) + 1000) < 10  # air in the corner
    assert (mid > 1000).sum() > 200  # a ring of cortical bone
    centre = mid[96:160, 96:160]
    brain = centre[(centre > 15) & (centre < 60)]
    assert 20 < float(brain.mean()) < 42  # parenchyma
    assert (centre < 15).mean() > 0.02  # ventricles (CSF) near the centre
    assert float(vol.hu.min()) >= -1024


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_each_subtype_is_painted_where_labelled(
    subtype: str, all_bleeds: tuple[PhantomVolume, PhantomVolume]
) -> None:
    vol, normal = all_bleeds
    k = LABELS.index(subtype)
    column = vol.slice_labels[:, k]
    mask = vol.subtype_mask(subtype)

    assert column.sum() >= 2, "a bleed spans several slices"
    assert _runs(column) == 1, "and they are contiguous"
    np.testing.assert_array_equal(mask.any(axis=(1, 2)), column.astype(bool))
    assert float(vol.hu[mask].mean()) > 55, "blood is hyperdense"
    assert float(vol.hu[mask].mean()) > float(normal.hu[mask].mean()) + 20


def test_any_is_the_max_of_the_subtypes(all_bleeds: tuple[PhantomVolume, PhantomVolume]) -> None:
    vol, _ = all_bleeds
    np.testing.assert_array_equal(vol.slice_labels[:, 0], vol.slice_labels[:, 1:].max(axis=1))
    assert vol.study_labels.tolist() == [1] * len(LABELS)


def test_bleeds_change_only_labelled_slices(
    all_bleeds: tuple[PhantomVolume, PhantomVolume],
) -> None:
    vol, normal = all_bleeds
    changed = (vol.hu != normal.hu).any(axis=(1, 2))
    np.testing.assert_array_equal(changed, vol.slice_labels[:, 0].astype(bool))


def test_bleed_anatomy(all_bleeds: tuple[PhantomVolume, PhantomVolume]) -> None:
    """Each subtype sits where its name says, judged on the same head without blood."""
    vol, normal = all_bleeds

    def touches_bone(mask: npt.NDArray[np.bool_]) -> float:
        grown = mask.copy()
        for axis in (1, 2):
            grown |= np.roll(mask, 1, axis=axis) | np.roll(mask, -1, axis=axis)
        edge = grown & ~mask
        return float((normal.hu[edge] > BONE_HU).sum()) / max(1, int(mask.sum()))

    assert touches_bone(vol.subtype_mask("epidural")) > 0.05  # against the inner table
    assert touches_bone(vol.subtype_mask("subdural")) > 0.05
    assert touches_bone(vol.subtype_mask("intraparenchymal")) < 0.02
    ivh = vol.subtype_mask("intraventricular")
    assert float(normal.hu[ivh].mean()) < 15  # was CSF: inside the ventricles
    sah = vol.subtype_mask("subarachnoid")
    assert float(normal.hu[sah].mean()) < 30  # mostly sulcal or cisternal CSF

    epidural, subdural = vol.subtype_mask("epidural"), vol.subtype_mask("subdural")
    # Biconvex lens: thick for its length; crescent: long and thin. Compare the widest slices.
    lens = epidural.sum(axis=(1, 2)).max() / max(1, _max_arc_px(epidural))
    crescent = subdural.sum(axis=(1, 2)).max() / max(1, _max_arc_px(subdural))
    assert lens > crescent


def _max_arc_px(mask: npt.NDArray[np.bool_]) -> int:
    """Largest bounding-box diagonal of the mask in any slice: the bleed's length."""
    best = 0
    for sl in mask:
        rows, cols = np.nonzero(sl)
        if rows.size:
            best = max(best, int(np.hypot(np.ptp(rows), np.ptp(cols))))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_requested_subtypes_always_appear(seed: int) -> None:
    spec = PhantomSpec(seed=seed, n_slices=20, size=128, bleeds=SUBTYPES, noise_hu=0)
    labels = make_volume(spec).slice_labels
    assert (labels[:, 1:].sum(axis=0) >= 2).all()


def test_random_spec() -> None:
    assert random_spec(7) == random_spec(7)
    specs = [random_spec(s, p_bleed=0.6) for s in range(300)]
    assert all(20 <= s.n_slices <= 60 for s in specs)
    assert len({s.patient_id for s in specs}) == 300
    positive = [s for s in specs if s.bleeds]
    assert 0.45 < len(positive) / len(specs) < 0.75
    assert {b for s in positive for b in s.bleeds} == set(SUBTYPES)
    assert not any(random_spec(s, p_bleed=0.0).bleeds for s in range(20))
    assert all(random_spec(s, p_bleed=1.0).bleeds for s in range(20))


def test_spec_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown bleed"):
        PhantomSpec(bleeds=("chronic",))
    with pytest.raises(ValueError, match="head"):
        PhantomSpec(body_part="CHEST", bleeds=("epidural",))
    with pytest.raises(ValueError, match="n_slices"):
        PhantomSpec(n_slices=0)


def test_files_read_back_as_the_volume(study: WrittenStudy) -> None:
    main = study.main
    assert main.kind == "axial"
    assert len(main.files) == len(main.sop_uids) == 12
    z_prev = -np.inf
    for i, path in enumerate(main.files):
        ds = pydicom.dcmread(path)
        np.testing.assert_array_equal(_hu(path), study.volume.hu[i])
        assert ds.SOPInstanceUID == main.sop_uids[i]
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.SeriesInstanceUID == main.series_uid
        assert int(ds.InstanceNumber) == i + 1
        z = float(ds.ImagePositionPatient[2])
        assert z == pytest.approx(study.volume.z_positions[i])
        assert z > z_prev
        z_prev = z
    ds = pydicom.dcmread(main.files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.Modality == "CT"
    assert ds.BodyPartExamined == "HEAD"
    assert ds.PatientName == "PHANTOM^HEAD"
    assert ds.PatientID == study.patient_id == "PH0001"
    assert ds.Manufacturer == "ICH-PHANTOM"
    assert ds.ConvolutionKernel == "H30s"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(ds.SliceThickness) == 5.0
    assert float(ds.PixelSpacing[0]) == pytest.approx(240.0 / 512)
    assert ds.PixelRepresentation == 1
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_extra_series(study: WrittenStudy) -> None:
    kinds = [s.kind for s in study.series]
    assert sorted(kinds) == ["axial", "bone_thin", "localizer"]
    assert len({s.series_uid for s in study.series}) == 3
    bone = next(s for s in study.series if s.kind == "bone_thin")
    main = study.main
    assert len(bone.files) > len(main.files)
    assert bone.z_positions[0] == pytest.approx(main.z_positions[0])
    assert bone.z_positions[-1] == pytest.approx(main.z_positions[-1])
    assert bone.slice_labels is not None
    assert main.slice_labels is not None
    np.testing.assert_array_equal(bone.slice_labels.max(axis=0), main.slice_labels.max(axis=0))
    b = pydicom.dcmread(bone.files[len(bone.files) // 2], stop_before_pixels=True)
    m = pydicom.dcmread(main.files[0], stop_before_pixels=True)
    assert b.ConvolutionKernel == "H70h"
    assert float(b.SliceThickness) == 2.5
    assert b.FrameOfReferenceUID == m.FrameOfReferenceUID
    assert b.StudyInstanceUID == m.StudyInstanceUID

    loc = next(s for s in study.series if s.kind == "localizer")
    assert len(loc.files) == 1
    ds = pydicom.dcmread(loc.files[0])
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert ds.pixel_array.shape[1] == 512


def test_tree_layout_puts_each_series_in_its_folder(study: WrittenStudy) -> None:
    for s in study.series:
        assert len({f.parent for f in s.files}) == 1
        assert [f.name for f in s.files] == sorted(f.name for f in s.files)
    assert len({s.files[0].parent for s in study.series}) == 3


@pytest.mark.parametrize(
    "kind",
    ["axial", "bone_thin", "localizer"],
)
def test_dciodvfy_finds_no_error(kind: str, study: WrittenStudy) -> None:
    series = next(s for s in study.series if s.kind == kind)
    assert _errors(series.files[len(series.files) // 2]) == []


@pytest.mark.parametrize("transfer_syntax", supported_transfer_syntaxes())
def test_transfer_syntaxes_are_lossless_and_valid(transfer_syntax: str, tmp_path: Path) -> None:
    spec = PhantomSpec(seed=4, n_slices=3, size=256, bleeds=("epidural",))
    ref = write_study(tmp_path / "ref", spec)
    out = write_study(tmp_path / "ts", spec, transfer_syntax=transfer_syntax)
    assert out.main.sop_uids == ref.main.sop_uids  # re-encoding keeps the instance
    for i, path in enumerate(out.main.files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        np.testing.assert_array_equal(_hu(path), out.volume.hu[i])
    assert _errors(out.main.files[1]) == []


def test_required_syntaxes_are_offered() -> None:
    offered = set(supported_transfer_syntaxes())
    assert {ExplicitVRLittleEndian, "1.2.840.10008.1.2", RLELossless} <= offered


def test_unsigned_storage_round_trips(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=9, n_slices=2, size=128)
    out = write_study(tmp_path, spec, signed=False, transfer_syntax=RLELossless)
    ds = pydicom.dcmread(out.main.files[0])
    assert (ds.PixelRepresentation, ds.BitsStored, ds.HighBit) == (0, 12, 11)
    np.testing.assert_array_equal(_hu(out.main.files[0]), out.volume.hu[0])
    assert _errors(out.main.files[0]) == []


def test_unsupported_transfer_syntax_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transfer syntax"):
        write_study(tmp_path, PhantomSpec(n_slices=1, size=64), transfer_syntax=JPEGBaseline8Bit)


def test_uids_are_reproducible(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=21, n_slices=2, size=64)
    a = write_study(tmp_path / "a", spec, extra_series=("localizer",))
    b = write_study(tmp_path / "b", spec, extra_series=("localizer",))
    assert a.study_uid == b.study_uid
    assert [s.series_uid for s in a.series] == [s.series_uid for s in b.series]
    assert a.main.sop_uids == b.main.sop_uids
    uids = [a.study_uid, *(s.series_uid for s in a.series), *a.main.sop_uids]
    assert len(set(uids)) == len(uids)
    assert all(pydicom.uid.UID(u).is_valid for u in uids)

    other = write_study(tmp_path / "c", PhantomSpec(seed=22, n_slices=2, size=64))
    assert other.study_uid != a.study_uid
    assert not set(other.main.sop_uids) & set(a.main.sop_uids)

    given = write_study(tmp_path / "d", spec, study_uid="1.2.3.4.5")
    assert given.study_uid == "1.2.3.4.5"
    assert pydicom.dcmread(given.main.files[0]).StudyInstanceUID == "1.2.3.4.5"
    assert not set(given.main.sop_uids) & set(a.main.sop_uids)


def test_shuffled_names_in_a_flat_folder(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=8, n_slices=16, size=64)
    out = write_study(
        tmp_path, spec, shuffle_names=True, layout="flat", extra_series=("localizer",)
    )
    files = out.main.files
    assert all(f.parent == tmp_path for f in out.files)
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}\.dcm", f.name) for f in out.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in out.files)
    assert [f.name for f in files] != sorted(f.name for f in files)  # names carry no order
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z)  # but the list is still in anatomical order


def test_ordered_names_in_a_flat_folder_do_not_collide(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=8, n_slices=3, size=64)
    out = write_study(tmp_path, spec, layout="flat", extra_series=("localizer", "bone_thin"))
    names = [f.name for f in out.files]
    assert len(names) == len(set(names)) == len(list(tmp_path.iterdir()))


def test_non_head_study(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=1, n_slices=2, size=128, body_part="CHEST")
    out = write_study(tmp_path, spec)
    ds = pydicom.dcmread(out.main.files[0])
    assert ds.BodyPartExamined == "CHEST"
    assert not out.volume.slice_labels.any()
    assert float(ds.PixelSpacing[0]) > 240.0 / 128  # a torso needs a wider field of view
    assert _errors(out.main.files[0]) == []


def test_dcmtk_reads_every_series(study: WrittenStudy) -> None:
    """A second, independent parser (dcmtk) accepts the files too."""
    if shutil.which("dcmftest") is None:  # pragma: no cover - dcmtk is a test dependency
        pytest.skip("dcmtk not installed")
    paths = [str(s.files[0]) for s in study.series]
    proc = subprocess.run(["dcmftest", *paths], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
