"""DICOM files -> headers -> one series in Hounsfield units, in anatomical slice order.

Two passes on purpose: :func:`scan_headers` reads only the tags that series choice needs
(``stop_before_pixels``), so a study with a 600-slice bone series costs little; then
:func:`read_series` decodes pixels of the one chosen series, on several cores when they
are compressed (:mod:`models.decode_pool`; one slice to HU is :mod:`models.decode`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from models.decode import HU_MAX as HU_MAX  # re-exported: callers read them here
from models.decode import HU_MIN as HU_MIN
from models.decode import read_instance
from models.decode import stored_to_hu as stored_to_hu
from models.decode_pool import DecodePool, decode_series
from models.enhanced_ct import (
    FUNCTIONAL_GROUP_TAGS,
    MULTIFRAME_CT_CLASSES,
    decode_frames,
    frame_infos,
)
from models.errors import SeriesError

log = logging.getLogger(__name__)

#: Tags read by :func:`scan_headers`. Reading a subset keeps a scan of 1,000 files fast.
HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "InstanceNumber",
    "ConvolutionKernel",
    "SeriesDescription",
    "ProtocolName",
    "BodyPartExamined",
    "ContrastBolusAgent",
    "ContrastBolusAgentSequence",
    "ContrastBolusRoute",
    "ContrastBolusVolume",
    "ContrastBolusTotalDose",
    "ScanOptions",
    "NumberOfFrames",
    "SeriesNumber",
    *FUNCTIONAL_GROUP_TAGS,  # Enhanced CT: per-frame position, orientation, contrast use
)

#: Positions closer than this along the slice normal are the same slice (mm).
DUPLICATE_TOLERANCE_MM = 0.01


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The header fields of one instance that series choice and ordering need."""

    path: Path
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rows: int
    columns: int
    instance_number: int | None
    kernel: str
    description: str
    body_part: str
    contrast: str
    frames: int
    series_number: int | None
    # Defaults below keep constructors that predate these fields working.
    protocol: str = ""
    #: ContrastBolusRoute, ContrastBolusVolume, ContrastBolusTotalDose as written (a "0"
    #: or "NONE" means no contrast; series choice reads them, not this class).
    contrast_route: str = ""
    contrast_volume: str = ""
    contrast_dose: str = ""
    #: Items in ContrastBolusAgentSequence (coded agents; any item means contrast).
    contrast_agents: int = 0
    scan_options: str = ""
    #: Attributes asked for by keyword (``scan_headers(extra_tags=...)``, e.g. what site
    #: rules match on), as text; multi-values joined with a backslash; absent ones missing.
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: For a frame of a multi-frame CT instance (:mod:`models.enhanced_ct`): its 1-based
    #: frame number; the geometry fields above are then that frame's. None: one slice.
    frame: int | None = None
    #: Contrast/Bolus Usage functional group of the frame: agent administered or not;
    #: None where the instance has no such group (single-frame CT never has).
    contrast_administered: bool | None = None

    @classmethod
    def from_dataset(
        cls, ds: Dataset, path: Path, extra_tags: Iterable[str] = ()
    ) -> InstanceHeader:
        """Build from a (possibly pixel-less) dataset; raises ``SeriesError`` on missing UIDs."""
        try:
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        except AttributeError as exc:
            raise SeriesError(f"{path.name}: missing Study/Series/SOP Instance UID") from exc
        return cls(
            path=path,
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            sop_uid=str(sop),
            study_uid=str(study),
            series_uid=str(series),
            modality=str(ds.get("Modality", "")).upper(),
            image_type=tuple(str(v).upper() for v in _multi(ds.get("ImageType"))),
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            slice_thickness=_float(ds.get("SliceThickness")),
            rows=int(ds.get("Rows") or 0),
            columns=int(ds.get("Columns") or 0),
            instance_number=_int(ds.get("InstanceNumber")),
            kernel=" ".join(str(v) for v in _multi(ds.get("ConvolutionKernel"))).upper(),
            description=str(ds.get("SeriesDescription", "")),
            body_part=str(ds.get("BodyPartExamined", "")).upper(),
            contrast=str(ds.get("ContrastBolusAgent", "")).strip(),
            frames=int(ds.get("NumberOfFrames") or 1),
            series_number=_int(ds.get("SeriesNumber")),
            protocol=str(ds.get("ProtocolName", "")),
            contrast_route=_text(ds.get("ContrastBolusRoute")),
            contrast_volume=_text(ds.get("ContrastBolusVolume")),
            contrast_dose=_text(ds.get("ContrastBolusTotalDose")),
            contrast_agents=len(ds.get("ContrastBolusAgentSequence") or ()),
            scan_options=_text(ds.get("ScanOptions")),
            extra={kw: _text(ds.get(kw)) for kw in extra_tags if kw in ds},
        )


