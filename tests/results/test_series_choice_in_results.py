"""The SR and SC say which series was read, why each other series was not, and when a
thin series was averaged into slabs; the SR stays dciodvfy-clean with that content."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from peers import dciodvfy_errors
from pydicom.dataset import Dataset
from results.results_support import make_prediction

from dicom_node.results.report import build_results
from dicom_node.results.sc import SIZE
from dicom_node.store.series_outcome import SeriesOutcome
from models.checkpoint import CheckpointMeta
from models.dicom_io import CTSeries
from models.network import NetworkConfig
from models.slabs import SlabSummary

MODEL_UID = "2.25.302914093381911391573049183540119262641"
#: What a GE head study sends besides the axial soft-tissue series.
SCOUT = SeriesOutcome("1.2.840.113619.2.1.1", "Scout", 2, False, "localizer/scout")
BONE = SeriesOutcome(
    "1.2.840.113619.2.1.3",
    "1.25mm BONE",
    96,
    False,
    "another series fits better (bone kernel, spacing 1.2 mm)",
)


def _meta() -> CheckpointMeta:
    return CheckpointMeta(
        network=NetworkConfig(backbone="resnet18"),
        thresholds=(0.5, 0.4, 0.5, 0.5, 0.5, 0.6),
        model_uid=MODEL_UID,
    )


def _choice(ct_series: CTSeries) -> tuple[SeriesOutcome, ...]:
    used = SeriesOutcome(ct_series.series_uid, "5mm STND", ct_series.n_slices, True, None)
    return (SCOUT, used, BONE)


def _notes(path: Path) -> list[str]:
    """TEXT values of the Qualitative Evaluations container, read back with highdicom."""
    sr = hd.sr.srread(path)
    (container,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ]
    assert container.ConceptNameCodeSequence[0].CodingSchemeDesignator == "UMLS"
    out = []
    for item in container.ContentSequence:
        assert item.ValueType == "TEXT"
        assert item.RelationshipType == "CONTAINS"
        assert item.ConceptNameCodeSequence[0].CodeValue == "121106"  # DCM Comment
        out.append(str(item.TextValue))
    return out


def test_sr_lists_the_series_used_and_why_the_others_were_not(
    tmp_path: Path, ct_series: CTSeries, source_headers: list[Dataset]
) -> None:
    pred = make_prediction(ct_series, ("subdural",))
    res = build_results(pred, source_headers, ct_series, _meta(), series_choice=_choice(ct_series))
    path = res.save(tmp_path)["sr"]
    notes = _notes(path)
    assert notes[0] == (
        f"Series used: 5mm STND ({ct_series.n_slices} images), "
        f"Series Instance UID {ct_series.series_uid}"
    )
    assert notes[1:] == [
        f"Series not used: Scout (2 images), Series Instance UID {SCOUT.series_uid}: "
        "localizer/scout",
        f"Series not used: 1.25mm BONE (96 images), Series Instance UID {BONE.series_uid}: "
        "another series fits better (bone kernel, spacing 1.2 mm)",
    ]
    # still a TID 1500 report highdicom reads: six findings, in the same tree
    assert len(hd.sr.srread(path).content.get_image_measurement_groups()) == 6
    assert dciodvfy_errors(path) == []


def test_sr_and_sc_say_when_slabs_were_used(
    tmp_path: Path, ct_series: CTSeries, source_headers: list[Dataset]
) -> None:
    """A prediction on slabs: the SR names the averaging, and still cites every source
    image as evidence (also those that no key-image reference names)."""
    slabs = SlabSummary(0.625, 5.0, 96, ct_series.n_slices)
    pred = replace(make_prediction(ct_series, ("subdural",)), slabs=slabs)
    res = build_results(pred, source_headers, ct_series, _meta(), series_choice=_choice(ct_series))
    paths = res.save(tmp_path)
    notes = _notes(paths["sr"])
    assert notes[-1] == (
        "Slab averaging: 0.625 mm series averaged into 5 mm slabs "
        f"(96 slices -> {ct_series.n_slices} slabs); "
        "image references cite the middle slice of each slab"
    )
    evidence = {e[2] for e in hd.sr.srread(paths["sr"]).get_evidence()}
    assert evidence == {str(ds.SOPInstanceUID) for ds in source_headers}
    for path in paths.values():
        assert dciodvfy_errors(path) == []


def test_sr_without_other_series_says_only_which_was_used(
    tmp_path: Path, ct_series: CTSeries, source_headers: list[Dataset]
) -> None:
    pred = make_prediction(ct_series, ())
    path = build_results(pred, source_headers, ct_series, _meta()).save(tmp_path)["sr"]
    assert _notes(path) == [
        f"Series used: {ct_series.n_slices} images, Series Instance UID {ct_series.series_uid}"
    ]


#: The band between the key slices and the findings table, where the two lines are drawn.
BAND = slice(int(SIZE * 0.46), int(SIZE * 0.53))


def _text_rows(px: np.ndarray) -> np.ndarray:
    """Rows of the band that carry light (text) pixels."""
    band = px[BAND].astype(int)
    return np.flatnonzero((band.min(axis=2) > 120).sum(axis=1) > 3)


@pytest.mark.parametrize("n_skipped", [0, 2, 30])
def test_sc_renders_the_input_lines_also_with_many_skipped_series(
    n_skipped: int, ct_series: CTSeries, source_headers: list[Dataset]
) -> None:
    used = SeriesOutcome(ct_series.series_uid, "HEAD 5mm H30s", ct_series.n_slices, True, None)
    reasons = (
        "localizer/scout",
        "derived or reformatted images (DERIVED, SECONDARY)",
        "another series fits better (bone kernel, spacing 0.6 mm)",
    )
    others = tuple(
        SeriesOutcome(
            f"1.3.12.2.1107.5.1.4.{i}",
            f"Kopf 0.6 Hr60 recon {i} with a description as long as Siemens writes them",
            40 + i,
            False,
            reasons[i % 3],
        )
        for i in range(n_skipped)
    )
    pred = make_prediction(ct_series, ("subdural",))
    sc = build_results(pred, source_headers, ct_series, _meta(), series_choice=(used, *others)).sc
    px = sc.pixel_array
    assert px.shape == (SIZE, SIZE, 3)
    rows = _text_rows(px)
    assert rows.size > 10, "the series lines are drawn"
    assert np.diff(rows).max() > 5, "two lines: used, and skipped"
    # a long line is cut inside the image: nothing light at the right edge of the band
    edge = px[BAND, SIZE - 8 :].astype(int)
    assert (edge.min(axis=2) > 120).sum() == 0
