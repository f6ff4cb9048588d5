"""Enhanced CT and Legacy Converted Enhanced CT classified like the classic series they
were made from: through ``dicom-node classify`` and through the node end to end.

One phantom, three encodings of its head series (classic single-frame slices, highdicom's
Legacy Converted Enhanced CT, a scanner-style Enhanced CT with frames stored out of z
order and per-frame rescale), one random-init checkpoint: the same input volume must
give the same findings. A phantom of another seed is the control that the comparison
can fail. End to end, the SR's key-image references must name frames of the one
multi-frame instance (Referenced Frame Number, within NumberOfFrames), the SC's Source
Image Sequence too, and dciodvfy must find no error in either.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from enhanced_ct_support import legacy_enhanced, true_enhanced
from nodes import Node, storescu, wait_for
from peers import dciodvfy_errors
from pipeline.support import EXPECTED_PRESENT, RecordingPacs, assert_no_phi, phantom
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE

from dicom_node.store.index import StudyRow
from models.labels import LABELS
from train.data.phantoms import WrittenStudy

N_SLICES = 12
#: The same volume through the same network on the same CPU: equal up to float noise.
ATOL = 1e-4


@pytest.fixture
def encodings(tmp_path: Path) -> dict[str, Any]:
    """The classic study, its two multi-frame copies (own study UIDs), and a control."""
    classic = phantom(tmp_path / "classic", seed=41, n_slices=N_SLICES, bleeds=("subdural",))
    control = phantom(tmp_path / "control", seed=42, n_slices=N_SLICES)
    legacy = legacy_enhanced(classic, tmp_path / "legacy" / "legacy.dcm")
    true_path, order = true_enhanced(classic, tmp_path / "enhanced" / "enhanced.dcm", seed=43)
    assert order != sorted(order)
    return {
        "classic": classic,
        "control": control,
        "legacy": legacy,
        "enhanced": true_path,
        "order": order,
    }


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _probs(findings: dict[str, Any]) -> np.ndarray:
    return np.array([float(findings[label]["probability"]) for label in LABELS])


def test_classify_cli_gives_enhanced_ct_the_findings_of_the_classic_series(
    tmp_path: Path, checkpoint: Path, encodings: dict[str, Any]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "classify", str(tmp_path), "--json",
         "--checkpoint", str(checkpoint)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by_uid = {s["study_uid"]: s for s in json.loads(proc.stdout)["studies"]}
    classic: WrittenStudy = encodings["classic"]
    reference = by_uid[classic.study_uid]
    assert reference["skipped"] is None
    control = _probs(by_uid[encodings["control"].study_uid]["findings"])
    assert not np.allclose(control, _probs(reference["findings"]), atol=ATOL), (
        "the control phantom gets the classic one's probabilities: the comparison is vacuous"
    )
    for name in ("legacy", "enhanced"):
        path: Path = encodings[name]
        got = by_uid[_study_uid(path)]
        assert got["skipped"] is None, (name, got["skipped"])
        assert got["n_slices"] == N_SLICES
        np.testing.assert_allclose(
            _probs(got["findings"]), _probs(reference["findings"]), atol=ATOL, err_msg=name
        )
        assert [f["present"] for f in got["findings"].values()] == [
            f["present"] for f in reference["findings"].values()
        ]
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert set(got["top_slices"]) == {sop}
        (used,) = [o for o in got["series_choice"] if o["chosen"]]
        assert used["instances"] == N_SLICES  # frames, each an image


def _pynetdicom_send(port: int, path: Path) -> int:
    """C-STORE one file with pynetdicom (the other sender besides dcmtk storescu)."""
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PYSENDER")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def _image_refs(items: Iterable[Dataset]) -> Iterator[Dataset]:
    """Every Referenced SOP Sequence item of IMAGE content items, depth first."""
    for item in items:
        if item.get("ValueType") == "IMAGE":
            yield from item.ReferencedSOPSequence
        yield from _image_refs(item.get("ContentSequence", []))


def _wait_done(node: Node, uid: str) -> StudyRow:
    def probe() -> StudyRow | None:
        s = node.study(uid)
        if s is None:
            return None
        if s.state in ("failed", "skipped"):
            raise AssertionError(f"study {s.state}: {s.reason}")
        return s if any(d.state == "sent" for d in s.deliveries) else None

    return wait_for(probe, 120, "results delivered")  # type: ignore[no-any-return]


def _slice_of(name: str, frame: int, source: Dataset, encodings: dict[str, Any]) -> str:
    """The classic slice (SOP Instance UID) that frame ``frame`` of ``source`` holds."""
    if name == "legacy":  # the converter names each frame's source instance
        item = source.PerFrameFunctionalGroupsSequence[frame - 1]
        return str(item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID)
    classic: WrittenStudy = encodings["classic"]
    return str(classic.main.sop_uids[encodings["order"][frame - 1]])


def _one(pacs: RecordingPacs, sop_class: str, study_uid: str) -> Dataset:
    (ds,) = [d for d in pacs.by_class(sop_class) if d.StudyInstanceUID == study_uid]
    return ds


def test_node_classifies_enhanced_ct_and_its_sr_cites_frames(
    tmp_path: Path,
    node: Node,
    pacs: RecordingPacs,
    encodings: dict[str, Any],
) -> None:
    classic: WrittenStudy = encodings["classic"]
    assert storescu(node.port, classic.main.files).returncode == 0
    # -R: propose the file's own SOP class (dcmtk's default list lacks Legacy Converted).
    sent = storescu(node.port, [encodings["legacy"]], extra=("-R",))
    assert sent.returncode == 0, sent.stderr
    assert _pynetdicom_send(node.port, encodings["enhanced"]) == 0x0000
    reference = _wait_done(node, classic.study_uid)
    assert reference.findings is not None
    assert [f["present"] for f in reference.findings.values()] == list(EXPECTED_PRESENT)
    classic_sr = _one(pacs, Comprehensive3DSRStorage, classic.study_uid)
    key_uids = {str(r.ReferencedSOPInstanceUID) for r in _image_refs(classic_sr.ContentSequence)}
    assert key_uids

    for name, sop_class in (
        ("legacy", LegacyConvertedEnhancedCTImageStorage),
        ("enhanced", EnhancedCTImageStorage),
    ):
        path: Path = encodings[name]
        source = pydicom.dcmread(path, stop_before_pixels=True)
        study_uid = str(source.StudyInstanceUID)
        row = _wait_done(node, study_uid)
        assert row.instances == 1  # one instance in the index, N frames
        assert row.eligible_instances == 1
        assert row.findings is not None
        np.testing.assert_allclose(
            _probs(row.findings), _probs(reference.findings), atol=ATOL, err_msg=name
        )
        (used,) = [o for o in row.series_choice if o.chosen]
        assert used.instances == N_SLICES

        sr = _one(pacs, Comprehensive3DSRStorage, study_uid)
        refs = list(_image_refs(sr.ContentSequence))
        assert refs, "the SR cites no key images"
        frames = {int(r.ReferencedFrameNumber) for r in refs}
        for r in refs:
            assert r.ReferencedSOPClassUID == sop_class
            assert r.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert frames <= set(range(1, N_SLICES + 1)), frames
        # The frames cited are the classic SR's key slices, wherever the file keeps them.
        assert {_slice_of(name, f, source, encodings) for f in frames} == key_uids
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        (ev_series,) = evidence.ReferencedSeriesSequence
        (ev_sop,) = ev_series.ReferencedSOPSequence  # the instance once, not per frame
        assert ev_sop.ReferencedSOPInstanceUID == source.SOPInstanceUID

        sc = _one(pacs, SecondaryCaptureImageStorage, study_uid)
        assert sc.SourceImageSequence
        for item in sc.SourceImageSequence:
            assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
            assert 1 <= int(item.ReferencedFrameNumber) <= N_SLICES
        for kind, ds in (("sr", sr), ("sc", sc)):
            out = tmp_path / f"{name}-{kind}.dcm"
            ds.save_as(out, enforce_file_format=True)
            assert dciodvfy_errors(out) == [], (name, kind)
    assert_no_phi(node.log.getvalue(), classic)
