"""``dicom-node classify``: offline, JSON shape, skipped studies, every series' outcome,
slab averaging of a thin-only study, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.labels import LABELS
from train.data.phantoms import PhantomSpec, write_study


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_classify_json_lists_every_study(tmp_path: Path, checkpoint: Path) -> None:
    head = write_study(
        tmp_path / "head",
        PhantomSpec(seed=1, n_slices=12, size=64, bleeds=("subdural",)),
        extra_series=("localizer",),
    )
    chest = write_study(
        tmp_path / "chest", PhantomSpec(seed=2, n_slices=12, size=64, body_part="CHEST")
    )
    proc = run_cli("classify", str(tmp_path), "--checkpoint", str(checkpoint), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    by_uid = {s["study_uid"]: s for s in out["studies"]}
    assert set(by_uid) == {head.study_uid, chest.study_uid}
    h = by_uid[head.study_uid]
    assert h["series_uid"] == head.main.series_uid
    assert h["n_slices"] == 12
    assert h["skipped"] is None
    assert list(h["findings"]) == list(LABELS)
    for f in h["findings"].values():
        assert 0.0 <= f["probability"] <= 1.0
        assert isinstance(f["present"], bool)
    assert set(h["top_slices"]) <= set(head.main.sop_uids)
    c = by_uid[chest.study_uid]
    assert c["findings"] is None
    assert "CHEST is not head" in c["skipped"]


def test_classify_shows_every_series_with_its_reason_and_slabs(
    tmp_path: Path, checkpoint: Path
) -> None:
    """A CQ500-like study (localizer, 5 mm soft tissue, 1 mm bone) and a thin-only one:
    the JSON says which series was read and why each other was not, and that the thin
    series was averaged into 5 mm slabs (the checkpoint's default thickness)."""
    multi = write_study(
        tmp_path / "multi",
        PhantomSpec(seed=4, n_slices=12, size=64, bleeds=("subdural",)),
        extra_series=("localizer", "bone_thin"),
    )
    thin = write_study(
        tmp_path / "thin", PhantomSpec(seed=5, n_slices=89, size=64, slice_thickness_mm=0.625)
    )
    proc = run_cli("classify", str(tmp_path), "--checkpoint", str(checkpoint), "--json")
    assert proc.returncode == 0, proc.stderr
    by_uid = {s["study_uid"]: s for s in json.loads(proc.stdout)["studies"]}

    m = by_uid[multi.study_uid]
    kinds = {s.series_uid: s for s in multi.series}
    assert sorted(c["series_uid"] for c in m["series_choice"]) == sorted(kinds)
    for c in m["series_choice"]:
        written = kinds[c["series_uid"]]
        assert c["description"] == written.description
        assert c["instances"] == len(written.files)
        assert c["chosen"] == (written.kind == "axial")
        assert (c["reason"] is None) == c["chosen"]
    reasons = {kinds[c["series_uid"]].kind: c["reason"] for c in m["series_choice"]}
    assert "localizer" in reasons["localizer"]
    assert "bone kernel" in reasons["bone_thin"]
    assert m["series_uid"] == multi.main.series_uid
    assert m["slabs"] is None  # the 5 mm series is read as it is

    t = by_uid[thin.study_uid]
    assert t["n_slices"] == 89
    assert t["slabs"]["n_slices"] == 89
    assert t["slabs"]["n_slabs"] == 11
    assert t["slabs"]["slab_mm"] == 5.0
    assert t["slabs"]["text"] == "0.625 mm series averaged into 5 mm slabs (89 slices -> 11 slabs)"
    # key images are the slabs' middle slices, never a slice between them
    middles = {thin.main.sop_uids[g[(len(g) - 1) // 2]] for g in _groups(89, 11)}
    assert set(t["top_slices"]) <= middles
    assert [c["chosen"] for c in t["series_choice"]] == [True]

    table = run_cli("classify", str(tmp_path / "multi"), "--checkpoint", str(checkpoint))
    assert table.returncode == 0, table.stderr
    assert "TOPOGRAM" in table.stdout
    assert "localizer" in table.stdout
    assert "used" in table.stdout

    off = run_cli(
        "classify", str(tmp_path / "thin"), "--checkpoint", str(checkpoint), "--json", "--no-slabs"
    )
    assert off.returncode == 0, off.stderr
    (plain,) = json.loads(off.stdout)["studies"]
    assert plain["slabs"] is None
    assert plain["n_slices"] == 89


def _groups(n: int, m: int) -> list[list[int]]:
    """``n`` contiguous slices in ``m`` slabs whose sizes differ by at most one."""
    size, extra = divmod(n, m)
    out, start = [], 0
    for j in range(m):
        k = size + (1 if j < extra else 0)
        out.append(list(range(start, start + k)))
        start += k
    return out


def test_classify_table_output(tmp_path: Path, checkpoint: Path) -> None:
    write_study(tmp_path, PhantomSpec(seed=3, n_slices=10, size=64))
    proc = run_cli("classify", str(tmp_path), "--checkpoint", str(checkpoint))
    assert proc.returncode == 0, proc.stderr
    for label in LABELS:
        assert label in proc.stdout


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("classify", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
