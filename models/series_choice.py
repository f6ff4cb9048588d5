"""Pick the one series of a study to classify, deterministically, from DICOM headers.

A head-CT study often holds several series: thin and thick slices, soft-tissue and
bone kernels, localizers, reformats, dose reports, sometimes contrast phases. The model
was trained on non-contrast axial soft-tissue series of ~5 mm, so a series is judged
on the strongest evidence first, because attributes are written by the scanner and
descriptions by people (one site's "HEAD WITHOUT CONTRAST" is another's "CT HEAD WO"):

1. **What the object is** (hard: nothing overrides it): CT Image Storage (single-frame),
   or Enhanced CT / Legacy Converted Enhanced CT whose frames the Per-Frame Functional
   Groups place (:mod:`models.enhanced_ct`: each frame is then judged as a slice, its
   FrameType as its ImageType), modality CT. Secondary Capture dose reports and protocol
   pages, dose SRs and other non-image objects are skipped, each with its own reason.
2. **ImageType** (PS3.3 C.8.2.1.1.1): LOCALIZER, DERIVED\\SECONDARY (post-processed), or
   a projection/rendering value (MIP, MINIP, VR, 3D, ...) is skipped whatever the
   description says, and so is a reformat value (MPR, REFORMATTED, ...) without ORIGINAL.
   ORIGINAL with AXIAL settles that these are axial slices: no description wording
   ("3D", "COR", "TOPOGRAM") overrides it. Other axial images (DERIVED\\PRIMARY\\AXIAL,
   a console's later ORIGINAL\\SECONDARY\\AXIAL reconstruction) stay eligible but rank
   after ORIGINAL\\PRIMARY ones. ScanOptions "SCOUT MODE" (GE) is a localizer too.
3. **Contrast attributes**: ContrastBolusAgent, -Route, -Volume, -TotalDose with a value
   other than "NONE"/"NO"/"N/A"/"0"/..., or an item in ContrastBolusAgentSequence, mean
   contrast; an explicit "none" value means none, and then text is not consulted. In
   Enhanced CT the Contrast/Bolus Usage functional group decides per frame
   (ContrastBolusAgentAdministered YES: contrast; NO on every frame: none, whatever
   agents the Enhanced Contrast/Bolus module lists); an image flavor (ImageType or
   FrameType value 3) POST_CONTRAST means contrast, PRE_CONTRAST none.
4. **Wording** (:mod:`models.series_wording`), only where 2 and 3 are silent: the image
   kind the SeriesDescription names (scout, dose report, MIP, 3D, MPR, COR, SAG, ...)
   unless ImageType is ORIGINAL and AXIAL; then contrast, read as words with negations
   ("W/O", "PRE CONTRAST", "PLAIN", "ohne KM" mean *no* contrast). SeriesDescription
   speaks for its series; ProtocolName, often shared by the whole study, decides only
   where the description is silent. "HEAD W/WO" names a study with both phases: unknown.
5. **Geometry** (hard): positions and orientation on every slice, axial (gantry tilt
   up to 35 degrees), one image size, at least :data:`MIN_SLICES` distinct positions.

Among eligible series: a site include rule first (higher priority first), then
soft-tissue before bone kernel, ORIGINAL\\PRIMARY before other images, spacing nearest
5 mm, more slices, lower SeriesNumber, UID.

**Site rules** (:class:`SeriesRule`, from ``series_choice.rules`` in the node's config):
each matches series by DICOM attributes (keyword -> regex, all must match, searched
case-insensitively; an absent attribute is matched as empty text). An *exclude* rule
skips a matching series with its reason; an *include* rule makes a matching series
eligible despite steps 2-4 (the site says: this is a head CT to classify) and prefers it
over others, but cannot make steps 1 and 5 pass. Of several rules that match one series,
the highest priority decides (on a tie, exclude wins). To match attributes beyond
:data:`models.dicom_io.HEADER_TAGS`, scan with ``scan_headers(paths,
extra_tags=rule_keywords(rules))``.

The same function serves the node and the CQ500 evaluation, so both see the same series.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword

from models.dicom_io import InstanceHeader, slice_normal
from models.enhanced_ct import ENHANCED_CT_STORAGE as ENHANCED_CT_STORAGE
from models.enhanced_ct import MULTIFRAME_CT_CLASSES
from models.errors import SeriesError
from models.series_wording import Contrast, contrast_wording, image_wording

MIN_SLICES = 10
TARGET_THICKNESS_MM = 5.0
#: cos(35 deg): an axial series' normal is within 35 degrees of the patient z axis.
AXIAL_MIN_COS = 0.819
#: A head fits in ~250 mm; a reconstruction field of view beyond this is a body scan.
MAX_HEAD_FOV_MM = 330.0

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # .7 and the multi-frame .7.1-.7.4
_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

_HEAD_PARTS = {"HEAD", "BRAIN", "SKULL", "CRANIUM", "HEADNECK", "HEAD_NECK", "HEAD NECK"}
_NOT_HEAD_WORDS = re.compile(
    r"\b(CHEST|THORAX|LUNG|ABDOMEN|ABD|PELVIS|SPINE|LSPINE|TSPINE|KNEE|HIP|CARDIAC|HEART|"
    r"LIVER|KIDNEY|EXTREMITY|SHOULDER|ANKLE|WRIST|BREAST)\b"
)
_HEAD_WORDS = re.compile(r"\b(HEAD|BRAIN|CRANIAL|CRANE|KOPF|SCHAEDEL|SKULL|CEREBR\w*|NCCT)\b")
#: ImageType values that mean projections or renderings: never slices to classify.
_PROJECTION_TYPES = frozenset(
    {"MIP", "MINIP", "MIN IP", "MAX IP", "PROJECTION IMAGE", "VR", "VRT", "3D", "SSD"}
)
#: ImageType values that mean resampled images; skipped unless ORIGINAL says otherwise.
_REFORMAT_TYPES = frozenset(
    {"MPR", "REFORMATTED", "CURVED", "CPR", "VOLUME", "CORONAL", "SAGITTAL", "OBLIQUE"}
)
_OTHER_TYPES = frozenset({"SUBTRACTION", "SCREEN SAVE", "DOSE INFO", "DOSE REPORT"})
#: Contrast attribute values that mean "none given" (numbers equal to 0 too).
_NO_CONTRAST_VALUES = re.compile(
    r"^(NONE|NO|N/?A|NIL|NULL|NEGATIVE|NOT (APPLICABLE|GIVEN|USED)|NONE GIVEN|-+|\.|0)$"
)
_LOCALIZER_SCAN_OPTIONS = re.compile(r"\b(SCOUT|TOPOGRAM|SURVIEW|SCANOGRAM|LOCALI[SZ]ER)\b")
_BONE_KERNEL = re.compile(r"(BONE|LUNG|SHARP|EDGE|DETAIL|\bYC\b|\bYD\b|\bD\b|FC3[05]|FC8\d)")
#: Siemens kernels: letter, optional type letter (Hr38, Qr40, Br64), number, suffix.
_SIEMENS_KERNEL = re.compile(r"\b[BHJIQ][A-Z]?(\d{2})[A-Z]?\b", re.IGNORECASE)

#: The InstanceHeader field that holds a keyword, for headers scanned without extra_tags.
_FIELD_OF_KEYWORD: Mapping[str, str] = {
    "SOPClassUID": "sop_class_uid",
    "StudyInstanceUID": "study_uid",
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "ConvolutionKernel": "kernel",
    "SeriesDescription": "description",
    "ProtocolName": "protocol",
    "BodyPartExamined": "body_part",
    "ContrastBolusAgent": "contrast",
    "ContrastBolusRoute": "contrast_route",
    "ScanOptions": "scan_options",
}


# -- site rules -------------------------------------------------------------------------


class SeriesRuleError(ValueError):
    """A site rule that cannot work: ``key`` names the part (e.g. ``match.Foo``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def check_keyword(keyword: str) -> str:
    """``keyword`` if it is a DICOM keyword of a non-sequence attribute; else raise."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise SeriesRuleError(f"match.{keyword}", "not a DICOM keyword")
    if dictionary_VR(tag) == "SQ":
        raise SeriesRuleError(f"match.{keyword}", "a sequence; rules match text attributes")
    return keyword


def compile_pattern(keyword: str, pattern: str) -> re.Pattern[str]:
    """The case-insensitive regex of one ``match`` entry; raises on a bad pattern."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise SeriesRuleError(f"match.{keyword}", f"invalid regular expression: {exc}") from exc


@dataclass(frozen=True)
class SeriesRule:
    """A site's include/exclude rule; see the module docstring for what it does."""

    name: str
    action: Literal["include", "exclude"]
    match: Mapping[str, str]  # DICOM keyword -> regex, all must match
    priority: int = 0
    reason: str = ""
    _compiled: tuple[tuple[str, re.Pattern[str]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise SeriesRuleError("name", "must not be empty")
        if self.action not in ("include", "exclude"):
            raise SeriesRuleError("action", "must be include or exclude")
        if not self.match:
            raise SeriesRuleError("match", "needs at least one attribute")
        compiled = tuple(
            (check_keyword(kw), compile_pattern(kw, pattern)) for kw, pattern in self.match.items()
        )
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, header: InstanceHeader) -> bool:
        """True when every pattern is found in its attribute of ``header``."""
        return all(p.search(attribute_text(header, kw)) for kw, p in self._compiled)

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(kw for kw, _ in self._compiled)


def rule_keywords(rules: Iterable[SeriesRule]) -> tuple[str, ...]:
    """Every keyword the rules match on: pass as ``scan_headers(extra_tags=...)``."""
    return tuple(dict.fromkeys(kw for r in rules for kw in r.keywords))


def attribute_text(header: InstanceHeader, keyword: str) -> str:
    """An attribute of ``header`` as text, from ``extra`` or the field that holds it."""
    if keyword in header.extra:
        return header.extra[keyword]
    if keyword == "ImageType":
        return "\\".join(header.image_type)
    name = _FIELD_OF_KEYWORD.get(keyword)
    return str(getattr(header, name)) if name else ""


def _winning_rule(rules: Sequence[SeriesRule], header: InstanceHeader) -> SeriesRule | None:
    """The matching rule of highest priority; exclude before include, then config order."""
    matching = [(i, r) for i, r in enumerate(rules) if r.matches(header)]
    if not matching:
        return None
    return min(matching, key=lambda ir: (-ir[1].priority, ir[1].action != "exclude", ir[0]))[1]


# -- summaries --------------------------------------------------------------------------


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
    reason: str | None  # None = eligible (in the final ``SeriesChoice.series``: chosen)
    #: The site rule that decided for this series (include or exclude), if any.
    rule: str | None = None


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


# -- the evidence, strongest first ------------------------------------------------------


def _object_reason(first: InstanceHeader) -> str | None:
    """Step 1: objects that are not CT images read as slices (nothing overrides this)."""
    sop = first.sop_class_uid
    if sop == _SECONDARY_CAPTURE or sop.startswith(_SECONDARY_CAPTURE + "."):
        return "Secondary Capture (dose report or screen page), not CT Image Storage"
    if sop == _DOSE_SR:
        return "X-Ray Radiation Dose SR (dose report), not CT Image Storage"
    if sop.startswith(_SR_PREFIX):
        return "structured report, not CT Image Storage"
    if first.modality != "CT":
        return f"modality {first.modality or 'missing'}, not CT"
    if sop in MULTIFRAME_CT_CLASSES:
        if first.frame is None:
            return "multi-frame CT whose frames carry no Per-Frame Functional Groups to place them"
        return None
    if first.frames > 1:
        return "multi-frame instance of CT Image Storage (only Enhanced CT is read per frame)"
    if sop and sop != CT_IMAGE_STORAGE:
        return "not CT Image Storage"
    return None


def _image_type_reason(image_type: set[str]) -> str | None:
    """Step 2: what ImageType says against classifying the images."""
    if "LOCALIZER" in image_type:
        return "localizer/scout"
    bad = image_type & (_PROJECTION_TYPES | _OTHER_TYPES)
    if {"DERIVED", "SECONDARY"} <= image_type:
        bad |= {"DERIVED", "SECONDARY"} | (image_type & _REFORMAT_TYPES)
    if "ORIGINAL" not in image_type:
        bad |= image_type & _REFORMAT_TYPES
    if bad:
        if "DERIVED" in image_type:
            bad.add("DERIVED")
        return f"derived or reformatted images ({', '.join(sorted(bad))})"
    return None


def _is_none_value(value: str) -> bool:
    text = value.strip().upper()
    if _NO_CONTRAST_VALUES.match(text):
        return True
    try:
        return float(text) == 0.0
    except ValueError:
        return contrast_wording(text).verdict is Contrast.NON_CONTRAST


def _contrast_attributes(h: InstanceHeader) -> tuple[str | None, bool]:
    """Step 3: (evidence of contrast, whether an attribute explicitly says none)."""
    explicit_none = False
    for keyword, value in (
        ("ContrastBolusAgent", h.contrast),
        ("ContrastBolusRoute", h.contrast_route),
        ("ContrastBolusVolume", h.contrast_volume),
        ("ContrastBolusTotalDose", h.contrast_dose),
    ):
        if not value.strip():
            continue
        if _is_none_value(value):
            explicit_none = True
        else:
            return f"{keyword} {value.strip()!r}", explicit_none
    if h.contrast_administered is not None:  # Enhanced CT: the frame's usage decides
        if h.contrast_administered:
            return "ContrastBolusUsageSequence: agent administered", explicit_none
        return None, True
    if h.contrast_agents:
        return "ContrastBolusAgentSequence", explicit_none
    return None, explicit_none


def _heuristic_reason(headers: Sequence[InstanceHeader]) -> str | None:
    """Steps 2-4: reasons a site include rule may override."""
    first = headers[0]
    image_type = {v for h in headers for v in h.image_type}
    why = _image_type_reason(image_type)
    if why is not None:
        return why
    if _LOCALIZER_SCAN_OPTIONS.search(first.scan_options.upper()):
        return f"localizer/scout (ScanOptions {first.scan_options!r})"
    if "POST_CONTRAST" in image_type:  # Enhanced CT's image flavor (PS3.3 C.8.16.1.3)
        return "contrast-enhanced (ImageType/FrameType POST_CONTRAST)"
    explicit_none = "PRE_CONTRAST" in image_type
    for h in headers:
        evidence, none = _contrast_attributes(h)
        if evidence is not None:
            return f"contrast-enhanced ({evidence})"
        explicit_none |= none
    if not {"ORIGINAL", "AXIAL"} <= image_type:
        # Only the description: a protocol names the exam ("CTA HEAD W/ 3D"), not a series.
        kind = image_wording(first.description)
        if kind is not None:
            return f"{kind[0].value} (by description: {kind[1]!r})"
    if explicit_none:
        return None
    for source, text in (("description", first.description), ("protocol", first.protocol)):
        wording = contrast_wording(text)
        if wording.verdict is Contrast.CONTRAST:
            return f"contrast-enhanced (by {source}: {wording.evidence!r})"
        if wording.verdict is Contrast.NON_CONTRAST:
            return None  # the description speaks for its series before the protocol
    return None


def _geometry_reason(headers: Sequence[InstanceHeader]) -> str | None:
    """Step 5: what the slices must be for the model to read them (nothing overrides)."""
    first = headers[0]
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


def _series_reason(headers: Sequence[InstanceHeader], rule: SeriesRule | None) -> str | None:
    """Why this series cannot be classified, or None when it can."""
    hard = _object_reason(headers[0])
    if hard is not None:
        if rule is not None and rule.action == "include":
            return f"{hard}; site rule {rule.name!r} matched but cannot include it"
        return hard
    if rule is not None and rule.action == "exclude":
        return f"site rule {rule.name!r}: {rule.reason or 'excluded'}"
    if rule is None:
        why = _heuristic_reason(headers)
        if why is not None:
            return why
    hard = _geometry_reason(headers)
    if hard is not None and rule is not None:
        return f"{hard}; site rule {rule.name!r} matched but cannot include it"
    return hard


def _not_head_reason(cts: Sequence[Sequence[InstanceHeader]]) -> str | None:
    """Why a study's CT series are not a head, judged from body part, wording and FOV."""
    parts = {h.body_part for s in cts for h in s if h.body_part}
    if parts and not parts & _HEAD_PARTS:
        return f"BodyPartExamined {'/'.join(sorted(parts))} is not head"
    if parts:
        return None
    words = " ".join(f"{s[0].description} {s[0].protocol}".upper() for s in cts)
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


@dataclass(frozen=True)
class _Judged:
    summary: SeriesSummary
    headers: list[InstanceHeader]
    rule: SeriesRule | None
    secondary: bool  # not ORIGINAL\\PRIMARY: eligible, ranked after those that are


def choose_series(
    headers: Sequence[InstanceHeader], rules: Sequence[SeriesRule] = ()
) -> SeriesChoice:
    """Choose the series of one study to classify; see the module docstring for the rule."""
    if not headers:
        raise SeriesError("study has no instances")
    study_uid = headers[0].study_uid
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid].append(h)

    judged: list[_Judged] = []
    for uid, items in by_series.items():
        items.sort(
            key=lambda h: (
                h.instance_number is None,
                h.instance_number or 0,
                h.sop_uid,
                h.frame or 0,
            )
        )
        first = items[0]
        rule = _winning_rule(rules, first)
        judged.append(
            _Judged(
                SeriesSummary(
                    series_uid=uid,
                    n_instances=len(items),
                    modality=first.modality,
                    description=first.description,
                    kernel=first.kernel,
                    spacing_mm=_spacing(items),
                    bone_kernel=is_bone_kernel(first.kernel, first.description),
                    reason=_series_reason(items, rule),
                    rule=rule.name if rule is not None else None,
                ),
                items,
                rule,
                not {"ORIGINAL", "PRIMARY"} <= {v for h in items for v in h.image_type},
            )
        )
    skipped = {j.summary.series_uid: j.summary.reason for j in judged if j.summary.reason}

    def done(chosen: _Judged | None, reason: str | None, final: dict[str, str]) -> SeriesChoice:
        return SeriesChoice(
            study_uid,
            chosen.summary if chosen else None,
            chosen.headers if chosen else [],
            final,
            reason,
            tuple(replace(j.summary, reason=final.get(j.summary.series_uid)) for j in judged),
        )

    ct_series = [j.headers for j in judged if j.summary.modality == "CT"]
    if not ct_series:
        modalities = sorted({j.summary.modality or "missing" for j in judged})
        return done(None, f"no CT series (modality {'/'.join(modalities)})", skipped)
    included = any(
        j.rule is not None and j.rule.action == "include" and j.summary.reason is None
        for j in judged
    )
    images = [h for h in ct_series if _object_reason(h[0]) is None] or ct_series
    not_head = None if included else _not_head_reason(images)
    if not_head is not None:
        return done(None, not_head, {j.summary.series_uid: not_head for j in judged})
    eligible = [j for j in judged if j.summary.reason is None]
    if not eligible:
        excluded = [
            j.rule.name
            for j in judged
            if j.rule is not None and (j.summary.reason or "").startswith("site rule")
        ]
        reason = "no eligible axial CT series"
        if excluded:  # say so: an admin reading the worklist must see the rule acted
            names = ", ".join(repr(n) for n in dict.fromkeys(excluded))
            reason += f" (site rule {names} excluded {len(excluded)} of {len(judged)} series)"
        return done(None, reason, skipped)

    def rank(j: _Judged) -> tuple[object, ...]:
        s, first = j.summary, j.headers[0]
        spacing = s.spacing_mm if s.spacing_mm is not None else 1e9
        number = first.series_number if first.series_number is not None else 1 << 30
        include = j.rule.priority if j.rule is not None and j.rule.action == "include" else None
        return (
            (0, -include) if include is not None else (1, 0),
            s.bone_kernel,
            j.secondary,
            round(abs(spacing - TARGET_THICKNESS_MM), 3),
            -s.n_instances,
            number,
            s.series_uid,
        )

    eligible.sort(key=rank)
    chosen = eligible[0]
    for j in eligible[1:]:
        s, why = j.summary, []
        if chosen.rule is not None and j.rule is None:
            why.append(f"site rule {chosen.rule.name!r} prefers that one")
        if s.bone_kernel and not chosen.summary.bone_kernel:
            why.append("bone kernel")
        if j.secondary and not chosen.secondary:
            why.append("not ORIGINAL\\PRIMARY")
        if s.spacing_mm is not None:
            why.append(f"spacing {s.spacing_mm:.1f} mm")
        text = "another series fits better" + (f" ({', '.join(why)})" if why else "")
        if j.rule is not None:
            text += f"; site rule {j.rule.name!r} included it"
        skipped[s.series_uid] = text
    return done(chosen, None, skipped)
