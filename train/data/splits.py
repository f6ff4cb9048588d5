"""Study-level train/validation splits that never let a patient cross folds.

Two schemes (METHOD.md, "RSNA 2019 data"):

* ``stage1``, the reference split: train on the stage-1 train images, validate on stage-1
  test (whose labels are in ``stage_2_train.csv``). Used when ``stage_1_train.csv`` (the
  stage-1 label list, not part of the stage-2 download) is present. A study goes to train
  when most of its images are in that list. The published split is kept as it is; if a
  patient has studies on both sides it is counted (``patients_crossing``), not fixed.
* ``kfold``: K folds (5 by default) stratified on "the study has an ``any``-positive
  slice", grouped by patient (the hashed PatientID), so that no patient's studies are in
  two folds: a patient's second scan in validation would flatter the model.

A split is a pair of study-key lists; it is saved as JSON beside a run so that an
evaluation can be repeated on exactly the same validation studies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from train.data import rsna
from train.data.cache import CachedStudy, PreparedCache
from train.data.errors import DataError

Scheme = Literal["auto", "stage1", "kfold"]


@dataclass(frozen=True)
class Split:
    """Study keys for training and validation, and how they were chosen."""

    scheme: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    fold: int | None = None
    n_folds: int | None = None
    seed: int | None = None
    patients_crossing: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["train"], data["val"] = list(self.train), list(self.val)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(
            scheme=str(data["scheme"]),
            train=tuple(data["train"]),
            val=tuple(data["val"]),
            fold=data.get("fold"),
            n_folds=data.get("n_folds"),
            seed=data.get("seed"),
            patients_crossing=int(data.get("patients_crossing", 0)),
            notes=dict(data.get("notes", {})),
        )


def write_split(split: Split, path: Path) -> None:
    """Save ``split`` as JSON (keys only: no patient data)."""
    path.write_text(json.dumps(split.to_json(), indent=1) + "\n")


def read_split(path: Path) -> Split:
    try:
        return Split.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc


def _crossing(studies: Sequence[CachedStudy], train: Iterable[str]) -> int:
    """Patients with studies on both sides of a split."""
    in_train = set(train)
    sides: dict[str, set[bool]] = {}
    for s in studies:
        sides.setdefault(s.patient, set()).add(s.key in in_train)
    return sum(1 for v in sides.values() if len(v) == 2)


def assign_folds(studies: Sequence[CachedStudy], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Study key -> fold in ``0..n_folds-1``: stratified on ``any``, grouped by patient.

    Deterministic for a given ``seed`` and set of studies (order does not matter: studies
    are sorted by key first). Fewer patients than folds is an error: some fold would be
    empty.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    ordered = sorted(studies, key=lambda s: s.key)
    patients = {p: i for i, p in enumerate(sorted({s.patient for s in ordered}))}
    if len(patients) < n_folds:
        raise DataError(f"{len(patients)} patients cannot fill {n_folds} folds")
    y = np.array([int(s.study_labels[0]) for s in ordered])
    groups = np.array([patients[s.patient] for s in ordered])
    # Stratification needs each class in at least n_folds groups; with fewer (tiny or
    # all-negative sets) it falls back to plain grouping, which sklearn does silently
    # only with a warning, so do it explicitly.
    positives = len({g for g, v in zip(groups, y, strict=True) if v})
    negatives = len({g for g, v in zip(groups, y, strict=True) if not v})
    if min(positives, negatives) < n_folds:
        y = np.zeros_like(y)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(ordered)), y, groups)):
        for i in val_idx:
            folds[ordered[int(i)].key] = k
    return folds


def kfold_split(
    studies: Sequence[CachedStudy], fold: int = 0, n_folds: int = 5, seed: int = 0
) -> Split:
    """Train on all folds but ``fold``, validate on ``fold`` (see :func:`assign_folds`)."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    folds = assign_folds(studies, n_folds, seed)
    keys = sorted(folds)
    train = tuple(k for k in keys if folds[k] != fold)
    val = tuple(k for k in keys if folds[k] == fold)
    by_key = {s.key: s for s in studies}
    return Split(
        scheme="kfold",
        train=train,
        val=val,
        fold=fold,
        n_folds=n_folds,
        seed=seed,
        patients_crossing=_crossing(studies, train),
        notes={
            "val_any_positive": int(sum(int(by_key[k].study_labels[0]) for k in val)),
            "train_any_positive": int(sum(int(by_key[k].study_labels[0]) for k in train)),
        },
    )


def stage1_split(cache: PreparedCache, stage1_images: set[str]) -> Split:
    """The reference split: a study is train when most of its images are stage-1 train."""
    train: list[str] = []
    val: list[str] = []
    for s in sorted(cache.studies, key=lambda s: s.key):
        ids = cache.image_ids(s.key)
        inside = sum(1 for i in ids if i in stage1_images)
        (train if 2 * inside > len(ids) else val).append(s.key)
    if not train or not val:
        raise DataError(
            f"stage-1 list leaves {len(train)} train and {len(val)} validation studies; "
            "is it the stage_1_train.csv of this data set?"
        )
    return Split(
        scheme="stage1",
        train=tuple(train),
        val=tuple(val),
        patients_crossing=_crossing(cache.studies, train),
    )


def make_split(
    cache: PreparedCache,
    scheme: Scheme = "auto",
    *,
    data_dir: Path | None = None,
    fold: int = 0,
    n_folds: int = 5,
    seed: int = 0,
) -> Split:
    """The split a training run uses.

    ``auto`` is ``stage1`` when ``data_dir/stage_1_train.csv`` exists (``data_dir``
    defaults to the folder the cache was prepared from), else ``kfold``.
    """
    if scheme not in ("auto", "stage1", "kfold"):
        raise ValueError(f"scheme must be auto, stage1 or kfold, got {scheme!r}")
    if scheme != "kfold":
        root = data_dir if data_dir is not None else Path(cache.manifest["data_dir"])
        stage1 = rsna.stage1_image_ids(root) if cache.source == "rsna" else None
        if stage1 is not None:
            return stage1_split(cache, stage1)
        if scheme == "stage1":
            raise DataError(f"scheme stage1 needs {rsna.STAGE1_CSV} in {root}")
    return kfold_split(cache.studies, fold=fold, n_folds=n_folds, seed=seed)


def fold_split(
    studies: Sequence[CachedStudy], n_folds: int = 5, fold: int = 0, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train_keys, val_keys)`` of :func:`kfold_split`, for callers that need only keys."""
    split = kfold_split(studies, fold=fold, n_folds=n_folds, seed=seed)
    return list(split.train), list(split.val)
