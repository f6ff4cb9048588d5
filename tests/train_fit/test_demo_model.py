"""``python -m train demo-model`` is reproducible: a fixed number of epochs under
deterministic kernels on a fixed thread count, so the same seed gives the same weights."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import load_checkpoint, read_meta
from train.demo_model import build_demo_model

TINY = [
    "data.size=32",
    "data.window=4",
    "data.studies_per_batch=2",
    "model.lstm_hidden=16",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
]


def _train(out: Path, seed: int) -> Path:
    return build_demo_model(
        out,
        overrides=TINY,
        train_studies=4,
        val_studies=4,
        cal_studies=6,
        seed=seed,
        n_slices=(4, 6),
        render_size=64,
        progress=False,
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, torch.device("cpu")).model.state_dict()


def test_two_demo_trainings_give_identical_weights(tmp_path: Path) -> None:
    threads_before = torch.get_num_threads()
    first = _weights(_train(tmp_path / "a" / "demo.pt", seed=0))
    second = _weights(_train(tmp_path / "b" / "demo.pt", seed=0))
    other = _weights(_train(tmp_path / "c" / "demo.pt", seed=1))

    assert first.keys() == second.keys()
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert differing == [], f"not bit-exact: {differing[:5]}"
    # the comparison can see a difference: another seed trains other weights
    assert any(not torch.equal(first[k], other[k]) for k in first)
    # the demo's settings are undone afterwards
    assert torch.get_num_threads() == threads_before
    assert not torch.are_deterministic_algorithms_enabled()


def test_checkpoint_names_its_recipe(tmp_path: Path) -> None:
    path = _train(tmp_path / "demo.pt", seed=0)
    meta = read_meta(path)
    assert meta.demo
    assert len(meta.provenance["recipe"]) == 16
    assert meta.provenance["epochs"] == "2"
    assert meta.provenance["threads"] == "2"
    # written into the file (not only a default on load): the phantoms' slice thickness,
    # which the node averages thin series to
    assert torch.load(path, weights_only=True)["meta"]["slice_thickness_mm"] == 5.0
