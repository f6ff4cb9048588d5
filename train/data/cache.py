"""The prepared cache: DICOM decoded once into windowed uint8 slices that training memory-maps.

Why: decoding DICOM, rescaling to HU, windowing and resizing cost far more CPU than a
training step can wait for, and every epoch would redo them. ``prepare`` does it once, in
parallel over CPU cores, and training only reads ``(Z, 3, size, size)`` uint8 arrays with
``np.load(mmap_mode="r")``: a 10-slice window costs a page-cache read.

Layout of a cache folder::

    manifest.json            format, source, size, windows, counts, one entry per study
    studies/<stem>.npy       uint8 (Z, 3, size, size), slices inferior -> superior
    studies/<stem>.json      per study: SOP UIDs, image ids, z positions, slice labels

The pixels of a slice are those the node computes (``models.preprocess``): HU from
``models.dicom_io.stored_to_hu`` (RSNA bit-depth quirk corrected), the three windows of
``windows`` as channels, ``models.preprocess.resize`` to ``size`` in float (box filter or
antialiased bilinear), then quantised like ``apply_windows_uint8`` (x 255, round half
up). When the image already has the target size this is exactly ``apply_windows_uint8``.

Crash safety and resuming: every file is written to ``<name>.tmp-<pid>`` and renamed into
place with ``os.replace``; a study's ``.json`` is renamed last, so its presence (with an
``.npy`` of the recorded shape) means the study is complete and a rerun skips it. Left-over
``.tmp-*`` files of an interrupted run are deleted, never read. ``manifest.json`` is
rewritten (atomically) as studies finish and carries ``"complete": true`` only at the end;
:class:`PreparedCache` refuses a cache without it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from models import __version__ as CODE_VERSION
from models.dicom_io import CTSeries, InstanceHeader, order_slices, read_series, scan_headers
from models.errors import SeriesError
from models.labels import LABELS, NUM_CLASSES
from models.preprocess import DEFAULT_WINDOWS, Window, hu_to_uint8
from train.data import cq500, rsna
from train.data.errors import CacheError
from train.data.scan import lenient_dicom, parallel_map, resolve_workers

log = logging.getLogger(__name__)

Source = Literal["rsna", "cq500"]

CACHE_FORMAT = "ich-prepared-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
STUDY_DIR = "studies"
#: Slices windowed and resized at a time: bounds a worker's float32 memory (~100 MB at 512).
SLICE_CHUNK = 16
#: The manifest is rewritten at most this often while studies finish (seconds)...
MANIFEST_EVERY_S = 30.0
#: ... or after this many studies, whichever comes first.
MANIFEST_EVERY_N = 200

_TMP = ".tmp-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class CachedStudy:
    """One study of the cache, as training and splitting see it.

    ``study_labels`` is (6,) uint8 in ``LABELS`` order: RSNA, the maximum over its slice
    labels; CQ500, the majority of the three readers. ``patient`` is a salted hash of
    PatientID (``train.data.scan.patient_key``): it groups studies for splits and is safe
    to log.
    """

    key: str
    n_slices: int
    study_labels: NDArray[np.uint8]
    has_slice_labels: bool
    patient: str


@dataclass(frozen=True)
class StudyTask:
    """What a worker needs to prepare one study (picklable: paths and small arrays).

    ``slice_labels`` maps image id (file stem) -> (6,) labels when the source labels
    slices (RSNA); ``study_labels`` is given when it labels whole studies (CQ500).
    """

    key: str
    patient: str
    paths: tuple[Path, ...]
    slice_labels: dict[str, NDArray[np.uint8]] | None = None
    study_labels: NDArray[np.uint8] | None = None


def study_stem(key: str) -> str:
    """A file-system-safe, collision-free file stem for a study key."""
    import hashlib

    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', key)[:80]}-{digest}"


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f"{path.name}{_TMP}{os.getpid()}")
    with tmp.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)  # os.replace: atomic on POSIX


def _atomic_write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=False).encode()
    _atomic_write_bytes(path, lambda h: h.write(text))


def windows_to_json(windows: Sequence[Window]) -> list[list[Any]]:
    return [[w.name, w.level, w.width] for w in windows]


def windows_from_json(data: Sequence[Sequence[Any]]) -> tuple[Window, ...]:
    return tuple(Window(str(n), float(level), float(width)) for n, level, width in data)


# ------------------------------------------------------------------------------------------
# Pixels
# ------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    images: NDArray[np.uint8]
    headers: list[InstanceHeader]
    positions: list[float]
    unreadable: int
    quirk_corrected: int
    duplicates_dropped: int


def _decode(paths: Sequence[Path], size: int, windows: Sequence[Window]) -> _Decoded:
    """Read and convert one study; slices that fail to decode are dropped and counted.

    The fast path reads the whole series with ``read_series``; if any slice fails (a
    truncated file, a slice of another size), each slice is read on its own so that one
    bad file costs one slice, not the study.
    """
    scan = scan_headers(paths)
    if not scan.headers:
        raise SeriesError(f"none of {len(paths)} files is readable DICOM")
    unreadable = len(scan.unreadable)
    try:
        # one core per study: the cache already runs one study per core (parallel_map)
        series: CTSeries = read_series(scan.headers, workers=1)
    except SeriesError:
        pass
    else:
        by_sop = {h.sop_uid: h for h in scan.headers}
        return _Decoded(
            images=hu_to_uint8(series.hu, size, windows, chunk=SLICE_CHUNK),
            headers=[by_sop[uid] for uid in series.sop_uids],
            positions=[float(p) for p in series.positions_mm],
            unreadable=unreadable,
            quirk_corrected=series.quirk_corrected,
            duplicates_dropped=series.duplicates_dropped,
        )
    ordered = order_slices(scan.headers)
    kept: list[InstanceHeader] = []
    positions: list[float] = []
    chunks: list[NDArray[np.uint8]] = []
    quirks = 0
    for header, pos in zip(ordered.headers, ordered.positions_mm, strict=True):
        try:
            one = read_series([header], workers=1)
        except SeriesError:
            unreadable += 1
            continue
        chunks.append(hu_to_uint8(one.hu, size, windows, chunk=SLICE_CHUNK))
        kept.append(header)
        positions.append(float(pos))
        quirks += one.quirk_corrected
    if not kept:
        raise SeriesError(f"no slice of {len(paths)} files could be decoded")
    return _Decoded(
        images=np.concatenate(chunks),
        headers=kept,
        positions=positions,
        unreadable=unreadable,
        quirk_corrected=quirks,
        duplicates_dropped=ordered.duplicates_dropped,
    )


def _prepare_study(
    task: StudyTask, studies_dir: Path, size: int, windows: tuple[Window, ...]
) -> dict[str, Any]:
    """Worker: decode, convert and write one study; returns its manifest entry.

    Never raises for a bad study: the entry then carries ``"error"`` and no files are
    written, so a later run tries it again.
    """
    stem = study_stem(task.key)
    try:
        with lenient_dicom():
            dec = _decode(task.paths, size, windows)
    except (SeriesError, OSError) as exc:
        return {"key": task.key, "error": str(exc)}
    image_ids = [h.path.stem for h in dec.headers]
    if task.slice_labels is not None:
        labels = np.stack([task.slice_labels[i] for i in image_ids]).astype(np.uint8)
        study_labels = labels.max(axis=0).astype(np.uint8)
        has_slice_labels = True
    else:
        labels = np.zeros((len(image_ids), NUM_CLASSES), dtype=np.uint8)
        study_labels = (
            np.zeros(NUM_CLASSES, dtype=np.uint8)
            if task.study_labels is None
            else np.asarray(task.study_labels, dtype=np.uint8)
        )
        has_slice_labels = False
    _atomic_write_bytes(studies_dir / f"{stem}.npy", lambda h: np.save(h, dec.images))
    entry: dict[str, Any] = {
        "key": task.key,
        "file": stem,
        "n_slices": len(image_ids),
        "study_labels": study_labels.tolist(),
        "has_slice_labels": has_slice_labels,
        "patient": task.patient,
        "unreadable": dec.unreadable,
        "quirk_corrected": dec.quirk_corrected,
        "duplicates_dropped": dec.duplicates_dropped,
    }
    detail = {
        **entry,
        "shape": list(dec.images.shape),
        "sop_uids": [h.sop_uid for h in dec.headers],
        "image_ids": image_ids,
        "positions_mm": dec.positions,
        "slice_labels": labels.tolist(),
    }
    _atomic_write_json(studies_dir / f"{stem}.json", detail)
    return entry


def _worker_init() -> None:
    """One torch thread per worker process: the pool already uses every core."""
    torch.set_num_threads(1)


def _completed_entry(studies_dir: Path, task: StudyTask, size: int) -> dict[str, Any] | None:
    """The manifest entry of a study finished by an earlier run, or ``None`` if not done."""
    stem = study_stem(task.key)
    marker, images = studies_dir / f"{stem}.json", studies_dir / f"{stem}.npy"
    if not (marker.is_file() and images.is_file()):
        return None
    try:
        detail = json.loads(marker.read_text())
        arr = np.load(images, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if detail.get("key") != task.key or list(arr.shape) != detail.get("shape"):
        return None
    if arr.shape[1:] != (arr.shape[1], size, size) or arr.dtype != np.uint8:
        return None
    return {
        k: detail[k]
        for k in (
            "key",
            "file",
            "n_slices",
            "study_labels",
            "has_slice_labels",
            "patient",
            "unreadable",
            "quirk_corrected",
            "duplicates_dropped",
        )
    }


def _remove_leftovers(studies_dir: Path) -> int:
    """Delete ``*.tmp-*`` files an interrupted run left behind; returns how many."""
    removed = 0
    for path in studies_dir.iterdir():
        if _TMP in path.name:
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("prepare.leftovers_removed", extra={"n": removed})
    return removed


# ------------------------------------------------------------------------------------------
# Tasks per source
# ------------------------------------------------------------------------------------------


def rsna_tasks(
    data_dir: Path, subset: rsna.Subset, *, workers: int, progress: bool
) -> tuple[list[StudyTask], dict[str, Any]]:
    """Tasks for an RSNA download and the reader's counts (for the manifest)."""
    index = rsna.load(data_dir, subset, workers=workers, progress=progress)
    tasks = [
        StudyTask(
            key=s.study_uid,
            patient=s.patient,
            paths=s.paths,
            slice_labels=dict(zip(s.image_ids, s.slice_labels, strict=True))
            if s.has_labels
            else None,
        )
        for s in index.studies
    ]
    counts = index.summary()
    for k in ("layout", "image_dir", "positive_slices", "positive_studies", "slices_per_study"):
        counts.pop(k, None)
    return tasks, counts


