"""Synthetic head-CT phantoms: seeded studies written as valid CT Image Storage files.

Why this exists: real head CTs (RSNA 2019, CQ500) cannot ship with the repository, yet every
test and the demo need studies that the node, the series chooser and the network treat like
real ones. A phantom is an ellipsoidal head (scalp, skull of varying thickness, gray and white
matter, ventricles, sulci, basal cisterns, skull base) with CT noise, optionally carrying one or
more bleeds of the five subtypes, each with per-slice ground truth. Everything is drawn from
independent random streams keyed by ``seed``, so the same spec always gives the same pixels and
UIDs, and adding a bleed to a spec changes only the voxels of that bleed (and, for an
intraparenchymal one, its edema rim), never an unlabelled slice.

Only numpy, pydicom and the torch-free models.uids are used (no torch, no highdicom): the
tests, the training package and the demo all import this module.

Geometry: the head fills the scanned range along z (skull base at the first slice, vertex at
the last), so any slice count yields a whole head; in-plane sizes are in millimetres with a
240 mm field of view. Patient coordinates follow DICOM LPS (PS3.3 C.7.6.2.1.1): +x towards the
patient's left (image columns), +y posterior (image rows), +z superior.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from models.labels import LABELS, SUBTYPES
from models.uids import derived_uid

__all__ = [
    "EXTRA_SERIES",
    "LABELS",
    "SUBTYPES",
    "PhantomSpec",
    "PhantomVolume",
    "WrittenSeries",
    "WrittenStudy",
    "make_volume",
    "random_spec",
    "supported_transfer_syntaxes",
    "write_study",
]


#: Series a study may carry besides the main soft-tissue axial series.
EXTRA_SERIES: Final[tuple[str, ...]] = ("bone_thin", "localizer")

#: Body parts rendered as a head (PS3.16 Annex L defined terms); anything else gets a torso.
HEAD_BODY_PARTS: Final[frozenset[str]] = frozenset({"HEAD", "BRAIN", "SKULL"})

HEAD_FOV_MM: Final[float] = 240.0  # a 512 matrix at ~0.47 mm: the usual head reconstruction
BODY_FOV_MM: Final[float] = 380.0
RESCALE_INTERCEPT: Final[int] = -1024
HU_MIN: Final[int] = -1024  # what stored value 0 means with the intercept above
HU_MAX: Final[int] = 3071  # 12 stored bits: the classic CT range, enough for cortical bone
MIN_BLEED_AREA_MM2: Final[float] = 10.0  # smaller cuts are not painted, so labels never lie
_NOMINAL_HEAD_HEIGHT_MM: Final[float] = 150.0  # skull base to vertex, for the skull obliquity
_U_LOW: Final[float] = 0.02  # anatomical height of the first slice (0 = skull base)
_U_HIGH: Final[float] = 0.985  # ... and of the last one (1 = vertex)

# Independent random streams, so that e.g. adding a bleed does not move the ventricles.
_STREAM_ANATOMY: Final[int] = 1
_STREAM_NOISE: Final[int] = 2
_STREAM_THIN_NOISE: Final[int] = 3
_STREAM_META: Final[int] = 4
_STREAM_RANDOM_SPEC: Final[int] = 5
_STREAM_BLEED: Final[int] = 10  # + index of the subtype in LABELS


_UNCOMPRESSED: Final[tuple[UID, ...]] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
_COMPRESSED: Final[tuple[UID, ...]] = (RLELossless, JPEG2000Lossless, JPEGLSLossless)

F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
Layout = Literal["flat", "tree"]


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhantomSpec:
    """What one synthetic study should look like; the seed decides everything else.

    ``bleeds`` asks for subtypes (names from ``SUBTYPES``); the ground truth is what was drawn
    (``PhantomVolume.slice_labels``), which for very short studies (a handful of slices) may
    miss a requested bleed that fell between slices. From 12 slices on every requested subtype
    appears, and from 20 on it spans at least two contiguous slices.

    ``body_part`` outside ``HEAD_BODY_PARTS`` renders a crude chest instead (no bleeds);
    ``modality`` is written as given, while the SOP class stays CT Image Storage, so only
    ``"CT"`` gives files dciodvfy accepts.
    """

    seed: int = 0
    n_slices: int = 32
    size: int = 512
    slice_thickness_mm: float = 5.0
    bleeds: tuple[str, ...] = ()
    patient_name: str = "PHANTOM^HEAD"
    patient_id: str = "PH0001"
    body_part: str = "HEAD"
    modality: str = "CT"
    noise_hu: float = 8.0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.n_slices <= 400:
            raise ValueError(f"n_slices must be in 1..400, got {self.n_slices}")
        if not 16 <= self.size <= 2048:
            raise ValueError(f"size must be in 16..2048, got {self.size}")
        if not 0.1 <= self.slice_thickness_mm <= 20.0:
            raise ValueError(
                f"slice_thickness_mm must be in 0.1..20, got {self.slice_thickness_mm}"
            )
        unknown = [b for b in self.bleeds if b not in SUBTYPES]
        if unknown:
            raise ValueError(f"unknown bleed subtypes {unknown}; expected names from {SUBTYPES}")
        if len(set(self.bleeds)) != len(self.bleeds):
            raise ValueError(f"bleeds must not repeat a subtype: {self.bleeds}")
        if self.bleeds and not self.is_head:
            raise ValueError(f"bleeds need a head study, body_part is {self.body_part!r}")
        if self.noise_hu < 0:
            raise ValueError(f"noise_hu must be >= 0, got {self.noise_hu}")

    @property
    def is_head(self) -> bool:
        """Whether a head is rendered (else a torso, for 'wrong body part' tests)."""
        return self.body_part.upper() in HEAD_BODY_PARTS

    @property
    def pixel_spacing_mm(self) -> float:
        """In-plane pixel size: the field of view over the matrix."""
        return (HEAD_FOV_MM if self.is_head else BODY_FOV_MM) / self.size


@dataclass(frozen=True)
class PhantomVolume:
    """One rendered axial series with its ground truth.

    ``bleed_bits`` holds, per voxel, bit ``k - 1`` set where the subtype ``LABELS[k]`` was
    painted; it lets tests check that labels and pixels agree (``subtype_mask``).
    """

    hu: npt.NDArray[np.int16]  # (Z, H, W); slice 0 is the most inferior (lowest z)
    slice_labels: npt.NDArray[np.uint8]  # (Z, 6) in LABELS order; any = max of the subtypes
    z_positions: npt.NDArray[np.float64]  # (Z,) mm, ascending
    pixel_spacing_mm: float = HEAD_FOV_MM / 512
    slice_thickness_mm: float = 5.0
    bleed_bits: npt.NDArray[np.uint8] | None = None  # (Z, H, W) bit field, see above

    @property
    def study_labels(self) -> npt.NDArray[np.uint8]:
        """(6,) study-level truth: a finding is present when any slice has it."""
        if self.slice_labels.shape[0] == 0:
            return np.zeros(len(LABELS), dtype=np.uint8)
        return np.asarray(self.slice_labels.max(axis=0), dtype=np.uint8)

    def subtype_mask(self, subtype: str) -> Mask:
        """(Z, H, W) voxels painted with ``subtype`` (all False for a normal study)."""
        if subtype not in SUBTYPES:
            raise ValueError(f"unknown subtype {subtype!r}; expected one of {SUBTYPES}")
        if self.bleed_bits is None:
            return np.zeros(self.hu.shape, dtype=bool)
        bit = np.uint8(1 << (LABELS.index(subtype) - 1))
        return np.asarray((self.bleed_bits & bit) != 0)


@dataclass(frozen=True)
class WrittenSeries:
    """One series on disk; ``files`` and ``sop_uids`` run inferior to superior when axial."""

    series_uid: str
    description: str
    kind: str  # "axial", "bone_thin" or "localizer"
    files: list[Path]
    sop_uids: list[str]
    z_positions: tuple[float, ...] = ()
    slice_labels: npt.NDArray[np.uint8] | None = None  # (n, 6) truth per file, axial kinds


@dataclass(frozen=True)
class WrittenStudy:
    """A study on disk: its series and the volume of its main series."""

    study_uid: str
    patient_id: str
    series: list[WrittenSeries]
    volume: PhantomVolume

    @property
    def main(self) -> WrittenSeries:
        """The soft-tissue ~5 mm axial series: the one a series chooser should pick."""
        for s in self.series:
            if s.kind == "axial":
                return s
        raise LookupError("study has no main axial series")  # pragma: no cover

    @property
    def files(self) -> list[Path]:
        """Every file of the study, series by series."""
        return [f for s in self.series for f in s.files]


# --------------------------------------------------------------------------------------------
# Random specs
# --------------------------------------------------------------------------------------------


def random_spec(
    seed: int,
    p_bleed: float = 0.5,
    *,
    p_subtype: float = 0.35,
    size: int = 512,
    n_slices: tuple[int, int] = (20, 60),
) -> PhantomSpec:
    """A varied spec for training and demos: 20-60 slices, positive with ``p_bleed``.

    A positive study carries each subtype with ``p_subtype`` and at least one; this mimics
    RSNA, where most positive studies show one or two subtypes. The patient ID follows the
    seed, so phantom patients never collide across folds.
    """
    if not 0.0 <= p_bleed <= 1.0 or not 0.0 <= p_subtype <= 1.0:
        raise ValueError("p_bleed and p_subtype must be probabilities")
    rng = _rng(seed, _STREAM_RANDOM_SPEC)
    n = int(rng.integers(n_slices[0], n_slices[1] + 1))
    positive = bool(rng.random() < p_bleed)
    picks = rng.random(len(SUBTYPES)) < p_subtype
    forced = int(rng.integers(len(SUBTYPES)))
    bleeds: tuple[str, ...] = ()
    if positive:
        if not picks.any():
            picks[forced] = True
        bleeds = tuple(s for s, p in zip(SUBTYPES, picks, strict=True) if p)
    return PhantomSpec(seed=seed, n_slices=n, size=size, bleeds=bleeds, patient_id=f"PH{seed:06d}")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


@dataclass(frozen=True, slots=True)
class _Head:
    """Per-seed anatomy: sizes, pose and tissue values (HU from standard CT references)."""

    a_mm: float  # outer half-width (left-right) of the skull at its widest
    b_mm: float  # outer half-length (antero-posterior)
    skull_mm: float
    scalp_mm: float
    rim_mm: float  # subarachnoid CSF between inner table and cortex
    cortex_mm: float
    sulcus_depth_mm: float
    sulcus_count: int
    vent_scale: float
    yaw_rad: float
    dx_mm: float
    dy_mm: float
    phases: tuple[float, ...]
    gray_hu: float
    white_hu: float
    csf_hu: float
    scalp_hu: float
    deep_gray_hu: float

    @classmethod
    def draw(cls, seed: int) -> _Head:
        rng = _rng(seed, _STREAM_ANATOMY)
        scale = rng.uniform(0.92, 1.06)
        return cls(
            a_mm=float(72.0 * scale * rng.uniform(0.96, 1.04)),
            b_mm=float(93.0 * scale * rng.uniform(0.96, 1.04)),
            skull_mm=float(rng.uniform(4.0, 6.0)),
            scalp_mm=float(rng.uniform(4.0, 7.0)),
            rim_mm=float(rng.uniform(0.6, 1.6)),
            cortex_mm=float(rng.uniform(2.5, 3.5)),
            sulcus_depth_mm=float(rng.uniform(9.0, 15.0)),
            sulcus_count=int(rng.integers(30, 42)),
            vent_scale=float(rng.uniform(0.75, 1.35)),
            yaw_rad=float(np.deg2rad(rng.uniform(-8.0, 8.0))),
            dx_mm=float(rng.uniform(-6.0, 6.0)),
            dy_mm=float(rng.uniform(-6.0, 6.0)),
            phases=tuple(float(p) for p in rng.uniform(0.0, 2 * np.pi, 8)),
            gray_hu=float(rng.uniform(36.0, 41.0)),
            white_hu=float(rng.uniform(25.0, 30.0)),
            csf_hu=float(rng.uniform(2.0, 8.0)),
            scalp_hu=float(rng.uniform(30.0, 45.0)),
            deep_gray_hu=float(rng.uniform(33.0, 37.0)),
        )


class _Grid:
    """Per-pixel maps that do not change along z, computed once per rendered series."""

    def __init__(self, head: _Head, size: int, spacing: float) -> None:
        # Pixel centres in patient mm relative to the head centre, then yawed into head axes.
        c = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(spacing)
        px, py = np.meshgrid(c - head.dx_mm, c - head.dy_mm)  # px varies along columns
        cos_y, sin_y = math.cos(head.yaw_rad), math.sin(head.yaw_rad)
        self.x: F32 = (cos_y * px + sin_y * py).astype(np.float32)
        self.y: F32 = (-sin_y * px + cos_y * py).astype(np.float32)
        self.r: F32 = np.hypot(self.x, self.y)
        self.theta: F32 = np.arctan2(self.y, self.x)
        self.c2: F32 = np.cos(self.theta) ** 2
        self.s2: F32 = (1.0 - self.c2).astype(np.float32)
        p = head.phases
        th = self.theta
        self.skull_mod: F32 = 1.0 + 0.2 * np.sin(2 * th + p[0]) + 0.08 * np.sin(5 * th + p[1])
        # Sulci: a radial comb made irregular by two harmonics of angle; the comb also twists
        # with depth below (see _render_head_slice) so that sulci bend like real ones.
        sulcus_angle = (
            head.sulcus_count * th + 2.5 * np.sin(3 * th + p[2]) + 1.2 * np.sin(7 * th + p[4])
        )
        self.sulc_cos: F32 = np.cos(sulcus_angle)
        self.sulc_sin: F32 = np.sin(sulcus_angle)
        self.sulc_depth: F32 = head.sulcus_depth_mm * (
            1.0 + 0.3 * np.sin(4 * th + p[3]) + 0.25 * np.sin(11 * th + p[5])
        )
        self.midline: Mask = np.abs(self.x) < 1.2
        self.falx: Mask = np.abs(self.x) < 0.35
        self.spacing = spacing
        self.shape = (size, size)
        self._centre = (
            (size - 1) / 2.0 + head.dy_mm / spacing,
            (size - 1) / 2.0 + head.dx_mm / spacing,
        )
        self._yaw = (cos_y, sin_y)

    def _box(self, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
        """Rows and columns that hold a disc of ``radius`` mm around head point (cx, cy).

        Small structures are evaluated on their box only: this is most of the speed.
        """
        cos_y, sin_y = self._yaw
        col = self._centre[1] + (cos_y * cx - sin_y * cy) / self.spacing
        row = self._centre[0] + (sin_y * cx + cos_y * cy) / self.spacing
        rad = radius / self.spacing + 2.0
        n = self.shape[0]
        r0, r1 = max(0, math.floor(row - rad)), min(n, math.ceil(row + rad) + 1)
        c0, c1 = max(0, math.floor(col - rad)), min(n, math.ceil(col + rad) + 1)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse(self, cx: float, cy: float, ax: float, by: float, rot: float = 0.0) -> Mask:
        """Pixels inside an ellipse given in head mm (``rot`` turns it, radians)."""
        out = np.zeros(self.shape, dtype=bool)
        box = self._box(cx, cy, max(ax, by))
        if box is None:
            return out
        dx = self.x[box] - np.float32(cx)
        dy = self.y[box] - np.float32(cy)
        if rot:
            cr, sr = math.cos(rot), math.sin(rot)
            dx, dy = cr * dx + sr * dy, -sr * dx + cr * dy
        out[box] = (dx / np.float32(ax)) ** 2 + (dy / np.float32(by)) ** 2 < 1.0
        return out

    def segment(self, x0: float, y0: float, x1: float, y1: float, half_width: float) -> Mask:
        """Pixels within ``half_width`` mm of a line segment (a fissure)."""
        out = np.zeros(self.shape, dtype=bool)
        vx, vy = x1 - x0, y1 - y0
        half_len = 0.5 * math.hypot(vx, vy)
        box = self._box(0.5 * (x0 + x1), 0.5 * (y0 + y1), half_len + half_width)
        if box is None:
            return out
        wx = self.x[box] - np.float32(x0)
        wy = self.y[box] - np.float32(y0)
        t = np.clip((wx * vx + wy * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        out[box] = (wx - t * vx) ** 2 + (wy - t * vy) ** 2 < half_width * half_width
        return out


@dataclass
class _Slice:
    """One rendered slice and the anatomical masks bleeds are drawn into."""

    img: F32
    depth: F32  # mm inward from the inner table (negative in bone and outside)
    soft: Mask  # intracranial and not bone: where blood can collect
    brain: Mask  # parenchyma (gray, white, deep nuclei)
    sulc: F32  # sulcal pattern, > 0.9 in a sulcus
    ventricles: tuple[Mask | None, Mask | None]  # lateral ventricles: patient right, left
    cisterns: Mask | None


def _outline_scale(u: float) -> float:
    """Head width at anatomical height ``u`` relative to the widest (about a third up)."""
    if u <= 0.4:
        return 0.80 + 0.20 * math.sin(0.5 * math.pi * u / 0.4)
    q = (u - 0.4) / 0.63
    return math.sqrt(max(0.0, 1.0 - q * q))


def _skull_obliquity(head: _Head, u: float) -> float:
    """How much thicker the skull looks in-plane where the axial cut grazes the calvarium."""
    if u <= 0.4:
        return 1.0
    q = (u - 0.4) / 0.63
    slope = head.a_mm * q / max(math.sqrt(max(1e-6, 1 - q * q)), 1e-3) / (0.63 * 150.0)
    return min(4.0, math.sqrt(1.0 + slope * slope))


def _render_head_slice(g: _Grid, h: _Head, u: float) -> _Slice:
    """Paint one axial slice of the head at anatomical height ``u`` (0 base, 1 vertex)."""
    s = _outline_scale(u)
    a, b = h.a_mm * s, h.b_mm * s
    w_base = max(0.0, (0.2 - u) / 0.2)  # 1 at the skull base, 0 from a fifth of the way up
    t0 = h.skull_mm * _skull_obliquity(h, u) * (1.0 + 0.8 * w_base)
    r_out = (g.c2 * np.float32(1.0 / (a * a)) + g.s2 * np.float32(1.0 / (b * b))) ** -0.5
    out = g.r - r_out  # mm outside the outer table
    thick = g.skull_mod * np.float32(t0)
    depth = -out - thick
    img = np.full(g.shape, -1000.0, dtype=np.float32)
    np.copyto(img, np.float32(h.scalp_hu), where=out < h.scalp_mm)
    # Cortical tables ~1700 HU, diploe ~800 HU between them.
    bone = np.nonzero((out < 0) & (depth < 0))
    frac = np.clip(-depth[bone] / thick[bone], 0.0, 1.0)
    img[bone] = 800.0 + 900.0 * (2.0 * frac - 1.0) ** 2
    inside: Mask = depth >= 0
    ai, bi = max(a - t0, 1.0), max(b - t0, 1.0)

    soft = inside
    brain_region = inside
    if w_base > 0:
        # Skull base: only the posterior fossa, brainstem and temporal lobes are brain; the
        # rest of the cranial floor is bone, with air in the paranasal sinuses in front.
        k = 1.0 - 0.25 * w_base
        lobes = g.ellipse(0.0, 0.45 * bi, 0.85 * ai * k, 0.52 * bi * k)
        kt = 1.0 - 0.5 * w_base
        lobes |= g.ellipse(-0.55 * ai, -0.12 * bi, 0.38 * ai * kt, 0.42 * bi * kt)
        lobes |= g.ellipse(0.55 * ai, -0.12 * bi, 0.38 * ai * kt, 0.42 * bi * kt)
        lobes |= g.ellipse(0.0, 0.1 * bi, 12.0, 10.0)
        if w_base < 0.35:
            lobes |= g.ellipse(0.0, -0.35 * bi, 0.7 * ai, 0.45 * bi)
        base_bone = inside & ~lobes
        np.copyto(img, np.float32(900.0), where=base_bone)
        if u < 0.16:
            sinus = g.ellipse(-0.25 * ai, -0.7 * bi, 0.2 * ai, 0.14 * bi)
            sinus |= g.ellipse(0.25 * ai, -0.7 * bi, 0.2 * ai, 0.14 * bi)
            np.copyto(img, np.float32(-950.0), where=base_bone & sinus)
        soft = inside & lobes
        brain_region = soft

    # Parenchyma: white matter core, gray cortex along the surface and lining the sulci.
    np.copyto(img, np.float32(h.white_hu), where=soft)
    bend = np.float32(14.0 * u) + np.float32(0.1) * depth  # sulci drift with height, bend inwards
    sulc = g.sulc_cos * np.cos(bend) - g.sulc_sin * np.sin(bend)
    sd = g.sulc_depth
    gray = soft & ((depth < h.rim_mm + h.cortex_mm) | ((depth < sd + 2.5) & (sulc > -0.1)))
    np.copyto(img, np.float32(h.gray_hu), where=gray)
    csf = soft & ((depth < h.rim_mm) | ((depth < h.rim_mm + sd) & (sulc > 0.9)))

    vs = h.vent_scale
    fissure: Mask | None = None
    if u > 0.3:  # interhemispheric fissure, interrupted by the ventricles and deep nuclei
        fissure = soft & g.midline
        if u < 0.72:
            fissure &= (g.y < -0.3 * bi) | (g.y > 0.35 * bi)
        csf |= fissure
    if 0.33 < u < 0.52:  # basal ganglia and thalami
        deep = g.ellipse(-20.0, -4.0, 7.0, 13.0) | g.ellipse(20.0, -4.0, 7.0, 13.0)
        deep |= g.ellipse(-9.0, 10.0, 8.0, 10.0) | g.ellipse(9.0, 10.0, 8.0, 10.0)
        np.copyto(img, np.float32(h.deep_gray_hu), where=soft & deep)
    if 0.34 < u < 0.47:  # third ventricle
        csf |= soft & (np.abs(g.x) < 1.5 * vs) & (np.abs(g.y - 2.0) < 11.0)
    if 0.12 < u < 0.26:  # fourth ventricle
        csf |= soft & g.ellipse(0.0, 0.33 * bi, 6.0, 4.0)
    cisterns = None
    if 0.22 < u < 0.42:
        cisterns = g.segment(-10.0, -12.0, -0.75 * ai, -0.2 * bi, 1.3)
        cisterns |= g.segment(10.0, -12.0, 0.75 * ai, -0.2 * bi, 1.3)
        if u < 0.34:
            ring = g.ellipse(0.0, 3.0, 17.0, 15.0) & ~g.ellipse(0.0, 4.0, 11.0, 10.0)
            cisterns |= ring | g.ellipse(0.0, -14.0, 9.0, 6.0)
        cisterns &= soft
        csf |= cisterns
    vents: tuple[Mask | None, Mask | None] = (None, None)
    if 0.45 < u < 0.72:  # lateral ventricles: two bodies, frontal horns turned outwards
        p = math.sin(math.pi * (u - 0.45) / 0.27) ** 0.5
        ax, by = (2.5 + 4.5 * p) * vs, (12.0 + 14.0 * p) * vs
        right = soft & g.ellipse(-(ax + 1.5), -2.0, ax, by, rot=-0.2)
        left = soft & g.ellipse(ax + 1.5, -2.0, ax, by, rot=0.2)
        csf |= right | left
        vents = (right, left)
    np.copyto(img, np.float32(h.csf_hu), where=csf)
    if fissure is not None:  # the falx: a thin, slightly dense membrane in the fissure
        np.copyto(img, np.float32(48.0), where=fissure & g.falx)
    brain = brain_region & ~csf
    return _Slice(img, depth, soft, brain, sulc, vents, cisterns)


class _Bleed:
    """A bleed of one subtype: its voxels in a slice, or None above or below it."""

    subtype: str
    hu: float

    def mask(self, sl: _Slice, u: float) -> Mask | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def edema(self, sl: _Slice, u: float, blood: Mask) -> Mask | None:
        """Hypodense rim painted with the bleed (only intraparenchymal bleeds have one)."""
        return None


def _wrap(angle: F32) -> F32:
    return np.asarray((angle + np.pi) % (2 * np.pi) - np.pi, dtype=np.float32)


class _RimBleed(_Bleed):
    """Epidural lens or subdural crescent: blood between the inner table and the brain.

    The thickness from the inner table falls off with angle and height; a steep, short profile
    bulges into the brain (biconvex epidural), a flat, long one follows the skull (crescent).
    """

    def __init__(self, g: _Grid, subtype: str, rng: np.random.Generator) -> None:
        self.subtype = subtype
        side = 0.0 if rng.random() < 0.5 else math.pi  # patient left or right
        if subtype == "epidural":
            theta0 = side + rng.uniform(-0.7, 0.7)
            theta_w, self.power, self.exp = rng.uniform(0.28, 0.45), 2.0, 0.5
            self.u0, self.hz = rng.uniform(0.38, 0.72), rng.uniform(0.09, 0.15)
            self.thick = rng.uniform(10.0, 20.0)
            self.hu = rng.uniform(65.0, 90.0)
        else:
            theta0 = side + rng.uniform(-0.35, 0.35)
            theta_w, self.power, self.exp = rng.uniform(0.8, 1.25), 4.0, 0.3
            self.u0, self.hz = rng.uniform(0.45, 0.72), rng.uniform(0.14, 0.24)
            self.thick = rng.uniform(5.0, 11.0)
            self.hu = rng.uniform(60.0, 85.0)
        self.ang = 1.0 - np.abs(_wrap(g.theta - np.float32(theta0)) / theta_w) ** self.power
        self.ang = self.ang.astype(np.float32)

    def mask(self, sl: _Slice, u: float) -> Mask | None:
        dz = abs(u - self.u0) / self.hz
        if dz >= 1.0:
            return None
        q = np.clip(self.ang - np.float32(dz**self.power), 0.0, None)
        return np.asarray(sl.soft & (sl.depth < np.float32(self.thick) * q ** np.float32(self.exp)))


class _Parenchymal(_Bleed):
    """A lobulated blob 1.4-4 cm across, in the basal ganglia or a lobe, with an edema rim."""

    subtype = "intraparenchymal"

    def __init__(self, g: _Grid, h: _Head, rng: np.random.Generator) -> None:
        self.radius = rng.uniform(7.0, 20.0)
        if rng.random() < 0.4:  # hypertensive: putamen / thalamus
            cx = rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 24.0)
            cy = rng.uniform(-10.0, 8.0)
            self.u0 = rng.uniform(0.38, 0.5)
        else:  # lobar
            self.u0 = rng.uniform(0.45, 0.78)
            s = _outline_scale(self.u0)
            phi = rng.uniform(0.0, 2 * np.pi)
            frac = rng.uniform(0.2, 0.5)
            cx = math.cos(phi) * frac * (h.a_mm * s - 10.0)
            cy = math.sin(phi) * frac * (h.b_mm * s - 10.0)
        self.hz = max(self.radius / 120.0, 0.08)
        dx, dy = g.x - np.float32(cx), g.y - np.float32(cy)
        phi = np.arctan2(dy, dx)
        lobes = 1.0 + 0.1 * np.sin(2 * phi + rng.uniform(0, 2 * np.pi))
        lobes += 0.07 * np.sin(3 * phi + rng.uniform(0, 2 * np.pi))
        self.lr: F32 = (np.hypot(dx, dy) * lobes).astype(np.float32)
        self.hu = rng.uniform(60.0, 85.0)
        self.edema_mm = rng.uniform(1.5, 4.0)

    def _radius_at(self, u: float) -> float:
        dz = (u - self.u0) / self.hz
        return self.radius * math.sqrt(max(0.0, 1.0 - dz * dz))

    def mask(self, sl: _Slice, u: float) -> Mask | None:
        r = self._radius_at(u)
        if r <= 0:
            return None
        return np.asarray(sl.soft & (self.lr < r))

    def edema(self, sl: _Slice, u: float, blood: Mask) -> Mask | None:
        r = self._radius_at(u)
        return np.asarray(sl.brain & (self.lr < r + self.edema_mm) & ~blood)


class _Ventricular(_Bleed):
    """Blood layering in the dependent (posterior, patient supine) part of a lateral ventricle."""

    subtype = "intraventricular"

    def __init__(self, g: _Grid, rng: np.random.Generator) -> None:
        self.sides = (
            (True, True)
            if rng.random() < 0.4
            else ((True, False), (False, True))[int(rng.integers(2))]
        )
        self.u0, self.hz = rng.uniform(0.55, 0.62), rng.uniform(0.07, 0.1)
        self.level = np.asarray(g.y > np.float32(rng.uniform(-6.0, 6.0)))
        self.hu = rng.uniform(60.0, 80.0)

    def mask(self, sl: _Slice, u: float) -> Mask | None:
        if abs(u - self.u0) >= self.hz or sl.ventricles[0] is None:
            return None
        m = np.zeros(sl.img.shape, dtype=bool)
        for use, v in zip(self.sides, sl.ventricles, strict=True):
            if use and v is not None:
                m |= v
        return np.asarray(m & self.level)


class _Subarachnoid(_Bleed):
    """Thin blood in the basal cisterns and Sylvian fissures, or in convexity sulci, or both."""

    subtype = "subarachnoid"

    def __init__(self, g: _Grid, h: _Head, rng: np.random.Generator) -> None:
        mode = int(rng.integers(3))  # 0 cisternal, 1 convexity, 2 diffuse (both)
        self.cisternal = mode in (0, 2)
        self.convexity = mode in (1, 2)
        self.uc0 = rng.uniform(0.22, 0.26)
        self.uc1 = self.uc0 + rng.uniform(0.11, 0.16)
        # Diffuse blood climbs from the cisterns over the convexity: one contiguous range.
        self.uv0 = self.uc0 + 0.05 if mode == 2 else rng.uniform(0.45, 0.72)
        self.uv1 = self.uv0 + rng.uniform(0.14, 0.24)
        theta0 = rng.uniform(-np.pi, np.pi)
        self.sector = np.asarray(
            np.abs(_wrap(g.theta - np.float32(theta0))) < rng.uniform(0.5, 1.0)
        )
        self.reach = np.asarray(h.rim_mm + 0.8 * g.sulc_depth, dtype=np.float32)
        self.rim = h.rim_mm + 1.0
        self.hu = rng.uniform(58.0, 78.0)

    def mask(self, sl: _Slice, u: float) -> Mask | None:
        m: Mask | None = None
        if self.cisternal and self.uc0 <= u <= self.uc1 and sl.cisterns is not None:
            m = sl.cisterns.copy()
        if self.convexity and self.uv0 <= u <= self.uv1:
            # Blood distends the sulci it fills: a wider band than the CSF pattern.
            sulci = sl.soft & self.sector & (sl.depth < self.reach)
            sulci &= (sl.sulc > 0.55) | (sl.depth < self.rim)
            m = sulci if m is None else m | sulci
        return m


def _draw_bleeds(spec: PhantomSpec, g: _Grid, h: _Head) -> list[_Bleed]:
    out: list[_Bleed] = []
    for name in SUBTYPES:  # canonical order: painting order never depends on the spec's order
        if name not in spec.bleeds:
            continue
        rng = _rng(spec.seed, _STREAM_BLEED + LABELS.index(name))
        if name in ("epidural", "subdural"):
            out.append(_RimBleed(g, name, rng))
        elif name == "intraparenchymal":
            out.append(_Parenchymal(g, h, rng))
        elif name == "intraventricular":
            out.append(_Ventricular(g, rng))
        else:
            out.append(_Subarachnoid(g, h, rng))
    return out


def _render_body_slice(g: _Grid, u: float) -> F32:
    """A crude chest (fat, muscle, lungs, heart, spine): the 'not a head' study."""
    img = np.full(g.shape, -1000.0, dtype=np.float32)
    body = g.ellipse(0.0, 0.0, 150.0, 105.0)
    np.copyto(img, np.float32(-100.0), where=body)
    np.copyto(img, np.float32(40.0), where=g.ellipse(0.0, 0.0, 140.0, 95.0))
    lung = 0.6 + 0.4 * math.sin(math.pi * min(max(u, 0.0), 1.0))
    for cx in (-65.0, 65.0):
        np.copyto(img, np.float32(-850.0), where=g.ellipse(cx, -5.0, 45.0 * lung, 70.0 * lung))
    np.copyto(img, np.float32(40.0), where=g.ellipse(15.0, -25.0, 45.0, 38.0))
    np.copyto(img, np.float32(1200.0), where=g.ellipse(0.0, 65.0, 17.0, 17.0))
    np.copyto(img, np.float32(300.0), where=g.ellipse(0.0, 65.0, 13.0, 13.0))
    return img


def _anatomical_heights(z: npt.NDArray[np.float64], z_lo: float, z_hi: float) -> list[float]:
    if z_hi - z_lo < 1e-6:
        return [0.55] * len(z)  # one slice: through the lateral ventricles
    t = (z - z_lo) / (z_hi - z_lo)
    return [float(v) for v in _U_LOW + t * (_U_HIGH - _U_LOW)]


def _render(
    spec: PhantomSpec,
    z: npt.NDArray[np.float64],
    z_lo: float,
    z_hi: float,
    *,
    noise_hu: float,
    noise_stream: int,
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """HU (int16), per-slice labels and bleed bits for slices at ``z`` of the study's head."""
    head = _Head.draw(spec.seed)
    grid = _Grid(head, spec.size, spec.pixel_spacing_mm)
    bleeds = _draw_bleeds(spec, grid, head) if spec.is_head else []
    min_px = max(1, math.ceil(MIN_BLEED_AREA_MM2 / spec.pixel_spacing_mm**2))
    n = len(z)
    vol = np.empty((n, spec.size, spec.size), dtype=np.float32)
    labels = np.zeros((n, len(LABELS)), dtype=np.uint8)
    bits = np.zeros((n, spec.size, spec.size), dtype=np.uint8)
    for i, u in enumerate(_anatomical_heights(z, z_lo, z_hi)):
        if not spec.is_head:
            vol[i] = _render_body_slice(grid, u)
            continue
        sl = _render_head_slice(grid, head, u)
        painted: list[tuple[_Bleed, Mask]] = []
        for bleed in bleeds:
            m = bleed.mask(sl, u)
            if m is not None and int(np.count_nonzero(m)) >= min_px:
                painted.append((bleed, m))
        for bleed, m in painted:  # edema first, so no rim ever covers another bleed
            e = bleed.edema(sl, u, m)
            if e is not None:
                np.copyto(sl.img, np.float32(22.0), where=e)
        for bleed, m in painted:
            k = LABELS.index(bleed.subtype)
            np.copyto(sl.img, np.float32(bleed.hu), where=m)
            bits[i][m] |= np.uint8(1 << (k - 1))
            labels[i, k] = 1
        labels[i, 0] = labels[i, 1:].max()
        vol[i] = sl.img
    if noise_hu > 0:
        noise = _rng(spec.seed, noise_stream).standard_normal(vol.shape, dtype=np.float32)
        vol += np.float32(noise_hu) * noise
    np.rint(vol, out=vol)
    np.clip(vol, HU_MIN, HU_MAX, out=vol)
    return vol.astype(np.int16), labels, bits


