"""Augmentation, CutMix label mixing and the padding mask of the loss."""

from __future__ import annotations

import pytest
import torch

from train.augment import AugmentConfig, SliceAugment, cutmix, random_affine
from train.fit import masked_weighted_bce


def test_cutmix_labels_follow_kept_area() -> None:
    torch.manual_seed(3)
    b, s, h, w = 4, 3, 32, 32
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, s, 3, h, w)
    labels = torch.zeros(b, s, 6)
    labels[0, :, 0] = 1.0
    labels[2, 1, 3] = 1.0
    checked = 0
    for _ in range(20):
        res = cutmix(images.contiguous(), labels, alpha=1.0)
        for i in range(b):
            j = int(res.perm[i])
            own = (res.images[i] == i + 1).float().mean().item()
            if j != i:
                assert own == pytest.approx(res.lam, abs=1e-6)
                checked += 1
            expected = res.lam * labels[i] + (1 - res.lam) * labels[j]
            torch.testing.assert_close(res.labels[i], expected)
    assert checked > 0


def test_augment_shapes_range_and_identity_when_off() -> None:
    x = torch.rand(6, 3, 48, 48)
    y = SliceAugment(AugmentConfig())(x.clone())
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0
    assert float(y.max()) <= 1.0
    off = SliceAugment(AugmentConfig(enabled=False))
    assert torch.equal(off(x), x)


def test_affine_identity_parameters_give_identity() -> None:
    cfg = AugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        hflip=0,
        vflip=0,
        shift=0,
        scale=0,
        rotate_deg=0,
    )
    theta = random_affine(3, cfg, torch.device("cpu"))
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))


def test_masked_loss_ignores_padding() -> None:
    weights = torch.tensor([2.0, 1, 1, 1, 1, 1])
    logits = torch.randn(2, 5, 6)
    targets = torch.randint(0, 2, (2, 5, 6)).float()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    base = masked_weighted_bce(logits, targets, mask, weights)
    garbage = logits.clone()
    garbage[1, 2:] = 1000.0
    targets2 = targets.clone()
    targets2[1, 2:] = 0.0
    assert masked_weighted_bce(garbage, targets2, mask, weights) == pytest.approx(float(base))
    # equals the mean over the 7 real slices of the per-slice weighted mean
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per = (per * weights).sum(-1) / weights.sum()
    assert float(base) == pytest.approx(float(per[mask].mean()), rel=1e-6)
