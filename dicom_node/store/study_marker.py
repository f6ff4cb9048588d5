"""A durable copy of each processed study's state beside its results, for ``reindex``.

The index is a cache of the spool, but what the node *did* with a study (its result, the
generation it was made for, which destinations got it) is in the index only. Were the
index lost, a ``reindex`` would bring every study back as new and the node would process
and send it again. So whenever a study's result or a delivery of it is recorded, the
study's row is also written to ``<results_dir>/<study>/state.json`` (temporary name,
fsync, rename, folder fsync: a crash leaves the old file or the new one), and
:func:`restore` puts it back into a rebuilt index:

* the spool holds exactly the instances the result was made from -> the study is
  ``done`` again with its findings, result and deliveries (``sent`` stays sent: nothing
  is delivered twice; ``pending`` is rescheduled at start-up);
* the spool holds more (instances arrived after the result) -> the study stays
  ``receiving`` in the next generation, with the old result kept, so the new result
  names the delivered one as its predecessor.

A study that ended ``skipped`` or ``failed`` gets a marker too (its state, reason and
instance count, and an earlier generation's result if it has one): without it a
``reindex`` would make the worker read, select and fail it all over again. The same
rule applies: the same instances -> the end state and its reason are back; more -> the
study is received again in the next generation.

Markers carry UIDs, findings and reasons, no patient data (the same as the index row).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from dicom_node.store.index import Index, StudyRow
from dicom_node.store.private import open_private, private_dir

log = logging.getLogger(__name__)

MARKER: Final = "state.json"
VERSION: Final = 1


def marker_path(results_dir: Path, study_uid: str) -> Path:
    return results_dir / study_uid / MARKER


#: The states a marker records: where processing ended.
END_STATES: Final = ("done", "skipped", "failed")


def save(index: Index, results_dir: Path, study_uid: str) -> None:
    """Write the study's processing state as the index has it now (an end state only:
    ``done`` with its result, ``skipped`` or ``failed`` with its reason)."""
    study = index.study(study_uid)
    result = index.result(study_uid)
    if study is None or study.state not in END_STATES:
        return
    if study.state == "done" and result is None:
        return
    record = {
        "version": VERSION,
        "study_uid": study_uid,
        "state": study.state,
        "reason": study.reason,
        # the instances the end state was reached on (a ``done`` result names its own)
        "instances": study.instances,
        "generation": study.generation,
        "findings": study.findings,
        "result": result,
        "series_choice": [o.to_json() for o in study.series_choice],
        "deliveries": [
            {
                "destination": d.destination,
                "generation": d.generation,
                "state": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
            }
            for d in study.deliveries
        ],
    }
    path = marker_path(results_dir, study_uid)
    private_dir(path.parent)
    tmp = path.with_name(f".{MARKER}.tmp")
    with open_private(tmp) as fh:  # 0600 whatever the umask: it holds findings
        fh.write(json.dumps(record).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(results_dir: Path, study_uid: str) -> dict[str, Any] | None:
    """The study's marker, or None (none written, or unreadable: the study starts over)."""
    path = marker_path(results_dir, study_uid)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("marker.unreadable", extra={"error": type(exc).__name__})
        return None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return None
    return record


def restore(index: Index, results_dir: Path) -> dict[str, int]:
    """Put the markers' processing state into a rebuilt index; counts by outcome
    (``done``, ``skipped``, ``failed``, or ``reopened``: changed since, processed again)."""
    counts = {"done": 0, "skipped": 0, "failed": 0, "reopened": 0}
    for study in index.studies():
        record = load(results_dir, study.study_uid)
        if record is None:
            continue
        outcome = _restore_one(index, study, record)
        if outcome is not None:
            counts[outcome] += 1
    return counts


def _restore_one(index: Index, study: StudyRow, record: dict[str, Any]) -> str | None:
    # Markers written before skipped/failed ones were kept record ``done`` only.
    state = record.get("state", "done")
    if state not in END_STATES:  # not ours: the study starts over, as without a marker
        return None
    result = record["result"]
    generation = int(record["generation"])
    if state == "done":
        covered = result.get("instances") if isinstance(result, dict) else None
    else:
        covered = record.get("instances")
    same = covered is not None and int(covered) == study.instances
    if not same:
        _reopen(index, study, record)
        return "reopened"
    index.restore_processing(
        study.study_uid,
        state=state,
        reason=record.get("reason") if state != "done" else None,
        generation=generation,
        findings=json.dumps(record["findings"]) if record["findings"] is not None else None,
        result=json.dumps(result) if result is not None else None,
        series_choice=json.dumps(record["series_choice"]),
        deliveries=record["deliveries"],
    )
    return str(state)


def _reopen(index: Index, study: StudyRow, record: dict[str, Any]) -> None:
    """More instances than the marker's end state was reached on: the study is received
    again in the next generation, with the earlier result (if any) kept as predecessor."""
    result = record["result"]
    index.restore_processing(
        study.study_uid,
        state="receiving",
        reason=None,
        generation=int(record["generation"]) + 1,
        findings=json.dumps(record["findings"]) if record["findings"] is not None else None,
        result=json.dumps(result) if result is not None else None,
        series_choice=None,
        deliveries=record["deliveries"],
    )
