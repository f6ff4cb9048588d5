"""Schema 3 of the index: the outcome of series choice per study, and the migration that
brings an index written by the previous version (schema 2) up to it, rows kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from dicom_node.store import index as index_module
from dicom_node.store.index import SCHEMA_VERSION, Index, InstanceRow
from dicom_node.store.series_outcome import SeriesOutcome

STUDY = "1.2.840.113619.2.55.3.1"
SERIES = "1.2.840.113619.2.55.3.1.2"


def _schema_2_file(path: Path) -> None:
    """An index as the previous version left it: schema 2, one done study with findings,
    one instance, one delivery."""
    db = sqlite3.connect(path)
    db.executescript(index_module._MIGRATIONS[1])
    db.executescript(index_module._MIGRATIONS[2])
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
    db.execute(
        "INSERT INTO studies (study_uid, state, generation, first_received, last_received, "
        "state_changed, completed_at, findings, result) VALUES (?, 'done', 1, 10, 11, 12, 12, "
        "?, ?)",
        (STUDY, json.dumps({"any": {"probability": 0.9, "present": True}}), '{"generation": 1}'),
    )
    db.execute(
        "INSERT INTO series VALUES (?, ?, 10, 11)",
        (SERIES, STUDY),
    )
    db.execute(
        "INSERT INTO instances VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', "
        "'1.2.840.10008.1.2.1', 1, 1000, 'a/b/c.dcm', 10, 1)",
        (SERIES + ".1", STUDY, SERIES),
    )
    db.execute(
        "INSERT INTO deliveries VALUES (?, 'pacs', 1, 'sent', 1, NULL, 13)",
        (STUDY,),
    )
    db.commit()
    db.close()


def test_schema_2_index_opens_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    _schema_2_file(path)
    index = Index(path)
    assert index.schema_version == SCHEMA_VERSION
    (study,) = index.studies()
    assert study.study_uid == STUDY
    assert study.state == "done"
    assert (study.instances, study.series, study.size) == (1, 1, 1000)
    assert study.findings == {"any": {"probability": 0.9, "present": True}}
    assert index.result(STUDY) == {"generation": 1}
    assert [d.state for d in study.deliveries] == ["sent"]
    assert study.series_choice == ()  # processed before the column existed
    assert study.to_json()["series_choice"] == []
    index.close()


def test_series_choice_is_stored_guarded_by_generation_and_cleared_on_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite"
    _schema_2_file(path)
    index = Index(path)
    outcomes = (
        SeriesOutcome(SERIES + ".9", "Scout", 2, False, "localizer/scout"),
        SeriesOutcome(SERIES, "5mm STND", 1, True, None),
    )
    assert not index.set_series_choice(STUDY, 2, outcomes)  # a stale generation
    assert index.study(STUDY).series_choice == ()
    assert index.set_series_choice(STUDY, 1, outcomes)
    assert index.study(STUDY).series_choice == outcomes
    assert index.study(STUDY).to_json()["series_choice"] == [
        {
            "series_uid": SERIES + ".9",
            "description": "Scout",
            "instances": 2,
            "chosen": False,
            "reason": "localizer/scout",
        },
        {
            "series_uid": SERIES,
            "description": "5mm STND",
            "instances": 1,
            "chosen": True,
            "reason": None,
        },
    ]
    index.close()
    again = Index(path)  # kept across a restart
    assert again.study(STUDY).series_choice == outcomes
    # a late instance reopens the study: the old choice no longer describes it
    late = InstanceRow(SERIES + ".2", STUDY, SERIES, "1.2.840.10008.5.1.4.1.1.2",
                       "1.2.840.10008.1.2.1", True, 10, "a/b/d.dcm", 20.0)  # fmt: skip
    assert again.record(late).reopened
    assert again.study(STUDY).series_choice == ()
    again.close()
