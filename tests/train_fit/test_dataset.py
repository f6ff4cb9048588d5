"""Windows of contiguous slices, padding and masks for short studies, whole studies."""

from __future__ import annotations

import numpy as np
import torch

from train.dataset import ArrayStore, StudyDataset, WindowDataset, to_model_input


def _store() -> ArrayStore:
    store = ArrayStore(size=8)
    for key, n in (("long", 25), ("short", 3)):
        z = np.arange(n, dtype=np.uint8)
        images = np.broadcast_to(z[:, None, None, None], (n, 3, 8, 8)).copy()
        labels = np.zeros((n, 6), dtype=np.uint8)
        labels[:, 0] = z % 2
        store.add(key, images, labels)
    return store


def test_windows_are_contiguous_and_labels_follow() -> None:
    ds = WindowDataset(_store(), ["long"], window=10)
    for _ in range(20):
        item = ds[0]
        z = item["images"][:, 0, 0, 0].long()
        start = int(z[0])
        assert 0 <= start <= 15
        assert torch.equal(z, torch.arange(start, start + 10))
        assert torch.equal(item["labels"][:, 0], (z % 2).float())
        assert bool(item["mask"].all())


def test_short_study_is_padded_and_masked() -> None:
    item = WindowDataset(_store(), ["short"], window=10)[0]
    assert item["images"].shape == (10, 3, 8, 8)
    assert item["mask"].tolist() == [True] * 3 + [False] * 7
    assert int(item["images"][3:].abs().sum()) == 0
    assert float(item["labels"][3:].abs().sum()) == 0.0


def test_whole_study_and_model_input() -> None:
    item = StudyDataset(_store(), ["long"])[0]
    assert item["images"].shape == (25, 3, 8, 8)
    x = to_model_input(item["images"], size=16)
    assert x.shape == (25, 3, 16, 16)
    assert x.dtype == torch.float32
