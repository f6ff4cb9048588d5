"""The learning-rate schedule against METHOD.md's formula."""

from __future__ import annotations

import math

import pytest
import torch

from train.schedule import WarmupCosine, warmup_cosine


def formula(t: float, base: float, warm: float, total: float) -> float:
    return base * min(1.0, t / warm) * (1 + math.cos(math.pi * t / total)) / 2


@pytest.mark.parametrize("t", [0, 15, 30, 150, 300])
def test_schedule_matches_formula(t: int) -> None:
    # 10 steps per epoch: warm-up 3 epochs = 30 steps, 30 epochs = 300 steps
    assert warmup_cosine(t, 1e-3, 30, 300) == pytest.approx(formula(t, 1e-3, 30, 300), abs=1e-15)


def test_schedule_points() -> None:
    assert warmup_cosine(0, 1e-3, 30, 300) == 0.0
    assert warmup_cosine(15, 1e-3, 30, 300) == pytest.approx(
        0.5e-3 * (1 + math.cos(math.pi * 0.05)) / 2
    )
    assert warmup_cosine(150, 1e-3, 30, 300) == pytest.approx(0.5e-3)
    assert warmup_cosine(300, 1e-3, 30, 300) == pytest.approx(0.0, abs=1e-18)


def test_scheduler_sets_lr_per_step_and_resumes() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = WarmupCosine(opt, 1e-3, 30, 300)
    seen = []
    for _ in range(40):
        seen.append(sched.apply())
        sched.advance()
    assert seen[0] == pytest.approx(formula(1, 1e-3, 30, 300))
    assert seen[29] == pytest.approx(formula(30, 1e-3, 30, 300))
    again = WarmupCosine(opt, 1e-3, 30, 300)
    again.load_state_dict(sched.state_dict())
    assert again.apply() == pytest.approx(formula(41, 1e-3, 30, 300))
    assert opt.param_groups[0]["lr"] == pytest.approx(formula(41, 1e-3, 30, 300))


def test_sequence_lr_scale_applies_to_lstm_and_head_only() -> None:
    from models.network import CNNLSTM, NetworkConfig
    from train.fit import param_groups

    net = CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=8))
    plain = param_groups(net, 0.01)
    assert [g["lr_scale"] for g in plain] == [1.0, 1.0]
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0]  # the order of earlier runs
    groups = param_groups(net, 0.01, sequence_lr_scale=0.3)
    backbone = {id(p) for p in net.backbone.parameters()}
    for g in groups:
        inside = {id(p) in backbone for p in g["params"]}
        assert len(inside) == 1
        assert g["lr_scale"] == (1.0 if inside == {True} else 0.3)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    opt = torch.optim.AdamW(groups, lr=1.0)
    sched = WarmupCosine(opt, 1e-3, 30, 300)
    lr = sched.apply()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(lr * g["lr_scale"])
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.3 * lr, lr])
