"""Helpers of the notification tests (webhooks and HL7 alike): the retry settings every
test target shares, and a phantom study sent to the node and followed until its
notification settles. Both channels are driven the same way; only what the receiver saw
differs, and that stays in each test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodes import Node, storescu
from pipeline.support import phantom, wait_study

from dicom_node.store.index import StudyRow
from train.data.phantoms import WrittenStudy

#: Quick retries, a few of them: a test's scripted failures are retried in seconds.
RETRY: dict[str, Any] = {
    "timeout_s": 5,
    "retry_base_s": 0.3,
    "retry_cap_s": 1.0,
    "max_attempts": 5,
}


def ended(destination: str) -> Callable[[StudyRow], bool]:
    """Whether the study's notification to ``destination`` (``webhook:ris``, ``hl7:ris``)
    is no longer pending: sent, or failed for good."""

    def check(study: StudyRow) -> bool:
        return any(d.destination == destination and d.state != "pending" for d in study.deliveries)

    return check


def send_study(
    node: Node, out: Path, seed: int, until: Callable[[StudyRow], bool], what: str
) -> tuple[WrittenStudy, StudyRow]:
    """A 10-slice phantom study (written to ``out``) sent to ``node`` with storescu; its
    index row once ``until`` holds for it."""
    study = phantom(out, seed=seed, n_slices=10)
    assert storescu(node.port, study.main.files).returncode == 0
    return study, wait_study(node, study.study_uid, until, what)
