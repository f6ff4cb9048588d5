"""Fixtures for the training-loop tests: small phantom stores built in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from models.preprocess import hu_to_uint8
from train.data.cache import PreparedCache, prepare
from train.data.phantoms import make_volume, random_spec
from train.data.synth import synth_rsna
from train.dataset import ArrayStore

StoreFactory = Callable[..., ArrayStore]


def _phantom_store(
    seeds: Sequence[int], size: int = 64, n_slices: tuple[int, int] = (8, 14), p_bleed: float = 0.5
) -> ArrayStore:
    """Phantom studies rendered at ``size`` and windowed into an in-memory store."""
    store = ArrayStore(size=size)
    for seed in seeds:
        spec = random_spec(seed, p_bleed, size=size, n_slices=n_slices)
        vol = make_volume(spec)
        store.add(
            f"study{seed}",
            hu_to_uint8(vol.hu, size),
            np.asarray(vol.slice_labels, dtype=np.uint8),
            patient=spec.patient_id,
        )
    return store


@pytest.fixture
def phantom_store() -> StoreFactory:
    """``phantom_store(seeds, size=64, n_slices=(8, 14), p_bleed=0.5) -> ArrayStore``."""
    return _phantom_store


@pytest.fixture(scope="session")
def rsna_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom RSNA download (64 px, 12 train studies with 8-12 slices, 2 test studies)."""
    root = tmp_path_factory.mktemp("fit-rsna")
    synth_rsna(
        root, 12, seed=11, size=64, slices=(8, 12), test_studies=2, p_bleed=0.6, progress=False
    )
    return root


@pytest.fixture(scope="session")
def rsna_cache(rsna_download: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedCache:
    """``rsna_download`` prepared at 64 px (the real cache, as training reads it)."""
    out = tmp_path_factory.mktemp("fit-cache") / "rsna"
    return prepare("rsna", rsna_download, out, size=64, workers=1, progress=False)
