"""Spool and state are private to the node's user: folders 0700, files 0600, after a run
that received, journalled, indexed, scheduled, processed and delivered a study; and the
start-up warning when the node runs as root.

Two runs, one per mechanism (:mod:`dicom_node.store.private`): ``dicom-node serve`` as a
subprocess started with umask 022 (its own umask 077 must take over, covering SQLite's
and highdicom's files), and a node in this process under umask 022 (the explicit modes
alone must hold). The state paths are nested folders that do not exist before the run,
so their creation is what is checked.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodes import ServeProcess, running_nodes, storescu, wait_for
from pipeline.support import (
    destination,
    phantom,
    pipeline_config,
    start_pacs,
    study_state,
)

from dicom_node.logs import KeyValueFormatter
from dicom_node.store.private import private_dir, warn_if_root

#: Every state path in a folder of its own that the run must create.
STORAGE = {
    "spool_dir": "state/spool",
    "results_dir": "state/results",
    "index_db": "db/index.sqlite",
    "jobs_db": "db/jobs.sqlite",
    "journal_segment_mb": 1,  # the journal's folder and segments too
}


@contextmanager
def loose_umask() -> Iterator[None]:
    """umask 022 (a shell's usual) for what starts inside: files 0644 unless set."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def not_private(*roots: Path) -> list[str]:
    """Every folder under ``roots`` (the roots included) not 0700 and file not 0600."""
    bad: list[str] = []
    seen = 0
    for root in roots:
        assert root.is_dir(), f"{root} was not created"
        for path in (root, *sorted(root.rglob("*"))):
            mode = stat.S_IMODE(path.lstat().st_mode)
            want = 0o700 if path.is_dir() else 0o600
            seen += 1
            if mode != want:
                bad.append(f"{path.relative_to(root.parent)}: {oct(mode)}, want {oct(want)}")
    assert seen > 10, "too few paths: the check would be vacuous"
    return bad


def site_config(root: Path, checkpoint: Path, pacs_port: int) -> Path:
    """The pipeline tests' config (inference on, one PACS) with :data:`STORAGE`."""
    cfg = pipeline_config(root, checkpoint, [destination(pacs_port)])
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    data["storage"].update(STORAGE)
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    return cfg


def delivered(index_db: Path, study_uid: str) -> dict[str, Any] | None:
    s = study_state(index_db, study_uid)
    assert s is None or s["state"] not in ("skipped", "failed"), s
    return s if s is not None and s["deliveries"].get("pacs", {}).get("state") == "sent" else None


def test_serve_writes_private_state_under_a_loose_umask(tmp_path: Path, checkpoint: Path) -> None:
    pacs = start_pacs()
    root = tmp_path / "site"
    root.mkdir()
    cfg = site_config(root, checkpoint, pacs.port)
    study = phantom(tmp_path / "src", seed=31)
    log = tmp_path / "serve.log"
    try:
        with loose_umask():  # inherited by the child; the node must set its own
            node = ServeProcess(cfg, log)
        try:
            assert storescu(node.port, study.main.files).returncode == 0
            wait_for(lambda: delivered(root / "db/index.sqlite", study.study_uid), 120,
                     "the results delivered")  # fmt: skip
            running = not_private(root / "state", root / "db")  # -wal and -shm exist now
        finally:
            assert node.stop() == 0
    finally:
        pacs.stop()
    assert (root / "state/spool/.journal").is_dir()
    assert list((root / "state/results").rglob("sr-*.dcm"))
    assert running == []
    assert not_private(root / "state", root / "db") == []
    # This machine and CI run as root: the warning is there exactly when it should be.
    as_root = "event=node.running_as_root" in log.read_text(encoding="utf-8")
    assert as_root is (os.geteuid() == 0)


def test_explicit_modes_hold_without_the_umask(
    tmp_path: Path, checkpoint: Path, log_capture: io.StringIO
) -> None:
    """A node embedded in a process with umask 022 (no ``serve``): the modes the node sets
    itself cover every file, SQLite's -wal/-shm and the highdicom results included."""
    pacs = start_pacs()
    study = phantom(tmp_path / "src", seed=32)

    def make_config(base: Path) -> Path:
        return site_config(base, checkpoint, pacs.port)

    try:
        with loose_umask(), running_nodes(tmp_path, log_capture, make_config) as start:
            node = start()
            assert storescu(node.port, study.main.files).returncode == 0
            wait_for(lambda: delivered(node.root / "db/index.sqlite", study.study_uid), 120,
                     "the results delivered")  # fmt: skip
            assert not_private(node.root / "state", node.root / "db") == []
    finally:
        pacs.stop()


def test_existing_open_folder_is_tightened_but_a_shared_one_is_not(
    tmp_path: Path, log_capture: io.StringIO
) -> None:
    mine = tmp_path / "spool"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)  # left open by an older version, or by hand
    private_dir(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: never taken away from its other users
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert "event=storage.not_private" in log_capture.getvalue()


@pytest.mark.parametrize(("euid", "warned"), [(0, True), (1000, False)])
def test_root_warning_at_start_up(euid: int, warned: bool) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(KeyValueFormatter())
    logger = logging.getLogger("dicom_node.store.private")
    logger.addHandler(handler)
    try:
        assert warn_if_root(euid) is warned
    finally:
        logger.removeHandler(handler)
    assert (
        "level=WARNING" in buf.getvalue() and "event=node.running_as_root" in buf.getvalue()
    ) is warned
