"""PACS faults against ``dicom-node serve`` as a subprocess, with real peers.

tests/pipeline/test_delivery.py covers the same policies in process, with a pynetdicom
Storage SCP as the PACS (down at first then up; our AE rejected). Here the whole node runs
as it does in production and the peers are other programs: the PACS stays down for several
retry periods and then dcmtk's storescp comes up on the same port; a real Orthanc refuses
our calling AE; a socket server accepts the association and never answers the C-STORE.
What an operator sees is read with ``dicom-node studies --json``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nodes import storescu
from peers import free_port
from pipeline.support import (
    assert_no_phi,
    destination,
    phantom,
    pipeline_config,
    study_state,
)
from reliability.faults_support import (
    SilentPacs,
    log_events,
    serving,
    start_storescp,
    strict_orthanc,
    studies_json,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def silent_pacs() -> Iterator[SilentPacs]:
    pacs = SilentPacs()
    yield pacs
    pacs.stop()


def _delivery(root: Path, study_uid: str) -> dict[str, Any] | None:
    state = study_state(root / "index.sqlite", study_uid)
    if state is None or not state["deliveries"]:
        return None
    row: dict[str, Any] = state["deliveries"]["pacs"]
    return row


def _shown(config: Path, study_uid: str) -> dict[str, Any]:
    """The study's delivery to ``pacs`` as ``dicom-node studies --json`` prints it."""
    (study,) = [s for s in studies_json(config) if s["study_uid"] == study_uid]
    row: dict[str, Any] = study["deliveries"]["pacs"]
    return row


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_pacs_down_for_several_retry_periods_then_storescp_up(
    tmp_path: Path, checkpoint: Path
) -> None:
    port = free_port()  # nobody listens: every attempt is refused until storescp starts
    dest = destination(port, retry_base_s=0.5, max_attempts=30)  # backoff 0.5, 1, 2, 2, ...
    config = pipeline_config(tmp_path, checkpoint, [dest])
    log = tmp_path / "node.log"
    study = phantom(tmp_path / "s", seed=131, n_slices=10)
    with serving(config, log) as node:
        assert storescu(node.port, study.main.files).returncode == 0
        wait_until(
            lambda: (d := _delivery(tmp_path, study.study_uid)) and d["attempts"] >= 4,
            "four failed attempts (several retry periods)",
        )
        shown = _shown(config, study.study_uid)
        assert shown["state"] == "pending"
        assert shown["attempts"] >= 4
        assert "cannot connect" in shown["last_error"]
        assert shown["next_attempt"] is not None  # when the operator can expect the next try
        assert _ts(shown["next_attempt"]) >= _ts(shown["updated"])

        pacs = start_storescp(port, tmp_path / "pacs", tmp_path / "storescp.log")
        try:
            wait_until(
                lambda: (d := _delivery(tmp_path, study.study_uid)) and d["state"] != "pending",
                "the delivery to end once the PACS is up",
            )
            shown = _shown(config, study.study_uid)
            assert shown["state"] == "sent"
            assert shown["last_error"] is None
            assert shown["next_attempt"] is None
            assert 5 <= shown["attempts"] <= dest["max_attempts"]
            # Delivered once: the SR and the SC, one file each (storescp +uf would keep
            # a second copy of either under another name).
            time.sleep(1.0)  # let a duplicate, if one were on its way, arrive
            received = pacs.files()
            assert sorted(p.name[:2] for p in received) == ["SC", "SR"], received
        finally:
            pacs.stop()
        attempts = log_events(log, "delivery.attempt")
        assert len(attempts) == shown["attempts"]  # one log line per attempt, no hidden loop
    assert_no_phi(log.read_text(encoding="utf-8"), study)


def test_orthanc_refusing_our_calling_ae_fails_after_one_attempt(
    tmp_path: Path, checkpoint: Path
) -> None:
    # Orthanc that knows no modality and allows nothing by default rejects the association:
    # "Rejected Permanent, Source: Service User, Reason: Calling AE Title Not Recognized".
    strict = tmp_path / "orthanc"
    with strict_orthanc(strict) as orthanc:
        dest = destination(orthanc.dicom_port, ae_title="ORTHANC", retry_base_s=0.2)
        config = pipeline_config(tmp_path, checkpoint, [dest])
        log = tmp_path / "node.log"
        study = phantom(tmp_path / "s", seed=132, n_slices=10)
        with serving(config, log) as node:
            assert storescu(node.port, study.main.files).returncode == 0
            wait_until(
                lambda: (d := _delivery(tmp_path, study.study_uid)) and d["state"] != "pending",
                "the delivery to end",
            )
            time.sleep(2.0)  # longer than the retry period: a loop would show another try
            shown = _shown(config, study.study_uid)
        assert shown["state"] == "failed"
        assert shown["attempts"] == 1
        assert shown["next_attempt"] is None
        assert "association rejected" in shown["last_error"]
        assert "Calling AE title not recognised" in shown["last_error"]
        assert len(log_events(log, "delivery.attempt")) == 1
        assert_no_phi(log.read_text(encoding="utf-8"), study)


def test_pacs_that_never_answers_is_bounded_by_the_dimse_timeout_and_retried(
    tmp_path: Path, checkpoint: Path, silent_pacs: SilentPacs
) -> None:
    dimse_s = 2.0
    dest = destination(silent_pacs.port, retry_base_s=0.3, max_attempts=3)
    config = pipeline_config(tmp_path, checkpoint, [dest], node={"dimse_timeout_s": dimse_s})
    log = tmp_path / "node.log"
    study = phantom(tmp_path / "s", seed=133, n_slices=10)
    with serving(config, log) as node:
        assert storescu(node.port, study.main.files).returncode == 0
        wait_until(
            lambda: (d := _delivery(tmp_path, study.study_uid)) and d["state"] != "pending",
            "three attempts, each ended by the DIMSE timeout",
        )
        shown = _shown(config, study.study_uid)
    assert shown["state"] == "failed"
    assert shown["attempts"] == 3
    assert "gave up after 3" in shown["last_error"]
    assert "no C-STORE response" in shown["last_error"]
    conns = silent_pacs.connections
    assert len(conns) == 3  # one association per attempt
    for c in conns:
        assert c.pdu_types[:2] == [0x01, 0x04]  # A-ASSOCIATE-RQ, then the C-STORE (P-DATA)
        assert c.closed is not None  # the node ended it: we never answer nor close
        # It waited for the C-STORE response as long as configured (a lower bound: the
        # upper one is that it ended at all, which the hang guard above bounds).
        assert c.closed - c.opened >= dimse_s * 0.9
    assert_no_phi(log.read_text(encoding="utf-8"), study)
