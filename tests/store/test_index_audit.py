"""Schema 4 of the index: the audit trail of users' actions on a study, and the migration
that brings an index written by the previous version (schema 3) up to it, rows kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from dicom_node.store import index as index_module
from dicom_node.store.index import SCHEMA_VERSION, Index, IndexDBError

STUDY = "1.2.840.113619.2.55.3.2"


def _schema_3_file(path: Path) -> None:
    """An index as the previous version left it: schema 3, one done study."""
    db = sqlite3.connect(path)
    for version in (1, 2, 3):
        db.executescript(index_module._MIGRATIONS[version])
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '3')")
    db.execute(
        "INSERT INTO studies (study_uid, state, generation, first_received, last_received, "
        "state_changed, completed_at, findings, result, series_choice) "
        "VALUES (?, 'done', 1, 10, 11, 12, 12, ?, '{\"generation\": 1}', '[]')",
        (STUDY, json.dumps({"any": {"probability": 0.2, "present": False}})),
    )
    db.commit()
    db.close()


def test_schema_3_index_opens_migrated_and_keeps_an_audit_trail(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    _schema_3_file(path)
    index = Index(path)
    assert index.schema_version == SCHEMA_VERSION >= 4
    (study,) = index.studies()
    assert study.findings == {"any": {"probability": 0.2, "present": False}}
    assert index.audit(STUDY) == []
    first = index.add_audit(STUDY, "dr.house", "resend", "queued for 2 destinations")
    index.add_audit(STUDY, "dr.cuddy", "reprocess", "refused: study is processing")
    index.close()

    again = Index(path)  # the rows outlive the process
    rows = again.audit(STUDY)
    assert [(r.user, r.action) for r in rows] == [("dr.house", "resend"), ("dr.cuddy", "reprocess")]
    assert rows[0] == first
    assert rows[1].outcome == "refused: study is processing"
    assert rows[0].to_json()["at"].endswith("Z")
    again.delete_study(STUDY)  # the trail goes with the study
    assert again.audit(STUDY) == []
    again.close()


def test_browse_reads_what_studies_reads_on_the_monitoring_connection(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    _schema_3_file(path)
    index = Index(path)
    index.set_delivery(STUDY, "pacs", 1, "sent", 2, None)
    index.set_delivery(STUDY, "webhook:chat", 1, "pending", 1, "HTTP 503")
    assert index.browse() == index.studies()
    assert [d.destination for d in index.browse()[0].deliveries] == ["pacs", "webhook:chat"]
    assert index.browse(("failed",)) == []
    index.close()
    with pytest.raises(IndexDBError):
        index.browse()