def _z_positions(spec: PhantomSpec) -> npt.NDArray[np.float64]:
    """Table positions: a per-seed start (scanners differ), then one slice per thickness."""
    z0 = round(float(_rng(spec.seed, _STREAM_META).uniform(-220.0, 20.0)), 1)
    return z0 + spec.slice_thickness_mm * np.arange(spec.n_slices, dtype=np.float64)


def make_volume(spec: PhantomSpec) -> PhantomVolume:
    """Render the main axial series of ``spec``: pure numpy, deterministic per seed.

    About 0.3 s for 40 x 512 x 512 on one core.
    """
    z = _z_positions(spec)
    hu, labels, bits = _render(
        spec, z, float(z[0]), float(z[-1]), noise_hu=spec.noise_hu, noise_stream=_STREAM_NOISE
    )
    return PhantomVolume(
        hu=hu,
        slice_labels=labels,
        z_positions=z,
        pixel_spacing_mm=spec.pixel_spacing_mm,
        slice_thickness_mm=spec.slice_thickness_mm,
        bleed_bits=bits if spec.bleeds else None,
    )


# --------------------------------------------------------------------------------------------
# DICOM writing
# --------------------------------------------------------------------------------------------


def supported_transfer_syntaxes() -> tuple[UID, ...]:
    """Transfer syntaxes ``write_study`` can write here (compressed ones need an encoder).

    All are lossless: a phantom's pixels must decode back to exactly ``PhantomVolume.hu``.
    """
    usable = [ts for ts in _COMPRESSED if get_encoder(ts).is_available]
    return (*_UNCOMPRESSED, *usable)