def cq500_tasks(
    data_dir: Path, *, workers: int, progress: bool
) -> tuple[list[StudyTask], dict[str, Any]]:
    """Tasks for the chosen series of every CQ500 scan that has reads; counts of the rest."""
    index = cq500.find_studies(data_dir, workers=workers, progress=progress)
    tasks = []
    for s in index.studies:
        if s.choice is None or s.choice.chosen is None or s.labels is None:
            continue
        tasks.append(
            StudyTask(
                key=s.name,
                patient=s.patient,
                paths=tuple(h.path for h in s.choice.headers),
                study_labels=s.labels,
            )
        )
    summary = index.summary(per_study=False)
    counts = {
        "scans_found": summary["scans_found"],
        "scans_in_reads_csv": summary["scans_in_reads_csv"],
        "not_eligible": summary["not_eligible"],
        "scans_without_reads": len(summary["scans_without_reads"]),
        "reads_without_scan": len(summary["reads_without_scan"]),
        "archives_not_unpacked": len(summary["archives_not_unpacked"]),
        "unreadable_skipped": summary["unreadable_skipped"],
    }
    return tasks, counts


# ------------------------------------------------------------------------------------------
# prepare and the reader of its output
# ------------------------------------------------------------------------------------------


def prepare(
    source: Source,
    data_dir: Path,
    out: Path,
    size: int = 256,
    workers: int | None = os.cpu_count(),
    limit: int | None = None,
    *,
    subset: rsna.Subset = "train",
    windows: Sequence[Window] = DEFAULT_WINDOWS,
    progress: bool = True,
) -> PreparedCache:
    """Convert an RSNA or CQ500 download into a prepared cache at ``out``; resumable.

    ``subset`` (RSNA only) picks ``stage_2_train`` (labelled) or ``stage_2_test``.
    ``limit`` prepares only the first ``limit`` studies in key order (quick looks, tests).
    Studies already complete in ``out`` are skipped; a cache made with another ``size``,
    ``windows``, source or data folder is refused rather than mixed.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if source not in ("rsna", "cq500"):
        raise ValueError(f"source must be 'rsna' or 'cq500', got {source!r}")
    if source == "cq500" and subset != "train":
        raise ValueError("CQ500 has no subsets: it is a test set as a whole")
    n_workers = resolve_workers(workers)
    windows = tuple(windows)
    data_dir, out = Path(data_dir), Path(out)
    studies_dir = out / STUDY_DIR
    studies_dir.mkdir(parents=True, exist_ok=True)
    check_compatible(out, source, subset, data_dir, size, windows)
    _remove_leftovers(studies_dir)

    if source == "rsna":
        tasks, counts = rsna_tasks(data_dir, subset, workers=n_workers, progress=progress)
    else:
        tasks, counts = cq500_tasks(data_dir, workers=n_workers, progress=progress)
    tasks.sort(key=lambda t: t.key)
    if limit is not None:
        tasks = tasks[: max(0, limit)]

    entries: dict[str, dict[str, Any]] = {}
    pending: list[StudyTask] = []
    for task in tasks:
        done = _completed_entry(studies_dir, task, size)
        if done is None:
            pending.append(task)
        else:
            entries[task.key] = done
    resumed = len(entries)
    log.info("prepare.start", extra={"studies": len(tasks), "done": resumed, "todo": len(pending)})

    header = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "source": source,
        "subset": subset,
        "data_dir": str(data_dir.resolve()),
        "size": size,
        "windows": windows_to_json(windows),
        "labels": list(LABELS),
        "code_version": CODE_VERSION,
    }
    failed: dict[str, str] = {}

    def write_manifest(complete: bool) -> None:
        studies = [entries[t.key] for t in tasks if t.key in entries]
        totals = {
            k: sum(int(e.get(k, 0)) for e in studies)
            for k in ("unreadable", "quirk_corrected", "duplicates_dropped")
        }
        _atomic_write_json(
            out / MANIFEST,
            {
                **header,
                "complete": complete,
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                "counts": {
                    "source": counts,
                    "studies": len(studies),
                    "slices": sum(int(e["n_slices"]) for e in studies),
                    "studies_resumed": resumed,
                    "studies_failed": len(failed),
                    "failure_reasons": _reason_counts(failed),
                    "unreadable_pixels_skipped": totals["unreadable"],
                    "quirk_corrected_slices": totals["quirk_corrected"],
                    "duplicate_positions_dropped": totals["duplicates_dropped"],
                },
                "studies": studies,
            },
        )

    write_manifest(complete=False)
    worker = functools.partial(_prepare_study, studies_dir=studies_dir, size=size, windows=windows)
    last_write, since_write = time.monotonic(), 0
    for entry in parallel_map(
        worker,
        pending,
        workers=n_workers,
        desc=f"prepare {source}",
        progress=progress,
        initializer=_worker_init,
    ):
        if "error" in entry:
            failed[entry["key"]] = entry["error"]
            log.warning("prepare.study_failed", extra={"error": entry["error"]})
        else:
            entries[entry["key"]] = entry
        since_write += 1
        now = time.monotonic()
        if since_write >= MANIFEST_EVERY_N or now - last_write >= MANIFEST_EVERY_S:
            write_manifest(complete=False)
            last_write, since_write = now, 0
    write_manifest(complete=True)
    log.info(
        "prepare.done",
        extra={"studies": len(entries), "failed": len(failed), "resumed": resumed},
    )
    return PreparedCache(out)


def _reason_counts(reasons: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for why in reasons.values():
        out[why] = out.get(why, 0) + 1
    return out


def check_compatible(
    out: Path,
    source: str,
    subset: str,
    data_dir: Path,
    size: int,
    windows: Sequence[Window] = DEFAULT_WINDOWS,
) -> None:
    """Raise ``CacheError`` if ``out`` holds a cache made from other data or settings.

    Resuming must never mix slices of two sizes or window sets in one cache.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path} exists but cannot be read; remove it to start over") from exc
    mine = {
        "source": source,
        "subset": subset,
        "data_dir": str(Path(data_dir).resolve()),
        "size": size,
        "windows": windows_to_json(windows),
    }
    differ = [k for k, v in mine.items() if old.get(k) != v]
    if differ:
        raise CacheError(
            f"{out} holds a cache made with other {', '.join(differ)}; "
            "use another --out or remove it"
        )


