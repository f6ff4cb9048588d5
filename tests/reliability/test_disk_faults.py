"""A disk that fills during an association, against ``dicom-node serve`` as a subprocess.

Two ways to run out of room: a real full filesystem (a small tmpfs, filled by another
file, so the write itself fails with ENOSPC: needs root with mount rights, else skipped)
and the spool quota (``storage.max_spool_gb``, the node's own guard: runs anywhere). In
both, dcmtk storescu keeps sending after a failure (``-nh``, as modalities that queue do):
the node answers Success while there is room and 0xA700 for every instance after, leaves
only complete files in the spool, logs one error for the whole episode, and stores the
rest normally once there is room again and the sender retries.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from nodes import dataset_bytes, storescu, write_config
from pipeline.support import assert_no_phi, phantom, study_state
from reliability.faults_support import (
    fill,
    fill_inodes,
    log_events,
    serving,
    small_tmpfs,
    wait_until,
)

from train.data.phantoms import WrittenStudy

pytestmark = pytest.mark.slow

N_SLICES = 16
REFUSED = "Refused: OutOfResources"  # 0xA700 as storescu prints it


def _outcomes(out: str) -> list[str]:
    """Per instance, in sending order: ``ok`` or the refusal storescu printed."""
    got = []
    for line in out.splitlines():
        if "Received Store Response (Success)" in line:
            got.append("ok")
        elif "Received Store Response" in line:
            m = re.search(r"\(([^)]*)\)", line)
            got.append(m.group(1) if m else line)
    return got


def _spool_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.rglob("*") if p.is_file() and ".journal" not in p.parts)


def _check_episode(out: str, spool: Path, study: WrittenStudy) -> tuple[int, int]:
    """Successes then only OutOfResources; the spool holds exactly the acknowledged
    instances, each complete; returns (stored, refused)."""
    outcomes = _outcomes(out)
    assert len(outcomes) == N_SLICES, out
    stored = outcomes.index(REFUSED) if REFUSED in outcomes else N_SLICES
    assert 0 < stored < N_SLICES, outcomes
    assert outcomes[stored:] == [REFUSED] * (N_SLICES - stored), outcomes
    files = _spool_files(spool)
    assert not [p for p in files if p.name.endswith(".tmp")], files  # nothing half-written
    assert len(files) == stored, files
    sent = {dataset_bytes(f) for f in study.main.files[:stored]}
    for f in files:  # each one whole: the dataset exactly as it was sent
        assert any(f.read_bytes().endswith(d) for d in sent), f
    return stored, N_SLICES - stored


@pytest.mark.parametrize(
    ("exhausted", "reason"),
    [
        ("blocks", "reason=free_disk"),  # the guard's statvfs sees it coming: refused first
        ("inodes", "reason=no_space"),  # statvfs shows room: the write itself gets ENOSPC
    ],
)
def test_full_filesystem_during_an_association(tmp_path: Path, exhausted: str, reason: str) -> None:
    study = phantom(tmp_path / "s", seed=141, n_slices=N_SLICES, size=256)
    size = study.main.files[0].stat().st_size
    with small_tmpfs(tmp_path / "disk", 16, inodes=4096) as disk:
        if disk is None:
            pytest.skip("cannot mount a tmpfs (needs root with mount rights); see the quota test")
        spool = disk / "spool"
        config = write_config(
            tmp_path, storage={"spool_dir": str(spool), "min_free_disk_mb": 0}
        )  # the guard keeps no margin: only a really full filesystem refuses
        log = tmp_path / "node.log"
        with serving(config, log) as node:
            if exhausted == "blocks":
                fillers = [fill(disk, leave_bytes=int(size * 5.5))]
            else:  # the study and series folders, then one file per instance
                fillers = fill_inodes(disk, leave=2 + 5)
            proc = storescu(node.port, study.main.files, extra=("-nh",))
            stored, refused = _check_episode(proc.stdout + proc.stderr, spool, study)
            guard = log_events(log, "store.disk_guard")
            assert len(guard) == 1, guard  # one line for the episode, not one per image
            assert "level=ERROR" in guard[0]
            assert reason in guard[0]
            assert not log_events(log, "store.failed")  # nor a write error per image

            for filler in fillers:  # room again; the sender retries the whole study
                filler.unlink()
            again = storescu(node.port, study.main.files)
            assert again.returncode == 0, again.stderr
            assert _outcomes(again.stdout + again.stderr) == ["ok"] * N_SLICES
            assert len(_spool_files(spool)) == N_SLICES
            wait_until(
                lambda: (
                    (s := study_state(tmp_path / "index.sqlite", study.study_uid))
                    and s["state"] == "complete"
                ),
                "the study to complete",
            )
            restored = log_events(log, "store.space_restored")
            assert len(restored) == 1
            assert f"refused={refused}" in restored[0]
            assert len(log_events(log, "store.disk_guard")) == 1
        assert stored + refused == N_SLICES
    assert_no_phi(log.read_text(encoding="utf-8"), study)


def test_spool_quota_reached_during_an_association(tmp_path: Path) -> None:
    study = phantom(tmp_path / "s", seed=142, n_slices=N_SLICES, size=64)
    size = study.main.files[0].stat().st_size
    log = tmp_path / "node.log"
    spool = tmp_path / "spool"
    quota_gb = size * 5.5 / (1 << 30)  # room for five instances
    config = write_config(tmp_path, storage={"max_spool_gb": quota_gb})
    with serving(config, log) as node:
        proc = storescu(node.port, study.main.files, extra=("-nh",))
        stored, refused = _check_episode(proc.stdout + proc.stderr, spool, study)
    assert stored == 5
    guard = log_events(log, "store.disk_guard")
    assert len(guard) == 1, guard
    assert "reason=spool_full" in guard[0]

    # The operator raises the quota and restarts; the sender retries the whole study.
    config = write_config(tmp_path, storage={"max_spool_gb": 1.0})
    with serving(config, log) as node:
        again = storescu(node.port, study.main.files)
        assert again.returncode == 0, again.stderr
        assert _outcomes(again.stdout + again.stderr) == ["ok"] * N_SLICES
        wait_until(
            lambda: (
                (s := study_state(tmp_path / "index.sqlite", study.study_uid))
                and s["state"] == "complete"
            ),
            "the study to complete",
        )
    assert len(_spool_files(spool)) == N_SLICES
    assert len(log_events(log, "store.disk_guard")) == 1
    assert refused == N_SLICES - 5
    assert_no_phi(log.read_text(encoding="utf-8"), study)