def _uid(*parts: str) -> UID:
    """A ``2.25`` UID from a name-based UUID of ``parts`` (PS3.5 B.2): same spec, same UIDs.

    (``pydicom.uid.generate_uid(prefix=None)`` ignores its entropy sources and is random.)
    """
    return UID(derived_uid("phantoms", *parts))


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2)."""
    for decimals in range(6, -1, -1):
        text = f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"
        if text in ("", "-0"):
            return "0"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} does not fit a Decimal String")


@dataclass(frozen=True, slots=True)
class _StudyMeta:
    study_uid: str
    for_uid: str
    study_date: str
    study_time: str
    birth_date: str
    sex: str
    age: str
    accession: str
    study_id: str


def _study_meta(spec: PhantomSpec, study_uid: str | None) -> _StudyMeta:
    rng = _rng(spec.seed, _STREAM_META)
    rng.uniform()  # the z start drawn by _z_positions
    day = dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    seconds = int(rng.integers(0, 86400))
    age = int(rng.integers(18, 95))
    birth = day - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    uid = study_uid if study_uid is not None else str(_uid("study", repr(spec)))
    return _StudyMeta(
        study_uid=uid,
        for_uid=str(_uid(uid, "frame-of-reference")),
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex="F" if rng.random() < 0.5 else "M",
        age=f"{age:03d}Y",
        accession=f"ACC{int(rng.integers(10**8, 10**9))}",
        study_id=str(int(rng.integers(1, 10**5))),
    )


@dataclass(frozen=True, slots=True)
class _SeriesPlan:
    kind: str
    number: int
    description: str
    kernel: str
    image_type: tuple[str, str, str]
    window: tuple[float, float]
    thickness_mm: float


def _base_dataset(
    spec: PhantomSpec, meta: _StudyMeta, plan: _SeriesPlan, series_uid: str, sop_uid: str
) -> Dataset:
    """Patient, study, series, equipment, frame of reference and CT modules (PS3.3 A.3)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "ICH_PHANTOM_1"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(plan.image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = meta.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = meta.study_time
    ds.AccessionNumber = meta.accession
    ds.Modality = spec.modality
    ds.Manufacturer = "ICH-PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"CT {spec.body_part.upper()} WO CONTRAST"
    ds.SeriesDescription = plan.description
    ds.ManufacturerModelName = "train.data.phantoms"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = meta.birth_date
    ds.PatientSex = meta.sex
    ds.PatientAge = meta.age
    ds.BodyPartExamined = spec.body_part.upper()
    ds.SliceThickness = _ds(plan.thickness_mm)
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "1.0"
    ds.ProtocolName = f"{spec.body_part.upper()} ROUTINE"
    ds.ReconstructionDiameter = _ds(spec.pixel_spacing_mm * spec.size)
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 300
    ds.ExposureTime = 1000
    ds.ConvolutionKernel = plan.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = meta.study_id
    ds.SeriesNumber = plan.number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = meta.for_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter = _ds(plan.window[0])
    ds.WindowWidth = _ds(plan.window[1])
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    if plan.kind != "localizer":  # PS3.3 C.8.2.1.1.x: a localizer's values are not HU
        ds.RescaleType = "HU"
    return ds


def _set_pixels(ds: Dataset, hu: npt.NDArray[np.int16], signed: bool) -> npt.NDArray[np.generic]:
    """Store ``HU - intercept``: int16 with 16 bits stored, or uint16 with 12 (PS3.3 C.8.2.1)."""
    stored = hu.astype(np.int32) - RESCALE_INTERCEPT
    arr: npt.NDArray[np.generic] = stored.astype(np.int16 if signed else np.uint16)
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = arr.tobytes()
    return arr


def _encode_and_write(
    path: Path, ds: Dataset, arr: npt.NDArray[np.generic], transfer_syntax: UID
) -> None:
    if transfer_syntax in _COMPRESSED:
        plugin = "pylibjpeg" if transfer_syntax == RLELossless else ""
        encoder = get_encoder(transfer_syntax)
        if plugin not in encoder.available_plugins:
            plugin = ""
        ds.LossyImageCompression = "00"
        ds.compress(transfer_syntax, arr, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    dcmwrite(path, ds, enforce_file_format=True)


_UNSAFE_PATH = re.compile(r"[^A-Za-z0-9._ -]+")


def _file_name(index: int, sop_uid: str, shuffle: bool) -> str:
    if shuffle:  # RSNA-like: random-looking, but fixed per instance
        return "ID_" + hashlib.sha256(sop_uid.encode()).hexdigest()[:9] + ".dcm"
    return f"CT{index:06d}.dcm"


def write_study(
    out_dir: Path,
    spec: PhantomSpec,
    *,
    extra_series: Sequence[str] = (),
    transfer_syntax: str = ExplicitVRLittleEndian,
    shuffle_names: bool = False,
    study_uid: str | None = None,
    layout: Layout = "tree",
    signed: bool = True,
    thin_slice_mm: float = 1.0,
) -> WrittenStudy:
    """Render ``spec`` and write it as CT Image Storage files that dciodvfy accepts.

    The main series is the soft-tissue (H30s) axial series at ``spec.slice_thickness_mm``.
    ``extra_series`` adds a bone-kernel (H70h) axial series at ``thin_slice_mm`` over the same
    range, and/or a one-image coronal localizer, as CQ500 studies carry them. ``layout="tree"``
    puts each series in a folder named after its description (CQ500 style); ``"flat"`` puts all
    files in ``out_dir`` (RSNA style). ``shuffle_names`` names files ``ID_<9 hex>.dcm`` from a
    hash of the SOP Instance UID, so that order must come from the headers. UIDs derive from
    the spec (or from ``study_uid``), never from the clock.
    """
    ts = UID(transfer_syntax)
    if ts not in (*_UNCOMPRESSED, *_COMPRESSED):
        raise ValueError(f"unsupported transfer syntax {ts} ({ts.name}); lossless ones only")
    if ts not in supported_transfer_syntaxes():
        raise ValueError(f"no encoder installed for {ts.name}")
    bad = [k for k in extra_series if k not in EXTRA_SERIES]
    if bad:
        raise ValueError(f"unknown extra series {bad}; expected names from {EXTRA_SERIES}")
    if layout not in ("flat", "tree"):
        raise ValueError(f"layout must be 'flat' or 'tree', got {layout!r}")
    if "bone_thin" in extra_series and not 0.1 <= thin_slice_mm <= spec.slice_thickness_mm:
        raise ValueError("thin_slice_mm must be in 0.1..slice_thickness_mm")

    volume = make_volume(spec)
    meta = _study_meta(spec, study_uid)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = spec.is_head
    soft_kernel, bone_kernel = ("H30s", "H70h") if head else ("B30f", "B70f")
    soft_window = (40.0, 80.0) if head else (40.0, 400.0)
    thk = spec.slice_thickness_mm
    plans = [
        _SeriesPlan(
            "axial",
            2,
            f"{spec.body_part.upper()} {thk:g}mm {soft_kernel}",
            soft_kernel,
            ("ORIGINAL", "PRIMARY", "AXIAL"),
            soft_window,
            thk,
        )
    ]
    if "localizer" in extra_series:
        plans.insert(
            0,
            _SeriesPlan(
                "localizer",
                1,
                "TOPOGRAM",
                "T20s",
                ("ORIGINAL", "PRIMARY", "LOCALIZER"),
                (300.0, 2000.0),
                0.6,
            ),
        )
    if "bone_thin" in extra_series:
        plans.append(
            _SeriesPlan(
                "bone_thin",
                3,
                f"{spec.body_part.upper()} {thin_slice_mm:g}mm {bone_kernel}",
                bone_kernel,
                ("ORIGINAL", "PRIMARY", "AXIAL"),
                (600.0, 2800.0),
                thin_slice_mm,
            )
        )

    counter = 0
    written: list[WrittenSeries] = []
    for plan in plans:
        series_uid = str(_uid(meta.study_uid, plan.kind, plan.description))
        folder = out_dir / _UNSAFE_PATH.sub("_", plan.description) if layout == "tree" else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        labels: npt.NDArray[np.uint8] | None
        if plan.kind == "axial":
            images, z, labels = volume.hu, volume.z_positions, volume.slice_labels
        elif plan.kind == "bone_thin":
            z_lo, z_hi = float(volume.z_positions[0]), float(volume.z_positions[-1])
            n_thin = math.floor((z_hi - z_lo) / thin_slice_mm + 1e-6) + 1
            z = z_lo + thin_slice_mm * np.arange(n_thin, dtype=np.float64)
            images, labels, _ = _render(
                spec, z, z_lo, z_hi, noise_hu=2.5 * spec.noise_hu, noise_stream=_STREAM_THIN_NOISE
            )
        else:
            images, z, labels = _localizer(volume, spec)[None], np.zeros(0), None
        files: list[Path] = []
        sops: list[str] = []
        for i in range(images.shape[0]):
            sop_uid = str(_uid(series_uid, str(i)))
            ds = _base_dataset(spec, meta, plan, series_uid, sop_uid)
            ds.InstanceNumber = i + 1
            sp = spec.pixel_spacing_mm
            x0 = -(spec.size - 1) / 2.0 * sp
            if plan.kind == "localizer":
                rows = images.shape[1]
                top = float(volume.z_positions[-1]) + 20.0
                ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
                ds.ImagePositionPatient = [_ds(x0), "0", _ds(top)]
                ds.PixelSpacing = [_ds(_localizer_spacing(volume, spec, rows)), _ds(sp)]
            else:
                ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
                ds.ImagePositionPatient = [_ds(x0), _ds(x0), _ds(float(z[i]))]
                ds.SliceLocation = _ds(float(z[i]))
                ds.PixelSpacing = [_ds(sp), _ds(sp)]
            arr = _set_pixels(ds, images[i], signed)
            counter += 1
            index = i + 1 if layout == "tree" else counter
            path = folder / _file_name(index, sop_uid, shuffle_names)
            _encode_and_write(path, ds, arr, ts)
            files.append(path)
            sops.append(sop_uid)
        written.append(
            WrittenSeries(
                series_uid=series_uid,
                description=plan.description,
                kind=plan.kind,
                files=files,
                sop_uids=sops,
                z_positions=tuple(float(v) for v in z),
                slice_labels=labels,
            )
        )
    return WrittenStudy(
        study_uid=meta.study_uid, patient_id=spec.patient_id, series=written, volume=volume
    )


_LOCALIZER_MARGIN_MM: Final[float] = 20.0


def _localizer_spacing(volume: PhantomVolume, spec: PhantomSpec, rows: int) -> float:
    span = float(volume.z_positions[-1] - volume.z_positions[0]) + 2 * _LOCALIZER_MARGIN_MM
    return span / rows


def _localizer(volume: PhantomVolume, spec: PhantomSpec) -> npt.NDArray[np.int16]:
    """A coronal projection radiograph (topogram) of the main volume, superior row first.

    Values are water-equivalent path lengths mapped onto the stored range, as scanners store
    localizers under the CT rescale; only its geometry matters to the node (it is skipped).
    """
    proj = np.clip(volume.hu.astype(np.float32), -1000.0, None).sum(axis=1)  # (Z, W)
    proj = (proj + 1000.0 * volume.hu.shape[1]) / 1000.0 * np.float32(volume.pixel_spacing_mm)
    span = float(volume.z_positions[-1] - volume.z_positions[0]) + 2 * _LOCALIZER_MARGIN_MM
    rows = max(16, min(2 * spec.size, round(span / volume.pixel_spacing_mm)))
    z_rows = (
        float(volume.z_positions[-1])
        + _LOCALIZER_MARGIN_MM
        - (np.arange(rows) + 0.5) * (span / rows)
    )
    z = volume.z_positions
    if len(z) == 1:
        img = np.repeat(proj, rows, axis=0)
    else:
        pos = np.clip((z_rows - z[0]) / (z[1] - z[0]), 0.0, len(z) - 1.0)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, len(z) - 1)
        w = (pos - lo)[:, None].astype(np.float32)
        img = proj[lo] * (1 - w) + proj[hi] * w
        img[z_rows > z[-1] + 0.5 * volume.slice_thickness_mm] = 0.0  # air above the vertex
    hu = -1000.0 + 12.0 * img
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
