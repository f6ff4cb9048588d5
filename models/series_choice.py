"""Pick the one series of a study to classify, deterministically, from DICOM headers.

A head-CT study often holds several series: thin and thick slices, soft-tissue and
bone kernels, localizers, reformats, sometimes a contrast phase. The model was trained
on non-contrast axial soft-tissue series of ~5 mm, so we choose, in order of preference
(METHOD.md, "CQ500"):

1. CT, single-frame, original axial images (gantry tilt up to 35 degrees);
2. no localizer/scout, no derived/secondary/reformatted/MIP images, no contrast agent;
3. at least :data:`MIN_SLICES` slices of one size with positions;
4. soft-tissue/standard kernel before a bone/sharp kernel;
5. slice spacing nearest 5 mm, then more slices, then lower SeriesNumber, then UID.

The same function serves the node and the CQ500 evaluation, so both see the same series.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from models.dicom_io import InstanceHeader, slice_normal
from models.errors import SeriesError

MIN_SLICES = 10
TARGET_THICKNESS_MM = 5.0
#: cos(35 deg): an axial series' normal is within 35 degrees of the patient z axis.
AXIAL_MIN_COS = 0.819
#: A head fits in ~250 mm; a reconstruction field of view beyond this is a body scan.
MAX_HEAD_FOV_MM = 330.0

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

_HEAD_PARTS = {"HEAD", "BRAIN", "SKULL", "CRANIUM", "HEADNECK", "HEAD_NECK", "HEAD NECK"}
_NOT_HEAD_WORDS = re.compile(
    r"\b(CHEST|THORAX|LUNG|ABDOMEN|ABD|PELVIS|SPINE|LSPINE|TSPINE|KNEE|HIP|CARDIAC|HEART|"
    r"LIVER|KIDNEY|EXTREMITY|SHOULDER|ANKLE|WRIST|BREAST)\b"
)
_HEAD_WORDS = re.compile(r"\b(HEAD|BRAIN|CRANIAL|CRANE|KOPF|SCHAEDEL|SKULL|CEREBR\w*|NCCT)\b")
_DERIVED_WORDS = {"DERIVED", "SECONDARY", "REFORMATTED", "MPR", "MIP", "MINIP", "PROJECTION IMAGE"}
_CONTRAST_DESC = re.compile(r"(C\+|\bCONTRAST\b|\bCECT\b|\bPOST\b|\bKM\b|\bCTA\b|ANGIO|\bCE\b)")
_BONE_KERNEL = re.compile(r"(BONE|LUNG|SHARP|EDGE|DETAIL|\bYC\b|\bYD\b|\bD\b|FC3[05]|FC8\d)")
_SIEMENS_KERNEL = re.compile(r"\b[BHJIQ](\d{2})[a-z]?\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """What series choice knows about one series, and why it was not chosen."""

    series_uid: str
    n_instances: int
    modality: str
    description: str
    kernel: str
    spacing_mm: float | None
    bone_kernel: bool
    reason: str | None  # None = eligible


@dataclass(frozen=True)
class SeriesChoice:
    """The outcome for one study: the chosen series (if any) and why others were not."""

    study_uid: str
    chosen: SeriesSummary | None
    headers: list[InstanceHeader]
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why the study is not eligible, when chosen is None
    #: Every series of the study in first-seen order, the chosen one included; each
    #: carries its own reason (None for the chosen series), so outputs can list them all.
    series: tuple[SeriesSummary, ...] = ()

    def summary_of(self, series_uid: str) -> SeriesSummary | None:
        """The summary of one series of this study, with its final reason."""
        for s in self.series:
            if s.series_uid == series_uid:
                return s
        return None

    @property
    def eligible(self) -> bool:
        return self.chosen is not None


def group_by_study(headers: Iterable[InstanceHeader]) -> dict[str, list[InstanceHeader]]:
    """Headers grouped by StudyInstanceUID, in first-seen order."""
    studies: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        studies[h.study_uid].append(h)
    return dict(studies)


def is_bone_kernel(kernel: str, description: str) -> bool:
    """True for bone/sharp reconstruction kernels (Siemens H/B/J >= 60, GE BONE/LUNG...)."""
    text = f"{kernel} {description}".upper()
    if _BONE_KERNEL.search(text):
        return True
    m = _SIEMENS_KERNEL.search(kernel)
    return bool(m and int(m.group(1)) >= 60)


def _spacing(headers: Sequence[InstanceHeader]) -> float | None:
    positioned = [h for h in headers if h.position is not None and h.orientation is not None]
    if len(positioned) >= 2 and positioned[0].orientation is not None:
        try:
            normal = slice_normal(positioned[0].orientation)
        except SeriesError:
            normal = None
        if normal is not None:
            z = np.sort([float(np.dot(normal, h.position)) for h in positioned])  # type: ignore[arg-type]
            gaps = np.diff(z)
            gaps = gaps[gaps > 0.01]
            if gaps.size:
                return float(np.median(gaps))
    thick = [h.slice_thickness for h in headers if h.slice_thickness]
    return float(np.median(thick)) if thick else None


def _series_reason(headers: Sequence[InstanceHeader]) -> str | None:
    """Why this series cannot be classified, or None when it can."""
    first = headers[0]
    if first.modality != "CT":
        return f"modality {first.modality or 'missing'}, not CT"
    if first.sop_class_uid == ENHANCED_CT_STORAGE or first.frames > 1:
        return "multi-frame (Enhanced CT) images are not supported yet"
    if first.sop_class_uid and first.sop_class_uid != CT_IMAGE_STORAGE:
        return "not CT Image Storage"
    image_type = {v for h in headers for v in h.image_type}
    if (
        "LOCALIZER" in image_type
        or "SCOUT" in image_type
        or "TOPOGRAM" in first.description.upper()
    ):
        return "localizer/scout"
    derived = image_type & _DERIVED_WORDS
    if derived:
        return f"derived or reformatted images ({', '.join(sorted(derived))})"
    desc = first.description.upper()
    if any(w in desc for w in ("MPR", "MIP", "REFORMAT", "CORONAL", "SAGITTAL", "3D")):
        return "reformatted series (by description)"
    if any(h.contrast for h in headers) or _CONTRAST_DESC.search(desc):
        return "contrast-enhanced"
    if any(h.orientation is None or h.position is None for h in headers):
        return "slices without ImagePositionPatient/ImageOrientationPatient"
    orient = first.orientation
    assert orient is not None
    try:
        normal = slice_normal(orient)
    except SeriesError:
        return "invalid ImageOrientationPatient"
    if abs(normal[2]) < AXIAL_MIN_COS:
        return "not axial (coronal, sagittal or oblique)"
    if len({(h.rows, h.columns) for h in headers}) != 1:
        return "slices of different sizes"
    n_positions = len({round(float(np.dot(normal, h.position)), 2) for h in headers})  # type: ignore[arg-type]
    if n_positions < MIN_SLICES:
        return f"only {n_positions} slices (< {MIN_SLICES})"
    return None


def _not_head_reason(cts: Sequence[Sequence[InstanceHeader]]) -> str | None:
    """Why a study's CT series are not a head, judged from body part, wording and FOV."""
    parts = {h.body_part for s in cts for h in s if h.body_part}
    if parts and not parts & _HEAD_PARTS:
        return f"BodyPartExamined {'/'.join(sorted(parts))} is not head"
    if parts:
        return None
    words = " ".join(s[0].description.upper() for s in cts)
    if _NOT_HEAD_WORDS.search(words) and not _HEAD_WORDS.search(words):
        return "series descriptions name a body region other than the head"
    fovs = [
        max(h.rows * h.pixel_spacing[0], h.columns * h.pixel_spacing[1])
        for s in cts
        for h in s[:1]
        if h.pixel_spacing
    ]
    if fovs and min(fovs) > MAX_HEAD_FOV_MM:
        return f"field of view {min(fovs):.0f} mm is larger than a head"
    return None


