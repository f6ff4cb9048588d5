"""Tensor preprocessing: CT windows, resize, ImageNet normalisation.

Three windows (METHOD.md): brain 40/80, subdural 75/215, bone 600/2800 (level/width).
Each clips HU to ``[L - W/2, L + W/2]`` and scales linearly to ``[0, 1]``; the three
become the channels of an RGB-like image so ImageNet-pretrained backbones can be used.
Each step is a separate function because training caches windowed uint8 slices and
resizes/normalises later, while the node runs all steps at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Window:
    """A display window in HU: level (centre) and width."""

    name: str
    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


DEFAULT_WINDOWS: tuple[Window, ...] = (
    Window("brain", 40.0, 80.0),
    Window("subdural", 75.0, 215.0),
    Window("bone", 600.0, 2800.0),
)

#: torchvision's ImageNet statistics, which every pretrained backbone here expects.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def apply_windows(
    hu: NDArray[np.floating] | NDArray[np.integer],
    windows: Sequence[Window] = DEFAULT_WINDOWS,
) -> NDArray[np.float32]:
    """HU ``(..., H, W)`` -> float32 ``(..., C, H, W)`` in ``[0, 1]``, one channel per window."""
    arr = np.asarray(hu, dtype=np.float32)
    out = np.empty((*arr.shape[:-2], len(windows), *arr.shape[-2:]), dtype=np.float32)
    for c, w in enumerate(windows):
        dst = out[..., c, :, :]
        np.subtract(arr, w.low, out=dst)
        dst *= 1.0 / w.width
        np.clip(dst, 0.0, 1.0, out=dst)
    return out


def apply_windows_uint8(
    hu: NDArray[np.floating] | NDArray[np.integer],
    windows: Sequence[Window] = DEFAULT_WINDOWS,
) -> NDArray[np.uint8]:
    """Like :func:`apply_windows` but quantised to uint8 (0..255) for compact caches."""
    arr = apply_windows(hu, windows)
    arr *= 255.0
    arr += 0.5
    return arr.astype(np.uint8)


def windows_torch(hu: torch.Tensor, windows: Sequence[Window] = DEFAULT_WINDOWS) -> torch.Tensor:
    """Torch version of :func:`apply_windows` (runs on the model's device).

    Writes each channel in place into one preallocated tensor: no per-window temporaries,
    which halves the time on CPU for a 512 x 512 series.
    """
    out = torch.empty(
        (*hu.shape[:-2], len(windows), *hu.shape[-2:]), dtype=hu.dtype, device=hu.device
    )
    for c, w in enumerate(windows):
        dst = out.select(-3, c)
        torch.sub(hu, w.low, out=dst)
        dst.mul_(1.0 / w.width).clamp_(0.0, 1.0)
    return out


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``(N, C, size, size)`` without aliasing.

    Integer shrink factors (512 -> 256) use a box filter (mean of each k x k block), the
    exact anti-aliased result for that case and the fastest; other sizes use
    antialiased bilinear interpolation. Without antialiasing thin bleeds alias away.
    """
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    if h == w and h % size == 0:
        return F.avg_pool2d(x, kernel_size=h // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _clipped_resized(hu: torch.Tensor, size: int, windows: Sequence[Window]) -> torch.Tensor:
    """``(Z, H, W)`` HU -> ``(Z, C, size, size)`` HU clipped to each window, then resized.

    Windowing is clip-then-affine, and resizing (box or antialiased bilinear, weights
    summing to one) is linear, so the affine part commutes with the resize: clipping at
    full resolution and scaling after the resize gives the same numbers as windowing
    first, with one pass over the full-size data per window instead of three.
    """
    x = torch.empty((hu.shape[0], len(windows), *hu.shape[-2:]), dtype=hu.dtype, device=hu.device)
    for c, w in enumerate(windows):
        torch.clamp(hu, w.low, w.high, out=x[:, c])
    return resize(x, size)


def _window_affine(
    windows: Sequence[Window], mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = [1.0 / (w.width * s) for w, s in zip(windows, std, strict=True)]
    shift = [(-w.low / w.width - m) / s for w, m, s in zip(windows, mean, std, strict=True)]
    shape = (1, len(windows), 1, 1)
    return (
        torch.tensor(scale, dtype=torch.float32, device=device).view(shape),
        torch.tensor(shift, dtype=torch.float32, device=device).view(shape),
    )


def hu_to_uint8(
    hu: NDArray[np.floating] | NDArray[np.integer],
    size: int,
    windows: Sequence[Window] = DEFAULT_WINDOWS,
    chunk: int = 64,
) -> NDArray[np.uint8]:
    """HU ``(Z, H, W)`` -> uint8 ``(Z, C, size, size)``: windows, resize, then quantise.

    What training caches store: the node's path (:func:`hu_to_model_input`) up to the
    uint8 rounding (under 0.2 % of a window), so a model trained from the cache sees what
    the node will show it. Resizing happens in float before quantising; ``chunk`` slices
    at a time bound the float memory for long series.
    """
    z = int(hu.shape[0])
    out = np.empty((z, len(windows), size, size), dtype=np.uint8)
    n = len(windows)
    scale, shift = _window_affine(windows, (0.0,) * n, (1.0 / 255.0,) * n, torch.device("cpu"))
    for start in range(0, z, chunk):
        part = torch.from_numpy(np.ascontiguousarray(hu[start : start + chunk])).float()
        x = _clipped_resized(part, size, windows).mul_(scale).add_(shift + 0.5)
        out[start : start + chunk] = x.clamp_(0.0, 255.0).to(torch.uint8).numpy()
    return out


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Subtract ImageNet mean and divide by std, per channel, on ``(..., 3, H, W)``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def hu_to_model_input(
    hu: NDArray[np.floating] | NDArray[np.integer] | torch.Tensor,
    size: int,
    windows: Sequence[Window] = DEFAULT_WINDOWS,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """HU ``(Z, H, W)`` -> normalised float32 ``(Z, 3, size, size)`` on ``device``.

    Equal to windows -> resize -> ImageNet normalisation, computed as clip -> resize ->
    one per-channel affine (see :func:`_clipped_resized`), on ``device`` so a GPU node
    does not spend CPU on it.
    """
    t = hu if isinstance(hu, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(hu))
    t = t.to(device=device, dtype=torch.float32, non_blocking=True)
    scale, shift = _window_affine(windows, IMAGENET_MEAN, IMAGENET_STD, t.device)
    return _clipped_resized(t, size, windows).mul_(scale).add_(shift)
