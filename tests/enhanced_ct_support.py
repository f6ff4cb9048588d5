"""Multi-frame CT made from a classic phantom series: the same slices, one instance.

Two kinds, as scanners and archives produce them:

* :func:`legacy_enhanced`: highdicom's Legacy Converted Enhanced CT (what an archive's
  converter makes from single-frame slices; SOP class ...1.2.2);
* :func:`true_enhanced`: an Enhanced CT Image (...1.2.1) as a scanner writes it, with
  shared and per-frame functional groups, its frames stored in a seeded shuffled order
  (not inferior to superior) and a rescale slope and intercept of its own on each frame,
  so a reader that ignores positions or per-frame rescale gets other pixels.

Each gets a Study Instance UID of its own unless told otherwise, so the classic series and
its multi-frame copies can be classified side by side as separate studies.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from train.data.phantoms import WrittenStudy

#: Copied from the classic slices onto the Enhanced CT's top level (same patient, study).
_TOP_LEVEL = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "BodyPartExamined",
    "StudyID",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ProtocolName",
    "PatientPosition",
    "SeriesDate",
    "SeriesTime",
)


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def legacy_enhanced(study: WrittenStudy, out: Path, study_uid: str | None = None) -> Path:
    """The main series of ``study`` as one Legacy Converted Enhanced CT file at ``out``."""
    sources = [pydicom.dcmread(f) for f in study.main.files]
    new_study = study_uid or generate_uid()
    for ds in sources:
        ds.StudyInstanceUID = new_study
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid=generate_uid(),
        series_number=int(sources[0].SeriesNumber),
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out, enforce_file_format=True)
    return out


def true_enhanced(
    study: WrittenStudy, out: Path, *, seed: int, study_uid: str | None = None
) -> tuple[Path, list[int]]:
    """The main series of ``study`` as one Enhanced CT Image file at ``out``.

    Returns the path and, per frame in file order, the index of the classic slice it
    holds (inferior -> superior), so a test can check the reader puts each back.
    """
    slices = [pydicom.dcmread(f) for f in study.main.files]
    first = slices[0]
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(slices))]
    if order == sorted(order):  # a shuffle that happens to be sorted proves nothing
        order.reverse()
    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    for keyword in _TOP_LEVEL:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)  # type: ignore[union-attr]
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesNumber = int(first.SeriesNumber)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = first.StudyDate, first.StudyTime
    ds.AcquisitionDateTime = f"{first.StudyDate}{first.StudyTime}"
    ds.DeviceSerialNumber = "PHANTOM-1"
    # Enhanced CT Image module (PS3.3 C.8.15.2): value 3 is the image flavor (VOLUME for
    # a reconstructed stack, as Siemens writes it), value 4 the derived pixel contrast.
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDuration = 12.0
    ds.AcquisitionContextSequence = []
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(first.Rows), int(first.Columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.NumberOfFrames = len(slices)
    dim_org = generate_uid()
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=dim_org)]
    ds.DimensionIndexSequence = [
        _item(
            DimensionOrganizationUID=dim_org,
            DimensionIndexPointer=0x00209057,  # In-Stack Position Number
            FunctionalGroupPointer=0x00209111,  # Frame Content Sequence
        )
    ]
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[
                _item(
                    PixelSpacing=first.PixelSpacing,
                    SliceThickness=first.SliceThickness,
                    SpacingBetweenSlices=first.SliceThickness,
                )
            ],
            PlaneOrientationSequence=[_item(ImageOrientationPatient=first.ImageOrientationPatient)],
            FrameVOILUTSequence=[
                _item(WindowCenter=first.WindowCenter, WindowWidth=first.WindowWidth)
            ],
            CTReconstructionSequence=[
                _item(
                    ConvolutionKernel=first.ConvolutionKernel,
                    ConvolutionKernelGroup="BRAIN",
                    ReconstructionDiameter=first.ReconstructionDiameter,
                    ReconstructionPixelSpacing=first.PixelSpacing,
                    ReconstructionAngle=360,
                    ImageFilter="NONE",
                    ReconstructionAlgorithm="FILTER_BACK_PROJ",
                )
            ],
            CTAcquisitionTypeSequence=[
                _item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
            ],
            CTAcquisitionDetailsSequence=[
                _item(
                    DataCollectionDiameter=first.DataCollectionDiameter,
                    GantryDetectorTilt=first.GantryDetectorTilt,
                    TableHeight=first.TableHeight,
                    RotationDirection=first.RotationDirection,
                    RevolutionTime=1.0,
                    SingleCollimationWidth=0.6,
                    TotalCollimationWidth=38.4,
                )
            ],
            CTTableDynamicsSequence=[
                _item(TableSpeed=30.0, TableFeedPerRotation=30.0, SpiralPitchFactor=0.78)
            ],
            CTGeometrySequence=[
                _item(DistanceSourceToDetector=1085.6, DistanceSourceToDataCollectionCenter=595.0)
            ],
            CTExposureSequence=[
                _item(
                    ExposureTimeInms=1000.0,
                    XRayTubeCurrentInmA=300.0,
                    ExposureInmAs=300.0,
                    ExposureModulationType="NONE",
                    CTDIvol=55.0,
                    CTDIPhantomTypeCodeSequence=[
                        _item(
                            CodeValue="113691",
                            CodingSchemeDesignator="DCM",
                            CodeMeaning="IEC Head Dosimetry Phantom",
                        )
                    ],
                )
            ],
            CTXRayDetailsSequence=[
                _item(KVP=first.KVP, FocalSpots=[1.2], FilterType="HEAD", FilterMaterial="ALUMINUM")
            ],
            FrameAnatomySequence=[
                _item(
                    AnatomicRegionSequence=[
                        _item(
                            CodeValue="69536005", CodingSchemeDesignator="SCT", CodeMeaning="Head"
                        )
                    ],
                    FrameLaterality="U",
                )
            ],
            IrradiationEventIdentificationSequence=[_item(IrradiationEventUID=generate_uid())],
            CTImageFrameTypeSequence=[
                _item(
                    FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                    PixelPresentation="MONOCHROME",
                    VolumetricProperties="VOLUME",
                    VolumeBasedCalculationTechnique="NONE",
                )
            ],
        )
    ]
    frames: list[Dataset] = []
    stored: list[np.ndarray] = []
    for k, index in enumerate(order):
        src = slices[index]
        hu = src.pixel_array.astype(np.float64) * float(src.RescaleSlope) + float(
            src.RescaleIntercept
        )
        slope = 1.0 if k % 2 == 0 else 0.5  # 0.5: stored = 2 x (HU - intercept), exact
        intercept = -1024.0 - 16.0 * k
        stored.append(np.rint((hu - intercept) / slope).astype(np.int16))
        frames.append(
            _item(
                FrameContentSequence=[
                    _item(
                        FrameAcquisitionDateTime=ds.AcquisitionDateTime,
                        FrameReferenceDateTime=ds.AcquisitionDateTime,
                        FrameAcquisitionDuration=1000.0,
                        FrameAcquisitionNumber=1,
                        StackID="1",
                        InStackPositionNumber=index + 1,
                        DimensionIndexValues=[index + 1],
                    )
                ],
                PlanePositionSequence=[_item(ImagePositionPatient=src.ImagePositionPatient)],
                CTPositionSequence=[
                    _item(
                        TablePosition=float(src.ImagePositionPatient[2]),
                        ReconstructionTargetCenterPatient=[
                            0.0,
                            0.0,
                            float(src.ImagePositionPatient[2]),
                        ],
                        DataCollectionCenterPatient=[0.0, 0.0, float(src.ImagePositionPatient[2])],
                    )
                ],
                PixelValueTransformationSequence=[
                    _item(
                        RescaleIntercept=f"{intercept:g}",
                        RescaleSlope=f"{slope:g}",
                        RescaleType="HU",
                    )
                ],
            )
        )
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(stored).tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out, order
