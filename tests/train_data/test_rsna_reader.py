"""The RSNA reader against phantom trees in the Kaggle layout, and hand-made CSVs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from models.dicom_io import read_series, scan_headers
from models.labels import LABELS
from train.data import rsna
from train.data.errors import LayoutError
from train.data.phantoms import PhantomSpec, write_study
from train.data.synth import write_quirk_file

Tree = tuple[Path, dict[str, Any]]


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("ID,Label\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_read_labels_drops_and_counts_duplicate_rows(tmp_path: Path) -> None:
    rows = [
        "ID_000039fa0_epidural,0",
        "ID_000039fa0_intraparenchymal,0",
        "ID_000039fa0_intraventricular,0",
        "ID_000039fa0_subarachnoid,0",
        "ID_000039fa0_subdural,1",
        "ID_000039fa0_any,1",
        "ID_00005679d_any,0",
        "ID_000039fa0_subdural,1",  # duplicate
        "ID_000039fa0_any,1",  # duplicate
    ]
    labels, duplicates = rsna.read_labels(_csv(tmp_path / "l.csv", rows))
    assert duplicates == 2
    assert labels["ID_000039fa0"].tolist() == [1, 0, 0, 0, 0, 1]  # LABELS order
    assert labels["ID_000039fa0"].dtype == np.uint8
    assert labels["ID_00005679d"].tolist() == [0] * 6


def test_read_labels_conflicting_duplicate_keeps_positive(tmp_path: Path) -> None:
    labels, duplicates = rsna.read_labels(
        _csv(tmp_path / "l.csv", ["ID_0a_subdural,0", "ID_0a_subdural,1"])
    )
    assert duplicates == 1
    assert labels["ID_0a"][LABELS.index("subdural")] == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("Image,Value\nID_0a_any,1\n", "header"),
        ("ID,Label\nID_0a_bleed,1\n", "not an RSNA label row"),
        ("ID,Label\nID_0a_any,yes\n", "not a number"),
    ],
)
def test_read_labels_rejects_malformed_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LayoutError, match=match):
        rsna.read_labels(path)


def test_index_groups_studies_and_recovers_slice_order(rsna_tree: Tree) -> None:
    root, truth = rsna_tree
    index = rsna.load(root)
    header_cut = {u["image_id"] for u in truth["unreadable"] if u["where"] == "header"}
    assert index.unreadable == len(header_cut) == 1
    assert index.duplicates_dropped == truth["duplicate_rows"] == 18
    assert index.files == sum(e["n_slices"] for e in truth["train"])
    by_uid = {s.study_uid: s for s in index.studies}
    assert set(by_uid) == {e["study_uid"] for e in truth["train"]}
    for expected in truth["train"]:
        study = by_uid[expected["study_uid"]]
        keep = [i for i, k in enumerate(expected["image_ids"]) if k not in header_cut]
        # File names are hashes, so this order can only come from the headers.
        assert list(study.image_ids) == [expected["image_ids"][i] for i in keep]
        want = np.asarray(expected["slice_labels"], dtype=np.uint8)[keep]
        assert np.array_equal(study.slice_labels, want)
        assert study.has_labels


def test_short_study_is_indexed_whole(rsna_tree: Tree) -> None:
    root, truth = rsna_tree
    short = [e for e in truth["train"] if e["short"]]
    assert len(short) == 1
    assert short[0]["n_slices"] == 6
    index = rsna.load(root)
    study = next(s for s in index.studies if s.study_uid == short[0]["study_uid"])
    assert study.n_slices == 6
    assert index.summary(window=10)["studies_shorter_than_10"] == 1


def test_patients_are_hashed_and_grouped(rsna_tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    root, truth = rsna_tree
    with caplog.at_level(logging.DEBUG):
        index = rsna.load(root)
    patient = {s.study_uid: s.patient for s in index.studies}
    first, second = truth["train"][1], truth["train"][2]
    assert first["patient_id"] == second["patient_id"]  # the synth reuses study 1's patient
    assert patient[first["study_uid"]] == patient[second["study_uid"]]
    raw_ids = {e["patient_id"] for e in truth["train"]}
    assert not raw_ids & set(patient.values())
    for raw in raw_ids:
        assert raw not in caplog.text
        assert raw not in repr(index.summary())


def test_test_subset_and_sample_submission(rsna_tree: Tree) -> None:
    root, truth = rsna_tree
    index = rsna.load(root, "test")
    assert {s.study_uid for s in index.studies} == {e["study_uid"] for e in truth["test"]}
    assert all(not s.has_labels and not s.slice_labels.any() for s in index.studies)
    listed = rsna.read_image_list(root / rsna.SAMPLE_SUBMISSION_CSV)
    assert set(listed) == {i for s in index.studies for i in s.image_ids}


def test_missing_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no RSNA train image folder"):
        rsna.load(tmp_path)


def test_submission_rows_in_kaggle_order() -> None:
    probs = np.array([[0.9, 0.1, 0.2, 0.3, 0.4, 0.5]])
    rows = rsna.write_submission_rows(["ID_0a"], probs)
    assert rows[0] == "ID_0a_epidural,0.100000"
    assert rows[-1] == "ID_0a_any,0.900000"


def test_quirk_file_is_corrected_to_true_hu(tmp_path: Path) -> None:
    """Unsigned 12-bit, intercept 0, negatives as two's complement: HU come back exact."""
    spec = PhantomSpec(seed=11, n_slices=3, size=32, bleeds=("subdural",))
    study = write_study(tmp_path, spec, layout="flat", shuffle_names=True)
    for path, hu in zip(study.main.files, study.volume.hu, strict=True):
        write_quirk_file(path, hu)
    naive = pydicom.dcmread(study.main.files[0])
    assert naive.PixelRepresentation == 0
    assert float(naive.RescaleIntercept) == 0.0
    assert naive.pixel_array.max() > 3000  # air read naively: bone-bright
    series = read_series(scan_headers(study.main.files).headers)
    assert series.quirk_corrected == 3
    expected = np.clip(study.volume.hu.astype(np.float32), -1000, 3071)
    assert np.array_equal(series.hu, expected)
    assert series.hu.min() < -900  # air, not the +3000 a naive read gives