def choose_series(headers: Sequence[InstanceHeader]) -> SeriesChoice:
    """Choose the series of one study to classify; see the module docstring for the rule."""
    if not headers:
        raise SeriesError("study has no instances")
    study_uid = headers[0].study_uid
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid].append(h)

    summaries: list[tuple[SeriesSummary, list[InstanceHeader]]] = []
    for uid, items in by_series.items():
        first = items[0]
        summaries.append(
            (
                SeriesSummary(
                    series_uid=uid,
                    n_instances=len(items),
                    modality=first.modality,
                    description=first.description,
                    kernel=first.kernel,
                    spacing_mm=_spacing(items),
                    bone_kernel=is_bone_kernel(first.kernel, first.description),
                    reason=_series_reason(items),
                ),
                items,
            )
        )
    skipped = {s.series_uid: s.reason for s, _ in summaries if s.reason is not None}
    ct_series = [items for s, items in summaries if s.modality == "CT"]
    if not ct_series:
        modalities = sorted({s.modality or "missing" for s, _ in summaries})
        return SeriesChoice(
            study_uid,
            None,
            [],
            skipped,
            f"no CT series (modality {'/'.join(modalities)})",
            _final(summaries, skipped),
        )
    not_head = _not_head_reason(ct_series)
    if not_head is not None:
        skipped = {s.series_uid: not_head for s, _ in summaries}
        return SeriesChoice(study_uid, None, [], skipped, not_head, _final(summaries, skipped))
    eligible = [(s, items) for s, items in summaries if s.reason is None]
    if not eligible:
        return SeriesChoice(
            study_uid,
            None,
            [],
            skipped,
            "no eligible axial CT series",
            _final(summaries, skipped),
        )

    def rank(entry: tuple[SeriesSummary, list[InstanceHeader]]) -> tuple[object, ...]:
        s, items = entry
        spacing = s.spacing_mm if s.spacing_mm is not None else 1e9
        number = items[0].series_number if items[0].series_number is not None else 1 << 30
        return (
            s.bone_kernel,
            round(abs(spacing - TARGET_THICKNESS_MM), 3),
            -s.n_instances,
            number,
            s.series_uid,
        )

    eligible.sort(key=rank)
    chosen, chosen_headers = eligible[0]
    for s, _ in eligible[1:]:
        why = []
        if s.bone_kernel and not chosen.bone_kernel:
            why.append("bone kernel")
        if s.spacing_mm is not None:
            why.append(f"spacing {s.spacing_mm:.1f} mm")
        skipped[s.series_uid] = "another series fits better" + (
            f" ({', '.join(why)})" if why else ""
        )
    return SeriesChoice(
        study_uid, chosen, chosen_headers, skipped, None, _final(summaries, skipped)
    )


def _final(
    summaries: Sequence[tuple[SeriesSummary, list[InstanceHeader]]], skipped: dict[str, str]
) -> tuple[SeriesSummary, ...]:
    """Each series' summary with the reason the choice ended with."""
    return tuple(replace(s, reason=skipped.get(s.series_uid)) for s, _ in summaries)
