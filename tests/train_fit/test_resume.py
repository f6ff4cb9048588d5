"""Resuming from state.pt continues at the right epoch and optimiser step, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch
from train_fit.tiny import TINY_FIT, fit_tiny, tiny_stores

BASE = [*TINY_FIT, "augment.cutmix_p=1.0"]


def test_resume_matches_uninterrupted_run(tmp_path: Path, phantom_store) -> None:
    stores = tiny_stores(phantom_store)
    full = fit_tiny(BASE, tmp_path / "a", stores)
    assert full.steps == 4

    first = fit_tiny(BASE, tmp_path / "b", stores, first_epoch_only=True)
    assert first.steps == 2
    assert len(first.history) == 1
    state = torch.load(tmp_path / "b" / "state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert state["scheduler"]["step"] == 2

    resumed = fit_tiny(BASE, tmp_path / "b", stores, resume=True)
    assert resumed.steps == 4
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0]
    assert resumed.history[1]["lr"] == full.history[1]["lr"]
    assert resumed.param_digest == full.param_digest
    assert (tmp_path / "b" / "metrics.csv").read_text().count("\n") == 3
