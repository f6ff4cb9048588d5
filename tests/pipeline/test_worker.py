"""The inference worker with real peers: dcmtk storescu sends, a pynetdicom PACS receives.

Each test runs a node in this process with a random-init checkpoint (plumbing, not
accuracy) and follows studies through ``queued -> processing -> done | failed | skipped``
to the objects the PACS acknowledged.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import torch
from nodes import Node, storescu
from pipeline.support import (
    EXPECTED_PRESENT,
    FINAL,
    RecordingPacs,
    assert_no_phi,
    delivered,
    destination,
    phantom,
    study_state,
    wait_study,
)
from pydicom.uid import Comprehensive3DSRStorage, MRImageStorage, SecondaryCaptureImageStorage

from models.labels import LABELS


def test_late_instances_reopen_and_the_new_sr_supersedes_the_old(
    tmp_path: Path,
    node: Node,
    pacs: RecordingPacs,
) -> None:
    study = phantom(tmp_path / "late", seed=21, n_slices=12)
    files = study.main.files  # inferior to superior
    assert storescu(node.port, files[:11]).returncode == 0
    first = wait_study(node, study.study_uid, delivered, "generation 1 delivered")
    assert first.state == "done"
    assert first.generation == 1
    assert first.findings is not None
    assert list(first.findings) == list(LABELS)
    assert [f["present"] for f in first.findings.values()] == list(EXPECTED_PRESENT)
    (sr1,) = pacs.by_class(Comprehensive3DSRStorage)
    (sc1,) = pacs.by_class(SecondaryCaptureImageStorage)
    assert "PredecessorDocumentsSequence" not in sr1

    assert storescu(node.port, files[11:]).returncode == 0  # a late slice
    second = wait_study(node, study.study_uid, lambda s: delivered(s, 2), "generation 2 delivered")
    assert second.state == "done"
    assert second.generation == 2
    assert second.instances == 12
    srs = pacs.by_class(Comprehensive3DSRStorage)
    scs = pacs.by_class(SecondaryCaptureImageStorage)
    assert len(srs) == 2
    assert len(scs) == 2
    sr2 = next(ds for ds in srs if ds.SOPInstanceUID != sr1.SOPInstanceUID)
    sc2 = next(ds for ds in scs if ds.SOPInstanceUID != sc1.SOPInstanceUID)
    (pred_study,) = sr2.PredecessorDocumentsSequence
    (pred_series,) = pred_study.ReferencedSeriesSequence
    (pred,) = pred_series.ReferencedSOPSequence
    assert pred_study.StudyInstanceUID == study.study_uid
    assert pred_series.SeriesInstanceUID == sr1.SeriesInstanceUID
    assert pred.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    assert sc2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == sc1.SOPInstanceUID
    # The new SR's evidence is the whole series now, late slice included.
    evidence = {e[2] for e in hd.sr.srread(_as_file(sr2, tmp_path / "sr2.dcm")).get_evidence()}
    assert evidence == set(study.main.sop_uids)
    assert all(n == 1 for n in pacs.sop_counts().values())
    assert_no_phi(node.log.getvalue(), study)


def _as_file(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _mr_only(out: Path, seed: int) -> Any:
    """A phantom re-labelled as MR Image Storage (the node must store it, not classify it)."""
    study = phantom(out, seed=seed, n_slices=10)
    for f in study.main.files:
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.Modality = "MR"
        ds.save_as(f, enforce_file_format=True)
    return study


def test_not_eligible_studies_are_skipped_with_a_reason_and_nothing_is_sent(
    tmp_path: Path,
    node: Node,
    pacs: RecordingPacs,
) -> None:
    chest = phantom(tmp_path / "chest", seed=31, n_slices=10, body_part="CHEST")
    mr_modality = phantom(tmp_path / "mrmod", seed=32, n_slices=10, modality="MR")
    mr_class = _mr_only(tmp_path / "mrclass", seed=33)
    for s in (chest, mr_modality, mr_class):
        assert storescu(node.port, s.main.files).returncode == 0
    rows = {
        s.study_uid: wait_study(node, s.study_uid, lambda r: r.state in FINAL, "a final state")
        for s in (chest, mr_modality, mr_class)
    }
    for row in rows.values():
        assert row.state == "skipped"
        assert row.findings is None
        assert row.deliveries == ()
    assert rows[chest.study_uid].reason == "BodyPartExamined CHEST is not head"
    assert rows[mr_modality.study_uid].reason == "no CT series (modality MR)"
    reason = rows[mr_class.study_uid].reason
    assert reason is not None
    assert reason.startswith("no CT image in study")
    assert "MR Image Storage" in reason
    # Nothing can still be in flight: delivery is only ever enqueued by a ``done`` study.
    assert pacs.received == []
    assert node.service.worker is not None
    assert node.service.worker.idle()
    assert_no_phi(node.log.getvalue(), chest, mr_modality, mr_class)


def test_a_site_exclude_rule_skips_the_study_with_the_rule_named(
    tmp_path: Path,
    start_node: Callable[..., Node],
    pacs_factory: Callable[..., RecordingPacs],
) -> None:
    """series_choice.rules reach the worker; the rule matches an attribute that is not
    in HEADER_TAGS (ManufacturerModelName), so the worker must scan it too."""
    pacs = pacs_factory()
    rule = {
        "name": "test-rig",
        "action": "exclude",
        "match": {"ManufacturerModelName": "phantoms$"},
        "reason": "phantoms are not patients",
    }
    node = start_node([destination(pacs.port)], series_choice={"rules": [rule]})
    study = phantom(tmp_path / "rig", seed=34, n_slices=10)
    assert storescu(node.port, study.main.files).returncode == 0
    row = wait_study(node, study.study_uid, lambda r: r.state in FINAL, "a final state")
    assert row.state == "skipped"
    assert row.reason == "no eligible axial CT series (site rule 'test-rig' excluded 1 of 1 series)"
    assert row.deliveries == ()
    assert pacs.received == []


def test_corrupt_slice_fails_its_study_and_the_node_keeps_serving(
    tmp_path: Path,
    node: Node,
    pacs: RecordingPacs,
) -> None:
    broken = phantom(tmp_path / "broken", seed=41, n_slices=10)
    victim = broken.main.files[4]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:1000]  # truncated: headers fine, pixels undecodable
    ds.save_as(victim, enforce_file_format=True)
    assert storescu(node.port, broken.main.files).returncode == 0  # stored as received
    failed = wait_study(node, broken.study_uid, lambda s: s.state in FINAL, "a final state")
    assert failed.state == "failed"
    assert failed.reason is not None
    assert failed.reason.startswith("cannot read study:")
    assert "pixel data" in failed.reason
    assert failed.deliveries == ()

    good = phantom(tmp_path / "good", seed=42, n_slices=10)
    assert storescu(node.port, good.main.files).returncode == 0
    done = wait_study(node, good.study_uid, delivered, "the next study delivered")
    assert done.state == "done"
    assert {str(d.StudyInstanceUID) for d in pacs.received} == {good.study_uid}
    assert len(pacs.received) == 2
    assert node.study(broken.study_uid).state == "failed"
    assert_no_phi(node.log.getvalue(), broken, good)


def test_stop_past_its_timeout_leaves_the_study_to_the_next_start(
    tmp_path: Path, start_node: Callable[..., Node], log_capture: io.StringIO
) -> None:
    """A study still in inference when shutdown's wait runs out is neither failed nor lost:
    it stays ``processing``, the late thread ends quietly, the next start requeues it."""
    root = tmp_path / "held"
    node = start_node([], root=root, inference={"stop_timeout_s": 0.2})
    worker = node.service.worker
    assert worker is not None
    assert worker.predictor is not None
    entered, release = threading.Event(), threading.Event()
    real_predict = worker.predictor.predict

    def long_inference(x: torch.Tensor) -> torch.Tensor:  # stands in for a slow CPU
        entered.set()
        release.wait(60)
        return real_predict(x)

    worker.predictor.predict = long_inference  # type: ignore[method-assign]
    study = phantom(tmp_path / "s", seed=5, n_slices=12)
    assert storescu(node.port, study.main.files).returncode == 0
    assert entered.wait(60), "inference never started"
    node.service.stop(grace_s=0)  # closes the index while the inference still runs
    release.set()
    for t in worker._threads:
        t.join(60)
        assert not t.is_alive()
    text = log_capture.getvalue()
    assert "worker.stop_timeout" in text
    assert "worker.abandoned" in text
    assert "Traceback" not in text
    state = study_state(root / "config.yaml", study.study_uid)
    assert state is not None
    assert state["state"] == "processing"

    again = start_node([], root=root)
    done = wait_study(again, study.study_uid, lambda s: s.state == "done", "done after restart")
    assert done.generation == 1
    assert done.findings is not None
