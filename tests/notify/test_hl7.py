"""HL7 ORU^R01 over MLLP through a real node: phantom studies in, messages to an MLLP
listener written here out, parsed with hl7apy; AE is retried, AR fails after one attempt,
a negative study is routine (OBR-27 R). No patient data reaches the node's log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from hl7apy.core import Message
from nodes import SENTINEL_ID, Node
from notify.notify_support import RETRY, ended, send_study
from notify.receivers import MllpReceiver
from pipeline.support import assert_no_phi

from dicom_node.logs import study_key


def target(receiver: MllpReceiver, **extra: Any) -> dict[str, Any]:
    return {
        "name": "ris",
        "host": "127.0.0.1",
        "port": receiver.port,
        "sending_application": "ICHNODE",
        "sending_facility": "RADIOLOGY",
        "receiving_application": "RIS",
        "receiving_facility": "HOSPITAL",
        **RETRY,
        **extra,
    }


ENDED = ended("hl7:ris")


def observations(msg: Message) -> list[Any]:
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    return [group.obx for group in order.oru_r01_observation]


def test_ae_is_retried_ar_fails_once_and_the_message_carries_the_study(
    tmp_path: Path, start_node: Callable[..., Node], mllp_receiver: MllpReceiver
) -> None:
    mllp_receiver.script[:] = ["AE", "AA", "AR"]
    node = start_node({"hl7": [target(mllp_receiver)]})
    first, row = send_study(node, tmp_path / "a", 81, ENDED, "the first HL7 message to end")
    (delivery,) = row.deliveries
    assert (delivery.destination, delivery.state, delivery.attempts) == ("hl7:ris", "sent", 2)

    taken = mllp_receiver.taken()
    assert [code for _, code in taken] == ["AE", "AA"]

    def stable(m: Message) -> list[str]:  # MSH-7 and OBR-22 are the time of the attempt
        return [s for s in m.to_er7().split("\r") if not s.startswith(("MSH", "OBR"))]

    assert stable(taken[0][0]) == stable(taken[1][0])  # a retry sends the same message
    assert taken[0][0].msh.msh_10.to_er7() == taken[1][0].msh.msh_10.to_er7()
    msg = taken[1][0]
    header = pydicom.dcmread(first.main.files[0], stop_before_pixels=True)
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msg.msh.msh_12.to_er7() == "2.5"
    assert msg.msh.msh_3.to_er7() == "ICHNODE"
    assert msg.msh.msh_6.to_er7() == "HOSPITAL"
    assert msg.msh.msh_10.to_er7() == f"{study_key(first.study_uid, 'test-key')}G1"
    pid = msg.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.cx_1.to_er7() == SENTINEL_ID
    assert pid.pid_5.xpn_1.to_er7() == "SENTINEL"
    assert pid.pid_5.xpn_2.to_er7() == "LEAKCHECK"
    obr = msg.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_2.to_er7() == obr.obr_3.to_er7() == str(header.AccessionNumber) != ""
    assert obr.obr_25.to_er7() == "F"
    assert obr.obr_27.tq_6.to_er7() == "S"  # positive: STAT

    obx = observations(msg)
    assert len(obx) == 1 + 2 * 6
    assert obx[0].obx_2.to_er7() == "ST"
    assert obx[0].obx_5.to_er7() == first.study_uid
    assert row.findings is not None
    result = node.service.index.result(first.study_uid)  # type: ignore[union-attr]
    assert result is not None
    probability, call = obx[1], obx[2]  # ``any``
    assert probability.obx_2.to_er7() == "NM"
    assert float(probability.obx_5.to_er7()) == round(row.findings["any"]["probability"], 4)
    assert probability.obx_7.to_er7() == ">=0.0000"
    assert call.obx_2.to_er7() == "CWE"
    assert call.obx_5.to_er7() == "Y^Present^HL70136"
    assert call.obx_8.to_er7() == "A"
    assert probability.obx_4.to_er7() == call.obx_4.to_er7() == "1"
    assert call.obx_17.to_er7().split("^")[0] == result["model_uid"]
    subdural = obx[12]
    assert subdural.obx_3.to_er7().startswith("ICH-SUBDURAL^")
    assert subdural.obx_5.to_er7() == "N^Absent^HL70136"

    second, row = send_study(node, tmp_path / "b", 82, ENDED, "the second HL7 message to end")
    (delivery,) = row.deliveries
    assert (delivery.state, delivery.attempts) == ("failed", 1)
    assert delivery.last_error == "HL7 receiver rejected the message (AR)"
    assert [code for _, code in mllp_receiver.taken()] == ["AE", "AA", "AR"]
    assert_no_phi(node.log.getvalue(), first, second)


def test_a_negative_study_is_routine(
    tmp_path: Path, start_node: Callable[..., Node], mllp_receiver: MllpReceiver
) -> None:
    node = start_node({"hl7": [target(mllp_receiver)]}, model="negative")
    study, row = send_study(node, tmp_path / "a", 83, ENDED, "the HL7 message to end")
    assert row.deliveries[0].state == "sent"
    ((msg, _),) = mllp_receiver.taken()
    obr = msg.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_27.tq_6.to_er7() == "R"
    assert all(o.obx_5.to_er7() == "N^Absent^HL70136" for o in observations(msg)[2::2])
    assert_no_phi(node.log.getvalue(), study)
