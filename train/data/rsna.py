"""Reader of the RSNA 2019 Intracranial Hemorrhage Detection data (Kaggle layout).

Layout (METHOD.md, "RSNA 2019 data")::

    <data>/stage_2_train.csv            ID,Label  rows ``ID_<9 hex>_<subtype>,<0|1>``
    <data>/stage_2_train/ID_<hex>.dcm   one flat folder, ~752k slices, ~25k studies
    <data>/stage_2_test/ID_<hex>.dcm    stage-2 test (the private leaderboard)
    <data>/stage_2_sample_submission.csv
    <data>/stage_1_train.csv            optional: the stage-1 list, for the reference split

The image id (``ID_000039fa0``) is the label row's ID before the last underscore and the
file's name without ``.dcm``. File names say nothing about studies or order, so every
file's header is read once: slices are grouped by StudyInstanceUID and ordered along the
slice normal (``models.dicom_io.order_slices``: inferior -> superior).

What the published data set needs handled, and how (each is counted, never silent):
duplicated CSV rows are dropped; unreadable DICOMs are skipped; images without labels are
left out of a labelled subset; slices at a position already seen are dropped; a study
whose slices cannot be ordered (mixed orientations) is skipped. Pixel decoding, and with
it the RSNA bit-depth quirk (``models.dicom_io.stored_to_hu``), happens in
:mod:`train.data.cache`.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from models.dicom_io import InstanceHeader, order_slices
from models.errors import SeriesError
from models.labels import LABELS, NUM_CLASSES
from train.data.errors import LayoutError
from train.data.scan import FileScan, scan_parallel

log = logging.getLogger(__name__)

Subset = Literal["train", "test"]

TRAIN_CSV = "stage_2_train.csv"
STAGE1_CSV = "stage_1_train.csv"
SAMPLE_SUBMISSION_CSV = "stage_2_sample_submission.csv"
#: Image folders in the order they are looked for: the Kaggle download, then the
#: older/renamed variants people use.
IMAGE_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("stage_2_train", "stage_2_train_images", "train"),
    "test": ("stage_2_test", "stage_2_test_images", "test"),
}
#: The label order of the Kaggle CSV, per image (differs from LABELS: ``any`` comes last).
KAGGLE_ORDER: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)


def split_row_id(row_id: str) -> tuple[str, str]:
    """``ID_000039fa0_subdural`` -> (``ID_000039fa0``, ``subdural``); ``LayoutError`` if not."""
    image_id, sep, subtype = row_id.strip().rpartition("_")
    if not sep or not image_id or subtype not in LABELS:
        raise LayoutError(f"not an RSNA label row id: {row_id[:40]!r}")
    return image_id, subtype


def read_labels(csv_path: Path) -> tuple[dict[str, NDArray[np.uint8]], int]:
    """Read ``stage_*_train.csv``: image id -> (6,) uint8 in ``LABELS`` order.

    Returns ``(labels, duplicates_dropped)`` where ``duplicates_dropped`` counts rows that
    repeat an (image, subtype) already read (the published CSV has such rows). A repeat
    with a different value keeps the positive one and is logged as a conflict; images
    with fewer than six rows keep 0 for the missing subtypes and are logged.
    """
    labels: dict[str, NDArray[np.uint8]] = {}
    seen: dict[str, int] = {}  # image id -> bit set of subtypes read
    duplicates = conflicts = 0
    try:
        handle = csv_path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise LayoutError(f"cannot open RSNA label file {csv_path}: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise LayoutError(f"{csv_path.name}: expected header 'ID,Label', got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise LayoutError(f"{csv_path.name}:{line_no}: expected 'ID,Label'")
            image_id, subtype = split_row_id(row[0])
            try:
                value = round(float(row[1]))
            except ValueError as exc:
                raise LayoutError(f"{csv_path.name}:{line_no}: label is not a number") from exc
            k = LABELS.index(subtype)
            vec = labels.get(image_id)
            if vec is None:
                vec = labels[image_id] = np.zeros(NUM_CLASSES, dtype=np.uint8)
            bits = seen.get(image_id, 0)
            if bits & (1 << k):
                duplicates += 1
                if int(vec[k]) != (value > 0):
                    conflicts += 1
                    vec[k] = max(int(vec[k]), int(value > 0))
                continue
            seen[image_id] = bits | (1 << k)
            vec[k] = 1 if value > 0 else 0
    incomplete = sum(1 for bits in seen.values() if bits != (1 << NUM_CLASSES) - 1)
    if duplicates:
        log.info("rsna.duplicate_rows_dropped", extra={"n": duplicates})
    if conflicts:
        log.warning("rsna.conflicting_duplicates", extra={"n": conflicts})
    if incomplete:
        log.warning("rsna.incomplete_label_rows", extra={"n": incomplete})
    return labels, duplicates


def read_image_list(csv_path: Path) -> list[str]:
    """Image ids of a label or submission CSV (``ID_<hex>_<subtype>`` rows), first-seen order.

    Used for ``stage_1_train.csv`` (which images were stage-1 train) and for
    ``stage_2_sample_submission.csv`` (which images a submission must score).
    """
    ids: dict[str, None] = {}
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if row:
                    ids.setdefault(split_row_id(row[0])[0], None)
    except OSError as exc:
        raise LayoutError(f"cannot open {csv_path}: {exc.strerror}") from exc
    return list(ids)


def find_image_dir(data_dir: Path, subset: Subset = "train") -> Path:
    """The folder of ``ID_*.dcm`` files of ``subset`` under ``data_dir`` (or ``data_dir``)."""
    for name in IMAGE_DIRS[subset]:
        candidate = data_dir / name
        if candidate.is_dir():
            return candidate
    if any(data_dir.glob("ID_*.dcm")):
        return data_dir
    raise LayoutError(
        f"no RSNA {subset} image folder under {data_dir} "
        f"(looked for {', '.join(IMAGE_DIRS[subset])}/ and ID_*.dcm)"
    )


def list_images(image_dir: Path) -> list[Path]:
    """``ID_*.dcm`` files of a flat RSNA folder, sorted by name (a stable order)."""
    return sorted(p for p in image_dir.iterdir() if p.suffix == ".dcm" and p.is_file())


@dataclass(frozen=True)
class RsnaStudy:
    """One study: its slices in anatomical order (inferior -> superior) with their labels.

    ``slice_labels`` is (Z, 6) uint8 in ``LABELS`` order (zeros when unlabelled, e.g. the
    stage-2 test set); ``patient`` is the salted hash of PatientID (split groups).
    """

    study_uid: str
    patient: str
    image_ids: tuple[str, ...]
    paths: tuple[Path, ...]
    slice_labels: NDArray[np.uint8]
    has_labels: bool

    @property
    def n_slices(self) -> int:
        return len(self.image_ids)

    @property
    def study_labels(self) -> NDArray[np.uint8]:
        """(6,) a finding is present in the study when any slice carries it."""
        if not self.image_ids:
            return np.zeros(NUM_CLASSES, dtype=np.uint8)
        return np.asarray(self.slice_labels.max(axis=0), dtype=np.uint8)


@dataclass
class RsnaIndex:
    """What :func:`index_studies` found: studies plus counts of everything left out."""

    image_dir: Path
    studies: list[RsnaStudy] = field(default_factory=list)
    files: int = 0
    unreadable: int = 0
    unlabelled_files: int = 0
    labels_without_file: int = 0
    duplicate_positions: int = 0
    bad_studies: dict[str, str] = field(default_factory=dict)  # study key -> reason
    duplicates_dropped: int = 0  # CSV rows, filled by :func:`load`

    @property
    def n_slices(self) -> int:
        return sum(s.n_slices for s in self.studies)

    def summary(self, window: int = 10) -> dict[str, Any]:
        """Counts for ``python -m train inspect`` (JSON-compatible, no identifiers)."""
        slice_pos = np.zeros(NUM_CLASSES, dtype=np.int64)
        study_pos = np.zeros(NUM_CLASSES, dtype=np.int64)
        for s in self.studies:
            if s.n_slices:
                slice_pos += s.slice_labels.sum(axis=0, dtype=np.int64)
                study_pos += s.study_labels
        lengths = [s.n_slices for s in self.studies]
        return {
            "layout": "rsna",
            "image_dir": str(self.image_dir),
            "files": self.files,
            "studies": len(self.studies),
            "slices": self.n_slices,
            "patients": len({s.patient for s in self.studies}),
            "slices_per_study": {
                "min": min(lengths, default=0),
                "median": float(np.median(lengths)) if lengths else 0.0,
                "max": max(lengths, default=0),
            },
            f"studies_shorter_than_{window}": sum(1 for n in lengths if n < window),
            "positive_slices": dict(zip(LABELS, slice_pos.tolist(), strict=True)),
            "positive_studies": dict(zip(LABELS, study_pos.tolist(), strict=True)),
            "duplicates_dropped": self.duplicates_dropped,
            "unreadable_skipped": self.unreadable,
            "unlabelled_files_skipped": self.unlabelled_files,
            "labels_without_file": self.labels_without_file,
            "duplicate_positions_dropped": self.duplicate_positions,
            "studies_skipped": len(self.bad_studies),
            "studies_skipped_reasons": _reason_counts(self.bad_studies),
        }


def _reason_counts(reasons: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for why in reasons.values():
        counts[why] += 1
    return dict(counts)


def index_studies(
    image_dir: Path,
    labels: Mapping[str, NDArray[np.uint8]] | None,
    *,
    workers: int = 1,
    progress: bool = False,
) -> RsnaIndex:
    """Read every header under ``image_dir``, group by study, order slices, attach labels.

    ``labels`` maps image id -> (6,) (from :func:`read_labels`); ``None`` indexes an
    unlabelled folder (stage-2 test) and keeps every readable file. With labels, files
    without a label row are left out (counted in ``unlabelled_files``). Studies come out
    sorted by StudyInstanceUID so that every run sees the same order.
    """
    paths = list_images(image_dir)
    scan: FileScan = scan_parallel(paths, workers=workers, progress=progress, desc="rsna headers")
    index = RsnaIndex(image_dir=image_dir, files=len(paths), unreadable=len(scan.unreadable))
    by_study: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(scan.headers):
        if labels is not None and h.path.stem not in labels:
            index.unlabelled_files += 1
            continue
        by_study[h.study_uid].append(i)
    if labels is not None:
        on_disk = {p.stem for p in paths}
        index.labels_without_file = sum(1 for k in labels if k not in on_disk)
    for study_uid in sorted(by_study):
        members = by_study[study_uid]
        headers: list[InstanceHeader] = [scan.headers[i] for i in members]
        try:
            ordered = order_slices(headers)
        except SeriesError as exc:
            index.bad_studies[study_uid] = str(exc)
            continue
        index.duplicate_positions += ordered.duplicates_dropped
        ids = tuple(h.path.stem for h in ordered.headers)
        if labels is not None:
            slice_labels = np.stack([labels[i] for i in ids]).astype(np.uint8)
        else:
            slice_labels = np.zeros((len(ids), NUM_CLASSES), dtype=np.uint8)
        index.studies.append(
            RsnaStudy(
                study_uid=study_uid,
                patient=scan.patients[members[0]],
                image_ids=ids,
                paths=tuple(h.path for h in ordered.headers),
                slice_labels=slice_labels,
                has_labels=labels is not None,
            )
        )
    if index.bad_studies:
        log.warning("rsna.studies_skipped", extra={"n": len(index.bad_studies)})
    if index.unlabelled_files:
        log.info("rsna.unlabelled_files", extra={"n": index.unlabelled_files})
    log.info(
        "rsna.indexed",
        extra={"studies": len(index.studies), "slices": index.n_slices, "files": index.files},
    )
    return index


def load(
    data_dir: Path, subset: Subset = "train", *, workers: int = 1, progress: bool = False
) -> RsnaIndex:
    """Index ``subset`` of an RSNA download: labels from ``stage_2_train.csv`` for train."""
    image_dir = find_image_dir(data_dir, subset)
    if subset == "train":
        csv_path = data_dir / TRAIN_CSV
        if not csv_path.is_file():
            raise LayoutError(f"{TRAIN_CSV} not found in {data_dir}")
        labels, duplicates = read_labels(csv_path)
        index = index_studies(image_dir, labels, workers=workers, progress=progress)
        index.duplicates_dropped = duplicates
        return index
    return index_studies(image_dir, None, workers=workers, progress=progress)


def stage1_image_ids(data_dir: Path) -> set[str] | None:
    """Image ids of stage-1 train when ``stage_1_train.csv`` is present, else ``None``."""
    path = data_dir / STAGE1_CSV
    return set(read_image_list(path)) if path.is_file() else None


def write_submission_rows(image_ids: Sequence[str], probs: NDArray[np.floating]) -> list[str]:
    """Kaggle submission lines ``ID_<hex>_<subtype>,<p>`` for (N, 6) probabilities.

    Rows follow the sample submission's per-image order (:data:`KAGGLE_ORDER`).
    """
    if probs.shape != (len(image_ids), NUM_CLASSES):
        raise ValueError(f"probs shape {probs.shape} != ({len(image_ids)}, {NUM_CLASSES})")
    lines = []
    for image_id, row in zip(image_ids, probs, strict=True):
        for name in KAGGLE_ORDER:
            lines.append(f"{image_id}_{name},{float(row[LABELS.index(name)]):.6f}")
    return lines
