"""Through the node: every series' outcome in the index and ``dicom-node studies``, the
SR's notes on the input, and a thin-only study averaged into slabs (random-init model:
plumbing, not accuracy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
from nodes import SENTINEL_ID, SENTINEL_NAME, Node, storescu
from pipeline.support import FINAL, RecordingPacs, assert_no_phi, delivered, wait_study
from pydicom.uid import Comprehensive3DSRStorage

from dicom_node.store.index import StudyRow
from models.slabs import plan_slabs
from train.data.phantoms import PhantomSpec, write_study


def _studies(node: Node, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "studies", *args, "--config", str(node.config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _notes(sr_path: Path) -> list[str]:
    sr = hd.sr.srread(sr_path)
    (container,) = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ]
    return [str(i.TextValue) for i in container.ContentSequence]


def test_every_series_outcome_is_recorded_shown_and_reported(
    tmp_path: Path,
    node: Node,
    pacs: RecordingPacs,
) -> None:
    spec = PhantomSpec(
        seed=61, n_slices=12, size=64, patient_name=SENTINEL_NAME, patient_id=SENTINEL_ID
    )
    study = write_study(tmp_path / "multi", spec, extra_series=("localizer", "bone_thin"))
    chest = write_study(
        tmp_path / "chest",
        PhantomSpec(seed=62, n_slices=10, size=64, body_part="CHEST", patient_id=SENTINEL_ID),
        extra_series=("localizer",),
    )
    assert storescu(node.port, study.files).returncode == 0
    assert storescu(node.port, chest.files).returncode == 0
    done = wait_study(node, study.study_uid, delivered, "the multi-series study delivered")
    skipped = wait_study(node, chest.study_uid, lambda s: s.state in FINAL, "a final state")

    kinds = {s.series_uid: s.kind for s in study.series}
    assert {o.series_uid for o in done.series_choice} == set(kinds)
    by_kind = {kinds[o.series_uid]: o for o in done.series_choice}
    assert by_kind["axial"].chosen
    assert by_kind["axial"].instances == 12
    assert not by_kind["localizer"].chosen
    assert "localizer" in (by_kind["localizer"].reason or "")
    assert "bone kernel" in (by_kind["bone_thin"].reason or "")

    # a skipped study shows why each of its series could not be read
    assert skipped.state == "skipped"
    assert len(skipped.series_choice) == 2
    assert not any(o.chosen for o in skipped.series_choice)
    assert all(o.reason == skipped.reason for o in skipped.series_choice)

    listed = {s["study_uid"]: s for s in json.loads(_studies(node, "--json"))}
    assert listed[study.study_uid]["series_choice"] == [o.to_json() for o in done.series_choice]
    assert listed[chest.study_uid]["series_choice"] == [o.to_json() for o in skipped.series_choice]

    table = _studies(node)
    assert "used, or why not" in table
    assert "TOPOGRAM" in table
    assert "not head" in table

    (sr,) = pacs.by_class(Comprehensive3DSRStorage)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    notes = _notes(path)
    assert notes[0].startswith(f"Series used: {study.main.description} (12 images)")
    assert len(notes) == 3
    assert sum(n.startswith("Series not used: TOPOGRAM (1 image)") for n in notes) == 1
    # descriptions go to the index and the results, never to the log
    log = node.log.getvalue()
    for s in study.series:
        assert s.description not in log
    assert_no_phi(log, study)


def test_thin_only_study_is_averaged_into_slabs_and_says_so(
    tmp_path: Path,
    node: Node,
    pacs: RecordingPacs,
) -> None:
    thin = write_study(
        tmp_path / "thin",
        PhantomSpec(
            seed=63,
            n_slices=41,
            size=64,
            slice_thickness_mm=1.25,
            patient_name=SENTINEL_NAME,
            patient_id=SENTINEL_ID,
        ),
    )
    assert storescu(node.port, thin.main.files).returncode == 0
    done: StudyRow = wait_study(node, thin.study_uid, delivered, "the thin study delivered")
    assert node.service.index is not None
    result = node.service.index.result(thin.study_uid)
    assert result is not None
    assert result["n_slices"] == 41
    assert result["slabs"]["n_slabs"] == 10  # 41 x 1.25 mm in slabs of 4 (one of 5)
    assert result["slabs"]["source_spacing_mm"] == 1.25
    (sr,) = pacs.by_class(Comprehensive3DSRStorage)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    notes = _notes(path)
    assert notes[-1].startswith(
        "Slab averaging: 1.25 mm series averaged into 5 mm slabs (41 slices -> 10 slabs)"
    )
    read = hd.sr.srread(path)
    # all 41 source images are evidence; key images cite slab middles only
    assert {e[2] for e in read.get_evidence()} == set(thin.main.sop_uids)
    cited = {
        ref.referenced_sop_instance_uid
        for group in read.content.get_image_measurement_groups()
        for m in group.get_measurements()
        for ref in m.referenced_images
    }
    plan = plan_slabs(np.asarray(thin.main.z_positions), 5.0)
    assert plan is not None  # the grouping itself is tested in tests/core/test_slabs.py
    middles = {thin.main.sop_uids[i] for i in plan.representatives()}
    assert cited
    assert cited <= middles
    assert set(result["top_slices"]) <= middles
    assert done.findings is not None
    assert_no_phi(node.log.getvalue(), thin)
