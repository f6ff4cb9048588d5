"""Series choice on multi-series studies: the rule in models.series_choice's docstring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ctfactory import write_series
from pydicom.uid import generate_uid

from models.dicom_io import iter_dicom_files, scan_headers
from models.series_choice import choose_series, group_by_study, is_bone_kernel


def vol(n: int) -> np.ndarray:
    return np.zeros((n, 8, 8))


def choose(folder: Path):  # type: ignore[no-untyped-def]
    studies = group_by_study(scan_headers(iter_dicom_files(folder)).headers)
    assert len(studies) == 1
    return choose_series(next(iter(studies.values())))


@pytest.fixture
def study(tmp_path: Path) -> dict[str, str]:
    """A study like a real head CT export: six series, one of them the right one."""
    uid = generate_uid()
    series = {name: generate_uid() for name in ("soft5", "soft1", "bone5", "loc", "cor", "cplus")}
    write_series(tmp_path / "soft5", vol(24), study_uid=uid, series_uid=series["soft5"])
    write_series(
        tmp_path / "soft1",
        vol(40),
        study_uid=uid,
        series_uid=series["soft1"],
        spacing=1.0,
        thickness=1.0,
        description="HEAD 1mm",
    )
    write_series(
        tmp_path / "bone5",
        vol(24),
        study_uid=uid,
        series_uid=series["bone5"],
        kernel="H70h",
        description="HEAD BONE 5mm",
    )
    write_series(
        tmp_path / "loc",
        vol(1),
        study_uid=uid,
        series_uid=series["loc"],
        orientation=(1, 0, 0, 0, 0, -1),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        description="Topogram",
    )
    write_series(
        tmp_path / "cor",
        vol(30),
        study_uid=uid,
        series_uid=series["cor"],
        orientation=(1, 0, 0, 0, 0, -1),
        image_type=("DERIVED", "SECONDARY", "MPR"),
        description="COR 3mm",
    )
    write_series(
        tmp_path / "cplus",
        vol(24),
        study_uid=uid,
        series_uid=series["cplus"],
        description="HEAD C+ 5mm",
    )
    return series


def test_chooses_soft_tissue_5mm_axial(tmp_path: Path, study: dict[str, str]) -> None:
    choice = choose(tmp_path)
    assert choice.eligible
    assert choice.chosen is not None
    assert choice.chosen.series_uid == study["soft5"]
    assert len(choice.headers) == 24
    assert choice.reason is None
    skipped = choice.skipped
    assert set(skipped) == set(study.values()) - {study["soft5"]}
    assert "localizer" in skipped[study["loc"]]
    assert "derived" in skipped[study["cor"]]
    assert "contrast" in skipped[study["cplus"]]
    assert "bone kernel" in skipped[study["bone5"]]
    assert "spacing 1.0 mm" in skipped[study["soft1"]]


def test_thin_soft_beats_thick_bone(tmp_path: Path, study: dict[str, str]) -> None:
    import shutil

    shutil.rmtree(tmp_path / "soft5")
    choice = choose(tmp_path)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == study["soft1"]


def test_bone_only_study_uses_bone_series(tmp_path: Path) -> None:
    write_series(tmp_path, vol(20), kernel="BONEPLUS", description="HEAD")
    choice = choose(tmp_path)
    assert choice.chosen is not None
    assert choice.chosen.bone_kernel


def test_too_few_slices_not_eligible(tmp_path: Path) -> None:
    write_series(tmp_path, vol(9))
    choice = choose(tmp_path)
    assert not choice.eligible
    assert choice.reason == "no eligible axial CT series"
    assert "only 9 slices" in next(iter(choice.skipped.values()))


def test_non_head_body_part_not_eligible(tmp_path: Path) -> None:
    write_series(tmp_path, vol(20), body_part="CHEST", description="THORAX 5mm")
    choice = choose(tmp_path)
    assert not choice.eligible
    assert choice.reason is not None
    assert "CHEST is not head" in choice.reason


def test_non_head_by_description_when_body_part_missing(tmp_path: Path) -> None:
    write_series(tmp_path, vol(20), body_part="", description="ABDOMEN 5mm")
    choice = choose(tmp_path)
    assert not choice.eligible
    assert "body region" in (choice.reason or "")


def test_mr_study_not_eligible(tmp_path: Path) -> None:
    write_series(tmp_path, vol(20), modality="MR")
    choice = choose(tmp_path)
    assert not choice.eligible
    assert choice.reason == "no CT series (modality MR)"


def test_choice_is_deterministic(tmp_path: Path, study: dict[str, str]) -> None:
    headers = scan_headers(iter_dicom_files(tmp_path)).headers
    first = choose_series(headers)
    again = choose_series(list(reversed(headers)))
    assert first.chosen == again.chosen
    assert first.skipped == again.skipped


@pytest.mark.parametrize(
    ("kernel", "description", "bone"),
    [
        ("H30s", "", False),
        ("H70h", "", True),
        ("J40s", "", False),
        ("BONEPLUS", "", True),
        ("STANDARD", "", False),
        ("FC21", "", False),
        ("", "HEAD BONE", True),
        ("SOFT", "Brain", False),
    ],
)
def test_bone_kernel_classification(kernel: str, description: str, bone: bool) -> None:
    assert is_bone_kernel(kernel, description) is bone
