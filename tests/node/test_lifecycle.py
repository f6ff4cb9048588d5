"""The node as admins run it: ``serve`` until SIGTERM, restart mid-study, ``reindex``,
``studies --json``, ``echo``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from nodes import (
    NODE_AET,
    SENTINEL_ID,
    SENTINEL_NAME,
    Node,
    ServeProcess,
    dataset_bytes,
    storescu,
    wait_for,
    write_config,
)
from pg import PostgresServer
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.scheduler import complete_job_id
from dicom_node.store.index import Index, StudyRow
from train.data.phantoms import WrittenStudy


def _study(index_db: Path, uid: str) -> StudyRow | None:
    index = Index(index_db)
    try:
        return index.study(uid)
    finally:
        index.close()


def _wait_complete(index_db: Path, uid: str, what: str) -> StudyRow:
    """The study's row once a (subprocess) node has marked it ``complete``."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := _study(index_db, uid)) is not None and s.state == "complete" and s,
        timeout=30,
        what=f"completion {what}",
    )


def test_restart_between_last_instance_and_deadline_still_completes(
    phantom: WrittenStudy, tmp_path: Path
) -> None:
    quiet = 3.0
    cfg = write_config(tmp_path, study={"quiet_seconds": quiet}, logging={"level": "INFO"})
    log = tmp_path / "serve.log"
    node = ServeProcess(cfg, log)
    assert storescu(node.port, phantom.main.files).returncode == 0
    assert node.stop() == 0  # SIGTERM: clean shutdown
    # Stopped before the deadline: still receiving, and the timer is in the job store.
    before = _study(tmp_path / "index.sqlite", phantom.study_uid)
    assert before is not None
    assert before.state == "receiving"
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        ids = {r[0] for r in db.execute("SELECT id FROM timers")}
    assert complete_job_id(phantom.study_uid) in ids
    assert not any(phantom.study_uid in i for i in ids)  # ids reach the logs

    node = ServeProcess(cfg, log)
    try:
        done = _wait_complete(tmp_path / "index.sqlite", phantom.study_uid, "after restart")
    finally:
        assert node.stop() == 0
    assert done.instances == len(phantom.main.files)
    assert done.completed_at >= done.last_received + quiet
    text = log.read_text()
    assert "event=node.stopped" in text
    for secret in (SENTINEL_NAME, SENTINEL_ID, phantom.study_uid):
        assert secret not in text


def test_killed_node_replays_acknowledged_instances_from_its_journal(
    phantom: WrittenStudy, tmp_path: Path
) -> None:
    """SIGKILL right after the sender got its Successes, then the spool files and the
    index lost as a power cut would lose unflushed pages: the journal brings all back."""
    cfg = write_config(tmp_path, storage={"journal_segment_mb": 4, "journal_checkpoint_s": 3600})
    log = tmp_path / "serve.log"
    node = ServeProcess(cfg, log)
    assert storescu(node.port, phantom.main.files).returncode == 0
    node.kill()
    study_dir = tmp_path / "spool" / phantom.study_uid
    assert len(list(study_dir.rglob("*.dcm"))) == len(phantom.main.files)
    shutil.rmtree(study_dir)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    node = ServeProcess(cfg, log)
    try:
        done = _wait_complete(tmp_path / "index.sqlite", phantom.study_uid, "after replay")
    finally:
        assert node.stop() == 0
    assert done.instances == len(phantom.main.files)
    sent = sorted(dataset_bytes(f) for f in phantom.main.files)
    assert sorted(dataset_bytes(f) for f in study_dir.rglob("*.dcm")) == sent
    text = log.read_text()
    assert "event=journal.recovered segments=" in text
    assert f"rewritten={len(phantom.main.files)}" in text


def test_reindex_rebuilds_a_deleted_index(
    phantom: WrittenStudy, tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    root = tmp_path / "site"
    node = start_node(root=root)
    assert storescu(node.port, phantom.main.files).returncode == 0
    node.wait_state(phantom.study_uid, "complete")
    node.service.stop()
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "reindex", "--config", str(node.config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"reindexed {len(phantom.main.files)} instances in 1 studies" in proc.stdout
    result = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["study_uid"] == phantom.study_uid
    assert row["instances"] == len(phantom.main.files)
    assert row["series"] == 1
    assert row["state"] == "receiving"  # processing history was in the lost index
    assert row["reason"] is None
    assert {"first_received", "last_received"} <= set(row)
    # The next start gives it a deadline and completes it.
    again = start_node(root=root)
    again.wait_state(phantom.study_uid, "complete")


def test_studies_json_lists_states_counts_and_reasons(
    phantom: WrittenStudy, start_node: Callable[..., Node]
) -> None:
    node = start_node()
    result = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert storescu(node.port, phantom.main.files).returncode == 0
    node.wait_state(phantom.study_uid, "complete")
    result = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
    (row,) = json.loads(result.stdout)
    assert row["state"] == "complete"
    assert row["instances"] == len(phantom.main.files)
    table = CliRunner().invoke(app, ["studies", "--config", str(node.config)])
    assert table.exit_code == 0
    assert "complete" in table.stdout


def test_echo_command(start_node: Callable[..., Node]) -> None:
    node = start_node(node={"allowed_calling_aets": ["ADMIN"]})
    ok = CliRunner().invoke(
        app, ["echo", "127.0.0.1", str(node.port), NODE_AET, "--calling-aet", "ADMIN"]
    )
    assert ok.exit_code == 0, ok.output
    assert "success" in ok.stdout
    refused = CliRunner().invoke(
        app, ["echo", "127.0.0.1", str(node.port), NODE_AET, "--calling-aet", "OTHER"]
    )
    assert refused.exit_code == 1


def test_on_postgresql_an_empty_database_is_refused_and_reindex_fills_it(
    phantom: WrittenStudy,
    tmp_path: Path,
    start_node: Callable[..., Node],
    postgres: PostgresServer,
) -> None:
    """The index on PostgreSQL: a node receives into it; pointed at an empty database
    (the index lost) it refuses to start naming reindex; ``reindex`` fills that database
    from the spool, and the next start completes the study."""
    root = tmp_path / "site"
    node = start_node(root=root, storage={"index_db": postgres.database()})
    assert node.service.index is not None
    assert node.service.index.dialect == "postgresql"
    assert storescu(node.port, phantom.main.files).returncode == 0
    node.wait_state(phantom.study_uid, "complete")
    node.service.stop()
    lost = postgres.database()
    env = {**os.environ, "ICH_STORAGE__INDEX_DB": lost}
    serve = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(node.config)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert serve.returncode == 1
    assert "dicom-node reindex" in serve.stderr
    assert "127.0.0.1" in serve.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "reindex", "--config", str(node.config)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"reindexed {len(phantom.main.files)} instances in 1 studies" in proc.stdout
    index = Index(lost)
    try:
        (row,) = index.studies()
    finally:
        index.close()
    assert (row.study_uid, row.instances, row.state) == (
        phantom.study_uid, len(phantom.main.files), "receiving")  # fmt: skip
    again = start_node(root=root, storage={"index_db": lost})
    again.wait_state(phantom.study_uid, "complete")
