"""Webhooks through a real node: phantom studies in, signed JSON POSTs to a real HTTP
server out; 500 is retried with backoff, 400 fails after one attempt, ``only_positive``
keeps negatives out. No patient data reaches the node's log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from nodes import SENTINEL_ID, SENTINEL_NAME, Node
from notify.notify_support import RETRY, ended, send_study
from notify.receivers import SECRET, HttpReceiver
from pipeline.support import assert_no_phi

from dicom_node.logs import study_key


def hook(receiver: HttpReceiver, **extra: Any) -> dict[str, Any]:
    return {
        "name": "ris",
        "url": receiver.url,
        "secret": SECRET,
        **RETRY,
        **extra,
    }


ENDED = ended("webhook:ris")


def test_500_is_retried_then_delivered_and_400_fails_after_one_attempt(
    tmp_path: Path, start_node: Callable[..., Node], http_receiver: HttpReceiver
) -> None:
    http_receiver.script[:] = [500, 200, 400]
    node = start_node({"webhooks": [hook(http_receiver)]})
    first, row = send_study(node, tmp_path / "a", 71, ENDED, "the first webhook to end")
    (delivery,) = row.deliveries
    assert (delivery.destination, delivery.state, delivery.attempts) == ("webhook:ris", "sent", 2)
    assert delivery.last_error is None

    requests = http_receiver.taken()
    assert [r.status for r in requests] == [500, 200]
    assert all(r.signature_ok for r in requests)
    assert requests[0].body == requests[1].body  # a retry sends the same document
    doc = requests[1].json
    key = study_key(first.study_uid, "test-key")
    header = pydicom.dcmread(first.main.files[0], stop_before_pixels=True)
    assert doc["study"] == key
    assert doc["accession_number"] == str(header.AccessionNumber)
    assert doc["link"] == f"https://ich.example.org/studies/{key}"
    assert doc["positive"] is True
    findings = {f["label"]: f for f in doc["findings"]}
    assert list(findings) == [
        "any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"
    ]  # fmt: skip
    assert findings["any"]["present"] is True
    assert findings["any"]["threshold"] == 0.0
    assert findings["subdural"]["present"] is False
    assert findings["subdural"]["threshold"] == 1.0
    assert row.findings is not None
    assert findings["any"]["probability"] == round(row.findings["any"]["probability"], 4)
    result = node.service.index.result(first.study_uid)  # type: ignore[union-attr]
    assert result is not None
    assert doc["model"]["uid"] == result["model_uid"] != ""
    for value in (SENTINEL_NAME, SENTINEL_ID, first.study_uid):  # a chat needs none of them
        assert value not in requests[1].body.decode()

    second, row = send_study(node, tmp_path / "b", 72, ENDED, "the second webhook to end")
    (delivery,) = row.deliveries
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("failed", 1, "HTTP 400")
    assert [r.status for r in http_receiver.taken()] == [500, 200, 400]
    assert_no_phi(node.log.getvalue(), first, second)


def test_only_positive_skips_a_negative_study(
    tmp_path: Path, start_node: Callable[..., Node], http_receiver: HttpReceiver
) -> None:
    node = start_node(
        {"webhooks": [hook(http_receiver, only_positive=True), hook(http_receiver, name="all")]},
        model="negative",
    )
    study, row = send_study(
        node,
        tmp_path / "a",
        73,
        lambda s: any(d.state == "sent" for d in s.deliveries),
        "the webhook without only_positive",
    )
    assert row.findings is not None
    assert row.findings["any"]["present"] is False
    assert [d.destination for d in row.deliveries] == ["webhook:all"]  # never enqueued for ris
    (request,) = http_receiver.taken()
    assert request.json["positive"] is False
    assert_no_phi(node.log.getvalue(), study)
