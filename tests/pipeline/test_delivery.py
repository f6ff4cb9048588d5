"""Deliveries to a real Storage SCP: a PACS that is down at first, one that rejects us.

Retries are persistent APScheduler jobs with exponential backoff (``retry_base_s`` kept
small here); the PACS is a pynetdicom Storage SCP in this process on a loopback port.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from nodes import Node, storescu, wait_for
from peers import free_port
from pipeline.support import (
    FINAL,
    RecordingPacs,
    assert_no_phi,
    destination,
    index_sql,
    phantom,
    wait_study,
)

from dicom_node.pipeline.delivery import delivery_job_id


# pynetdicom 3.0.4 drops (does not close) its socket when connect() fails; CPython closes
# it on collection with a ResourceWarning, which -W error would turn into a failure.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_pacs_down_at_first_then_up_is_delivered_exactly_once(
    tmp_path: Path,
    start_node: Callable[..., Node],
    pacs_factory: Callable[..., RecordingPacs],
) -> None:
    port = free_port()  # nobody listens yet: the first attempt is refused
    node = start_node([destination(port, retry_base_s=0.5)])
    study = phantom(tmp_path / "s", seed=51, n_slices=10)
    assert storescu(node.port, study.main.files).returncode == 0
    failed_once = wait_study(
        node,
        study.study_uid,
        lambda s: bool(s.deliveries) and s.deliveries[0].attempts >= 1,
        "a first, failed delivery attempt",
    )
    (row,) = failed_once.deliveries
    assert row.state == "pending"
    assert row.last_error is not None
    assert "cannot connect" in row.last_error
    assert node.service.scheduler is not None
    assert node.service.scheduler.has_job(delivery_job_id(study.study_uid, "pacs"))

    pacs = pacs_factory(port)  # the PACS comes up
    sent = wait_study(
        node,
        study.study_uid,
        lambda s: s.deliveries[0].state != "pending",
        "the delivery to end",
    )
    (row,) = sent.deliveries
    assert row.state == "sent"
    assert row.attempts >= 2
    assert row.last_error is None
    # the job's row goes once its run returns, a moment after it wrote the delivery's end
    wait_for(
        lambda: not node.service.scheduler.has_job(delivery_job_id(study.study_uid, "pacs")),  # type: ignore[union-attr]
        30,
        "the delivery job to be gone",
    )
    counts = pacs.sop_counts()
    assert len(counts) == 2  # SR and SC
    assert set(counts.values()) == {1}  # each stored once
    assert_no_phi(node.log.getvalue(), study)


def test_pacs_rejecting_our_ae_fails_after_one_attempt(
    tmp_path: Path,
    start_node: Callable[..., Node],
    pacs_factory: Callable[..., RecordingPacs],
) -> None:
    pacs = pacs_factory(require_calling_aet=["SOMEONE"])  # not us (ICHNODE)
    node = start_node([destination(pacs.port, retry_base_s=0.2)])
    study = phantom(tmp_path / "s", seed=52, n_slices=10)
    assert storescu(node.port, study.main.files).returncode == 0
    row = wait_study(
        node,
        study.study_uid,
        lambda s: s.state in FINAL and bool(s.deliveries) and s.deliveries[0].state != "pending",
        "the delivery to end",
    )
    assert row.state == "done"  # the study's results exist; only their delivery failed
    (d,) = row.deliveries
    assert d.state == "failed"
    assert d.attempts == 1
    assert d.last_error is not None
    assert "association rejected" in d.last_error
    assert "Calling AE title not recognised" in d.last_error
    assert node.service.scheduler is not None
    # the job's row goes once its run returns, a moment after it wrote the delivery's end
    wait_for(
        lambda: not node.service.scheduler.has_job(delivery_job_id(study.study_uid, "pacs")),  # type: ignore[union-attr]
        30,
        "the delivery job to be gone",
    )
    assert pacs.received == []
    assert_no_phi(node.log.getvalue(), study)


def test_result_recorded_but_never_enqueued_is_delivered_at_the_next_start(
    tmp_path: Path,
    start_node: Callable[..., Node],
    pacs_factory: Callable[..., RecordingPacs],
) -> None:
    """A crash between recording a study's result and enqueuing its deliveries leaves a
    ``done`` study without delivery rows; the next start must deliver it."""
    pacs = pacs_factory()
    root = tmp_path / "site"
    node = start_node([destination(pacs.port)], root=root)
    study = phantom(tmp_path / "s", seed=53, n_slices=10)
    assert storescu(node.port, study.main.files).returncode == 0
    first = wait_study(
        node,
        study.study_uid,
        lambda s: bool(s.deliveries) and s.deliveries[0].state == "sent",
        "first delivery",
    )
    sent_before = pacs.sop_counts()
    node.service.stop()
    # The state such a crash leaves: the result is recorded, no delivery was enqueued.
    index_sql(node.config, "DELETE FROM deliveries WHERE study_uid = :uid", uid=study.study_uid)
    again = start_node([destination(pacs.port)], root=root)
    row = wait_study(
        again,
        study.study_uid,
        lambda s: bool(s.deliveries) and s.deliveries[0].state == "sent",
        "delivery after the restart",
    )
    assert row.generation == first.generation
    assert row.deliveries[0].attempts == 1
    counts = pacs.sop_counts()
    assert set(counts) == set(sent_before)  # the same SR and SC (same SOP Instance UIDs)
    assert set(counts.values()) == {2}  # once per delivery: before and after the "crash"
    assert "event=delivery.enqueued_at_start" in again.log.getvalue()