def _text(value: object) -> str:
    """An attribute value as text: multi-values joined with a backslash, as DICOM does."""
    if value is None or isinstance(value, DicomSequence):
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "\\".join(_text(v) for v in value)
    return str(value).strip()


def _multi(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        return [value]


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    items = _multi(value)
    if len(items) != n:
        return None
    out = tuple(_float(v) for v in items)
    if any(v is None for v in out):
        return None
    return tuple(v for v in out if v is not None)


def iter_dicom_files(root: Path | Iterable[Path]) -> list[Path]:
    """All regular files under ``root`` (a file, a folder, or a list of either), sorted."""
    roots = [root] if isinstance(root, Path) else list(root)
    found: list[Path] = []
    for r in roots:
        if r.is_dir():
            found.extend(p for p in r.rglob("*") if p.is_file())
        elif r.is_file():
            found.append(r)
    return sorted(found)


@dataclass
class ScanResult:
    """Headers of all readable instances, plus a count of files that were not DICOM."""

    headers: list[InstanceHeader] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    #: Why each unreadable file was not read, in words (no values from the file).
    why: dict[Path, str] = field(default_factory=dict)


def scan_headers(paths: Iterable[Path], extra_tags: Iterable[str] = ()) -> ScanResult:
    """Read the header tags of each file; files that are not DICOM are listed, not raised.

    ``extra_tags`` (DICOM keywords) are read too and kept as text in
    :attr:`InstanceHeader.extra`, so site rules can match any attribute.
    """
    extra = tuple(dict.fromkeys(extra_tags))
    tags = list(dict.fromkeys((*HEADER_TAGS, *extra)))
    result = ScanResult()
    for path in paths:
        try:
            ds = read_instance(path, stop_before_pixels=True, specific_tags=tags)
            header = InstanceHeader.from_dataset(ds, path, extra)
            result.headers.extend(frame_headers(header, ds))
        except (InvalidDicomError, SeriesError, OSError, ValueError, TypeError, EOFError,
                AttributeError, KeyError, NotImplementedError) as exc:  # fmt: skip
            result.unreadable.append(path)
            result.why[path] = _unreadable_reason(exc)
    if result.unreadable:
        log.info("scan.unreadable", extra={"n": len(result.unreadable)})
    return result


def frame_headers(header: InstanceHeader, ds: Dataset) -> list[InstanceHeader]:
    """``[header]`` for a single-frame instance; one header per frame for Enhanced CT.

    A frame's header carries the instance's identity and descriptions, and the frame's
    own position, orientation, spacing, thickness, FrameType (as ImageType), kernel and
    contrast use from the functional groups (and, for a Legacy Converted instance, the
    kernel and contrast attributes its converter kept aside). A multi-frame CT whose
    frames cannot be placed (no or a short Per-Frame Functional Groups Sequence) stays
    one header: series choice then names why it is not read, rather than the instance
    vanishing from the study.
    """
    if header.sop_class_uid not in MULTIFRAME_CT_CLASSES:
        return [header]
    try:
        frames = frame_infos(ds)
    except SeriesError as exc:
        log.info("scan.frames_unplaced", extra={"frames": header.frames, "error": str(exc)})
        return [header]
    return [
        replace(
            header,
            frame=f.number,
            position=f.position,  # type: ignore[arg-type]  # three numbers (enhanced_ct)
            orientation=f.orientation,
            pixel_spacing=f.pixel_spacing or header.pixel_spacing,  # type: ignore[arg-type]
            slice_thickness=(
                f.slice_thickness if f.slice_thickness is not None else header.slice_thickness
            ),
            image_type=f.frame_type or header.image_type,
            contrast_administered=f.contrast_administered,
            kernel=header.kernel or f.kernel.replace("\\", " ").upper(),
            contrast=header.contrast or f.converted.get("ContrastBolusAgent", ""),
            contrast_route=header.contrast_route or f.converted.get("ContrastBolusRoute", ""),
            contrast_volume=header.contrast_volume or f.converted.get("ContrastBolusVolume", ""),
            contrast_dose=header.contrast_dose or f.converted.get("ContrastBolusTotalDose", ""),
            scan_options=header.scan_options or f.converted.get("ScanOptions", ""),
        )
        for f in frames
    ]


def _unreadable_reason(exc: Exception) -> str:
    """Why a file was not read, without quoting it (pydicom's messages may hold values)."""
    if isinstance(exc, SeriesError):
        return "missing Study, Series or SOP Instance UID"
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no 'DICM' prefix after a preamble, nor a dataset)"
    if isinstance(exc, EOFError):
        return "file ends inside the DICOM header (truncated)"
    if isinstance(exc, OSError):
        return f"cannot be read ({type(exc).__name__})"
    return f"undecodable DICOM header ({type(exc).__name__})"


