"""One CT slice from its file to Hounsfield units: read, decode, rescale.

Kept apart from :mod:`models.dicom_io` (headers, ordering) because this is the part that
runs in the decoder helper processes of :mod:`models.decode_pool`: it imports only
pydicom and numpy, so a helper starts in a fraction of a second.

Which plugin decodes a compressed slice is chosen here, not left to pydicom's order of
registration: that order depends on which packages happen to be installed (with
python-gdcm absent, pydicom 3 decodes JPEG-LS with pylibjpeg-libjpeg, three times slower
than CharLS), and the fastest lossless decoder differs per syntax. ``bench/decode.py``
measures them; :data:`PLUGIN_PREFERENCE` follows its results. All of them are lossless
decoders of lossless data, so the choice changes speed, never values (tests compare
every syntax with the pixels the phantom was written from).

HU = stored value x RescaleSlope + RescaleIntercept (DICOM PS3.3 C.11.1.1.2). Some RSNA
2019 files declare unsigned 12-bit pixels that are really signed, so air comes out
near +3000 HU; :func:`stored_to_hu` detects that from the values and wraps them back.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from models.errors import SeriesError

#: Plausible CT range; a header-correct CT never leaves it by much.
HU_MIN, HU_MAX = -1024.0, 4095.0

_NATIVE_LE: Final = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
#: Syntaxes that decode in about a millisecond per 512x512 slice (bench/decode.py: RLE
#: at 1500-2400 slices/s): handing such a slice to another process and its megabyte of
#: HU back costs as much as decoding it, so :mod:`models.decode_pool` keeps them here.
CHEAP_SYNTAXES: Final = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
    }
)
_JPEG_LOSSLESS: Final = ("gdcm", "pylibjpeg")
# pylibjpeg last: it accepts corrupt JPEG-LS streams (see raw_pixels); pyjpegls is a
# dependency, so it is never reached in a full install.
_JPEG_LS: Final = ("pyjpegls", "gdcm", "pylibjpeg")
# gdcm decodes JPEG 2000 with OpenJPEG's own threads (1.5 cores busy in one process):
# faster alone when a core is idle, no faster when the helpers already fill every core.
_JPEG_2000: Final = ("pylibjpeg", "gdcm", "pillow")

#: Decoding plugins in order of preference per transfer syntax, fastest first, as
#: measured by ``bench/decode.py`` (see BENCHMARKS.md, "Decode"). The first one that is
#: installed is used; syntaxes not listed keep pydicom's own order.
PLUGIN_PREFERENCE: Final[dict[UID, tuple[str, ...]]] = {
    JPEGLosslessSV1: _JPEG_LOSSLESS,
    JPEGLossless: _JPEG_LOSSLESS,
    JPEGLSLossless: _JPEG_LS,
    JPEGLSNearLossless: _JPEG_LS,
    JPEG2000Lossless: _JPEG_2000,
    JPEG2000: _JPEG_2000,
    RLELossless: ("pylibjpeg", "pydicom"),
}


@functools.cache
def decoding_plugin(transfer_syntax: UID) -> str:
    """The plugin used for ``transfer_syntax``; "" lets pydicom try its own order."""
    preferred = PLUGIN_PREFERENCE.get(transfer_syntax, ())
    if not preferred:
        return ""
    try:
        available = get_decoder(transfer_syntax).available_plugins
    except NotImplementedError:
        return ""
    return next((p for p in preferred if p in available), "")


def is_native(ds: Dataset) -> bool:
    """Whether the slice is uncompressed little endian (decoding costs next to nothing)."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return ts in _NATIVE_LE


