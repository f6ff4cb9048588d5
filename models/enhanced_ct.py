"""Enhanced CT and Legacy Converted Enhanced CT: one instance, many frames, read as slices.

A classic CT series is one file per slice, each with ImagePositionPatient,
ImageOrientationPatient, PixelSpacing and RescaleSlope/Intercept at the top level. The
multi-frame CT IODs (PS3.3 A.38 Enhanced CT, A.70 Legacy Converted Enhanced CT) put all
slices in one instance and move those attributes into functional groups (PS3.3 C.7.6.16):
a group in the Shared Functional Groups Sequence holds for every frame, one in the
Per-Frame Functional Groups Sequence item *i* for frame *i* only, and per-frame wins.

This module reads, per frame: Plane Position (Patient), Plane Orientation (Patient),
Pixel Measures (spacing, thickness), Pixel Value Transformation (slope, intercept), the
CT Image Frame Type (FrameType) and Contrast/Bolus Usage. :mod:`models.dicom_io` turns
each frame into one slice header, so series choice and ordering treat frames exactly as
they treat single-frame slices: by position projected on the slice normal. Dimension
Index Values and the order of frames in the file are not used for ordering.

Decoding (:func:`decode_frames`) reads the instance once with pydicom (native or any
compressed transfer syntax pydicom can decode, with the plugin of
:func:`models.decode.decoding_plugin`) and rescales each frame with its own slope and
intercept. It runs in the calling thread: the decode pool works per file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from models.decode import decoding_plugin, stored_to_hu_counted
from models.errors import SeriesError

ENHANCED_CT_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2.2"
#: The multi-frame CT SOP classes whose frames are read as slices.
MULTIFRAME_CT_CLASSES: Final = frozenset(
    {ENHANCED_CT_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_STORAGE}
)
#: Top-level sequences :func:`models.dicom_io.scan_headers` must read for frame headers.
FUNCTIONAL_GROUP_TAGS: Final = (
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
#: Classic attributes read from a Legacy Converted instance's Unassigned Converted
#: Attributes (PS3.3 C.7.6.16.2.25): the legacy converter keeps them there, not on top.
CONVERTED: Final = (
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "ContrastBolusVolume",
    "ContrastBolusTotalDose",
    "ScanOptions",
)


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What one frame's functional groups say; ``None`` where they say nothing."""

    number: int  # 1-based, as Referenced Frame Number counts
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None
    slope: float | None
    intercept: float | None
    frame_type: tuple[str, ...]
    #: Contrast/Bolus Usage: True when an agent is administered for this frame, False
    #: when the group says none is, None when the instance has no such group.
    contrast_administered: bool | None
    #: CT Reconstruction's ConvolutionKernel ("" where absent).
    kernel: str = ""
    #: Attributes a legacy converter moved into the Unassigned (Shared or Per-Frame)
    #: Converted Attributes Sequence that series choice reads (:data:`CONVERTED`).
    converted: Mapping[str, str] = field(default_factory=dict)


def _numbers(value: object, n: int) -> tuple[float, ...] | None:
    """``n`` finite numbers from a (multi-valued) DS/FD element value, else None."""
    if value is None or isinstance(value, str | bytes):
        items: list[object] = [] if value in (None, "", b"") else [value]
    else:
        try:
            items = list(value)  # type: ignore[call-overload]
        except TypeError:
            items = [value]
    if len(items) != n:
        return None
    try:
        out = tuple(float(v) for v in items)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _number(value: object) -> float | None:
    one = _numbers(value, 1)
    return one[0] if one else None


