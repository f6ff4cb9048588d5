"""What the SR and the Secondary Capture share: identities, provenance, source references.

UIDs of our results are derived, not random: the same (study, source series, model,
generation) always yields the same Series and SOP Instance UIDs, so re-sending a result
after a lost acknowledgement stores the same instance again and PACS deduplicates it.
Re-processing a study (late instances arrived) is a new *generation*: new UIDs, and the
new objects point at the ones they supersede. UIDs are ``2.25`` UUID-derived UIDs
(PS3.5 B.2) of name-based (version 5) UUIDs, see :func:`derived_uid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Final

from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from dicom_node import __version__ as NODE_VERSION
from dicom_node.errors import PermanentError
from models.checkpoint import CheckpointMeta
from models.predict import SeriesPrediction
from models.uids import derived_uid as models_derived_uid

#: Manufacturer of our results (General Equipment, Contributing Equipment, observer device).
MANUFACTURER: Final = "ich-triage-node (open source)"
#: Series numbers of our result series: high, so viewers list them after the acquisitions.
SR_SERIES_NUMBER: Final = 9901
SC_SERIES_NUMBER: Final = 9902
#: What a reader sees in the series list (LO, at most 64 characters).
SERIES_DESCRIPTION: Final = "AI triage ICH - NOT FOR DIAGNOSIS"
DEMO_SERIES_DESCRIPTION: Final = "AI triage ICH DEMO phantom model - NOT FOR DIAGNOSIS"
#: IHE AIR's Purpose of Reference for the algorithm's Contributing Equipment item
#: (value, scheme, meaning); IHE's provisional code, not (yet) in PS3.16.
AIR_PROCESSING_ALGORITHM: Final = ("Newcode1", "99IHE", "Processing Algorithm")

#: Patient/study attributes the source must carry, at least empty (PS3.3 type 2);
#: highdicom reads them as attributes, and some senders omit empty ones.
_TYPE2_IDENTITY: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


#: Namespace of our name-based UUIDs (a fixed random UUID; changing it changes every UID).


def derived_uid(*parts: str) -> str:
    """A deterministic DICOM UID: ``2.25.`` + a version-5 (SHA-1 name-based) UUID as integer.

    PS3.5 B.2 allows UIDs under 2.25 made from an ISO/IEC 9834-8 UUID, which includes
    name-based UUIDs. (``pydicom.uid.generate_uid(prefix=None)`` ignores ``entropy_srcs``
    and returns a random UUID, so it cannot give the same UID twice.) At most 44 chars.
    """
    return models_derived_uid("results", *parts)


class ReportError(PermanentError):
    """The inputs cannot make a valid result object (never names patient data)."""


@dataclass(frozen=True, slots=True)
class ResultUIDs:
    """Series and SOP Instance UIDs of one generation's SR and SC."""

    generation: int
    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str


def result_uids(study_uid: str, series_uid: str, model_uid: str, generation: int) -> ResultUIDs:
    """The UIDs of generation ``generation`` of the results for one source series and model.

    Deterministic: a pure function of its arguments, so the worker can recompute the
    UIDs of any earlier generation (to reference what a new one supersedes).
    """
    if generation < 0:
        raise ReportError(f"generation must be >= 0, got {generation}")
    if not model_uid:
        raise ReportError("checkpoint has no model UID; results need one as Device UID")

    def uid(kind: str) -> str:
        return derived_uid(study_uid, series_uid, model_uid, str(generation), kind)

    return ResultUIDs(
        generation=generation,
        sr_series=uid("sr-series"),
        sr_instance=uid("sr-instance"),
        sc_series=uid("sc-series"),
        sc_instance=uid("sc-instance"),
    )