def raw_pixels(ds: Dataset) -> NDArray[np.integer] | NDArray[np.floating]:
    """Stored values of a single-frame monochrome image.

    Native little-endian 16-bit data is read straight from the buffer (pydicom's generic
    pixel pipeline costs more than the decode itself for uncompressed CT); everything
    else goes through pydicom's decoders with the plugin of :func:`decoding_plugin`.
    A slice that plugin rejects fails: retrying with the others would be unsafe, as
    pylibjpeg-libjpeg "decodes" truncated or zeroed JPEG-LS streams without an error.
    """
    if "PixelData" not in ds:
        raise SeriesError("instance has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError("instance is not monochrome (SamplesPerPixel != 1)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits_alloc = int(ds.get("BitsAllocated", 16))
    bits_stored = int(ds.get("BitsStored", bits_alloc))
    if not 1 <= bits_stored <= bits_alloc:  # PS3.3 C.7.6.3.1: never more than allocated
        raise SeriesError(f"BitsStored {bits_stored} does not fit BitsAllocated {bits_alloc}")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if is_native(ds) and bits_alloc == 16 and int(ds.get("NumberOfFrames") or 1) == 1:
        buf = ds.PixelData
        if len(buf) < rows * cols * 2:
            raise SeriesError("pixel data is shorter than Rows x Columns")
        raw = np.frombuffer(buf, dtype="<i2" if signed else "<u2", count=rows * cols)
        raw = raw.reshape(rows, cols)
        if bits_stored < 16:
            shift = 16 - bits_stored
            if signed:
                raw = raw << shift
                raw >>= shift  # sign-extend from bit BitsStored-1
            else:
                raw = raw & ((1 << bits_stored) - 1)
        return raw
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr: NDArray[np.integer] = pixel_array(ds, decoding_plugin=decoding_plugin(UID(ts or "")))
    except Exception as exc:  # decoder plugins raise anything; translated here
        name = UID(str(ts)).name if ts else "no transfer syntax"
        raise SeriesError(f"pixel data cannot be decoded ({name}: {type(exc).__name__})") from exc
    if arr.ndim != 2:
        raise SeriesError(f"expected one 2D frame, got pixel array of shape {arr.shape}")
    return arr


def stored_to_hu(
    ds: Dataset, raw: NDArray[np.integer] | NDArray[np.floating]
) -> NDArray[np.float32]:
    """Apply slope/intercept, correcting the RSNA mis-declared signedness first.

    The quirk: PixelRepresentation 0 (unsigned), intercept near 0, yet stored values
    above ``2**BitsStored - 1000`` occur: they are two's-complement negatives (air).
    Wrapping them by ``2**BitsStored`` restores -1000 HU air; values below stay as is.
    """
    return stored_to_hu_counted(ds, raw)[0]


def stored_to_hu_counted(
    ds: Dataset,
    raw: NDArray[np.integer] | NDArray[np.floating],
    out: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.float32], bool]:
    """:func:`stored_to_hu`, plus whether the quirk was corrected (for the count).

    Works in place in ``out`` when given (a decoder helper's reused buffer), with no
    slice-sized temporaries either way.
    """
    slope = _float(ds.get("RescaleSlope")) or 1.0
    intercept = _float(ds.get("RescaleIntercept"))
    intercept = 0.0 if intercept is None else intercept
    hu = np.empty(raw.shape, dtype=np.float32) if out is None else out
    np.copyto(hu, raw, casting="unsafe")  # the same conversion as raw.astype(float32)
    corrected = False
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if not signed and intercept > -100 and raw.dtype.kind in "ui":
        bits = int(ds.get("BitsStored", 16))
        modulus = float(1 << bits)
        corrected = float(hu.max()) >= modulus - 1000.0
        if corrected:
            hu[hu >= modulus - 1000.0] -= modulus
    if slope != 1.0:
        hu *= slope
    if intercept != 0.0:
        hu += intercept
    lo, hi = float(hu.min()), float(hu.max())
    if lo < -10000 or hi > 40000:
        raise SeriesError(f"implausible CT values after rescale ({lo:.0f}..{hi:.0f} HU)")
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu, corrected


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_instance(path: Path, **kwargs: object) -> Dataset:
    """``dcmread``, also of a bare dataset (no preamble, no File Meta: old archives write
    them, dcmtk and the node's receiver accept them); its transfer syntax, which only a
    File Meta states, is put there from the encoding pydicom found."""
    try:
        return pydicom.dcmread(path, **kwargs)  # type: ignore[arg-type]
    except InvalidDicomError:
        with warnings.catch_warnings():  # forced reading of non-DICOM bytes warns a lot
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, **kwargs)  # type: ignore[arg-type]
    if len(ds) == 0 or "SOPClassUID" not in ds:  # force=True reads anything; not an instance
        raise InvalidDicomError("not a DICOM file or dataset")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = getattr(ds, "original_encoding", (None, None))
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit and little
            else ExplicitVRLittleEndian if little
            else ExplicitVRBigEndian
        )  # fmt: skip
    return ds


@dataclass(frozen=True, slots=True)
class DecodedSlice:
    """One slice in HU, whether the RSNA quirk was corrected, whether it was cheap."""

    hu: NDArray[np.float32]
    corrected: bool
    cheap: bool  # in CHEAP_SYNTAXES


def decode_slice(
    path: Path, rows: int, cols: int, out: NDArray[np.float32] | None = None
) -> DecodedSlice:
    """Read ``path`` and return its pixels in HU (in ``out`` when given, see
    :func:`stored_to_hu_counted`); ``SeriesError`` says what went wrong.

    The message names the problem, not the slice: callers prefix which slice it was.
    """
    try:
        ds = read_instance(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise SeriesError(f"file cannot be read ({type(exc).__name__})") from exc
    try:
        raw = raw_pixels(ds)
        if raw.shape != (rows, cols):
            raise SeriesError(f"pixel array {raw.shape} != ({rows}, {cols})")
        hu, corrected = stored_to_hu_counted(ds, raw, out)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        # a malformed header (OverflowError: an over-long DS under strict validation)
        raise SeriesError(f"unexpected {type(exc).__name__} while decoding") from exc
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return DecodedSlice(hu, corrected, ts in CHEAP_SYNTAXES)
