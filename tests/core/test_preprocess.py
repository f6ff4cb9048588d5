"""Windows, resize and normalisation against hand-computed numbers (METHOD.md windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.preprocess import (
    DEFAULT_WINDOWS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_windows,
    apply_windows_uint8,
    hu_to_model_input,
    normalize_imagenet,
    resize,
    windows_torch,
)

# HU -> (brain 40/80, subdural 75/215, bone 600/2800), computed by hand:
# brain [0, 80]; subdural [-32.5, 182.5]; bone [-800, 2000].
CASES = [
    (-1000.0, (0.0, 0.0, 0.0)),
    (0.0, (0.0, 32.5 / 215, 800 / 2800)),
    (40.0, (0.5, 72.5 / 215, 840 / 2800)),
    (80.0, (1.0, 112.5 / 215, 880 / 2800)),
    (182.5, (1.0, 1.0, 982.5 / 2800)),
    (2000.0, (1.0, 1.0, 1.0)),
    (3000.0, (1.0, 1.0, 1.0)),
]


def test_window_definitions_match_method() -> None:
    assert [(w.name, w.level, w.width) for w in DEFAULT_WINDOWS] == [
        ("brain", 40.0, 80.0),
        ("subdural", 75.0, 215.0),
        ("bone", 600.0, 2800.0),
    ]


@pytest.mark.parametrize(("hu", "expected"), CASES)
def test_apply_windows_hand_computed(hu: float, expected: tuple[float, float, float]) -> None:
    out = apply_windows(np.full((2, 3), hu))
    assert out.shape == (3, 2, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], expected, atol=1e-6)


def test_apply_windows_keeps_leading_dims_and_range() -> None:
    hu = np.random.default_rng(0).uniform(-2000, 4000, size=(4, 5, 8, 8))
    out = apply_windows(hu)
    assert out.shape == (4, 5, 3, 8, 8)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_torch_windows_equal_numpy() -> None:
    hu = np.random.default_rng(1).uniform(-1100, 2500, size=(3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(
        windows_torch(torch.from_numpy(hu)).numpy(), apply_windows(hu), atol=1e-6
    )


def test_uint8_windows_round_to_nearest() -> None:
    out = apply_windows_uint8(np.array([[40.0]]))
    assert out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [128, round(72.5 / 215 * 255), round(840 / 2800 * 255)]


def test_resize_and_identity() -> None:
    x = torch.rand(2, 3, 64, 64)
    assert resize(x, 64) is x
    assert resize(x, 32).shape == (2, 3, 32, 32)
    flat = torch.full((1, 3, 64, 64), 0.25)
    np.testing.assert_allclose(resize(flat, 16).numpy(), 0.25, atol=1e-6)


def test_imagenet_normalisation() -> None:
    x = torch.ones(1, 3, 2, 2)
    out = normalize_imagenet(x)
    for c in range(3):
        expected = (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[0, c], torch.full((2, 2), expected))


def test_full_pipeline_shape_and_values() -> None:
    hu = np.full((5, 32, 32), 40.0, dtype=np.float32)
    x = hu_to_model_input(hu, 16)
    assert x.shape == (5, 3, 16, 16)
    expected_brain = (0.5 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(x[:, 0], torch.full((5, 16, 16), expected_brain), atol=1e-5)


def test_uint8_cache_matches_the_node_path_up_to_rounding() -> None:
    """Training caches store hu_to_uint8; the node computes hu_to_model_input."""
    from models.preprocess import hu_to_uint8

    hu = np.random.default_rng(2).uniform(-1100, 2500, size=(5, 64, 64)).astype(np.float32)
    cached = torch.from_numpy(hu_to_uint8(hu, 32, chunk=2)).float() / 255.0
    node = hu_to_model_input(hu, 32)
    assert cached.shape == node.shape == (5, 3, 32, 32)
    torch.testing.assert_close(normalize_imagenet(cached), node, atol=0.5 / 255 / 0.22, rtol=0)
