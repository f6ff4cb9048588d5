"""Header scans over many files, in parallel, with a hashed patient key per file.

Both readers must group or split by patient without ever holding the raw PatientID in
anything that is logged or written: :func:`patient_key` turns it into a salted hash at the
moment it is read. ``models.dicom_io.scan_headers`` reads the tags series choice needs; the
readers also need PatientID, so this module reads ``HEADER_TAGS + PatientID`` in one pass
(one ``dcmread`` per file: on RSNA's 752k files the scan is the slow step of indexing).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from models.dicom_io import HEADER_TAGS, InstanceHeader
from models.errors import SeriesError

log = logging.getLogger(__name__)

#: Salt of the patient hash: the same PatientID gives the same key in every run and tool.
_PATIENT_SALT = "ich-triage-train-patient:"
#: Files per task of a parallel scan: large enough to amortise pickling, small enough
#: for a smooth progress bar.
SCAN_CHUNK = 256

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def lenient_dicom() -> Iterator[None]:
    """Read and write values that break VR rules without a warning per element.

    RSNA 2019 files carry identifiers such as ``ID_6c4a3bd1ab`` in UI elements (Study,
    Series and SOP Instance UID): pydicom would warn, and log the value, once per file,
    752k times. The values are only used as keys here, so validation is switched off for
    the duration (process-wide: pydicom has no per-call switch) and restored after.
    """
    settings = pydicom_config.settings
    old = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = old


def patient_key(patient_id: str, fallback: str) -> str:
    """A 16-hex-digit salted hash of PatientID; ``fallback`` (hashed too) when it is empty.

    A missing PatientID must not merge unrelated studies into one split group, so the
    fallback is the study's own key (each such study is its own group).
    """
    text = patient_id.strip() or f"no-patient-id:{fallback}"
    return hashlib.sha256((_PATIENT_SALT + text).encode()).hexdigest()[:16]


@dataclass
class FileScan:
    """Headers of readable files, the hashed patient of each, and the unreadable files."""

    headers: list[InstanceHeader] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # parallel to headers
    unreadable: list[Path] = field(default_factory=list)

    def extend(self, other: FileScan) -> None:
        self.headers.extend(other.headers)
        self.patients.extend(other.patients)
        self.unreadable.extend(other.unreadable)


def scan_files(paths: Iterable[Path]) -> FileScan:
    """Read header tags (``HEADER_TAGS`` and PatientID) of each file, without pixels.

    Files that are not DICOM, are truncated before the pixel data, or lack the three UIDs
    are listed in ``unreadable`` rather than raised: RSNA 2019 ships a few such files.
    """
    out = FileScan()
    tags = [*HEADER_TAGS, "PatientID"]
    with lenient_dicom():
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
                header = InstanceHeader.from_dataset(ds, path)
            except (InvalidDicomError, SeriesError, OSError, ValueError, TypeError, EOFError):
                out.unreadable.append(path)
                continue
            out.headers.append(header)
            out.patients.append(patient_key(str(ds.get("PatientID", "")), header.study_uid))
    return out


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def resolve_workers(workers: int | None) -> int:
    """``None`` or < 1 means all CPU cores."""
    if workers is None or workers < 1:
        return os.cpu_count() or 1
    return workers


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int,
    desc: str,
    progress: bool,
    total: int | None = None,
    weight: Callable[[T], int] | None = None,
    initializer: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``map(fn, items)`` over a process pool (in-process when ``workers == 1``), in order.

    A progress bar counts ``weight(item)`` units per finished item (files, studies). The
    in-process path keeps tests and one-core machines free of pool start-up costs.
    ``initializer`` runs once in each worker process (not in-process).
    """
    bar = tqdm(total=total if total is not None else len(items), desc=desc, disable=not progress)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                result = fn(item)
                bar.update(weight(item) if weight else 1)
                yield result
            return
        with ProcessPoolExecutor(
            max_workers=min(workers, len(items)), initializer=initializer
        ) as pool:
            for item, result in zip(items, pool.map(fn, items), strict=True):
                bar.update(weight(item) if weight else 1)
                yield result
    finally:
        bar.close()


def scan_parallel(
    paths: Sequence[Path], *, workers: int = 1, progress: bool = False, desc: str = "headers"
) -> FileScan:
    """:func:`scan_files` over a process pool, chunked; results in the order of ``paths``."""
    result = FileScan()
    for part in parallel_map(
        scan_files,
        chunks(paths, SCAN_CHUNK),
        workers=workers,
        desc=desc,
        progress=progress,
        total=len(paths),
        weight=len,
    ):
        result.extend(part)
    if result.unreadable:
        log.info("scan.unreadable", extra={"n": len(result.unreadable)})
    return result
