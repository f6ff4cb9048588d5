"""Learning-rate schedule: linear warm-up times a cosine over the whole run, per optimiser step.

METHOD.md "Training recipe": ``lr(t) = base * min(1, t / t_warm) * (1 + cos(pi t / T)) / 2``
with ``t_warm`` = 3 epochs of optimiser steps and ``T`` = all optimiser steps of 30 epochs.

The schedule is a pure function of the step count, so resuming needs only that count
(saved in ``state.pt``), not a pickled scheduler object. The ``k``-th optimiser step
(``k = 0, 1, ...``) runs with ``lr(k + 1)``: ``lr(0) = 0`` would waste the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def warmup_cosine(step: int | float, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """``base * min(1, t / t_warm) * (1 + cos(pi * t / T)) / 2``, with ``t`` clamped to ``T``."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    t = min(float(step), float(total_steps))
    warm = 1.0 if warmup_steps <= 0 else min(1.0, t / warmup_steps)
    return base_lr * warm * (1.0 + math.cos(math.pi * t / total_steps)) / 2.0


@dataclass
class WarmupCosine:
    """Sets the learning rate of every parameter group before each optimiser step.

    A group may carry ``lr_scale`` (:func:`train.fit.param_groups`): its rate is the
    schedule's times that factor, so every group keeps the same warm-up and cosine shape.
    """

    optimizer: torch.optim.Optimizer
    base_lr: float
    warmup_steps: int
    total_steps: int
    step_count: int = 0

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, self.base_lr, self.warmup_steps, self.total_steps)

    def apply(self) -> float:
        """Set the rate for the next optimiser step (number ``step_count``) and return it."""
        lr = self.lr_at(self.step_count + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_scale", 1.0))
        return lr

    def advance(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, int | float]:
        return {
            "step": self.step_count,
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        self.step_count = int(state["step"])
