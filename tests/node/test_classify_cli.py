"""``dicom-node classify``: offline, JSON shape, skipped studies, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointMeta, save_checkpoint
from models.labels import LABELS
from models.network import CNNLSTM, NetworkConfig
from train.data.phantoms import PhantomSpec, write_study


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = NetworkConfig(backbone="resnet18", lstm_hidden=16)
    path = tmp_path_factory.mktemp("ck") / "random.pt"
    save_checkpoint(path, CNNLSTM(cfg), CheckpointMeta(network=cfg, input_size=64))
    return path


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
