"""Study-level splits: stratified, patient-grouped k-fold and the stage-1 reference split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from train.data.cache import CachedStudy, PreparedCache
from train.data.errors import DataError
from train.data.splits import (
    assign_folds,
    fold_split,
    kfold_split,
    make_split,
    read_split,
    stage1_split,
    write_split,
)

Tree = tuple[Path, dict[str, Any]]


def _studies(n: int = 80, seed: int = 0) -> list[CachedStudy]:
    """``n`` studies of ~n/2 patients (some with 2-3 studies), ~30% positive."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = np.zeros(6, dtype=np.uint8)
        if rng.random() < 0.3:
            labels[[0, 1 + int(rng.integers(5))]] = 1
        out.append(CachedStudy(f"study-{i:03d}", 30, labels, True, f"p{int(rng.integers(n // 2))}"))
    return out


def test_every_study_in_one_fold_and_no_patient_in_two() -> None:
    studies = _studies()
    folds = assign_folds(studies, n_folds=5, seed=1)
    assert set(folds) == {s.key for s in studies}
    assert set(folds.values()) == set(range(5))
    fold_of_patient: dict[str, set[int]] = {}
    for s in studies:
        fold_of_patient.setdefault(s.patient, set()).add(folds[s.key])
    assert all(len(f) == 1 for f in fold_of_patient.values())


def test_folds_are_stratified_on_any() -> None:
    studies = _studies(200, seed=2)
    folds = assign_folds(studies, n_folds=5, seed=0)
    positives = [
        sum(int(s.study_labels[0]) for s in studies if folds[s.key] == k) for k in range(5)
    ]
    sizes = [sum(1 for s in studies if folds[s.key] == k) for k in range(5)]
    rates = np.array(positives) / np.array(sizes)
    overall = sum(positives) / len(studies)
    assert np.all(np.abs(rates - overall) < 0.08), (rates, overall)


def test_kfold_is_deterministic_and_order_free() -> None:
    studies = _studies()
    a = kfold_split(studies, fold=2, n_folds=5, seed=7)
    b = kfold_split(list(reversed(studies)), fold=2, n_folds=5, seed=7)
    assert a == b
    assert a.patients_crossing == 0
    assert not set(a.train) & set(a.val)
    assert fold_split(studies, n_folds=5, fold=2, seed=7) == (list(a.train), list(a.val))


def test_too_few_patients_is_an_error() -> None:
    studies = _studies(6)
    one_patient = [CachedStudy(s.key, 1, s.study_labels, True, "same") for s in studies]
    with pytest.raises(DataError, match="patients"):
        assign_folds(one_patient, n_folds=5)


def test_stage1_split_when_the_list_is_present(rsna_tree: Tree, rsna_cache: PreparedCache) -> None:
    _, truth = rsna_tree
    split = make_split(rsna_cache)  # auto: stage_1_train.csv is in the synthetic download
    assert split.scheme == "stage1"
    assert set(split.train) == set(truth["stage1_train_studies"])
    assert set(split.val) == {e["study_uid"] for e in truth["train"]} - set(split.train)


def test_kfold_when_asked_or_without_the_list(rsna_cache: PreparedCache, tmp_path: Path) -> None:
    split = make_split(rsna_cache, "kfold", n_folds=2, fold=1)
    assert split.scheme == "kfold"
    assert sorted(split.train + split.val) == sorted(rsna_cache.keys)
    with pytest.raises(DataError, match=r"stage_1_train\.csv"):
        make_split(rsna_cache, "stage1", data_dir=tmp_path)
    auto = make_split(rsna_cache, data_dir=tmp_path, n_folds=2)
    assert auto.scheme == "kfold"


def test_split_round_trips_through_json(tmp_path: Path) -> None:
    split = kfold_split(_studies(), fold=0)
    write_split(split, tmp_path / "split.json")
    assert read_split(tmp_path / "split.json") == split


def test_stage1_list_of_another_data_set_is_refused(rsna_cache: PreparedCache) -> None:
    with pytest.raises(DataError, match="stage-1 list"):
        stage1_split(rsna_cache, {"ID_nothing"})
