"""HL7 v2.5 ORU^R01 of one finished study, built with hl7apy, and its ACK.

Message (one study, one order)::

    MSH  sending/receiving application and facility, ORU^R01^ORU_R01, MSH-10 control ID
         ``<study key>G<generation>`` (the same for every retry: receivers de-duplicate),
         MSH-18 UNICODE UTF-8 (names from DICOM headers are not always ASCII)
    PID  PID-3 patient ID (with IssuerOfPatientID), PID-5 name (DICOM PN family^given^
         middle^prefix^suffix -> XPN family^given^middle^suffix^prefix), PID-7, PID-8
    OBR  OBR-2/OBR-3 accession number as placer and filler order number, OBR-4 the
         service, OBR-7 study date/time, OBR-25 F, OBR-27 priority S (STAT) when ``any``
         is present, R (routine) otherwise
    OBX  1: the Study Instance UID (ST, DCM 110180 "Study Instance UID")
         then per finding, both with the finding's index as OBX-4 sub-ID: its
         probability (NM, OBX-7 the threshold as ">=t") and the call (CWE Y^Present or
         N^Absent, HL7 table 0136; OBX-8 "A" when present); OBX-17 is the model
         (``<model UID>^<model name>``) on each.

Values from the DICOM header are set as ``ST`` objects, which hl7apy escapes (``|`` ->
``\\F\\``, ``^`` -> ``\\S\\``, ``&`` -> ``\\T\\``...), so a name cannot break the message.

ACK (MSA-1): AA (or CA) = taken; AR/CR = rejected: permanent, because the receiver
refuses this message as it is and would refuse the same bytes again; AE/CE = application
error: transient, because in practice it means the receiver could not process the
message now (its database, an unknown order not yet arrived from the RIS), and a retry
with backoff is what interface engines expect. An ACK whose MSA-2 is not our control ID
is treated as no ACK (transient).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final

from hl7apy.core import Message, Segment
from hl7apy.v2_5 import IS, ST

from dicom_node.config import Hl7Target
from dicom_node.notify import mllp
from dicom_node.notify.report import (
    PermanentNotifyError,
    StudyReport,
    TransientNotifyError,
)

VERSION: Final = "2.5"
CODING_SCHEME: Final = "99ICHNODE"  # local codes of our findings (same scheme as the SR)
SERVICE: Final = ("ICH-TRIAGE", "Intracranial hemorrhage triage (AI)", CODING_SCHEME)
_SEX: Final = {"M": "M", "F": "F", "O": "O"}


def control_id(report: StudyReport) -> str:
    """MSH-10 (20 characters at most in v2.5): one study generation, any attempt."""
    return f"{report.study_key}G{report.generation}"[:20]


def _st(value: str) -> ST:
    return ST(value)


def _is(value: str) -> IS:
    """HD-1 (namespace ID) is typed IS in v2.5; escaped like ST."""
    return IS(value)


def oru_r01(report: StudyReport, target: Hl7Target, now: datetime | None = None) -> Message:
    """The ORU^R01 of ``report`` for ``target`` (an hl7apy message; ``to_er7()`` for text)."""
    now = now or datetime.now(UTC)
    msg = Message("ORU_R01", version=VERSION)
    msh = msg.msh
    msh.msh_3.hd_1 = _is(target.sending_application)
    if target.sending_facility:
        msh.msh_4.hd_1 = _is(target.sending_facility)
    if target.receiving_application:
        msh.msh_5.hd_1 = _is(target.receiving_application)
    if target.receiving_facility:
        msh.msh_6.hd_1 = _is(target.receiving_facility)
    msh.msh_7 = now.strftime("%Y%m%d%H%M%S+0000")
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(report)
    msh.msh_11 = "P"
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    p = report.patient
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = _st(p.id)
    if p.issuer:
        pid.pid_3.cx_4.hd_1 = _is(p.issuer)
    family, given, middle, prefix, suffix = ([*p.name.split("^"), "", "", "", ""])[:5]
    pid.pid_5.xpn_1.fn_1 = _st(family)
    for component, value in (("xpn_2", given), ("xpn_3", middle), ("xpn_4", suffix),
                             ("xpn_5", prefix)):  # fmt: skip
        if value:
            setattr(pid.pid_5, component, _st(value))
    if p.birth_date.isdigit():
        pid.pid_7 = p.birth_date
    if p.sex in _SEX:
        pid.pid_8 = _SEX[p.sex]

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    if p.accession_number:
        obr.obr_2.ei_1 = _st(p.accession_number)
        obr.obr_3.ei_1 = _st(p.accession_number)
    obr.obr_4 = "^".join(SERVICE)
    when = (p.study_date + p.study_time.split(".")[0])[:14]
    if when.isdigit() and len(when) >= 8:
        obr.obr_7 = when
    obr.obr_22 = now.strftime("%Y%m%d%H%M%S+0000")
    obr.obr_25 = "F"
    obr.obr_27.tq_6 = "S" if report.positive else "R"

    method = f"{report.model_uid}^{report.model_name}"
    n = 0

    def obx(value_type: str, code: str, value: str, sub_id: str = "") -> Segment:
        nonlocal n
        n += 1
        seg = order.add_group("ORU_R01_OBSERVATION").obx
        seg.obx_1 = str(n)
        seg.obx_2 = value_type
        seg.obx_3 = code
        if sub_id:
            seg.obx_4 = sub_id
        seg.obx_5 = value  # ours only: a UID, numbers, codes (nothing to escape)
        seg.obx_11 = "F"
        seg.obx_17 = method
        return seg

    obx("ST", "110180^Study Instance UID^DCM", report.study_uid)
    for i, f in enumerate(report.findings, start=1):
        code = f"ICH-{f.label.upper()}"
        prob = obx("NM", f"{code}-P^{f.display} probability^{CODING_SCHEME}",
                   f"{f.probability:.4f}", str(i))  # fmt: skip
        if f.threshold is not None:
            prob.obx_7 = f">={f.threshold:.4f}"
        call = obx("CWE", f"{code}^{f.display}^{CODING_SCHEME}",
                   "Y^Present^HL70136" if f.present else "N^Absent^HL70136", str(i))  # fmt: skip
        if f.present:
            call.obx_8 = "A"
    return msg


def encode(msg: Message) -> bytes:
    text: str = msg.to_er7()
    return text.encode("utf-8")


def ack_code(ack: bytes, expected_control_id: str) -> tuple[str, str]:
    """MSA-1 and MSA-3 (text) of an ACK; ``("", why)`` when it is not our ACK.

    Parsed by hand, tolerantly: receivers answer in their own version (2.3, 2.5.1...),
    with their own separators, and only MSA matters here.
    """
    text = ack.decode("utf-8", errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        return "", "answer is not an HL7 message"
    sep = segments[0][3]
    for seg in segments:
        fields = seg.split(sep)
        if fields[0] == "MSA":
            code = fields[1].strip() if len(fields) > 1 else ""
            ref = fields[2].strip() if len(fields) > 2 else ""
            why = fields[3].strip()[:80] if len(fields) > 3 else ""
            if ref != expected_control_id:
                return "", "ACK of another message"
            return code, why
    return "", "ACK without MSA"


def send(target: Hl7Target, report: StudyReport) -> float:
    """Send the ORU^R01 of ``report`` and check its ACK; returns the seconds it took."""
    t0 = time.perf_counter()
    message = encode(oru_r01(report, target))
    answer = mllp.exchange(target.host, target.port, message, target.timeout_s)
    code, why = ack_code(answer, control_id(report))
    if code in ("AA", "CA"):
        return time.perf_counter() - t0
    # The receiver's text (MSA-3) may quote our message; only its code goes further.
    if code in ("AR", "CR"):
        raise PermanentNotifyError(f"HL7 receiver rejected the message ({code})")
    if code in ("AE", "CE"):
        raise TransientNotifyError(f"HL7 receiver answered {code}")
    raise TransientNotifyError(f"no valid HL7 ACK ({why})")
