"""The smallest ``fit`` that still exercises the recipe: overrides shared by fit tests."""

from __future__ import annotations

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
