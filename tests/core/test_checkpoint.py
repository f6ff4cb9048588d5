"""Checkpoint round trip, weights_only loading, and refusal of unfit files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import (
    FORMAT_VERSION,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from models.dicom_io import CTSeries
from models.errors import CheckpointError
from models.labels import LABELS
from models.network import CNNLSTM, NetworkConfig
from models.predict import Predictor

CFG = NetworkConfig(backbone="resnet18", lstm_hidden=16)


def make(tmp_path: Path, **meta: object) -> tuple[CNNLSTM, Path, CheckpointMeta]:
    torch.manual_seed(0)
    model = CNNLSTM(CFG).eval()
    path = tmp_path / "ck.pt"
    stored = save_checkpoint(
        path,
        model,
        CheckpointMeta(
            network=CFG,
            input_size=64,
            thresholds=(0.3, 0.2, 0.25, 0.4, 0.35, 0.3),
            trained_on="unit test",
            validation_metrics={"weighted_log_loss": 0.07},
            provenance={"git": "abc123"},
            **meta,  # type: ignore[arg-type]
        ),
    )
    return model, path, stored


def test_round_trip_same_outputs_and_metadata(tmp_path: Path) -> None:
    model, path, stored = make(tmp_path)
    loaded = load_checkpoint(path)
    assert loaded.meta == stored
    assert loaded.meta.labels == LABELS
    assert loaded.meta.thresholds == (0.3, 0.2, 0.25, 0.4, 0.35, 0.3)
    assert loaded.meta.validation_metrics == {"weighted_log_loss": 0.07}
    assert loaded.meta.model_uid.startswith("2.25.")
    assert len(loaded.meta.model_uid) <= 64
    assert loaded.meta.created
    x = torch.randn(5, 3, 64, 64)
    torch.testing.assert_close(loaded.model.predict_series(x), model.predict_series(x))


def test_loads_with_weights_only(tmp_path: Path) -> None:
    _, path, _ = make(tmp_path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"meta", "state_dict"}
    assert payload["meta"]["format_version"] == FORMAT_VERSION


def test_model_uid_identifies_weights(tmp_path: Path) -> None:
    _, path, stored = make(tmp_path)
    again = save_checkpoint(tmp_path / "b.pt", load_checkpoint(path).model, stored)
    assert again.model_uid == stored.model_uid
    other = CNNLSTM(CFG)
    assert save_checkpoint(tmp_path / "c.pt", other, stored).model_uid != stored.model_uid


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    make(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def _tamper(path: Path, key: str, value: object) -> None:
    payload = torch.load(path, weights_only=True)
    payload["meta"][key] = value
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("format_version", 99, "format version 99"),
        ("labels", ["any", "sdh"], "labels"),
        ("thresholds", [0.5] * 5, "thresholds"),
        ("thresholds", [1.5] * 6, "thresholds"),
        ("windows", [["brain", 40, 80]], "3 windows"),
        ("format", "other", "not an ich-cnn-lstm checkpoint"),
        ("network", {"backbone": "resnet18", "bogus": 1}, "unknown network settings"),
        ("slice_thickness_mm", 0.0, "slice thickness"),
        ("slice_thickness_mm", "thin", "slice_thickness_mm"),
    ],
)
def test_mismatched_metadata_refused(tmp_path: Path, key: str, value: object, message: str) -> None:
    _, path, _ = make(tmp_path)
    _tamper(path, key, value)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_backbone_refused(tmp_path: Path) -> None:
    _, path, _ = make(tmp_path)
    _tamper(path, "network", {**CFG.to_dict(), "lstm_hidden": 64})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_missing_and_corrupt_files_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_meta(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_meta(bad)


def test_slice_thickness_is_stored_and_defaults_to_5_mm_for_older_files(tmp_path: Path) -> None:
    _, path, stored = make(tmp_path, slice_thickness_mm=3.0)
    assert stored.slice_thickness_mm == 3.0
    assert read_meta(path).slice_thickness_mm == 3.0
    payload = torch.load(path, weights_only=True)
    del payload["meta"]["slice_thickness_mm"]  # as written before the field existed
    torch.save(payload, path)
    assert read_meta(path).slice_thickness_mm == 5.0


def test_predictor_applies_checkpoint_thresholds(tmp_path: Path) -> None:
    _, path, stored = make(tmp_path)
    pred = Predictor.from_path(path, device="cpu")
    hu = np.random.default_rng(0).uniform(-1000, 100, (7, 96, 96)).astype(np.float32)
    series = CTSeries(
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uids=[f"1.2.3.4.{i}" for i in range(7)],
        hu=hu,
        positions_mm=5.0 * np.arange(7.0),  # the training thickness: read as it is
        pixel_spacing=(0.5, 0.5),
        duplicates_dropped=0,
        quirk_corrected=0,
    )
    out = pred(series)
    assert out.slice_probs.shape == (7, 6)
    np.testing.assert_allclose(out.study_probs, out.slice_probs.max(axis=0), rtol=1e-5)
    expected = [bool(p >= t) for p, t in zip(out.study_probs, stored.thresholds, strict=True)]
    expected[0] = expected[0] or any(expected[1:])
    assert list(out.present) == expected
    assert list(out.findings()) == list(LABELS)
    assert len(out.top_slices(3)) == 3
    assert set(out.top_slices(3)) <= set(series.sop_uids)


def test_any_is_present_when_a_subtype_is() -> None:
    from models.predict import SeriesPrediction

    pred = SeriesPrediction(
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uids=["1.2.3.1"],
        slice_probs=np.array([[0.3, 0.1, 0.1, 0.1, 0.1, 0.9]], dtype=np.float32),
        study_probs=np.array([0.3, 0.1, 0.1, 0.1, 0.1, 0.9], dtype=np.float32),
        thresholds=(0.5,) * 6,
    )
    assert pred.present.tolist() == [True, False, False, False, False, True]
    assert pred.findings()["any"] == {"probability": pytest.approx(0.3), "present": True}


def test_residual_network_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = NetworkConfig(backbone="resnet18", lstm_hidden=16, residual=True)
    model = CNNLSTM(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a trained LSTM head is not zero
    path = tmp_path / "res.pt"
    save_checkpoint(path, model, CheckpointMeta(network=cfg, input_size=64))
    assert torch.load(path, weights_only=True)["meta"]["network"]["residual"] is True
    loaded = load_checkpoint(path)
    assert loaded.meta.network.residual
    assert any(k.startswith("slice_head.") for k in loaded.model.state_dict())
    x = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(loaded.model.predict_series(x), model.predict_series(x))


def test_checkpoints_from_before_the_residual_option_load(tmp_path: Path) -> None:
    """Checkpoints written before ``residual`` existed have no such key: the paper network."""
    model, path, _ = make(tmp_path)
    stored = torch.load(path, weights_only=True)["meta"]["network"]
    assert "residual" not in stored  # written only when on: older nodes load these files
    _tamper(path, "network", CFG.to_dict())
    loaded = load_checkpoint(path)
    assert not loaded.meta.network.residual
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(loaded.model.predict_series(x), model.predict_series(x))