class PreparedCache:
    """Read access to a finished cache (what ``prepare`` wrote).

    ``images(key)`` is a read-only memory map, so DataLoader workers share the page
    cache and nothing is decoded in the training loop.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise CacheError(f"no prepared cache at {self.root} ({MANIFEST} missing)")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"{path} cannot be read: {exc}") from exc
        if manifest.get("format") != CACHE_FORMAT:
            raise CacheError(f"{path} is not a prepared cache (format {manifest.get('format')!r})")
        if manifest.get("version") != CACHE_VERSION:
            raise CacheError(
                f"{path}: cache version {manifest.get('version')} != {CACHE_VERSION}; "
                "run prepare again into a new folder"
            )
        if not manifest.get("complete"):
            raise CacheError(
                f"{self.root} is incomplete (prepare was interrupted); "
                "rerun the same prepare command to resume"
            )
        if list(manifest.get("labels", [])) != list(LABELS):
            raise CacheError(f"{path}: label order differs from models.labels.LABELS")
        self.manifest: dict[str, Any] = manifest
        try:
            self._load(manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{path} is malformed ({type(exc).__name__}: {exc})") from exc

    def _load(self, manifest: dict[str, Any]) -> None:
        self.size: int = int(manifest["size"])
        self.windows: tuple[Window, ...] = windows_from_json(manifest["windows"])
        self.source: str = str(manifest["source"])
        self.subset: str = str(manifest.get("subset", "train"))
        self.counts: dict[str, Any] = dict(manifest.get("counts", {}))
        self.studies: list[CachedStudy] = []
        self._files: dict[str, str] = {}
        for e in manifest["studies"]:
            self.studies.append(
                CachedStudy(
                    key=str(e["key"]),
                    n_slices=int(e["n_slices"]),
                    study_labels=np.asarray(e["study_labels"], dtype=np.uint8),
                    has_slice_labels=bool(e["has_slice_labels"]),
                    patient=str(e["patient"]),
                )
            )
            self._files[str(e["key"])] = str(e["file"])
        missing = [k for k, f in self._files.items() if not self._path(f, ".npy").is_file()]
        if missing:
            raise CacheError(f"{self.root}: {len(missing)} study files listed but missing")
        self._by_key = {s.key: s for s in self.studies}
        self._details: dict[str, dict[str, Any]] = {}

    def _path(self, stem: str, suffix: str) -> Path:
        return self.root / STUDY_DIR / f"{stem}{suffix}"

    def __len__(self) -> int:
        return len(self.studies)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.studies]

    def study(self, key: str) -> CachedStudy:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"study {key!r} is not in the cache at {self.root}") from None

    def images(self, key: str) -> np.ndarray:
        """uint8 (Z, 3, size, size), inferior -> superior, as a read-only memory map."""
        self.study(key)
        arr: np.ndarray = np.load(self._path(self._files[key], ".npy"), mmap_mode="r")
        return arr

    def _detail(self, key: str) -> dict[str, Any]:
        detail = self._details.get(key)
        if detail is None:
            self.study(key)
            detail = json.loads(self._path(self._files[key], ".json").read_text())
            self._details[key] = detail
        return detail

    def slice_labels(self, key: str) -> NDArray[np.uint8]:
        """(Z, 6) uint8 in ``LABELS`` order; zeros when the source has no slice labels."""
        return np.asarray(self._detail(key)["slice_labels"], dtype=np.uint8).reshape(
            -1, NUM_CLASSES
        )

    def sop_uids(self, key: str) -> list[str]:
        """SOP Instance UIDs of the slices, in the order of :meth:`images`."""
        return list(self._detail(key)["sop_uids"])

    def image_ids(self, key: str) -> list[str]:
        """File stems of the slices (RSNA: the Kaggle image ids ``ID_<hex>``), in order."""
        return list(self._detail(key)["image_ids"])

    def positions_mm(self, key: str) -> NDArray[np.float64]:
        """Position of each slice along the slice normal (mm), ascending."""
        return np.asarray(self._detail(key)["positions_mm"], dtype=np.float64)
