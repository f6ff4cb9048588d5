"""The series-header corpus (tests/core/series_corpus.py) through ``dicom-node classify``:
the series the CLI reads is the one series choice expects, and its JSON lists every
other series of the study with the reason it was not read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.series_corpus import BY_NAME, STUDIES, write_entry
from pydicom.uid import generate_uid


def test_corpus_studies_through_classify(tmp_path: Path, checkpoint: Path) -> None:
    expected: dict[str, tuple[str | None, dict[str, str]]] = {}
    for study in STUDIES:
        study_uid = generate_uid()
        uids = {
            name: write_entry(tmp_path / study.name, BY_NAME[name], study_uid)
            for name in study.series
        }
        chosen = uids[study.chosen] if study.chosen is not None else None
        expected[study_uid] = (chosen, {uid: name for name, uid in uids.items()})

    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "classify", str(tmp_path), "--json",
         "--checkpoint", str(checkpoint)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {r["study_uid"]: r for r in json.loads(proc.stdout)["studies"]}
    assert results.keys() == expected.keys()
    for study_uid, (chosen, names) in expected.items():
        result = results[study_uid]
        assert result["series_uid"] == chosen, (names, result["skipped"])
        if chosen is None:
            assert result["findings"] is None
            assert result["skipped"]
        else:
            assert result["findings"] is not None
        listed = {s["series_uid"]: s for s in result["series_choice"]}
        assert listed.keys() == names.keys()
        for uid, name in names.items():
            entry = listed[uid]
            assert entry["chosen"] is (uid == chosen)
            if uid == chosen:
                assert entry["reason"] is None
                continue
            assert entry["reason"], name
            if not BY_NAME[name].chosen:  # ineligible alone: its own reason, not the ranking
                for word in BY_NAME[name].why:
                    assert word in entry["reason"], (name, entry["reason"])
