"""fit -> evaluate -> export -> predict through the CLI, on a prepared phantom RSNA cache.

The exported checkpoint must load with ``models.checkpoint.load_checkpoint`` and classify a
phantom series through ``models.predict.Predictor``, exactly as the node does.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import train.cli_fit  # noqa: F401  (registers the commands)
from models.checkpoint import load_checkpoint
from models.dicom_io import iter_dicom_files, read_series, scan_headers
from models.labels import LABELS
from models.predict import Predictor
from train.cli import app
from train.data.cache import PreparedCache
from train.data.phantoms import PhantomSpec, write_study

FIT_ARGS = [
    "model.lstm_hidden=32",
    "data.size=null",
    "data.window=8",
    "data.studies_per_batch=4",
    "data.workers=1",
    "data.split=kfold",
    "data.n_folds=4",
    "optim.epochs=3",
    "optim.warmup_epochs=0.5",
    "optim.lr=2e-3",
    "augment.cutmix_p=0.5",
    "run.device=cpu",
]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def fitted(rsna_cache: PreparedCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "phantom"
    _run(
        [
            "fit",
            "--config",
            "phantom_demo",
            f"data.cache={rsna_cache.root}",
            f"run.out={out}",
            *FIT_ARGS,
        ]
    )
    return out


def test_fit_writes_run_and_loss_falls(fitted: Path) -> None:
    for name in (
        "config.yaml",
        "split.json",
        "metrics.csv",
        "curves.png",
        "last.pt",
        "best.pt",
        "state.pt",
    ):
        assert (fitted / name).is_file(), name
    rows = list(csv.DictReader((fitted / "metrics.csv").read_text().splitlines()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    split = json.loads((fitted / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    meta = load_checkpoint(fitted / "best.pt").meta
    assert meta.input_size == 64
    assert meta.provenance["split"].startswith("kfold")


def test_evaluate_rsna_writes_report(
    fitted: Path, rsna_cache: PreparedCache, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    text = _run(
        [
            "evaluate",
            "--checkpoint",
            str(fitted / "best.pt"),
            "--layout",
            "rsna",
            "--data",
            str(rsna_cache.root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--tta",
            "--split",
            str(fitted / "split.json"),
        ]
    )
    assert "0.06370" in text  # the paper's number beside ours
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_studies"] == len(json.loads((fitted / "split.json").read_text())["val"])
    assert 0 < metrics["weighted_log_loss"] < 2
    assert set(metrics["per_class"]) == set(LABELS)
    assert (out / "roc_any.png").is_file()


def test_export_loads_in_the_node_and_classifies(
    fitted: Path, rsna_cache: PreparedCache, tmp_path: Path
) -> None:
    out = tmp_path / "release"
    text = _run(
        [
            "export",
            "--checkpoint",
            str(fitted / "best.pt"),
            "--out",
            str(out),
            "--target-sensitivity",
            "0.9",
            "--trained-on",
            "phantoms (test)",
            "--device",
            "cpu",
        ]
    )
    files = list(out.glob("weights-*.pt"))
    assert len(files) == 1
    assert json.loads(text[text.index("{") :])["file"] == str(files[0])
    loaded = load_checkpoint(files[0])
    assert loaded.sha256.startswith(files[0].stem.removeprefix("weights-"))
    meta = loaded.meta
    assert meta.trained_on == "phantoms (test)"
    assert meta.provenance["git_commit"]
    assert "sensitivity >= 0.9" in meta.provenance["threshold_rule"]
    assert all(0.0 <= t <= 1.0 for t in meta.thresholds)

    study = write_study(
        tmp_path / "dicom", PhantomSpec(seed=5, n_slices=12, size=64, bleeds=("subdural",))
    )
    series = read_series(scan_headers(iter_dicom_files(tmp_path / "dicom")).headers)
    pred = Predictor(loaded, torch.device("cpu"))(series)
    assert pred.slice_probs.shape == (12, 6)
    assert np.all((pred.study_probs >= 0) & (pred.study_probs <= 1))
    assert pred.series_uid == study.main.series_uid


def test_predict_writes_kaggle_submission(
    fitted: Path, rsna_download: Path, tmp_path: Path
) -> None:
    out = tmp_path / "submission.csv"
    _run(
        [
            "predict",
            "--checkpoint",
            str(fitted / "best.pt"),
            "--data",
            str(rsna_download),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "test-cache"),
            "--device",
            "cpu",
            "--workers",
            "1",
        ]
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,Label"
    ids = {line.split(",")[0] for line in lines[1:]}
    images = list((rsna_download / "stage_2_test").glob("ID_*.dcm"))
    assert len(ids) == 6 * len(images)
    assert all(i.rsplit("_", 1)[1] in LABELS for i in ids)
    assert all(0.0 <= float(line.split(",")[1]) <= 1.0 for line in lines[1:])
