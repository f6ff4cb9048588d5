"""CQ500 scoring and report, export thresholds, and the config loader's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.labels import LABELS
from train.config import ConfigError, load_config, save_config
from train.evaluate import StudyPredictions, cq500_metrics
from train.export import choose_thresholds
from train.report import cq500_markdown, plot_rocs, write_json


def _preds(n: int = 60, seed: int = 0) -> StudyPredictions:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < 0.3).astype(np.uint8)
    y[:, 0] = y[:, 1:].max(axis=1)
    s = np.clip(0.6 * y + 0.5 * rng.random((n, 6)), 0, 1)
    keys = [f"CQ500-CT-{i}" for i in range(n)]
    return StudyPredictions(
        keys, {k: s[i : i + 1].astype(np.float32) for i, k in enumerate(keys)}, y, s
    )


def test_cq500_metrics_and_report(tmp_path: Path) -> None:
    preds = _preds()
    m = cq500_metrics(preds, (0.5,) * 6, target=0.9, n_boot=200)
    for lab in LABELS:
        c = m["per_class"][lab]
        assert c["auc_low"] <= c["auc"] <= c["auc_high"]
        assert c["hs_sensitivity"] >= 0.9
        assert c["n_pos"] == int(preds.study_labels[:, LABELS.index(lab)].sum())
    text = cq500_markdown(m, {"checkpoint": "x.pt"})
    assert "0.9597" in text  # the paper's CNN-LSTM ResNet-50 AUC(any)
    assert "| intraventricular |" in text
    write_json(tmp_path / "metrics.json", {**m, "undefined": float("nan")})
    assert json.loads((tmp_path / "metrics.json").read_text())["undefined"] is None
    assert len(plot_rocs(tmp_path, preds.study_labels, preds.study_scores, "CQ500")) == 6


def test_thresholds_reach_target_sensitivity() -> None:
    preds = _preds(200, seed=1)
    thr = choose_thresholds(preds.study_labels, preds.study_scores, 0.95)
    for c in range(6):
        y, s = preds.study_labels[:, c].astype(bool), preds.study_scores[:, c]
        assert (s[y] >= thr[c]).mean() >= 0.95
        # the next higher score would drop below the target: the threshold is the highest
        higher = s[y][s[y] > thr[c]]
        if higher.size:
            assert (s[y] >= higher.min()).mean() < 0.95


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    cfg = load_config(
        "rsna_resnet50", ["optim.lr=3e-4", "model.lstm=false", "augment.crop_scale=[0.7, 1.0]"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.lstm is False
    assert cfg.augment.crop_scale == (0.7, 1.0)
    assert cfg.optim.accumulation == 2
    assert cfg.optim.warmup_epochs == 3
    assert cfg.optim.epochs == 30
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config("rsna_resnet50", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("rsna_resnet50", ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")
    path = save_config(cfg, tmp_path)
    assert load_config(path) == cfg
