"""Results as DICOM: the TID 1500 SR and the RGB Secondary Capture, checked as written.

Inputs are a phantom CT series (train.data.phantoms) and a SeriesPrediction built by hand,
so no model runs. Every object is validated with dciodvfy and read back with highdicom.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from peers import dciodvfy_errors
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from results.results_support import SENTINEL_ID, SENTINEL_NAME, make_prediction

from dicom_node.results.codes import PRIVATE_SCHEME
from dicom_node.results.report import ReportError, build_results, result_uids
from dicom_node.results.sc import SIZE
from models.checkpoint import CheckpointMeta
from models.dicom_io import CTSeries
from models.labels import LABELS
from models.network import NetworkConfig
from models.predict import SeriesPrediction

MODEL_UID = "2.25.302914093381911391573049183540119262641"

#: What the issue specifies for each label: finding type and finding site(s), as
#: (value, scheme) pairs; meanings are checked against pydicom's codedict below.
EXPECTED = {
    "any": (("1386000", "SCT"), ()),
    "epidural": (("EDH", PRIVATE_SCHEME), (("18545000", "SCT"),)),
    "intraparenchymal": (("50960005", "SCT"), (("12738006", "SCT"),)),
    "intraventricular": (("50960005", "SCT"), (("35764002", "SCT"),)),
    "subarachnoid": (("50960005", "SCT"), (("33930006", "SCT"),)),
    "subdural": (("SDH", PRIVATE_SCHEME), (("18545000", "SCT"),)),
}


def _meta(demo: bool = False) -> CheckpointMeta:
    return CheckpointMeta(
        network=NetworkConfig(backbone="resnet18"),
        name="ich-cnn-lstm",
        thresholds=(0.5, 0.4, 0.5, 0.5, 0.5, 0.6),
        model_uid=MODEL_UID,
        demo=demo,
        trained_on="phantoms" if demo else "rsna2019",
    )


def _codedict_meanings() -> dict[tuple[str, str], set[str]]:
    from pydicom.sr._concepts_dict import concepts

    out: dict[tuple[str, str], set[str]] = {}
    for scheme in ("SCT", "DCM", "UCUM"):
        for entries in concepts[scheme].values():
            for value, (meaning, _cids) in entries.items():
                out.setdefault((value, scheme), set()).add(meaning)
    return out


@pytest.fixture(scope="module")
def positive(ct_series: CTSeries) -> SeriesPrediction:
    return make_prediction(ct_series, ("subdural", "intraparenchymal"))


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory,
    positive: SeriesPrediction,
    source_headers: list[Dataset],
    ct_series: CTSeries,
) -> dict[str, Path]:
    res = build_results(positive, source_headers, ct_series, _meta(demo=True))
    return res.save(tmp_path_factory.mktemp("results"))


def _content_values(items: pydicom.Sequence) -> list[str]:
    """Concept meanings and TEXT/UIDREF values of an SR content tree, depth first."""
    out: list[str] = []
    for item in items:
        if "ConceptNameCodeSequence" in item:
            out.append(str(item.ConceptNameCodeSequence[0].CodeMeaning))
        for kw in ("TextValue", "UID"):
            if kw in item:
                out.append(str(item.get(kw)))
        if "ContentSequence" in item:
            out.extend(_content_values(item.ContentSequence))
    return out


def _groups(path: Path) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 6
    by_label = {}
    for g, label in zip(groups, LABELS, strict=True):
        by_label[label] = g
    return by_label


def test_sr_has_six_findings_coded_as_specified(written: dict[str, Path]) -> None:
    meanings = _codedict_meanings()
    for label, group in _groups(written["sr"]).items():
        want_finding, want_sites = EXPECTED[label]
        ft = group.finding_type
        assert ft is not None
        assert (ft.value, ft.scheme_designator) == want_finding
        sites = tuple((s.value.value, s.value.scheme_designator) for s in group.finding_sites)
        assert sites == want_sites
        for code in [ft, *(s.value for s in group.finding_sites)]:
            key = (code.value, code.scheme_designator)
            if code.scheme_designator != PRIVATE_SCHEME:
                assert code.meaning in meanings[key], f"{key} meaning not from codedict"
        (qual,) = group.get_qualitative_evaluations()
        assert (qual.name.value, qual.name.scheme_designator) == want_finding
        assert qual.value.scheme_designator == "SCT"
        assert qual.value.value in ("52101004", "272519000")
        (meas,) = group.get_measurements()
        assert meas.name == codes.DCM.Probability
        assert (meas.unit.value, meas.unit.scheme_designator) == ("1", "UCUM")


def test_sr_probabilities_decisions_and_references(
    written: dict[str, Path], positive: SeriesPrediction
) -> None:
    sources = set(positive.sop_uids)
    for i, (label, group) in enumerate(_groups(written["sr"]).items()):
        (meas,) = group.get_measurements()
        p = float(meas.value)
        assert 0.0 <= p <= 1.0
        assert p == pytest.approx(float(positive.study_probs[i]), abs=1e-6)
        present = bool(positive.present[i])
        (qual,) = group.get_qualitative_evaluations()
        assert qual.value.value == ("52101004" if present else "272519000")
        refs = [r.referenced_sop_instance_uid for r in meas.referenced_images]
        if present:
            assert refs, f"{label}: a present finding cites its slices"
            assert set(refs) <= sources
            want = [positive.sop_uids[k] for k in positive.key_slices(label, 5)]
            assert refs == want
        else:
            assert refs == []
    decisions = [
        q.value.value == "52101004"
        for g in _groups(written["sr"]).values()
        for q in g.get_qualitative_evaluations()
    ]
    assert decisions == [bool(x) for x in positive.present]
    assert any(decisions)
    assert not all(decisions)


def test_sr_header_identity_provenance_and_evidence(
    written: dict[str, Path], source_headers: list[Dataset]
) -> None:
    sr = pydicom.dcmread(written["sr"])
    src = source_headers[0]
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
               "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):  # fmt: skip
        assert sr.get(kw) == src.get(kw), kw
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"
    assert "NOT FOR DIAGNOSIS" in sr.SeriesDescription
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    (ours,) = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
    assert ours.DeviceUID == MODEL_UID
    (purpose,) = ours.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "Newcode1",
        "99IHE",
        "Processing Algorithm",
    )
    assert ours.Manufacturer
    assert ours.ManufacturerModelName
    assert ours.SoftwareVersions
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [
        PRIVATE_SCHEME,
        "99IHE",
    ]
    # TID 1500 row 4 (AIR: the imaging procedure): Procedure Reported = LOINC Head CT.
    (procedure,) = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121058"
    ]
    assert procedure.ConceptCodeSequence[0].CodeValue == "24725-4"
    assert procedure.ConceptCodeSequence[0].CodingSchemeDesignator == "LN"
    evidence = hd.sr.srread(written["sr"]).get_evidence()
    assert {e[2] for e in evidence} == {str(d.SOPInstanceUID) for d in source_headers}
    text = _content_values(sr.ContentSequence)
    assert "Algorithm Name" in text
    assert "Algorithm Version" in text
    assert "ich-cnn-lstm" in text
    assert f"model_uid={MODEL_UID}" in text
    assert "Device Observer UID" in text
    assert MODEL_UID in text  # the observer device's UID


def test_sc_header_and_pixels(written: dict[str, Path], source_headers: list[Dataset]) -> None:
    sc = pydicom.dcmread(written["sc"])
    src = source_headers[0]
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
        assert sc.get(kw) == src.get(kw), kw
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.BodyPartExamined == src.BodyPartExamined
    assert "NOT FOR DIAGNOSIS" in sc.SeriesDescription
    (ours,) = [e for e in sc.ContributingEquipmentSequence if "DeviceUID" in e]
    assert ours.DeviceUID == MODEL_UID
    assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    assert "99IHE" in [s.CodingSchemeDesignator for s in sc.CodingSchemeIdentificationSequence]
    px = sc.pixel_array
    assert px.shape == (SIZE, SIZE, 3)
    assert px.dtype == np.uint8
    banner = px[: SIZE // 20].reshape(-1, 3).astype(int)
    red = (banner[:, 0] > 150) & (banner[:, 1] < 60) & (banner[:, 2] < 60)
    assert red.mean() > 0.5, "the red NOT FOR DIAGNOSTIC USE banner is burned in"
    refs = {it.ReferencedSOPInstanceUID for it in sc.SourceImageSequence}
    assert refs <= {str(d.SOPInstanceUID) for d in source_headers}


def test_demo_line_only_for_demo_model(
    positive: SeriesPrediction, source_headers: list[Dataset], ct_series: CTSeries
) -> None:
    def yellow(demo: bool) -> int:
        sc = build_results(positive, source_headers, ct_series, _meta(demo=demo)).sc
        px = sc.pixel_array[int(SIZE * 0.07) : int(SIZE * 0.1)].reshape(-1, 3).astype(int)
        return int(((px[:, 0] > 200) & (px[:, 1] > 170) & (px[:, 2] < 80)).sum())

    assert yellow(True) > 500
    assert yellow(False) == 0


@pytest.mark.parametrize("kind", ["sr", "sc"])
def test_dciodvfy_reports_no_errors(written: dict[str, Path], kind: str) -> None:
    assert dciodvfy_errors(written[kind]) == []


def test_same_inputs_same_uids_new_generation_supersedes(
    positive: SeriesPrediction, source_headers: list[Dataset], ct_series: CTSeries
) -> None:
    meta = _meta()
    first = build_results(positive, source_headers, ct_series, meta)
    again = build_results(positive, source_headers, ct_series, meta)
    assert first.uids == again.uids
    assert again.sr.SOPInstanceUID == first.sr.SOPInstanceUID
    assert again.sc.SOPInstanceUID == first.sc.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in first.sr

    later = build_results(
        positive, source_headers, ct_series, meta, generation=1, supersedes=first.uids
    )
    assert later.sr.SOPInstanceUID != first.sr.SOPInstanceUID
    assert later.sr.SeriesInstanceUID != first.sr.SeriesInstanceUID
    assert later.sc.SOPInstanceUID != first.sc.SOPInstanceUID
    (study,) = later.sr.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (inst,) = series.ReferencedSOPSequence
    assert study.StudyInstanceUID == positive.study_uid
    assert series.SeriesInstanceUID == first.sr.SeriesInstanceUID
    assert inst.ReferencedSOPInstanceUID == first.sr.SOPInstanceUID
    assert inst.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert later.sc.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.sc.SOPInstanceUID
    assert first.sc.SOPInstanceUID in later.sc.ImageComments
    other_model = replace(meta, model_uid=MODEL_UID + "1")
    other = build_results(positive, source_headers, ct_series, other_model)
    assert other.uids != first.uids
    # AIR: the Device UID names the model, so a new checkpoint gives a new one.
    for result in (other.sr, other.sc):
        (ours,) = [e for e in result.ContributingEquipmentSequence if "DeviceUID" in e]
        assert ours.DeviceUID == MODEL_UID + "1"


def test_new_generation_dciodvfy_clean(
    tmp_path: Path, positive: SeriesPrediction, source_headers: list[Dataset], ct_series: CTSeries
) -> None:
    meta = _meta()
    earlier = result_uids(positive.study_uid, positive.series_uid, meta.model_uid, 1)
    res = build_results(positive, source_headers, ct_series, meta, generation=2, supersedes=earlier)
    for path in res.save(tmp_path).values():
        assert dciodvfy_errors(path) == []


def test_negative_study_all_absent_without_references(
    ct_series: CTSeries, source_headers: list[Dataset], tmp_path: Path
) -> None:
    pred = make_prediction(ct_series, ())
    res = build_results(pred, source_headers, ct_series, _meta())
    path = res.save(tmp_path)["sr"]
    for group in _groups(path).values():
        (qual,) = group.get_qualitative_evaluations()
        assert qual.value.value == "272519000"
        (meas,) = group.get_measurements()
        assert meas.referenced_images == []


def test_errors_carry_no_patient_data(
    positive: SeriesPrediction, source_headers: list[Dataset], ct_series: CTSeries
) -> None:
    wrong_study = replace(positive, study_uid="1.2.3.4")
    missing = source_headers[:-2]
    no_uid = replace(_meta(), model_uid="")
    msgs = []
    for args in (
        (wrong_study, source_headers, ct_series, _meta()),
        (positive, missing, ct_series, _meta()),
        (positive, source_headers, ct_series, no_uid),
    ):
        with pytest.raises(ReportError) as info:
            build_results(*args)
        msgs.append(str(info.value))
    text = "\n".join(msgs)
    uids = [positive.study_uid, positive.series_uid, *positive.sop_uids]
    for secret in (SENTINEL_NAME, SENTINEL_ID, "SENTINEL", *uids):
        assert secret not in text


def test_result_uids_are_valid_dicom_uids() -> None:
    u = result_uids("1.2.3", "1.2.3.4", MODEL_UID, 0)
    for uid in (u.sr_series, u.sr_instance, u.sc_series, u.sc_instance):
        assert uid.startswith("2.25.")
        assert len(uid) <= 64
    assert len({u.sr_series, u.sr_instance, u.sc_series, u.sc_instance}) == 4
    with pytest.raises(ReportError):
        result_uids("1.2.3", "1.2.3.4", MODEL_UID, -1)


def test_logs_carry_no_patient_data(
    positive: SeriesPrediction,
    source_headers: list[Dataset],
    ct_series: CTSeries,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    build_results(positive, source_headers, ct_series, _meta(), generation=1)
    assert any(r.getMessage() == "report.built" for r in caplog.records)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    uids = [positive.study_uid, positive.series_uid, *positive.sop_uids]
    for secret in (SENTINEL_NAME, SENTINEL_ID, *uids):
        assert secret not in text


def test_source_without_body_part_still_validates(
    tmp_path: Path, positive: SeriesPrediction, source_headers: list[Dataset], ct_series: CTSeries
) -> None:
    headers = [copy.deepcopy(ds) for ds in source_headers]
    for ds in headers:
        del ds.BodyPartExamined
    res = build_results(positive, headers, ct_series, _meta())
    assert res.sc.BodyPartExamined == "HEAD"
    assert dciodvfy_errors(res.save(tmp_path)["sc"]) == []
