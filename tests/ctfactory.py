"""Tiny hand-built CT instances for unit tests that need exact control of headers.

Phantoms (``train.data.phantoms``) are the realistic stand-in; these are for the
corner cases a phantom generator should not have to produce: tilted gantries,
mis-declared pixel representations, missing pixel data, mixed sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SENTINEL_NAME = "SENTINEL^LEAKCHECK"
SENTINEL_ID = "SENTINEL-ID-4711"


def ct_dataset(
    hu: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    instance: int = 1,
    modality: str = "CT",
    intercept: float = -1024.0,
    signed: bool = False,
    bits_stored: int = 12,
    kernel: str = "H30s",
    description: str = "HEAD 5mm",
    body_part: str = "HEAD",
    thickness: float = 5.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> Dataset:
    """A minimal but well-formed CT Image Storage dataset holding ``hu`` (2D)."""
    stored = np.round(np.asarray(hu, dtype=np.float64) - intercept)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = SENTINEL_NAME
    ds.PatientID = SENTINEL_ID
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = thickness
    ds.InstanceNumber = instance
    ds.SeriesNumber = 2
    ds.ConvolutionKernel = kernel
    ds.SeriesDescription = description
    ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    dtype = np.int16 if signed else np.uint16
    ds.PixelData = stored.astype(dtype).tobytes()
    return ds


def write_series(
    folder: Path,
    volume: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    spacing: float = 5.0,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    order: Sequence[int] | None = None,
    **kwargs: object,
) -> tuple[list[Path], list[str]]:
    """Write ``volume`` (Z, H, W) as one series, slice k at ``k * spacing`` along the normal.

    Files are named in ``order`` (default: 0..Z-1), so a shuffled ``order`` gives file
    names that do not follow anatomy. Returns paths and SOP UIDs in anatomical order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    if normal[2] < 0:
        normal = -normal
    order = list(order) if order is not None else list(range(volume.shape[0]))
    paths: list[Path] = [Path()] * volume.shape[0]
    uids: list[str] = [""] * volume.shape[0]
    for file_no, k in enumerate(order):
        pos = normal * (k * spacing)
        ds = ct_dataset(
            volume[k],
            study_uid=study_uid,
            series_uid=series_uid,
            position=pos.tolist(),
            orientation=orientation,
            instance=file_no + 1,
            **kwargs,  # type: ignore[arg-type]
        )
        path = folder / f"IMG{file_no:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[k] = path
        uids[k] = ds.SOPInstanceUID
    return paths, uids
