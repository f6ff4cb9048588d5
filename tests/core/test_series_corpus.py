"""Series choice on the corpus of real-world header patterns (tests/core/series_corpus.py).

Every entry is written to disk as a study of its own and read back through
``scan_headers``; every corpus study is written with fresh UIDs. The decisions and
reasons expected are in the corpus, next to the header they are about.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from core.series_corpus import BY_NAME, ENTRIES, STUDIES, Entry, Study, write_entry
from pydicom.uid import generate_uid

from models.dicom_io import iter_dicom_files, scan_headers
from models.series_choice import SeriesChoice, choose_series, group_by_study


def _choose(folder: Path) -> dict[str, SeriesChoice]:
    studies = group_by_study(scan_headers(iter_dicom_files(folder)).headers)
    return {uid: choose_series(headers) for uid, headers in studies.items()}


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, SeriesChoice]]:
    """Entry name -> (its series UID, the choice on the study that holds only it)."""
    root = tmp_path_factory.mktemp("corpus")
    uids = {}
    for entry in ENTRIES:
        study_uid = generate_uid()
        uids[entry.name] = (study_uid, write_entry(root / entry.name, entry, study_uid))
    choices = _choose(root)
    return {name: (series, choices[study]) for name, (study, series) in uids.items()}


def test_the_corpus_is_large_and_covers_every_vendor() -> None:
    assert len(ENTRIES) >= 60
    assert len(BY_NAME) == len(ENTRIES)
    vendors = {e.vendor for e in ENTRIES}
    assert {"GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA", "CANON_MEC", "UIH"} <= vendors
    assert sum(e.chosen for e in ENTRIES) >= 20
    assert sum(not e.chosen for e in ENTRIES) >= 20


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_alone(entry: Entry, alone: dict[str, tuple[str, SeriesChoice]]) -> None:
    series_uid, choice = alone[entry.name]
    summary = choice.summary_of(series_uid)
    assert summary is not None
    if entry.chosen:
        assert choice.reason is None, choice.skipped
        assert choice.chosen is not None
        assert choice.chosen.series_uid == series_uid
        assert summary.reason is None
        if entry.bone is not None:
            assert choice.chosen.bone_kernel is entry.bone
    else:
        assert not choice.eligible
        reason = choice.skipped[series_uid]
        assert summary.reason == reason
        for word in entry.why:
            assert word in reason, f"{word!r} not in {reason!r}"


@pytest.mark.parametrize(
    "name",
    [
        "ge_head_without_contrast",
        "cq_pre_contrast",
        "cq_pre_contrast_thin",
        "can_aidr3d_word",
        "can_3d_word_original",
        "can_aidr",
    ],
)
def test_former_failures_are_chosen(name: str, alone: dict[str, tuple[str, SeriesChoice]]) -> None:
    """The issue's cases: negated contrast wording and "3D" beside ORIGINAL\\PRIMARY\\AXIAL."""
    series_uid, choice = alone[name]
    assert choice.chosen is not None
    assert choice.chosen.series_uid == series_uid


@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s.name)
def test_whole_study(study: Study, tmp_path: Path) -> None:
    study_uid = generate_uid()
    uids = {name: write_entry(tmp_path, BY_NAME[name], study_uid) for name in study.series}
    (choice,) = _choose(tmp_path).values()
    assert {s.series_uid for s in choice.series} == set(uids.values())
    if study.chosen is None:
        assert choice.chosen is None
        assert choice.reason == "no eligible axial CT series"
    else:
        assert choice.chosen is not None
        assert choice.chosen.series_uid == uids[study.chosen], choice.skipped
        chosen = choice.summary_of(uids[study.chosen])
        assert chosen is not None
        assert chosen.reason is None
    for name, uid in uids.items():
        if name == study.chosen:
            continue
        entry, reason = BY_NAME[name], choice.skipped[uid]
        if entry.chosen:  # eligible alone: lost on the ranking
            assert reason.startswith("another series fits better"), reason
        else:
            for word in entry.why:
                assert word in reason, f"{name}: {word!r} not in {reason!r}"


def test_ranking_reasons_name_what_lost(tmp_path: Path) -> None:
    study_uid = generate_uid()
    names = ("sie_h30s", "sie_j45s_thin", "sie_h60s", "sie_derived_primary_axial")
    uids = {n: write_entry(tmp_path, BY_NAME[n], study_uid) for n in names}
    (choice,) = _choose(tmp_path).values()
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["sie_h30s"]
    assert choice.skipped[uids["sie_h60s"]] == (
        "another series fits better (bone kernel, spacing 2.0 mm)"
    )
    assert choice.skipped[uids["sie_j45s_thin"]] == ("another series fits better (spacing 0.6 mm)")
    assert choice.skipped[uids["sie_derived_primary_axial"]] == (
        "another series fits better (not ORIGINAL\\PRIMARY, spacing 5.0 mm)"
    )
