"""Reader of the CQ500 head-CT data set (qure.ai), used as the external test set.

Layout (METHOD.md, "CQ500"): ``reads.csv`` holds one row per scan (``name`` such as
``CQ500-CT-427``, ``Category`` B1/B2) and, for each of three readers ``R1..R3``, 0/1
columns ``R<k>:ICH, IPH, IVH, SDH, EDH, SAH, BleedLocation-Left, BleedLocation-Right,
ChronicBleed, Fracture, CalvarialFracture, OtherFracture, MassEffect, MidlineShift``.
Each archive ``CQ500-CT-<n>.zip`` unpacks to::

    [CQ500-CT-<n>/]CQ500CT<n> CQ500CT<n>/Unknown Study/<series description>/CT*.dcm

(the outer folder exists only when the archive was unpacked into a folder of its own).
A scan holds several series: thin and thick, soft-tissue and bone kernels, sometimes a
contrast phase. The series classified is chosen by ``models.series_choice.choose_series``,
the same rule the node applies, and the reason every other series was not is kept.

Ground truth (Chilamkurthy et al., Lancet 2018, as used by the paper): a finding is
positive when at least 2 of the 3 readers marked it. Mapping to ``LABELS``: ICH -> any,
EDH -> epidural, IPH -> intraparenchymal, IVH -> intraventricular, SAH -> subarachnoid,
SDH -> subdural.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.dicom_io import iter_dicom_files
from models.errors import SeriesError
from models.labels import LABELS, NUM_CLASSES
from models.series_choice import SeriesChoice, choose_series
from train.data.errors import LayoutError
from train.data.scan import FileScan, parallel_map, patient_key, scan_files

log = logging.getLogger(__name__)

READS_CSV = "reads.csv"
READERS: tuple[str, ...] = ("R1", "R2", "R3")
#: CQ500 finding column -> our label (METHOD.md "Metrics").
FINDING_TO_LABEL: dict[str, str] = {
    "ICH": "any",
    "EDH": "epidural",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SAH": "subarachnoid",
    "SDH": "subdural",
}
#: Every per-reader column of the published ``reads.csv``, in its order.
READ_COLUMNS: tuple[str, ...] = (
    "ICH",
    "IPH",
    "IVH",
    "SDH",
    "EDH",
    "SAH",
    "BleedLocation-Left",
    "BleedLocation-Right",
    "ChronicBleed",
    "Fracture",
    "CalvarialFracture",
    "OtherFracture",
    "MassEffect",
    "MidlineShift",
)
#: Positive when at least this many of the three readers marked the finding.
MAJORITY = 2

_INNER = re.compile(r"^CQ500CT(\d+) CQ500CT\1$", re.IGNORECASE)
_OUTER = re.compile(r"^CQ500-CT-(\d+)$", re.IGNORECASE)
_ARCHIVE = re.compile(r"^CQ500-CT-(\d+)\.zip$", re.IGNORECASE)


def scan_name(number: int) -> str:
    """The ``reads.csv`` name of scan ``number``: ``CQ500-CT-<n>``."""
    return f"CQ500-CT-{number}"


@dataclass(frozen=True)
class Cq500Reads:
    """The three readers' marks for one scan, in ``LABELS`` order.

    ``readers`` is (3, 6) uint8 (row k = reader R<k+1>); ``majority`` is the ground truth.
    """

    name: str
    category: str
    readers: NDArray[np.uint8]

    @property
    def majority(self) -> NDArray[np.uint8]:
        """(6,) uint8: 1 where at least :data:`MAJORITY` of the readers marked the finding."""
        return np.asarray(self.readers.sum(axis=0) >= MAJORITY, dtype=np.uint8)


def _mark(value: str, where: str) -> int:
    text = value.strip()
    if text == "":
        raise LayoutError(f"{where}: empty reader mark")
    try:
        number = float(text)
    except ValueError as exc:
        raise LayoutError(f"{where}: reader mark {text[:10]!r} is not 0/1") from exc
    if number not in (0.0, 1.0):
        raise LayoutError(f"{where}: reader mark {text[:10]!r} is not 0/1")
    return int(number)


def read_reads(csv_path: Path) -> dict[str, Cq500Reads]:
    """Parse ``reads.csv``: scan name -> :class:`Cq500Reads` (per reader and majority).

    Needs ``name`` and ``R1..R3:{ICH,IPH,IVH,SDH,EDH,SAH}``; other columns are ignored.
    A repeated scan name is an error (the published file has none; a repeat would
    silently change the ground truth).
    """
    try:
        handle = csv_path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise LayoutError(f"cannot open CQ500 reads file {csv_path}: {exc.strerror}") from exc
    out: dict[str, Cq500Reads] = {}
    with handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in reader.fieldnames or []]
        reader.fieldnames = fields
        needed = ["name"] + [f"{r}:{f}" for r in READERS for f in FINDING_TO_LABEL]
        missing = [c for c in needed if c not in fields]
        if missing:
            raise LayoutError(f"{csv_path.name}: missing columns {missing}")
        for line_no, row in enumerate(reader, start=2):
            name = (row.get("name") or "").strip()
            if not name:
                continue
            if name in out:
                raise LayoutError(f"{csv_path.name}:{line_no}: scan {name} appears twice")
            marks = np.zeros((len(READERS), NUM_CLASSES), dtype=np.uint8)
            for r, reader_name in enumerate(READERS):
                for finding, label in FINDING_TO_LABEL.items():
                    col = f"{reader_name}:{finding}"
                    marks[r, LABELS.index(label)] = _mark(
                        row.get(col) or "", f"{csv_path.name}:{line_no}:{col}"
                    )
            out[name] = Cq500Reads(name, (row.get("Category") or "").strip(), marks)
    return out


@dataclass(frozen=True)
class Cq500Study:
    """One scan on disk: where it is, the series chosen to classify, and its labels.

    ``choice`` is ``None`` when the folder holds no readable DICOM at all; otherwise
    ``choice.chosen`` is ``None`` when no series is eligible (``choice.reason`` says why).
    ``reads`` is ``None`` when ``reads.csv`` has no row for the scan.
    """

    name: str
    folder: Path
    patient: str
    choice: SeriesChoice | None
    reads: Cq500Reads | None
    files: int
    unreadable: int
    series_descriptions: dict[str, str] = field(default_factory=dict)  # series UID -> name

    @property
    def labels(self) -> NDArray[np.uint8] | None:
        """(6,) majority-of-3 ground truth, or ``None`` without reads."""
        return None if self.reads is None else self.reads.majority

    @property
    def eligible(self) -> bool:
        return self.choice is not None and self.choice.chosen is not None

    def describe(self) -> dict[str, Any]:
        """The chosen series and why each other series was skipped (for ``inspect``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "files": self.files,
            "unreadable": self.unreadable,
            "labels": None if self.labels is None else _label_names(self.labels),
        }
        if self.choice is None:
            out["chosen"] = None
            out["reason"] = "no readable DICOM files"
            out["skipped"] = {}
            return out
        descriptions = self.series_descriptions
        chosen = self.choice.chosen
        out["chosen"] = (
            None
            if chosen is None
            else {
                "description": chosen.description,
                "slices": chosen.n_instances,
                "spacing_mm": None if chosen.spacing_mm is None else round(chosen.spacing_mm, 2),
                "kernel": chosen.kernel,
                "bone_kernel": chosen.bone_kernel,
            }
        )
        out["reason"] = self.choice.reason
        out["skipped"] = {
            descriptions.get(uid, uid): why for uid, why in sorted(self.choice.skipped.items())
        }
        return out


