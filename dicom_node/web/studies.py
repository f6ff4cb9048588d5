"""The worklist's view of the index: studies by their log key, in reading order, with the
patient's name, ID and accession read from the spool (the index keeps none of them).

Order (:func:`worklist_order`): studies whose ``any`` finding is present first, highest
p(any) first and, at equal p, the one that waited longest; then the rest, newest arrival
first (what just came in is what the radiologist looks for among the negatives).

Patient data is read from one stored header per study (``stop_before_pixels``) and kept
in a small cache by study and generation; it leaves this module only in authenticated
responses and is never logged.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from dicom_node.logs import study_key
from dicom_node.store.index import Index, StudyRow, iso

PATIENT_TAGS: Final = ("PatientName", "PatientID", "AccessionNumber", "StudyDate",
                       "StudyDescription")  # fmt: skip
CACHE_SIZE: Final = 2048


class ActionRefused(Exception):  # noqa: N818 - an answer (409), not a failure of the node
    """The study cannot be reprocessed or resent now; the message says why."""


class StudyActions(Protocol):
    """What the node does when a user asks (the service wires the worker and deliverer)."""

    def reprocess(self, study_uid: str) -> str:
        """Queue the study for inference again; returns what was done."""
        ...

    def resend(self, study_uid: str) -> str:
        """Send the current results to every destination again; returns what was done."""
        ...


def is_positive(row: StudyRow) -> bool:
    any_ = (row.findings or {}).get("any") or {}
    return bool(any_.get("present"))


def p_any(row: StudyRow) -> float | None:
    any_ = (row.findings or {}).get("any") or {}
    p = any_.get("probability")
    return float(p) if p is not None else None


def worklist_order(rows: Sequence[StudyRow]) -> list[StudyRow]:
    """Positives by p(any) descending then arrival ascending; then the rest, newest first."""
    positives = sorted(
        (r for r in rows if is_positive(r)),
        key=lambda r: (-(p_any(r) or 0.0), r.first_received, r.study_uid),
    )
    rest = sorted(
        (r for r in rows if not is_positive(r)), key=lambda r: (-r.first_received, r.study_uid)
    )
    return positives + rest


@dataclass(frozen=True)
class StudyFilter:
    """The worklist's filters: states, a finding that must be present, arrival dates."""

    states: tuple[str, ...] = ()
    finding: str | None = None
    date_from: date | None = None
    date_to: date | None = None

    def __call__(self, row: StudyRow) -> bool:
        if self.states and row.state not in self.states:
            return False
        if self.finding:
            f = (row.findings or {}).get(self.finding) or {}
            if not f.get("present"):
                return False
        arrived = datetime.fromtimestamp(row.first_received, UTC).date()
        if self.date_from and arrived < self.date_from:
            return False
        return not (self.date_to and arrived > self.date_to)


