"""A corpus of head-CT series headers in the styles real scanners and public sets write.

No patient data: every entry is a synthetic header (tiny 4x4 pixels) carrying what
GE, Siemens, Philips, Canon/Toshiba and United Imaging consoles, CQ500 and RSNA 2019
write for routine head CT: thin and thick, soft and bone kernels, localizers, dose
reports (Secondary Capture, dose SR), reformats, MIPs, renderings, CTA, perfusion, and
the wording variants that broke keyword matching ("HEAD WITHOUT CONTRAST", "PRE
CONTRAST", "3D" in a recon name). Each entry carries the decision expected when its
series stands alone and, when skipped, the key words its reason must contain; each
study lists entries and the one expected to be chosen.

Vendor conventions used (from their conformance statements and common exports):
GE "5mm STND"/"BONE PLUS", kernels STANDARD/SOFT/BONE/BONEPLUS, ScanOptions "SCOUT MODE",
"Dose Report" SC; Siemens "Head 5.0 H30s", double-spaced "Head  5.0  J40s", Sharp
kernels Hr38/Hr64, ImageType value 4 "CT_SOM5 SPI", "Topogram  0.6  T20s", "Patient
Protocol" SC, X-Ray Radiation Dose SR; Philips "Brain", "Surview", kernels UB/UC/YC,
"Dose Info" SC with modality OT; Canon/Toshiba "HEAD 5.0 FC21", "AIDR 3D" (its
iterative reconstruction), "Scanogram", "SURE START"; United Imaging "Head 5.0
B_SOFT_B", "KARL 3D" (its iterative reconstruction), "Scout"; CQ500 "CT PLAIN THIN",
"CT 5mm", "CT PRE CONTRAST 5MM STD", "CT Thin Plain", "CT 0.625mm"; RSNA 2019 one axial
series per study with an empty SeriesDescription.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ctfactory import ct_dataset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_T = math.radians(20)
TILT_20 = (1.0, 0.0, 0.0, 0.0, round(math.cos(_T), 6), round(-math.sin(_T), 6))

OPA = ("ORIGINAL", "PRIMARY", "AXIAL")
SIEMENS_OPA = (*OPA, "CT_SOM5 SPI")
LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")

GE, SIEMENS, PHILIPS = "GE MEDICAL SYSTEMS", "SIEMENS", "Philips"
CANON, TOSHIBA, UIH = "CANON_MEC", "TOSHIBA", "UIH"


def agent_item(code: str, meaning: str) -> Dataset:
    """One coded contrast agent (SNOMED), as ContrastBolusAgentSequence carries it."""
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


@dataclass(frozen=True)
class Entry:
    """One series header pattern and the decision series choice must make alone."""

    name: str
    vendor: str
    description: str
    chosen: bool
    why: tuple[str, ...] = ()  # key words of the reason when skipped
    protocol: str = ""
    image_type: tuple[str, ...] = OPA
    kernel: str = ""
    thickness: float = 5.0
    n: int = 12
    orientation: tuple[float, ...] = AXIAL
    sop_class: str = CTImageStorage
    modality: str = "CT"
    body_part: str = "HEAD"
    series_number: int = 2
    bone: bool | None = None  # expected bone-kernel flag of a chosen series
    attributes: Mapping[str, object] = field(default_factory=dict)
    pixels: bool = True


ENTRIES: tuple[Entry, ...] = (
    # -- GE ------------------------------------------------------------------------------
    Entry("ge_5mm_stnd", GE, "5mm STND", True, protocol="HEAD W/O", kernel="STANDARD",
          bone=False),
    Entry("ge_head_wo", GE, "HEAD W/O", True, protocol="1.1 ROUTINE HEAD", kernel="SOFT"),
    Entry("ge_head_without_contrast", GE, "HEAD WITHOUT CONTRAST", True, kernel="STANDARD"),
    Entry("ge_ct_head_wo", GE, "CT HEAD WO", True, kernel="STANDARD", thickness=2.5, n=20),
    Entry("ge_0625_stnd", GE, "0.625mm STND", True, kernel="STANDARD", thickness=0.625, n=16,
          series_number=3),
    Entry("ge_bone_plus", GE, "BONE PLUS", True, kernel="BONEPLUS", thickness=1.25, n=16,
          series_number=4, bone=True),
    Entry("ge_scout", GE, "Scout", False, ("localizer/scout",), image_type=LOCALIZER,
          kernel="STANDARD", n=2, orientation=CORONAL, series_number=1,
          attributes={"ScanOptions": "SCOUT MODE"}),
    Entry("ge_dose_report", GE, "Dose Report", False, ("Secondary Capture",),
          image_type=("DERIVED", "SECONDARY", "SCREEN SAVE"), n=1,
          sop_class=SecondaryCaptureImageStorage, series_number=999),
    Entry("ge_cor", GE, "COR 2.5mm", False, ("derived", "REFORMATTED"),
          image_type=("DERIVED", "SECONDARY", "REFORMATTED"), kernel="STANDARD",
          thickness=2.5, orientation=CORONAL, series_number=5),
    Entry("ge_sag", GE, "SAG 2.5mm", False, ("derived", "REFORMATTED"),
          image_type=("DERIVED", "SECONDARY", "REFORMATTED"), kernel="STANDARD",
          thickness=2.5, orientation=SAGITTAL, series_number=6),
    Entry("ge_ax_mip", GE, "AX MIP 10mm", False, ("derived", "MIP"),
          image_type=("DERIVED", "SECONDARY", "REFORMATTED", "MIP"), kernel="STANDARD",
          thickness=10.0, series_number=7),
    Entry("ge_cta", GE, "CTA HEAD 0.625", False, ("contrast-enhanced", "ContrastBolusAgent"),
          kernel="STANDARD", thickness=0.625, n=20, series_number=8,
          attributes={"ContrastBolusAgent": "OMNIPAQUE 350", "ContrastBolusRoute": "IV",
                      "ContrastBolusVolume": "75"}),
    Entry("ge_wwo_pre", GE, "HEAD W/WO 5mm STND", True, protocol="HEAD W/WO",
          kernel="STANDARD"),
    Entry("ge_wwo_post", GE, "HEAD W/WO 5mm STND", False,
          ("contrast-enhanced", "ContrastBolusAgent"), protocol="HEAD W/WO",
          kernel="STANDARD", series_number=3, attributes={"ContrastBolusAgent": "ISOVUE 300"}),
    Entry("ge_post_fossa", GE, "POST FOSSA 2.5mm", True, kernel="STANDARD", thickness=2.5),
    Entry("ge_smartprep", GE, "SmartPrep", False, ("contrast-enhanced",), kernel="STANDARD",
          n=4, attributes={"ContrastBolusAgent": "OMNIPAQUE"}),
    Entry("ge_head_w_contrast", GE, "HEAD W CONTRAST", False,
          ("contrast-enhanced", "by description", "W CONTRAST"), kernel="STANDARD"),
    Entry("ge_c_plus", GE, "HEAD C+ 5mm", False, ("contrast-enhanced", "C+"),
          kernel="STANDARD", series_number=4),
    Entry("ge_agent_none", GE, "HEAD 5mm STND", True, kernel="STANDARD",
          attributes={"ContrastBolusAgent": "NONE"}),
    # -- Siemens -------------------------------------------------------------------------
    Entry("sie_h30s", SIEMENS, "Head 5.0 H30s", True, protocol="Head_Routine",
          image_type=SIEMENS_OPA, kernel="H30s", bone=False),
    Entry("sie_j40s", SIEMENS, "Head  5.0  J40s", True, protocol="HeadSeq",
          image_type=SIEMENS_OPA, kernel="J40s", bone=False),
    Entry("sie_hr38", SIEMENS, "Head 5.0 Hr38", True, image_type=SIEMENS_OPA,
          kernel="Hr38h", bone=False),
    Entry("sie_h30s_3mm", SIEMENS, "Head 3.0 H30s", True, image_type=SIEMENS_OPA,
          kernel="H30s", thickness=3.0, n=16, series_number=4),
    Entry("sie_j45s_thin", SIEMENS, "Head  0.6  J45s", True, image_type=SIEMENS_OPA,
          kernel="J45s", thickness=0.6, n=20, series_number=3, bone=False),
    Entry("sie_h60s", SIEMENS, "Head 2.0 H60s", True, image_type=SIEMENS_OPA, kernel="H60s",
          thickness=2.0, n=16, series_number=5, bone=True),
    Entry("sie_hr64", SIEMENS, "Head 1.0 Hr64", True, image_type=SIEMENS_OPA,
          kernel="Hr64h", thickness=1.0, n=16, bone=True),
    Entry("sie_topogram", SIEMENS, "Topogram  0.6  T20s", False, ("localizer/scout",),
          image_type=(*LOCALIZER, "CT_SOM5 TOP"), kernel="T20s", n=1, orientation=CORONAL,
          series_number=1),
    Entry("sie_patient_protocol", SIEMENS, "Patient Protocol", False, ("Secondary Capture",),
          image_type=("DERIVED", "SECONDARY", "OTHER"), n=1,
          sop_class=SecondaryCaptureImageStorage, series_number=501),
    Entry("sie_mpr_cor", SIEMENS, "Head 3.0 MPR cor", False, ("derived", "MPR"),
          image_type=("DERIVED", "SECONDARY", "MPR"), kernel="H30s", thickness=3.0,
          orientation=CORONAL, series_number=6),
    Entry("sie_mip", SIEMENS, "Head MIP 10.0", False, ("derived", "MIP"),
          image_type=("DERIVED", "SECONDARY", "MIP"), kernel="Hv36", thickness=10.0,
          series_number=7),
    Entry("sie_cta", SIEMENS, "CTA Head 0.75 Hv36", False,
          ("contrast-enhanced", "ContrastBolusAgent"), protocol="CTA_Head",
          image_type=SIEMENS_OPA, kernel="Hv36", thickness=0.75, n=20, series_number=8,
          attributes={"ContrastBolusAgent": "APPLIED"}),
    Entry("sie_perfusion", SIEMENS, "Perfusion 5.0 H20f", False,
          ("contrast-enhanced", "by description", "PERFUSION"), protocol="NeuroVPCT",
          image_type=(*OPA, "CT_SOM5 SEQ"), kernel="H20f", series_number=9),
    Entry("sie_nativ", SIEMENS, "Head 5.0 H31s", True, protocol="Kopf nativ",
          image_type=SIEMENS_OPA, kernel="H31s"),
    Entry("sie_mit_km", SIEMENS, "Kopf mit KM 5.0 H30s", False,
          ("contrast-enhanced", "MIT KM"), image_type=SIEMENS_OPA, kernel="H30s"),
    Entry("sie_ohne_km", SIEMENS, "Kopf ohne KM 5.0 H31s", True, image_type=SIEMENS_OPA,
          kernel="H31s"),
    Entry("sie_dose_sr", SIEMENS, "Dose Report", False, ("X-Ray Radiation Dose SR",),
          image_type=(), n=1, sop_class=XRayRadiationDoseSRStorage, modality="SR",
          series_number=502, pixels=False),
    Entry("sie_derived_primary_axial", SIEMENS, "Head 5.0 H30s", True,
          image_type=("DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 SPI"), kernel="H30s",
          series_number=3),
    Entry("sie_route_iv", SIEMENS, "Head 5.0 H30s", False,
          ("contrast-enhanced", "ContrastBolusRoute"), image_type=SIEMENS_OPA, kernel="H30s",
          attributes={"ContrastBolusRoute": "IV"}),
    Entry("sie_agent_sequence", SIEMENS, "Head 5.0 H30s", False,
          ("contrast-enhanced", "ContrastBolusAgentSequence"), image_type=SIEMENS_OPA,
          kernel="H30s",
          attributes={"ContrastBolusAgentSequence": [agent_item("412339007", "Iopromide")]}),
    # -- Philips -------------------------------------------------------------------------
    Entry("phi_brain", PHILIPS, "Brain", True, protocol="Brain", kernel="UB", bone=False),
    Entry("phi_brain_5mm", PHILIPS, "Brain 5mm", True, protocol="Brain", kernel="UC",
          series_number=3, bone=False),
    Entry("phi_brain_09", PHILIPS, "Brain 0.9mm", True, protocol="Brain", kernel="UB",
          thickness=0.9, n=20, series_number=4),
    Entry("phi_surview", PHILIPS, "Surview", False, ("localizer/scout",),
          image_type=LOCALIZER, n=1, orientation=CORONAL, series_number=1),
    Entry("phi_bone", PHILIPS, "Bone 2mm", True, protocol="Brain", kernel="YC", thickness=2.0,
          n=16, series_number=5, bone=True),
    Entry("phi_mpr_cor", PHILIPS, "Brain MPR Coronal", False, ("derived", "MPR"),
          image_type=("DERIVED", "SECONDARY", "MPR"), kernel="UB", thickness=3.0,
          orientation=CORONAL, series_number=6),
    Entry("phi_plain", PHILIPS, "Brain Plain 5mm", True, protocol="Brain non contrast",
          kernel="UB"),
    Entry("phi_dose_info", PHILIPS, "Dose Info", False, ("Secondary Capture",),
          image_type=("DERIVED", "SECONDARY"), n=1, sop_class=SecondaryCaptureImageStorage,
          modality="OT", series_number=1001),
    Entry("phi_perfusion", PHILIPS, "Brain Perfusion", False,
          ("contrast-enhanced", "ContrastBolusAgent"), kernel="UB",
          attributes={"ContrastBolusAgent": "Ultravist 370"}),
    Entry("phi_cta_protocol", PHILIPS, "Brain", False,
          ("contrast-enhanced", "by protocol", "CTA"), protocol="CTA Brain", kernel="UB"),
    Entry("phi_idose", PHILIPS, "Brain iDose 5mm", True, protocol="Brain Trauma",
          kernel="UB"),
    # an explicit "none" attribute decides before the text: contrast volume 0 mL
    Entry("phi_volume_zero", PHILIPS, "Brain C+ 5mm", True, kernel="UB",
          attributes={"ContrastBolusVolume": "0"}),
    # -- Canon / Toshiba -----------------------------------------------------------------
    Entry("can_fc21", TOSHIBA, "HEAD 5.0 FC21", True, kernel="FC21", bone=False),
    Entry("can_aidr", CANON, "HEAD 5.0 FC26 AIDR 3D", True, kernel="FC26", bone=False),
    Entry("can_aidr_enhanced", CANON, "HEAD 0.5 FC26 AIDR 3D Enhanced", True, kernel="FC26",
          thickness=0.5, n=20, series_number=3),
    Entry("can_aidr3d_word", CANON, "HEAD 5.0 FC21 AIDR3D", True, kernel="FC21"),
    Entry("can_fc30", TOSHIBA, "HEAD 2.0 FC30", True, kernel="FC30", thickness=2.0, n=16,
          series_number=4, bone=True),
    Entry("can_fc81", CANON, "HEAD 1.0 FC81", True, kernel="FC81", thickness=1.0, n=16,
          bone=True),
    Entry("can_scanogram", TOSHIBA, "Scanogram", False, ("localizer/scout",),
          image_type=LOCALIZER, n=1, orientation=CORONAL, series_number=1),
    Entry("can_3d_vr", CANON, "3D VR", False, ("derived", "VOLUME"),
          image_type=("DERIVED", "SECONDARY", "VOLUME"), kernel="FC26", thickness=0.5,
          series_number=7),
    Entry("can_surestart", CANON, "SURE START", False,
          ("contrast-enhanced", "ContrastBolusAgent"), kernel="FC21", n=4,
          attributes={"ContrastBolusAgent": "IOPAMIRON 370"}),
    Entry("can_ctp", CANON, "Brain CTP 0.5", False, ("contrast-enhanced", "CTP"),
          kernel="FC41", thickness=0.5, n=20),
    # "3D" as a word, but ImageType says original axial slices: ImageType wins
    Entry("can_3d_word_original", CANON, "3D HEAD 1.0 FC21", True, kernel="FC21",
          thickness=1.0, n=16),
    # -- United Imaging ------------------------------------------------------------------
    Entry("uih_soft", UIH, "Head 5.0 B_SOFT_B", True, kernel="B_SOFT_B", bone=False),
    Entry("uih_sharp", UIH, "Head 1.0 B_SHARP_C", True, kernel="B_SHARP_C", thickness=1.0,
          n=16, series_number=3, bone=True),
    Entry("uih_scout", UIH, "Scout", False, ("localizer/scout",), image_type=LOCALIZER, n=2,
          orientation=CORONAL, series_number=1),
    Entry("uih_karl", UIH, "Head 5.0 B_SOFT_B KARL 3D", True, kernel="B_SOFT_B", bone=False),
    Entry("uih_mpr_sag", UIH, "Head MPR Sag", False, ("derived", "MPR"),
          image_type=("DERIVED", "SECONDARY", "MPR"), kernel="B_SOFT_B", thickness=3.0,
          orientation=SAGITTAL, series_number=5),
    # -- CQ500 (qure.ai) -----------------------------------------------------------------
    Entry("cq_plain_thin", GE, "CT PLAIN THIN", True, kernel="STANDARD", thickness=0.625,
          n=24, series_number=3),
    Entry("cq_5mm", PHILIPS, "CT 5mm", True, kernel="UB"),
    Entry("cq_pre_contrast", GE, "CT PRE CONTRAST 5MM STD", True, kernel="STANDARD"),
    Entry("cq_thin_plain", PHILIPS, "CT Thin Plain", True, kernel="UB", thickness=0.9,
          n=20, series_number=3),
    Entry("cq_0625", GE, "CT 0.625mm", True, kernel="BONE", thickness=0.625, n=24,
          series_number=4, bone=True),
    Entry("cq_pre_contrast_thin", GE, "CT PRE CONTRAST THIN", True, kernel="STANDARD",
          thickness=0.625, n=24),
    Entry("cq_bone", GE, "CT BONE", True, kernel="BONE", thickness=0.625, n=24,
          series_number=5, bone=True),
    Entry("cq_post_contrast", GE, "CT POST CONTRAST 5MM STD", False,
          ("contrast-enhanced", "by description", "POST CONTRAST"), kernel="STANDARD"),
    Entry("cq_scout_no_image_type", GE, "SCOUT", False,
          ("localizer/scout", "by description"), image_type=(), n=2, orientation=CORONAL,
          series_number=1),
    # -- RSNA 2019 -----------------------------------------------------------------------
    Entry("rsna_axial", "", "", True, bone=False),
    Entry("rsna_no_image_type", "", "", True, image_type=()),
    # -- what nothing can make eligible --------------------------------------------------
    Entry("hard_9_slices", GE, "HEAD 5mm STND", False, ("only 9 slices",), kernel="STANDARD",
          n=9),
    Entry("hard_tilt_20", GE, "HEAD 5mm STND", True, kernel="STANDARD",
          orientation=TILT_20),
    Entry("hard_coronal_original", GE, "HEAD 5mm STND", False, ("not axial",),
          kernel="STANDARD", orientation=CORONAL),
    Entry("hard_enhanced_ct", SIEMENS, "Head 5.0 Hr38", False, ("multi-frame",),
          image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"), kernel="Hr38h", n=1,
          sop_class=EnhancedCTImageStorage, attributes={"NumberOfFrames": 40}),
    Entry("hard_chest", SIEMENS, "Thorax 5.0 Br40", False, ("CHEST is not head",),
          image_type=SIEMENS_OPA, kernel="Br40d", body_part="CHEST"),
)  # fmt: skip

BY_NAME: dict[str, Entry] = {e.name: e for e in ENTRIES}


@dataclass(frozen=True)
class Study:
    """Several series of one study and the entry that must be chosen (None: no series)."""

    name: str
    series: tuple[str, ...]
    chosen: str | None


STUDIES: tuple[Study, ...] = (
    Study("ge_routine", ("ge_scout", "ge_5mm_stnd", "ge_0625_stnd", "ge_bone_plus",
                         "ge_dose_report", "ge_cor", "ge_sag"), "ge_5mm_stnd"),
    Study("siemens_routine", ("sie_topogram", "sie_h30s", "sie_j45s_thin", "sie_h60s",
                              "sie_patient_protocol", "sie_mpr_cor", "sie_dose_sr"), "sie_h30s"),
    Study("philips_routine", ("phi_surview", "phi_brain_5mm", "phi_brain_09", "phi_bone",
                              "phi_dose_info"), "phi_brain_5mm"),
    Study("canon_routine", ("can_scanogram", "can_aidr", "can_aidr_enhanced", "can_fc30",
                            "can_3d_vr"), "can_aidr"),
    Study("uih_routine", ("uih_scout", "uih_karl", "uih_sharp", "uih_mpr_sag"), "uih_karl"),
    Study("cq500_pre_contrast", ("cq_scout_no_image_type", "cq_plain_thin", "cq_pre_contrast",
                                 "cq_bone"), "cq_pre_contrast"),
    Study("cq500_plain", ("cq_thin_plain", "cq_5mm", "cq_0625"), "cq_5mm"),
    Study("ge_with_and_without", ("ge_scout", "ge_wwo_pre", "ge_wwo_post"), "ge_wwo_pre"),
    Study("siemens_stroke", ("sie_topogram", "sie_h30s", "sie_cta", "sie_perfusion",
                             "sie_mip"), "sie_h30s"),
    Study("rsna", ("rsna_axial",), "rsna_axial"),
    Study("contrast_only", ("ge_scout", "ge_c_plus", "ge_cta"), None),
    Study("original_before_derived", ("sie_derived_primary_axial", "sie_h30s_3mm"),
          "sie_h30s_3mm"),
    Study("canon_3d_words", ("can_scanogram", "can_aidr3d_word", "can_3d_word_original",
                             "can_fc81"), "can_aidr3d_word"),
)  # fmt: skip


def write_entry(root: Path, entry: Entry, study_uid: str) -> str:
    """Write ``entry`` as one series of ``study_uid`` under ``root``; returns its UID."""
    series_uid = generate_uid()
    folder = root / f"{entry.series_number:04d}_{entry.name}"
    folder.mkdir(parents=True)
    row, col = np.asarray(entry.orientation[:3]), np.asarray(entry.orientation[3:])
    normal = np.cross(row, col)
    if normal[2] < 0:
        normal = -normal
    for k in range(entry.n):
        position = [round(float(v), 4) for v in normal * (k * entry.thickness)]
        ds = ct_dataset(
            np.zeros((4, 4)),
            study_uid=study_uid,
            series_uid=series_uid,
            position=position,
            orientation=entry.orientation,
            instance=k + 1,
            modality=entry.modality,
            kernel=entry.kernel,
            description=entry.description,
            body_part=entry.body_part,
            thickness=entry.thickness,
            image_type=entry.image_type,
        )
        ds.SeriesNumber = entry.series_number
        if entry.vendor:
            ds.Manufacturer = entry.vendor
        if entry.protocol:
            ds.ProtocolName = entry.protocol
        if entry.sop_class != CTImageStorage:
            ds.SOPClassUID = entry.sop_class
            ds.file_meta.MediaStorageSOPClassUID = entry.sop_class
        for keyword, value in entry.attributes.items():
            setattr(ds, keyword, Sequence(value) if isinstance(value, list) else value)
        if not entry.pixels:
            for keyword in ("PixelData", "Rows", "Columns", "ImageType", "SliceThickness",
                            "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                            "ConvolutionKernel"):  # fmt: skip
                delattr(ds, keyword)
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return series_uid
