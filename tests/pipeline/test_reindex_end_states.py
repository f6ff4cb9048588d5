"""``reindex`` brings back studies that ended ``skipped`` or ``failed``, with their reason.

The index is a cache of the spool; what the worker decided is kept beside the results
(``results/<study>/state.json``, :mod:`dicom_node.store.study_marker`). Without a
marker for these end states, a lost index would have each such study read, selected and
skipped or failed all over again after ``reindex``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from nodes import SENTINEL_ID, SENTINEL_NAME, Node, storescu, wait_for
from pipeline.support import lose_index, phantom
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.store import study_marker

FINAL = ("done", "failed", "skipped")


def test_reindex_restores_skipped_and_failed_with_their_reason(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    root = tmp_path / "site"
    node = start_node([], root=root)
    chest = phantom(tmp_path / "chest", seed=61, n_slices=10, body_part="CHEST")
    broken = phantom(tmp_path / "broken", seed=62, n_slices=10)
    victim = broken.main.files[4]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:1000]  # headers fine, pixels undecodable: failed
    ds.save_as(victim, enforce_file_format=True)
    for study in (chest, broken):
        assert storescu(node.port, study.main.files).returncode == 0
    before = {
        s.study_uid: wait_for(
            lambda u=s.study_uid: (r := node.study(u)) is not None and r.state in FINAL and r,
            60,
            "a final state",
        )
        for s in (chest, broken)
    }
    assert before[chest.study_uid].state == "skipped"
    assert before[broken.study_uid].state == "failed"
    for uid in before:  # written just after the end state (the index first)
        wait_for(lambda u=uid: study_marker.marker_path(root / "results", u).is_file(), 30,
                 "the study's marker")  # fmt: skip
    markers = "".join(study_marker.marker_path(root / "results", u).read_text() for u in before)
    for secret in (SENTINEL_NAME, SENTINEL_ID):  # UIDs and reasons, no patient data
        assert secret not in markers
    node.service.stop()
    lose_index(node.config)

    rebuilt = CliRunner().invoke(app, ["reindex", "--config", str(node.config)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "0 (done), 1 (skipped), 1 (failed) and 0 (changed since" in rebuilt.stdout
    listed = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["study_uid"]: r for r in json.loads(listed.stdout)}
    for uid, was in before.items():
        row = rows[uid]
        # skipped/failed again, for the same reason: not received, read and decided again
        assert (row["state"], row["reason"]) == (was.state, was.reason)
        assert row["generation"] == was.generation
        assert row["instances"] == was.instances
    assert rows[chest.study_uid]["series_choice"]  # why each series was not chosen


def test_reindex_receives_again_a_skipped_study_that_grew(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    """More instances in the spool than the end state was reached on: the study changed
    after it was skipped, so it is received (and processed) again in the next generation."""
    root = tmp_path / "site"
    node = start_node([], root=root)
    study = phantom(tmp_path / "chest", seed=63, n_slices=10, body_part="CHEST")
    assert storescu(node.port, study.main.files[:-1]).returncode == 0
    was = wait_for(
        lambda: (r := node.study(study.study_uid)) is not None and r.state in FINAL and r,
        60,
        "a final state",
    )
    assert was.state == "skipped"
    node.service.stop()
    # An instance that reached the spool after the marker (a crash before its index row).
    late = study.main.files[-1]
    ds = pydicom.dcmread(late, stop_before_pixels=True)
    spooled = root / "spool" / study.study_uid / str(ds.SeriesInstanceUID)
    target = spooled / f"{ds.SOPInstanceUID}.dcm"
    target.write_bytes(late.read_bytes())
    lose_index(node.config)
    rebuilt = CliRunner().invoke(app, ["reindex", "--config", str(node.config)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "0 (skipped), 0 (failed) and 1 (changed since" in rebuilt.stdout
    listed = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
    (row,) = json.loads(listed.stdout)
    assert (row["state"], row["reason"]) == ("receiving", None)
    assert row["generation"] == was.generation + 1
    assert row["instances"] == was.instances + 1