def _label_names(vec: NDArray[np.uint8]) -> list[str]:
    return [name for name, v in zip(LABELS, vec.tolist(), strict=True) if v]


@dataclass
class Cq500Index:
    """What :func:`find_studies` found, with counts of what cannot be evaluated."""

    root: Path
    studies: list[Cq500Study] = field(default_factory=list)
    reads: dict[str, Cq500Reads] = field(default_factory=dict)
    archives_not_unpacked: list[str] = field(default_factory=list)

    @property
    def unreadable(self) -> int:
        return sum(s.unreadable for s in self.studies)

    @property
    def reads_without_scan(self) -> list[str]:
        found = {s.name for s in self.studies}
        return sorted(n for n in self.reads if n not in found)

    def summary(self, *, per_study: bool = True) -> dict[str, Any]:
        """Counts and per-scan series choice for ``python -m train inspect``."""
        eligible = [s for s in self.studies if s.eligible]
        labelled = [s for s in eligible if s.labels is not None]
        positives = np.zeros(NUM_CLASSES, dtype=np.int64)
        for s in labelled:
            assert s.labels is not None
            positives += s.labels
        reasons: dict[str, int] = defaultdict(int)
        for s in self.studies:
            if not s.eligible:
                why = "no readable DICOM files" if s.choice is None else str(s.choice.reason)
                reasons[why] += 1
        out: dict[str, Any] = {
            "layout": "cq500",
            "root": str(self.root),
            "scans_found": len(self.studies),
            "scans_in_reads_csv": len(self.reads),
            "scans_eligible": len(eligible),
            "scans_evaluable": len(labelled),
            "slices_chosen": sum(
                s.choice.chosen.n_instances for s in eligible if s.choice and s.choice.chosen
            ),
            "positive_scans": dict(zip(LABELS, positives.tolist(), strict=True)),
            "not_eligible": dict(reasons),
            "scans_without_reads": sorted(s.name for s in self.studies if s.reads is None),
            "reads_without_scan": self.reads_without_scan,
            "archives_not_unpacked": self.archives_not_unpacked,
            "unreadable_skipped": self.unreadable,
        }
        if per_study:
            out["studies"] = [s.describe() for s in self.studies]
        return out


