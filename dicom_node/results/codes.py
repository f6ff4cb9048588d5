"""Codes of our DICOM results: only concepts the DICOM standard lists, plus one private scheme.

Every standard code below is taken from ``pydicom.sr.codedict`` (which mirrors DICOM
PS3.16), so value, scheme and meaning come from the standard, not from memory. (The
codedict also lists SCT 1386000 as "Occlusion of artery" under CID 3413; the SNOMED CT
concept 1386000 is "Intracranial hemorrhage (disorder)", the entry used here.)

* ``any``: Intracranial hemorrhage (SCT 1386000).
* intraparenchymal / intraventricular / subarachnoid: Hemorrhage (SCT 50960005) with a
  Finding Site of Brain (SCT 12738006), Brain ventricle (SCT 35764002) or Cranial
  subarachnoid space (SCT 33930006).
* subdural / epidural: PS3.16 lists neither a disorder code nor a site for them, so they
  are coded in the private scheme :data:`PRIVATE_SCHEME` (declared in the SR's Coding
  Scheme Identification Sequence, PS3.3 C.12.1.1.4), with Dura mater (SCT 18545000) as
  their site. A guessed SNOMED code would be worse than a declared private one.
* Present / Absent: SCT 52101004 / 272519000 (CID 240); Probability: DCM 122157 with the
  UCUM unit ``1`` (dimensionless, CID 7181).
* How the input was chosen (series choice, slab averaging): TEXT items named Comment
  (DCM 121106) in TID 1500's Qualitative Evaluations container, whose concept name
  (UMLS C0034375) is fixed by the template's row 12 itself (the codedict has no UMLS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.labels import LABELS

#: Private coding scheme designator; PS3.16 8.2: private designators start with "99".
PRIVATE_SCHEME: Final = "99ICHNODE"
PRIVATE_SCHEME_NAME: Final = "ICH triage node private codes"
PRIVATE_SCHEME_VERSION: Final = "1"
PRIVATE_SCHEME_ORGANIZATION: Final = "ich-triage-node open-source project"

INTRACRANIAL_HEMORRHAGE: Final = CodedConcept.from_code(codes.SCT.IntracranialHemorrhage)
HEMORRHAGE: Final = CodedConcept.from_code(codes.SCT.Hemorrhage)
BRAIN: Final = CodedConcept.from_code(codes.SCT.Brain)
BRAIN_VENTRICLE: Final = CodedConcept.from_code(codes.SCT.BrainVentricle)
CRANIAL_SUBARACHNOID_SPACE: Final = CodedConcept.from_code(codes.SCT.CranialSubarachnoidSpace)
DURA_MATER: Final = CodedConcept.from_code(codes.SCT.DuraMater)
EPIDURAL_HEMORRHAGE: Final = CodedConcept("EDH", PRIVATE_SCHEME, "Epidural hemorrhage")
SUBDURAL_HEMORRHAGE: Final = CodedConcept("SDH", PRIVATE_SCHEME, "Subdural hemorrhage")

PRESENT: Final = CodedConcept.from_code(codes.SCT.Present)
ABSENT: Final = CodedConcept.from_code(codes.SCT.Absent)
PROBABILITY: Final = CodedConcept.from_code(codes.DCM.Probability)
UNITLESS: Final = CodedConcept("1", "UCUM", "no units")
#: TID 1500 row 12 (a literal of the template; UMLS is a PS3.16 Table 8-1 scheme).
QUALITATIVE_EVALUATIONS: Final = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT: Final = CodedConcept.from_code(codes.DCM.Comment)


@dataclass(frozen=True, slots=True)
class FindingCoding:
    """How one model output is written: a finding type and where it is."""

    label: str
    finding: CodedConcept
    sites: tuple[CodedConcept, ...]
    display: str  # short human name for tables, tracking identifiers

    @property
    def is_private(self) -> bool:
        return self.finding.scheme_designator == PRIVATE_SCHEME


FINDINGS: Final[dict[str, FindingCoding]] = {
    "any": FindingCoding("any", INTRACRANIAL_HEMORRHAGE, (), "Intracranial hemorrhage"),
    "epidural": FindingCoding("epidural", EPIDURAL_HEMORRHAGE, (DURA_MATER,), "Epidural"),
    "intraparenchymal": FindingCoding("intraparenchymal", HEMORRHAGE, (BRAIN,), "Intraparenchymal"),
    "intraventricular": FindingCoding(
        "intraventricular", HEMORRHAGE, (BRAIN_VENTRICLE,), "Intraventricular"
    ),
    "subarachnoid": FindingCoding(
        "subarachnoid", HEMORRHAGE, (CRANIAL_SUBARACHNOID_SPACE,), "Subarachnoid"
    ),
    "subdural": FindingCoding("subdural", SUBDURAL_HEMORRHAGE, (DURA_MATER,), "Subdural"),
}
if tuple(FINDINGS) != LABELS:  # pragma: no cover - guards an edit of either list
    raise RuntimeError("finding codes must follow the canonical label order")


def coding_scheme_identification() -> list[Dataset]:
    """Items of the Coding Scheme Identification Sequence (0008,0110) for our private scheme.

    PS3.3 C.12.1.1.4 requires private schemes used in the object to be identified;
    the standard schemes (SCT, DCM, UCUM) are well known and need no item.
    """
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = PRIVATE_SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return [item]