def _group(item: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword``: per-frame first, then shared."""
    for source in (item, shared):
        seq = source.get(keyword)
        if seq:
            return seq[0]  # type: ignore[no-any-return]
    return None


def _contrast(item: Dataset, shared: Dataset) -> bool | None:
    for source in (item, shared):
        usage = source.get("ContrastBolusUsageSequence")
        if usage is not None:
            return any(
                str(u.get("ContrastBolusAgentAdministered", "")).upper() == "YES" for u in usage
            )
    return None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return (
            value.decode("ascii", "replace").strip() if isinstance(value, bytes) else value.strip()
        )
    try:
        return "\\".join(str(v).strip() for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return str(value).strip()


def _converted(item: Dataset, shared: Dataset) -> dict[str, str]:
    found: dict[str, str] = {}
    for source, keyword in (
        (shared, "UnassignedSharedConvertedAttributesSequence"),
        (item, "UnassignedPerFrameConvertedAttributesSequence"),
    ):
        for group in source.get(keyword) or ():
            for attribute in CONVERTED:
                text = _text(group.get(attribute))
                if text:
                    found[attribute] = text
    return found


def frame_infos(ds: Dataset) -> list[FrameInfo]:
    """Per-frame geometry and rescale of a multi-frame CT instance, in file order.

    Raises :class:`SeriesError` when the Per-Frame Functional Groups Sequence is missing
    or its length differs from NumberOfFrames (the frames could not be placed).
    """
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise SeriesError("NumberOfFrames is not a number") from exc
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise SeriesError("multi-frame CT without Per-Frame Functional Groups Sequence")
    if len(per_frame) != n:
        raise SeriesError(
            f"Per-Frame Functional Groups Sequence has {len(per_frame)} items, "
            f"NumberOfFrames is {n}"
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    top_slope, top_intercept = _number(ds.get("RescaleSlope")), _number(ds.get("RescaleIntercept"))
    frames: list[FrameInfo] = []
    for i, item in enumerate(per_frame):
        position = _group(item, shared, "PlanePositionSequence")
        orientation = _group(item, shared, "PlaneOrientationSequence")
        measures = _group(item, shared, "PixelMeasuresSequence")
        transform = _group(item, shared, "PixelValueTransformationSequence")
        frame_type = _group(item, shared, "CTImageFrameTypeSequence")
        slope = _number(transform.get("RescaleSlope")) if transform is not None else None
        intercept = _number(transform.get("RescaleIntercept")) if transform is not None else None
        types = frame_type.get("FrameType") if frame_type is not None else None
        recon = _group(item, shared, "CTReconstructionSequence")
        converted = _converted(item, shared)
        kernel = _text(recon.get("ConvolutionKernel")) if recon is not None else ""
        frames.append(
            FrameInfo(
                number=i + 1,
                position=_numbers(position.get("ImagePositionPatient"), 3) if position else None,
                orientation=(
                    _numbers(orientation.get("ImageOrientationPatient"), 6) if orientation else None
                ),
                pixel_spacing=_numbers(measures.get("PixelSpacing"), 2) if measures else None,
                slice_thickness=_number(measures.get("SliceThickness")) if measures else None,
                slope=slope if slope is not None else top_slope,
                intercept=intercept if intercept is not None else top_intercept,
                frame_type=tuple(
                    str(v).upper() for v in ([types] if isinstance(types, str) else types or ())
                ),
                contrast_administered=_contrast(item, shared),
                kernel=kernel or converted.get("ConvolutionKernel", ""),
                converted=converted,
            )
        )
    return frames


def _rescale_header(ds: Dataset, frame: FrameInfo) -> Dataset:
    """The attributes :func:`models.decode.stored_to_hu_counted` reads, for one frame."""
    shim = Dataset()
    shim.RescaleSlope = frame.slope if frame.slope is not None else 1.0
    shim.RescaleIntercept = frame.intercept if frame.intercept is not None else 0.0
    shim.PixelRepresentation = int(ds.get("PixelRepresentation", 0))
    shim.BitsStored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    return shim


def decode_frames(
    path: Path, numbers: Sequence[int], rows: int, cols: int
) -> tuple[NDArray[np.float32], int]:
    """Frames ``numbers`` (1-based) of the instance at ``path`` in HU, in that order,
    and how many needed the RSNA signedness correction (:mod:`models.decode`).

    Raises :class:`SeriesError` naming the problem (not the patient, not the UIDs).
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise SeriesError(f"file cannot be read ({type(exc).__name__})") from exc
    if "PixelData" not in ds:
        raise SeriesError("instance has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError("instance is not monochrome (SamplesPerPixel != 1)")
    infos = frame_infos(ds)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr = pixel_array(ds, decoding_plugin=decoding_plugin(UID(ts or "")))
    except Exception as exc:  # decoder plugins raise anything; translated here
        name = UID(str(ts)).name if ts else "no transfer syntax"
        raise SeriesError(f"pixel data cannot be decoded ({name}: {type(exc).__name__})") from exc
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.shape != (len(infos), rows, cols):
        raise SeriesError(f"pixel array {arr.shape} != ({len(infos)}, {rows}, {cols})")
    hu = np.empty((len(numbers), rows, cols), dtype=np.float32)
    corrected = 0
    for k, number in enumerate(numbers):
        if not 1 <= number <= len(infos):
            raise SeriesError(f"frame {number} of {len(infos)} does not exist")
        try:
            _, fixed = stored_to_hu_counted(
                _rescale_header(ds, infos[number - 1]), arr[number - 1], hu[k]
            )
        except SeriesError as exc:
            raise SeriesError(f"frame {number} of {len(infos)}: {exc}") from exc
        corrected += int(fixed)
    return hu, corrected
