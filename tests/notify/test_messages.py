"""The notifications' messages and their transport, without a node: the ORU^R01 built
with hl7apy (escaping, names, strict validation), ACK reading, MLLP timeouts, webhook
signatures and HTTP status classes against real loopback receivers, and the config."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from notify.receivers import SECRET, HttpReceiver, MllpReceiver
from peers import free_port

from dicom_node.config import Hl7Target, Webhook, load_settings
from dicom_node.errors import ConfigError
from dicom_node.notify import hl7, webhook
from dicom_node.notify.report import (
    Finding,
    Patient,
    PermanentNotifyError,
    StudyReport,
    TransientNotifyError,
)


def report(*, present: bool = True, patient: Patient | None = None) -> StudyReport:
    return StudyReport(
        study_uid="1.2.840.113619.2.55.3.604688119.971.1712345678.123",
        study_key="0a1b2c3d4e5f",
        generation=2,
        link="https://ich.example.org/studies/0a1b2c3d4e5f",
        findings=(
            Finding("any", 0.8731, 0.42, present),
            Finding("subdural", 0.031, 0.5, False),
        ),
        model_uid="2.25.123456789",
        model_name="ich-cnn-lstm",
        patient=patient
        or Patient(
            name="MÜLLER|SMITH^ANNA^MARIA^DR^JR",
            id="PAT&0042",
            issuer="HOSP^A",
            birth_date="19510203",
            sex="F",
            accession_number="RAD~123",
            study_date="20240506",
            study_time="101112.5",
        ),
    )


def target(port: int = 2575, timeout_s: float = 5) -> Hl7Target:
    return Hl7Target(
        name="ris", host="127.0.0.1", port=port, receiving_application="RIS", timeout_s=timeout_s
    )


def test_oru_r01_escapes_header_values_and_validates_strictly() -> None:
    text = hl7.oru_r01(report(), target(), datetime(2024, 5, 6, 10, 20, tzinfo=UTC)).to_er7()
    segments = text.split("\r")
    assert [s[:3] for s in segments] == ["MSH", "PID", "OBR"] + ["OBX"] * 5
    assert segments[1] == (
        "PID|1||PAT\\T\\0042^^^HOSP\\S\\A||MÜLLER\\F\\SMITH^ANNA^MARIA^JR^DR||19510203|F"
    )
    obr = segments[2].split("|")
    assert obr[2] == obr[3] == "RAD\\R\\123"
    assert obr[7] == "20240506101112"
    assert obr[27] == "^^^^^S"
    parsed = parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.validate()
    assert parsed.msh.msh_10.to_er7() == "0a1b2c3d4e5fG2"
    assert parsed.msh.msh_18.to_er7() == "UNICODE UTF-8"


def test_negative_report_is_routine_with_absent_calls() -> None:
    text = hl7.oru_r01(report(present=False), target()).to_er7()
    obr = text.split("\r")[2].split("|")
    assert obr[27] == "^^^^^R"
    calls = [s.split("|") for s in text.split("\r") if s.startswith("OBX|") and "|CWE|" in s]
    assert [c[5] for c in calls] == ["N^Absent^HL70136"] * 2
    assert all(c[8] == "" for c in calls)


def test_ack_code_reads_msa_of_our_message_only() -> None:
    ours = b"MSH|^~\\&|RIS|||||||ACK|A1|P|2.3\rMSA|AE|0a1b2c3d4e5fG2|busy\r"
    assert hl7.ack_code(ours, "0a1b2c3d4e5fG2") == ("AE", "busy")
    assert hl7.ack_code(ours, "other") == ("", "ACK of another message")
    assert hl7.ack_code(b"MSH|^~\\&|RIS\r", "x") == ("", "ACK without MSA")
    assert hl7.ack_code(b"HTTP/1.1 400", "x") == ("", "answer is not an HL7 message")


def test_hl7_send_without_ack_or_listener_is_transient() -> None:
    silent = MllpReceiver.start()
    silent.silent = True
    try:
        with pytest.raises(TransientNotifyError, match=r"no HL7 ACK within 0\.5 s"):
            hl7.send(target(silent.port, timeout_s=0.5), report())
        assert len(silent.taken()) == 1  # it was sent, only never acknowledged
    finally:
        silent.stop()
    with pytest.raises(TransientNotifyError, match="cannot reach HL7 receiver"):
        hl7.send(target(free_port()), report())


def test_hl7_send_accepts_aa() -> None:
    receiver = MllpReceiver.start()
    try:
        assert hl7.send(target(receiver.port), report()) >= 0
        ((msg, code),) = receiver.taken()
        assert code == "AA"
        assert msg.oru_r01_patient_result.oru_r01_patient.pid.pid_8.to_er7() == "F"
    finally:
        receiver.stop()


def hook(url: str) -> Webhook:
    return Webhook(name="chat", url=url, secret=SECRET, timeout_s=5)


def test_webhook_body_is_signed_and_carries_no_patient_name_or_id() -> None:
    body = webhook.body_of(report())
    doc = json.loads(body)
    assert doc["accession_number"] == "RAD~123"
    assert doc["findings"][0] == {
        "label": "any",
        "name": "Intracranial hemorrhage",
        "probability": 0.8731,
        "threshold": 0.42,
        "present": True,
    }
    assert "MÜLLER" not in body.decode()
    assert "PAT&0042" not in body.decode()
    assert webhook.signature(body, SECRET).startswith("sha256=")
    assert webhook.signature(body, SECRET) != webhook.signature(body, SECRET + "x")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None),
        (204, None),
        (500, TransientNotifyError),
        (503, TransientNotifyError),
        (408, TransientNotifyError),
        (429, TransientNotifyError),
        (400, PermanentNotifyError),
        (404, PermanentNotifyError),
        (302, PermanentNotifyError),
    ],
)
def test_webhook_status_classes(status: int, error: type[Exception] | None) -> None:
    receiver = HttpReceiver.start()
    receiver.script.append(status)
    try:
        if error is None:
            webhook.post(hook(receiver.url), report())
        else:
            with pytest.raises(error, match=f"HTTP {status}"):
                webhook.post(hook(receiver.url), report())
        (request,) = receiver.taken()
        assert request.signature_ok
    finally:
        receiver.stop()


def test_webhook_unreachable_is_transient() -> None:
    with pytest.raises(TransientNotifyError, match="cannot reach webhook"):
        webhook.post(hook(f"http://127.0.0.1:{free_port()}/x"), report())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("notify: {webhooks: [{name: a, url: 'ftp://x', secret: 0123456789abcdef}]}",
         "notify.webhooks[0].url: must be an http:// or https:// URL"),
        ("notify: {webhooks: [{name: a, url: 'https://x', secret: short}]}",
         "notify.webhooks[0].secret"),
        ("notify: {hl7: [{name: a, host: h, port: 1}, {name: a, host: h, port: 2}]}",
         "notify.hl7: names must be unique (repeated: a)"),
        ("notify: {hl7: [{name: 'r i s', host: h, port: 1}]}", "notify.hl7[0].name"),
        ("notify: {hl7: [{name: a, host: h, port: 1, colour: red}]}", "notify.hl7[0].colour"),
        ("destinations: [{name: 'hl7:x', ae_title: A, host: h, port: 1}]",
         "destinations[0].name: must not start with"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(write(tmp_path, yaml_text))


def test_webhook_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path, "notify: {hl7: [{name: ris, host: h, port: 2575}]}\n")
    hooks = [{"name": "chat", "url": "https://chat.example.org/h", "secret": SECRET}]
    monkeypatch.setenv("ICH_NOTIFY__WEBHOOKS", json.dumps(hooks))
    s = load_settings(cfg)
    assert s.notify.webhooks[0].secret == SECRET
    assert s.notify.hl7[0].name == "ris"  # the file's other notify keys stay
    assert s.web.study_link("abc") == "http://127.0.0.1:8080/studies/abc"
