"""The CQ500 reader: 2-of-3 reader labels, archive layouts, and series choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.labels import LABELS
from train.data import cq500
from train.data.errors import LayoutError

Tree = tuple[Path, dict[str, Any]]
FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH")


def _reads_csv(path: Path, rows: dict[str, dict[str, tuple[int, int, int]]]) -> Path:
    """A reads.csv with the published columns; ``rows[name][finding]`` = marks of R1..R3."""
    header = ["name", "Category"] + [f"{r}:{c}" for r in cq500.READERS for c in cq500.READ_COLUMNS]
    lines = [",".join(header)]
    for name, marks in rows.items():
        cells = [name, "B1"]
        for r in range(3):
            cells += [str(marks.get(c, (0, 0, 0))[r]) for c in cq500.READ_COLUMNS]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_majority_is_two_of_three(tmp_path: Path) -> None:
    path = _reads_csv(
        tmp_path / "reads.csv",
        {
            "CQ500-CT-0": {"ICH": (1, 0, 0), "SDH": (1, 0, 0)},  # 1 of 3: negative
            "CQ500-CT-1": {"ICH": (1, 1, 0), "EDH": (0, 1, 1)},  # 2 of 3: positive
            "CQ500-CT-2": {"ICH": (1, 1, 1), "IPH": (1, 1, 1), "SAH": (1, 0, 1), "IVH": (0, 1, 0)},
        },
    )
    reads = cq500.read_reads(path)
    assert reads["CQ500-CT-0"].majority.tolist() == [0] * 6
    assert reads["CQ500-CT-1"].majority.tolist() == [1, 1, 0, 0, 0, 0]  # any, epidural
    third = dict(zip(LABELS, reads["CQ500-CT-2"].majority.tolist(), strict=True))
    assert third == {
        "any": 1,
        "epidural": 0,
        "intraparenchymal": 1,
        "intraventricular": 0,
        "subarachnoid": 1,
        "subdural": 0,
    }
    assert reads["CQ500-CT-0"].readers.shape == (3, 6)
    assert reads["CQ500-CT-0"].readers[0, LABELS.index("subdural")] == 1


def test_each_finding_maps_to_its_label(tmp_path: Path) -> None:
    for finding, label in cq500.FINDING_TO_LABEL.items():
        path = _reads_csv(tmp_path / f"{finding}.csv", {"CQ500-CT-7": {finding: (1, 1, 0)}})
        vec = cq500.read_reads(path)["CQ500-CT-7"].majority
        assert np.flatnonzero(vec).tolist() == [LABELS.index(label)]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("name,Category,R1:ICH\nCQ500-CT-0,B1,1\n", "missing columns"),
        (None, "not 0/1"),
    ],
)
def test_malformed_reads_are_rejected(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "reads.csv"
    if content is None:
        _reads_csv(path, {"CQ500-CT-0": {"ICH": (2, 0, 0)}})
    else:
        path.write_text(content)
    with pytest.raises(LayoutError, match=match):
        cq500.read_reads(path)


def test_finds_scans_with_and_without_the_outer_folder(cq500_tree: Tree) -> None:
    root, truth = cq500_tree
    assert (root / "CQ500-CT-0" / "CQ500CT0 CQ500CT0").is_dir()
    assert (root / "CQ500CT1 CQ500CT1").is_dir()  # archive unpacked without its folder
    index = cq500.find_studies(root)
    assert [s.name for s in index.studies] == [s["name"] for s in truth["scans"]]
    for study, expected in zip(index.studies, truth["scans"], strict=True):
        assert study.labels is not None
        assert study.labels.tolist() == expected["labels"]
        assert study.reads is not None
        assert study.reads.readers.tolist() == expected["readers"]


def test_series_choice_picks_the_soft_thick_series(cq500_tree: Tree) -> None:
    root, truth = cq500_tree
    index = cq500.find_studies(root)
    for study, expected in zip(index.studies, truth["scans"], strict=True):
        assert study.choice is not None
        assert study.choice.chosen is not None
        assert study.choice.chosen.series_uid == expected["thick_series_uid"]
        assert len(study.choice.headers) == expected["n_slices"]
        info = study.describe()
        assert info["chosen"]["description"] == "CT 5mm"
        assert not info["chosen"]["bone_kernel"]
        assert "bone kernel" in info["skipped"]["CT BONE"]
        assert "CT PLAIN THIN" in info["skipped"]
    assert index.studies[2].describe()["skipped"]["SCOUT"] == "localizer/scout"


def test_summary_counts_and_unpacked_archives(cq500_tree: Tree, tmp_path: Path) -> None:
    root, truth = cq500_tree
    summary = cq500.find_studies(root, workers=2).summary()
    assert summary["scans_found"] == summary["scans_evaluable"] == 3
    positives = np.sum([s["labels"] for s in truth["scans"]], axis=0).tolist()
    assert list(summary["positive_scans"].values()) == positives
    assert summary["reads_without_scan"] == []

    (tmp_path / "CQ500-CT-4.zip").write_bytes(b"PK")
    found, not_unpacked = cq500.find_scan_folders(tmp_path)
    assert found == {}
    assert not_unpacked == ["CQ500-CT-4"]


def test_empty_folder_is_a_layout_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no CQ500CT"):
        cq500.find_studies(tmp_path)