@dataclass(frozen=True, slots=True)
class AlgorithmInfo:
    """The model as our results name it: TID 4019, observer device, Contributing Equipment."""

    name: str
    version: str
    model_uid: str
    model_name: str
    thresholds: tuple[float, ...]
    demo: bool
    trained_on: str

    @classmethod
    def from_meta(cls, meta: CheckpointMeta) -> AlgorithmInfo:
        if not meta.model_uid:
            raise ReportError("checkpoint has no model UID; results need one as Device UID")
        version = meta.code_version or "unknown"
        return cls(
            name=meta.name or "ich-cnn-lstm",
            version=version,
            model_uid=meta.model_uid,
            model_name=f"{meta.name or 'ich-cnn-lstm'} {meta.network.backbone}"[:64],
            thresholds=tuple(float(t) for t in meta.thresholds),
            demo=bool(meta.demo),
            trained_on=meta.trained_on,
        )

    @property
    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters: what else decides the output."""
        params = [
            f"model_uid={self.model_uid}",
            "thresholds=" + ",".join(f"{t:.4f}" for t in self.thresholds),
        ]
        if self.trained_on:
            params.append(f"trained_on={self.trained_on}"[:1024])
        if self.demo:
            params.append("demo=phantom-trained, not for clinical use")
        return params

    @property
    def series_description(self) -> str:
        return DEMO_SERIES_DESCRIPTION if self.demo else SERIES_DESCRIPTION

    def contributing_equipment(self) -> ContributingEquipment:
        """IHE AI Results: the algorithm as Contributing Equipment, Device UID = model UID.

        Built with DCM 109102 "Processing Equipment" as Purpose of Reference because
        highdicom accepts only CID 7005 codes there, and CID 7005 has no concept for an
        algorithm; :func:`mark_processing_algorithm` then puts AIR's code in its place
        on the finished dataset. The Device UID is the model UID, so it changes with
        every checkpoint (AIR: the UID identifies the model that made the result).
        """
        equipment = ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.model_name,
            software_versions=[f"ich-triage-node {NODE_VERSION}", f"model {self.version}"],
            contribution_description=(
                "AI triage for intracranial hemorrhage (CNN-LSTM); unverified, not for diagnosis"
            ),
        )
        equipment.DeviceUID = self.model_uid
        return equipment


def mark_processing_algorithm(result: Dataset, model_uid: str) -> None:
    """Set AIR's Purpose of Reference on our Contributing Equipment item, after building.

    IHE AIR (RAD TF-3, AI result encoding) asks for (Newcode1, 99IHE, "Processing
    Algorithm") on the item describing the algorithm. highdicom's ContributingEquipment
    checks the code against CID 7005 and refuses it, so the item is built with DCM 109102
    and its Purpose of Reference Code Sequence is replaced here, on the dataset that
    highdicom has already validated. The 99IHE scheme is private (PS3.16 8.2: "99"
    prefix), so it is declared in the Coding Scheme Identification Sequence as well.
    """
    ours = [
        item
        for item in result.get("ContributingEquipmentSequence", [])
        if item.get("DeviceUID") == model_uid
    ]
    if len(ours) != 1:
        raise ReportError("result lacks the algorithm's Contributing Equipment item")
    code = Dataset()
    code.CodeValue = AIR_PROCESSING_ALGORITHM[0]
    code.CodingSchemeDesignator = AIR_PROCESSING_ALGORITHM[1]
    code.CodeMeaning = AIR_PROCESSING_ALGORITHM[2]
    ours[0].PurposeOfReferenceCodeSequence = [code]
    schemes = list(result.get("CodingSchemeIdentificationSequence", []))
    if not any(s.get("CodingSchemeDesignator") == AIR_PROCESSING_ALGORITHM[1] for s in schemes):
        item = Dataset()
        item.CodingSchemeDesignator = AIR_PROCESSING_ALGORITHM[1]
        item.CodingSchemeName = "IHE Radiology codes"
        item.CodingSchemeResponsibleOrganization = "IHE Radiology"
        schemes.append(item)
    result.CodingSchemeIdentificationSequence = schemes


def check_sources(prediction: SeriesPrediction, sources: Sequence[Dataset]) -> dict[str, Dataset]:
    """Index the source headers by SOP Instance UID; every predicted slice must be there.

    Raises :class:`ReportError` with counts only (no UIDs, no names) on a mismatch.
    """
    if not sources:
        raise ReportError("no source instances given")
    by_uid: dict[str, Dataset] = {}
    for ds in sources:
        try:
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            ds.SOPClassUID  # noqa: B018 - must exist for references
        except AttributeError as exc:
            raise ReportError(
                "a source instance lacks Study/Series/SOP Class/Instance UID"
            ) from exc
        if str(study) != prediction.study_uid:
            raise ReportError("source instances belong to another study than the prediction")
        if str(series) != prediction.series_uid:
            raise ReportError("source instances belong to another series than the prediction")
        by_uid[str(sop)] = ds
    missing = sum(1 for u in prediction.sop_uids if u not in by_uid)
    if missing:
        raise ReportError(f"{missing} of {len(prediction.sop_uids)} predicted slices lack a header")
    return by_uid


def identity_header(source: Dataset) -> Dataset:
    """A pixel-free copy of one source header with the type 2 identity attributes present.

    Results inherit Patient and Study from it (so they file into the original study);
    attributes the sender left out are written empty, as PS3.3 allows for type 2.
    Enhanced CT's functional groups (group 5200, one item per frame) are left out: they
    describe the source's frames, not the result, and can be megabytes.
    """
    header = Dataset()
    for elem in source:
        if elem.tag.group in (0x5200, 0x7FE0, 0xFFFA) or elem.tag.is_private:
            continue
        header.add(deepcopy(elem))
    for kw in _TYPE2_IDENTITY:
        if kw not in header:
            setattr(header, kw, "")
    _blank_unparseable(header)
    return header


#: Identity attributes highdicom parses when it builds a result (dates and times).
_PARSED: Final = (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM))


def _blank_unparseable(header: Dataset) -> None:
    """Write empty (type 2) the identity values highdicom would refuse to build with.

    Modalities send birth dates like ``00000000``, sexes like ``Male``, names with a
    backslash (two values in a PN of VM 1): highdicom raises on each, and the study
    would lose its result over a demographic field the result only copies. The values
    are dropped from the result, never logged.
    """
    for kw, parse in _PARSED:
        value = header.get(kw)
        if value in (None, ""):
            continue
        try:
            parse(str(value))
        except (ValueError, TypeError, OverflowError):
            setattr(header, kw, "")
    if str(header.get("PatientSex") or "") not in ("", "M", "F", "O"):
        header.PatientSex = ""
    for kw in ("PatientName", "ReferringPhysicianName"):
        value = header.get(kw)
        if isinstance(value, MultiValue):
            setattr(header, kw, value[0] if len(value) else "")


def evidence_stub(source: Dataset) -> Dataset:
    """Only the four UIDs by which an SR cites an instance as evidence (PS3.3 C.17.2.3)."""
    stub = Dataset()
    stub.StudyInstanceUID = source.StudyInstanceUID
    stub.SeriesInstanceUID = source.SeriesInstanceUID
    stub.SOPClassUID = source.SOPClassUID
    stub.SOPInstanceUID = source.SOPInstanceUID
    return stub


def predecessors(supersedes: ResultUIDs | None, earlier: Sequence[ResultUIDs]) -> list[ResultUIDs]:
    """Every earlier result a new one names (oldest first, each once): ``earlier``, and
    ``supersedes`` where the caller gave only that."""
    out: list[ResultUIDs] = []
    for uids in (*earlier, *((supersedes,) if supersedes is not None else ())):
        if all(u.sr_instance != uids.sr_instance for u in out):
            out.append(uids)
    return out


def previous_stub(study_uid: str, series_uid: str, sop_class: str, sop_uid: str) -> Dataset:
    """A reference to an earlier result instance, for Predecessor Documents Sequence."""
    stub = Dataset()
    stub.StudyInstanceUID = study_uid
    stub.SeriesInstanceUID = series_uid
    stub.SOPClassUID = sop_class
    stub.SOPInstanceUID = sop_uid
    return stub