def find_scan_folders(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Scan name -> folder of the scan's files, and names of archives not yet unpacked.

    Accepts both ``root/CQ500-CT-<n>/CQ500CT<n> CQ500CT<n>/`` and
    ``root/CQ500CT<n> CQ500CT<n>/``; a ``CQ500-CT-<n>`` folder without the inner folder
    is taken as the scan folder itself.
    """
    if not root.is_dir():
        raise LayoutError(f"CQ500 folder {root} does not exist")
    found: dict[str, Path] = {}
    archives: list[str] = []
    for entry in sorted(root.iterdir()):
        m_inner = _INNER.match(entry.name)
        m_outer = _OUTER.match(entry.name)
        m_zip = _ARCHIVE.match(entry.name)
        if entry.is_dir() and m_inner:
            found.setdefault(scan_name(int(m_inner.group(1))), entry)
        elif entry.is_dir() and m_outer:
            inner = [p for p in entry.iterdir() if p.is_dir() and _INNER.match(p.name)]
            found.setdefault(scan_name(int(m_outer.group(1))), inner[0] if inner else entry)
        elif entry.is_file() and m_zip:
            archives.append(scan_name(int(m_zip.group(1))))
    not_unpacked = sorted(n for n in archives if n not in found)
    if not found and not not_unpacked:
        raise LayoutError(f"no CQ500CT<n> scan folders under {root}")
    return found, not_unpacked


def _scan_folder(folder: Path) -> FileScan:
    return scan_files(iter_dicom_files(folder))


def _study_from_scan(
    name: str, folder: Path, scan: FileScan, reads: Cq500Reads | None
) -> Cq500Study:
    choice: SeriesChoice | None = None
    if scan.headers:
        try:
            choice = choose_series(scan.headers)
        except SeriesError as exc:  # pragma: no cover - choose_series raises only when empty
            log.warning("cq500.choice_failed", extra={"scan": name, "error": str(exc)})
    patient = scan.patients[0] if scan.patients else patient_key("", name)
    return Cq500Study(
        name=name,
        folder=folder,
        patient=patient,
        choice=choice,
        reads=reads,
        files=len(scan.headers) + len(scan.unreadable),
        unreadable=len(scan.unreadable),
        series_descriptions=_describe_series(scan),
    )


def _describe_series(scan: FileScan) -> dict[str, str]:
    """Series UID -> its description (the folder name when empty), numbered when repeated."""
    names: dict[str, str] = {}
    for h in scan.headers:
        if h.series_uid not in names:
            base = h.description or h.path.parent.name
            name, k = base, 2
            while name in names.values():
                name, k = f"{base} ({k})", k + 1
            names[h.series_uid] = name
    return names


def _scan_item(item: tuple[str, Path]) -> tuple[str, Path, FileScan]:
    name, folder = item
    return name, folder, _scan_folder(folder)


def find_studies(
    root: Path,
    reads: dict[str, Cq500Reads] | None = None,
    *,
    workers: int = 1,
    progress: bool = False,
    names: Sequence[str] | None = None,
) -> Cq500Index:
    """Find every scan under ``root``, read its headers and choose its series.

    ``reads`` defaults to ``root/reads.csv`` when that file exists. ``names`` restricts the
    scans read (e.g. a quick look at a few). Scans are returned sorted by their number.
    """
    if reads is None:
        csv_path = root / READS_CSV
        reads = read_reads(csv_path) if csv_path.is_file() else {}
    folders, not_unpacked = find_scan_folders(root)
    if names is not None:
        wanted = set(names)
        folders = {k: v for k, v in folders.items() if k in wanted}
    items = sorted(folders.items(), key=lambda kv: int(kv[0].rsplit("-", 1)[1]))
    index = Cq500Index(root=root, reads=reads, archives_not_unpacked=not_unpacked)
    for name, folder, scan in parallel_map(
        _scan_item, items, workers=workers, desc="cq500 headers", progress=progress
    ):
        index.studies.append(_study_from_scan(name, folder, scan, reads.get(name)))
    if index.unreadable:
        log.info("cq500.unreadable", extra={"n": index.unreadable})
    if not_unpacked:
        log.warning("cq500.archives_not_unpacked", extra={"n": len(not_unpacked)})
    return index
