"""Fixtures for the training-loop tests: small phantom stores built in memory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from train.data.phantoms import make_volume, random_spec
from train.dataset import ArrayStore, hu_to_cache_images


def phantom_store(
    seeds: Sequence[int], size: int = 64, n_slices: tuple[int, int] = (8, 14), p_bleed: float = 0.5
) -> ArrayStore:
    """Phantom studies rendered at ``size`` and windowed into an in-memory store."""
    store = ArrayStore(size=size)
    for seed in seeds:
        spec = random_spec(seed, p_bleed, size=size, n_slices=n_slices)
        vol = make_volume(spec)
        store.add(
            f"study{seed}",
            hu_to_cache_images(vol.hu, size),
            np.asarray(vol.slice_labels, dtype=np.uint8),
            patient=spec.patient_id,
        )
    return store
