"""What a notification says about one finished study, gathered once for every channel.

The patient's name and ID, birth date and the accession number are read from the DICOM
header of a spooled instance when the notification is sent (the index keeps no patient
data); they go into the payloads that need them (HL7 PID, OBR) and never into a log line
or an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_node.errors import PermanentError, TransientError
from models.labels import LABELS

#: Short names of the findings, in the canonical label order (HL7 OBX-3 text, chat).
DISPLAY: Final[dict[str, str]] = {
    "any": "Intracranial hemorrhage",
    "epidural": "Epidural hemorrhage",
    "intraparenchymal": "Intraparenchymal hemorrhage",
    "intraventricular": "Intraventricular hemorrhage",
    "subarachnoid": "Subarachnoid hemorrhage",
    "subdural": "Subdural hemorrhage",
}

_HEADER_TAGS: Final = [
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
]


class TransientNotifyError(TransientError):
    """The receiver may take the notification later (down, 5xx, timeout, HL7 AE)."""


class PermanentNotifyError(PermanentError):
    """Retrying cannot help (HTTP 4xx, HL7 AR, the study's header is gone)."""


@dataclass(frozen=True, slots=True)
class Finding:
    label: str
    probability: float
    threshold: float | None  # None: a result recorded before thresholds were kept
    present: bool

    @property
    def display(self) -> str:
        return DISPLAY.get(self.label, self.label)


@dataclass(frozen=True, slots=True)
class Patient:
    """Identifying values from the DICOM header: for the receiver only, never logged."""

    name: str = ""  # DICOM PN, alphabetic group: family^given^middle^prefix^suffix
    id: str = ""
    issuer: str = ""
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""


@dataclass(frozen=True, slots=True)
class StudyReport:
    """One finished study as every notification channel sees it."""

    study_uid: str
    study_key: str  # the keyed hash the logs use (dicom_node.logs.study_key)
    generation: int
    link: str  # the study's page: <web base URL>/studies/<study key>
    findings: tuple[Finding, ...]
    model_uid: str
    model_name: str
    patient: Patient

    @property
    def positive(self) -> bool:
        """``any`` present at the checkpoint's threshold: what ``only_positive`` filters on."""
        return any(f.present for f in self.findings if f.label == "any")


def findings_of(findings: dict[str, Any], result: dict[str, Any]) -> tuple[Finding, ...]:
    """The index's findings JSON with the thresholds the result record kept."""
    thresholds = result.get("thresholds") or {}
    out = []
    for label in LABELS:
        f = findings.get(label)
        if f is None:
            continue
        t = thresholds.get(label)
        out.append(
            Finding(label, float(f["probability"]), float(t) if t is not None else None,
                    bool(f["present"]))
        )  # fmt: skip
    return tuple(out)


def is_positive(findings: dict[str, Any] | None) -> bool:
    """``any`` present in the index's findings JSON (before a report is built)."""
    return bool(findings and findings.get("any", {}).get("present"))


def read_patient(path: Path) -> Patient:
    """The identifying header values of one spooled instance of the study.

    A missing file is permanent (retention purged the study, or it was deleted): the
    notification cannot be built again later. Messages name no value from the header.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except FileNotFoundError as exc:
        raise PermanentNotifyError("the study's instances are no longer in the spool") from exc
    except (OSError, InvalidDicomError) as exc:
        raise TransientNotifyError(
            f"cannot read the study's header ({type(exc).__name__})"
        ) from exc

    def text(keyword: str) -> str:
        value = ds.get(keyword)
        return "" if value is None else str(value).strip()

    name = ds.get("PatientName")
    return Patient(
        name=str(name).split("=")[0].strip() if name is not None else "",
        id=text("PatientID"),
        issuer=text("IssuerOfPatientID"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        accession_number=text("AccessionNumber"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_description=text("StudyDescription"),
    )
