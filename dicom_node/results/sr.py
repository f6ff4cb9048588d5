"""The findings as a Comprehensive 3D SR, TID 1500 Measurement Report (highdicom).

One TID 1501 measurement group per model output (``any`` and the five subtypes, in
canonical order), each with:

* the finding type and finding site (:mod:`dicom_node.results.codes`),
* a qualitative evaluation: the finding concept = Present / Absent (CID 240), decided by
  the checkpoint's threshold,
* the study probability as a TID 300 measurement, DCM 122157 "Probability", UCUM ``1``,
  inferred from the key slices (image references) when the finding is present; a key
  slice that is a frame of an Enhanced CT instance is cited with its Referenced Frame
  Number,
* TID 4019 algorithm identification (name, version, model UID among the parameters).

The observer is the model as a device (TID 1004, Device Observer UID = model UID), the
whole source series is listed as evidence, and VerificationFlag is UNVERIFIED
(PS3.3 C.17.2): a machine's output, not a signed report. A new generation lists the
SR it supersedes in Predecessor Documents Sequence (PS3.3 C.17.2.2). As IHE AI Results
asks, Procedure Reported names the imaging procedure (LOINC 24725-4 "Head CT") and the
Contributing Equipment item of the algorithm carries the model UID as Device UID and
(Newcode1, 99IHE, "Processing Algorithm") as Purpose of Reference
(:func:`~dicom_node.results.common.mark_processing_algorithm`).

How the input was chosen is in TID 1500's Qualitative Evaluations container (row 12),
as TEXT items named Comment (DCM 121106): "Series used: ...", one "Series not used:
..." per other series of the study with the reason, and "Slab averaging: ..." when a
thin series was averaged into slabs; a slab's key-image references cite its middle
source slice (:mod:`models.slabs`).
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from dicom_node.results.codes import (
    ABSENT,
    COMMENT,
    FINDINGS,
    PRESENT,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
    UNITLESS,
    coding_scheme_identification,
)
from dicom_node.results.common import (
    MANUFACTURER,
    SR_SERIES_NUMBER,
    AlgorithmInfo,
    ReportError,
    ResultUIDs,
    check_sources,
    derived_uid,
    evidence_stub,
    identity_header,
    mark_processing_algorithm,
    predecessors,
    previous_stub,
)
from dicom_node.store.series_outcome import SeriesOutcome, chosen_of, images
from models.labels import LABELS
from models.predict import SeriesPrediction

#: Slices cited per positive finding: enough to find the bleed, few enough to read.
KEY_SLICES_PER_FINDING = 5


def source_image(
    prediction: SeriesPrediction, row: int, sop_classes: dict[str, str]
) -> SourceImageForMeasurement:
    """The IMAGE reference of one row: its instance, and its frame for Enhanced CT."""
    uid = prediction.sop_uids[row]
    frame = prediction.frame_of(row)
    return SourceImageForMeasurement(
        sop_classes[uid], uid, referenced_frame_numbers=None if frame is None else [frame]
    )


def _group(
    label: str,
    prediction: SeriesPrediction,
    sop_classes: dict[str, str],
    algorithm: AlgorithmIdentification,
    sr_instance_uid: str,
) -> MeasurementsAndQualitativeEvaluations:
    i = LABELS.index(label)
    coding = FINDINGS[label]
    present = bool(prediction.present[i])
    probability = float(prediction.study_probs[i])
    if not 0.0 <= probability <= 1.0:
        raise ReportError(f"study probability of {label!r} is outside [0, 1]")
    refs: list[SourceImageForMeasurement] | None = None
    if present:
        refs = [
            source_image(prediction, k, sop_classes)
            for k in prediction.key_slices(label, KEY_SLICES_PER_FINDING)
        ]
    measurement = Measurement(
        name=PROBABILITY,
        value=round(probability, 6),
        unit=UNITLESS,
        algorithm_id=algorithm,
        referenced_images=refs,
    )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid(sr_instance_uid, label),
            identifier=f"ICH {coding.display}",
        ),
        finding_type=coding.finding,
        finding_sites=[FindingSite(site) for site in coding.sites] or None,
        algorithm_id=algorithm,
        measurements=[measurement],
        qualitative_evaluations=[
            QualitativeEvaluation(coding.finding, PRESENT if present else ABSENT)
        ],
    )


def input_notes(
    prediction: SeriesPrediction, n_sources: int, series_choice: Sequence[SeriesOutcome]
) -> list[str]:
    """What the SR says about its input: the series used, each series not used, slabs."""
    chosen = chosen_of(series_choice)
    if chosen is not None and chosen.series_uid == prediction.series_uid:
        used = f"{chosen.label} ({images(chosen.instances)})"
    else:
        used = images(n_sources)
    notes = [f"Series used: {used}, Series Instance UID {prediction.series_uid}"]
    notes += [
        f"Series not used: {o.label} ({images(o.instances)}), Series Instance UID "
        f"{o.series_uid}: {o.reason or 'not chosen'}"
        for o in series_choice
        if not o.chosen
    ]
    if prediction.slabs is not None:
        notes.append(
            f"Slab averaging: {prediction.slabs.describe()}; "
            "image references cite the middle slice of each slab"
        )
    return notes


def _input_container(notes: Sequence[str]) -> ContainerContentItem:
    """TID 1500 row 12: the Qualitative Evaluations container with TEXT items (row 14)."""
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        is_content_continuous=False,  # separate statements, not one running text
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = ContentSequence(
        [
            TextContentItem(
                name=COMMENT, value=note, relationship_type=RelationshipTypeValues.CONTAINS
            )
            for note in notes
        ]
    )
    return container


def build_sr(
    prediction: SeriesPrediction,
    sources: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    uids: ResultUIDs,
    supersedes: ResultUIDs | None = None,
    series_choice: Sequence[SeriesOutcome] = (),
    earlier: Sequence[ResultUIDs] = (),
) -> Comprehensive3DSR:
    """The TID 1500 report of ``prediction`` over the source series ``sources`` (headers).

    ``sources`` are the chosen series' instances (pixel data not needed); the SR takes
    Patient and Study from the first predicted slice and cites all of them as evidence
    (every source slice, also those a slab averaged). ``supersedes`` names the earlier
    generation this report replaces, if any, and ``earlier`` every result before it
    (all are listed in Predecessor Documents Sequence); ``series_choice`` lists every series of
    the study with the choice's outcome (see the module docstring).
    """
    if prediction.study_probs.shape != (len(LABELS),):
        raise ReportError(f"expected {len(LABELS)} study probabilities")
    by_uid = check_sources(prediction, sources)
    first = by_uid[prediction.sop_uids[0]]
    ordered = [first, *(ds for uid, ds in by_uid.items() if uid != prediction.sop_uids[0])]
    sop_classes = {u: str(by_uid[u].SOPClassUID) for u in prediction.sop_uids}
    algorithm_id = AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=algorithm.parameters,
        manufacturer=MANUFACTURER,
    )
    groups = [
        _group(label, prediction, sop_classes, algorithm_id, uids.sr_instance) for label in LABELS
    ]
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=algorithm.model_uid,
            name=algorithm.name,
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.model_name,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.HeadCT,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    # Row 12 follows the Imaging Measurements container (row 6): TID 1500 is ordered.
    report[0].ContentSequence.append(
        _input_container(input_notes(prediction, len(by_uid), series_choice))
    )
    evidence = [identity_header(ordered[0]), *(evidence_stub(ds) for ds in ordered[1:])]
    previous = [
        previous_stub(prediction.study_uid, p.sr_series, Comprehensive3DSRStorage, p.sr_instance)
        for p in predecessors(supersedes, earlier)
    ] or None
    try:
        sr = Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=uids.sr_series,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=uids.sr_instance,
            instance_number=uids.generation + 1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=previous,
            contributing_equipment=[algorithm.contributing_equipment()],
            series_description=algorithm.series_description,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        # highdicom messages may quote dataset content: keep only the exception type.
        raise ReportError(f"SR could not be built: {type(exc).__name__}") from exc
    sr.CodingSchemeIdentificationSequence = coding_scheme_identification()
    # AIR's (Newcode1, 99IHE) purpose of reference: highdicom refuses it at build time.
    mark_processing_algorithm(sr, algorithm.model_uid)
    return sr
