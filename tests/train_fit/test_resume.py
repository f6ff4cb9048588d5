"""Resuming from state.pt continues at the right epoch and optimiser step, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch
from train_fit.tiny import TINY_FIT

from train.config import load_config
from train.fit import fit

BASE = [*TINY_FIT, "augment.cutmix_p=1.0"]


def test_resume_matches_uninterrupted_run(tmp_path: Path, phantom_store) -> None:
    store = phantom_store(range(6), size=32, n_slices=(3, 8))
    val = phantom_store(range(50, 52), size=32, n_slices=(3, 8))
    full = fit(
        load_config("phantom_demo", [*BASE, f"run.out={tmp_path / 'a'}"]),
        store=store,
        val_store=val,
        progress=False,
    )
    assert full.steps == 4

    cfg = load_config("phantom_demo", [*BASE, f"run.out={tmp_path / 'b'}"])
    first = fit(
        cfg.model_copy(update={"run": cfg.run.model_copy(update={"stop_after_epochs": 1})}),
        store=store,
        val_store=val,
        progress=False,
    )
    assert first.steps == 2
    assert len(first.history) == 1
    state = torch.load(tmp_path / "b" / "state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert state["scheduler"]["step"] == 2

    resumed = fit(cfg, resume=True, store=store, val_store=val, progress=False)
    assert resumed.steps == 4
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0]
    assert resumed.history[1]["lr"] == full.history[1]["lr"]
    assert resumed.param_digest == full.param_digest
    assert (tmp_path / "b" / "metrics.csv").read_text().count("\n") == 3