def slice_normal(orientation: Sequence[float]) -> NDArray[np.float64]:
    """Unit normal of an image plane from ImageOrientationPatient (row x column cosines).

    Oriented towards the patient's head (+z in the DICOM patient system, PS3.3
    C.7.6.2.1.1), so that sorting by it yields inferior -> superior whatever the
    scanner's direction (head-first, feet-first, reversed numbering).
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise SeriesError("ImageOrientationPatient row and column cosines are parallel")
    normal /= norm
    if normal[2] < 0:
        normal = -normal
    return normal


@dataclass(frozen=True, slots=True)
class OrderedSlices:
    """Slices of one series in anatomical order, duplicates removed."""

    headers: list[InstanceHeader]
    positions_mm: NDArray[np.float64]
    duplicates_dropped: int


def order_slices(headers: Sequence[InstanceHeader]) -> OrderedSlices:
    """Sort by position along the slice normal; drop slices at a position already seen.

    Falls back to InstanceNumber only when no slice has a position (then duplicates
    cannot be detected). Raises ``SeriesError`` for mixed orientations or missing data.
    """
    if not headers:
        raise SeriesError("series has no instances")
    with_pos = [h for h in headers if h.position is not None and h.orientation is not None]
    if not with_pos:
        if any(h.instance_number is None for h in headers):
            raise SeriesError("slices carry neither ImagePositionPatient nor InstanceNumber")
        ordered = sorted(headers, key=lambda h: (h.instance_number or 0, h.sop_uid))
        return OrderedSlices(ordered, np.arange(len(ordered), dtype=np.float64), 0)
    if len(with_pos) != len(headers):
        raise SeriesError(
            f"{len(headers) - len(with_pos)} of {len(headers)} slices lack position or orientation"
        )
    ref = with_pos[0].orientation
    assert ref is not None
    for h in with_pos[1:]:
        if not np.allclose(np.asarray(h.orientation), np.asarray(ref), atol=1e-3):
            raise SeriesError("slices of the series have different ImageOrientationPatient")
    normal = slice_normal(ref)
    pos = np.array([np.dot(normal, h.position) for h in with_pos])  # type: ignore[arg-type]
    frames = np.array([h.frame or 0 for h in with_pos])
    order = np.lexsort((frames, np.array([h.sop_uid for h in with_pos]), pos))
    kept: list[int] = []
    for i in order:
        if kept and abs(pos[i] - pos[kept[-1]]) < DUPLICATE_TOLERANCE_MM:
            continue
        kept.append(int(i))
    dropped = len(with_pos) - len(kept)
    if dropped:
        log.info("series.duplicates_dropped", extra={"n": dropped})
    return OrderedSlices([with_pos[i] for i in kept], pos[kept], dropped)


@dataclass(frozen=True)
class CTSeries:
    """One series as HU, inferior -> superior, with the identity of every slice."""

    study_uid: str
    series_uid: str
    sop_uids: list[str]
    hu: NDArray[np.float32]  # (Z, H, W)
    positions_mm: NDArray[np.float64]
    pixel_spacing: tuple[float, float] | None
    duplicates_dropped: int
    quirk_corrected: int
    #: Per slice, its frame number in the multi-frame instance ``sop_uids`` names (the
    #: same UID then repeats); None for a series of single-frame instances.
    frame_numbers: list[int] | None = None

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


def read_series(
    headers: Sequence[InstanceHeader],
    *,
    workers: int | None = None,
    pool: DecodePool | None = None,
) -> CTSeries:
    """Decode the instances of one series to HU in anatomical order.

    Compressed slices are decoded on ``workers`` cores (default: all this process may
    use), by the calling thread plus helper processes: ``pool``'s, kept by a caller
    that reads many series (the node), or ones started and stopped within this call.
    ``workers=1`` decodes in the calling thread only; a caller that already runs one
    series per core (the training cache) passes it. The result does not depend on it.

    Raises :class:`SeriesError` when instances are not CT images, carry no pixels, have
    different Rows/Columns, or cannot be decoded (naming the first bad slice by its
    position, "slice i of n"). Messages name counts, never patients or UIDs.
    """
    if not headers:
        raise SeriesError("series has no instances")
    series_uids = {h.series_uid for h in headers}
    if len(series_uids) != 1:
        raise SeriesError(f"instances belong to {len(series_uids)} series, expected one")
    not_ct = sum(1 for h in headers if h.modality != "CT")
    if not_ct:
        raise SeriesError(f"{not_ct} of {len(headers)} instances are not CT")
    sizes = {(h.rows, h.columns) for h in headers}
    if len(sizes) != 1:
        raise SeriesError(f"slices have different sizes: {sorted(sizes)}")
    ordered = order_slices(headers)
    rows, cols = sizes.pop()
    if rows == 0 or cols == 0:
        raise SeriesError("instances carry no Rows/Columns")
    multi = sum(1 for h in ordered.headers if h.frame is not None)
    frame_numbers: list[int] | None = None
    if multi:
        if multi != len(ordered.headers):
            raise SeriesError(
                f"series mixes {multi} frames of multi-frame instances with "
                f"{len(ordered.headers) - multi} single-frame instances"
            )
        hu, quirk_corrected = _read_frames(ordered.headers, rows, cols)
        frame_numbers = [h.frame or 0 for h in ordered.headers]
    else:
        decoded = decode_series(
            [h.path for h in ordered.headers], rows, cols, workers=workers, pool=pool
        )
        hu, quirk_corrected = decoded.hu, decoded.quirk_corrected
    if quirk_corrected:
        log.info("series.pixel_quirk_corrected", extra={"n": quirk_corrected})
    first = ordered.headers[0]
    return CTSeries(
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        sop_uids=[h.sop_uid for h in ordered.headers],
        hu=hu,
        positions_mm=ordered.positions_mm,
        pixel_spacing=first.pixel_spacing,
        duplicates_dropped=ordered.duplicates_dropped,
        quirk_corrected=quirk_corrected,
        frame_numbers=frame_numbers,
    )


def _read_frames(
    headers: Sequence[InstanceHeader], rows: int, cols: int
) -> tuple[NDArray[np.float32], int]:
    """The frames ``headers`` name, in their order, each instance read once."""
    hu = np.empty((len(headers), rows, cols), dtype=np.float32)
    slots: dict[Path, list[int]] = {}
    for k, h in enumerate(headers):
        slots.setdefault(h.path, []).append(k)
    corrected = 0
    for i, (path, ks) in enumerate(slots.items()):
        try:
            frames, fixed = decode_frames(path, [headers[k].frame or 0 for k in ks], rows, cols)
        except SeriesError as exc:
            raise SeriesError(f"multi-frame instance {i + 1} of {len(slots)}: {exc}") from exc
        hu[ks] = frames
        corrected += fixed
    return hu, corrected