@dataclass
class StudySource:
    """The index, the spool and the actions, as the routes use them."""

    index: Index
    spool_dir: Path
    hash_key: str
    actions: StudyActions
    _patients: OrderedDict[tuple[str, int], dict[str, str]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _uids: dict[str, str] = field(default_factory=dict)  # study key -> Study Instance UID

    def key(self, study_uid: str) -> str:
        return study_key(study_uid, self.hash_key)

    def by_key(self, key: str) -> StudyRow | None:
        """The study the logs and webhooks call ``key`` (a keyed hash of its UID).

        The hash cannot be looked up in SQL, so keys are kept in a map from the UIDs
        alone, refreshed when a key is not in it (a study that arrived since).
        """
        with self._lock:
            uid = self._uids.get(key)
        if uid is None:
            fresh = {self.key(u): u for u in self.index.study_uids()}
            with self._lock:
                self._uids = fresh
            uid = fresh.get(key)
        return self.index.study(uid) if uid is not None else None

    def listing(self, flt: StudyFilter) -> list[StudyRow]:
        return worklist_order([r for r in self.index.browse(flt.states) if flt(r)])

    def patient(self, row: StudyRow) -> dict[str, str]:
        """Name, ID, accession, study date and description from a stored header."""
        cache_key = (row.study_uid, row.generation)
        with self._lock:
            if cache_key in self._patients:
                self._patients.move_to_end(cache_key)
                return self._patients[cache_key]
        found = {"name": "", "id": "", "accession": "", "study_date": "", "description": ""}
        instances = self.index.instances(row.study_uid)
        if instances:
            try:
                ds = pydicom.dcmread(
                    self.spool_dir / instances[0].path,
                    stop_before_pixels=True,
                    specific_tags=list(PATIENT_TAGS),
                )
                found = {
                    "name": str(ds.get("PatientName", "") or ""),
                    "id": str(ds.get("PatientID", "") or ""),
                    "accession": str(ds.get("AccessionNumber", "") or ""),
                    "study_date": str(ds.get("StudyDate", "") or ""),
                    "description": str(ds.get("StudyDescription", "") or ""),
                }
            except (OSError, InvalidDicomError):
                pass  # the file went (retention): the row shows without a name
        with self._lock:
            self._patients[cache_key] = found
            while len(self._patients) > CACHE_SIZE:
                self._patients.popitem(last=False)
        return found

    def summary(self, row: StudyRow) -> dict[str, Any]:
        """One worklist row (JSON)."""
        result = self.index.result(row.study_uid) if row.findings else None
        thresholds = (result or {}).get("thresholds") or {}
        findings = {
            label: {
                "probability": f.get("probability"),
                "present": bool(f.get("present")),
                "threshold": thresholds.get(label),
            }
            for label, f in (row.findings or {}).items()
        }
        pat = self.patient(row)
        return {
            "key": self.key(row.study_uid),
            "state": row.state,
            "reason": row.reason,
            "generation": row.generation,
            "arrival": iso(row.first_received),
            "last_received": iso(row.last_received),
            "patient": {"name": pat["name"], "id": pat["id"]},
            "accession": pat["accession"],
            "study_date": pat["study_date"],
            "description": pat["description"],
            "positive": is_positive(row),
            "p_any": p_any(row),
            "findings": findings,
            "deliveries": {d.destination: d.to_json() for d in row.deliveries},
            "instances": row.instances,
            "series": row.series,
        }

    def detail(self, row: StudyRow) -> dict[str, Any]:
        """The study page's data (JSON): the summary plus series, timings, audit, model."""
        result = self.index.result(row.study_uid) or {}
        key = self.key(row.study_uid)
        has_image = bool(result.get("files", {}).get("sc"))
        return {
            **self.summary(row),
            "study_uid": row.study_uid,
            "series_choice": [o.to_json() for o in row.series_choice],
            "result": {
                "generation": result.get("generation"),
                "model_uid": result.get("model_uid"),
                "model_name": result.get("model_name"),
                "n_slices": result.get("n_slices"),
                "slabs": result.get("slabs"),
                "timings_s": result.get("timings_s") or {},
            }
            if result
            else None,
            "image": f"/api/studies/{key}/image.png" if has_image else None,
            "audit": [a.to_json() for a in self.index.audit(row.study_uid)],
        }

    def image_png(self, row: StudyRow) -> bytes | None:
        """The saved Secondary Capture's pixels as PNG: key slices in the brain window,
        the findings and the per-slice curve, as :mod:`dicom_node.results.sc` drew them."""
        result = self.index.result(row.study_uid) or {}
        path = result.get("files", {}).get("sc")
        if not path:
            return None
        try:
            ds = pydicom.dcmread(path)
            pixels = np.asarray(ds.pixel_array, dtype=np.uint8)
        except (OSError, InvalidDicomError, ValueError):
            return None
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        return buf.getvalue()

    def act(self, row: StudyRow, user: str, action: str) -> tuple[bool, str]:
        """Run ``action`` (``reprocess``/``resend``), record it in the audit trail."""
        run: Callable[[str], str] = getattr(self.actions, action)
        try:
            outcome, ok = run(row.study_uid), True
        except ActionRefused as exc:
            outcome, ok = f"refused: {exc}", False
        self.index.add_audit(row.study_uid, user, action, outcome)
        return ok, outcome
