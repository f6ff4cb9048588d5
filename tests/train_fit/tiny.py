"""The smallest ``fit`` that still exercises the recipe: overrides and runs shared by fit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from train.config import load_config
from train.dataset import ArrayStore
from train.fit import FitResult, fit

TINY_FIT: list[str] = [
    "model.backbone=resnet18",
    "model.lstm_hidden=16",
    "data.size=32",
    "data.window=4",
    "data.studies_per_batch=2",
    "data.workers=0",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "optim.accumulation=2",
    "run.device=cpu",
    "run.max_steps_per_epoch=2",
]


def tiny_stores(phantom_store: Callable[..., ArrayStore]) -> tuple[ArrayStore, ArrayStore]:
    """Six short training phantoms and two validation phantoms at 32 px."""
    store = phantom_store(range(6), size=32, n_slices=(3, 8))
    val = phantom_store(range(50, 52), size=32, n_slices=(3, 8))
    return store, val


def fit_tiny(
    overrides: list[str],
    out: Path,
    stores: tuple[ArrayStore, ArrayStore],
    *,
    first_epoch_only: bool = False,
    resume: bool = False,
) -> FitResult:
    """``fit`` of ``phantom_demo`` with ``overrides`` into ``out``; ``first_epoch_only``
    stops after epoch 1 (``run.stop_after_epochs``) for a later ``resume``."""
    cfg = load_config("phantom_demo", [*overrides, f"run.out={out}"])
    if first_epoch_only:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"stop_after_epochs": 1})})
    store, val = stores
    return fit(cfg, resume=resume, store=store, val_store=val, progress=False)
