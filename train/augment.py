"""Training augmentation on batched tensors: per-slice geometry, noise, blur, and CutMix.

METHOD.md "Augmentation per slice (train only)": random resized crop (scale 0.8-1), flips,
shift/scale/rotate up to 30 degrees, mild noise and blur; CutMix (alpha 1) across slices
of the batch with the loss mixed by the kept-area ratio.

Everything runs on the training device on whole batches: the crop, flips and
shift/scale/rotate of every slice are composed into one affine matrix per slice and
applied with a single ``grid_sample`` call, which is far faster on CPU than per-image
PIL or torchvision transforms and needs no data-loader worker time. Inputs are windowed
values in ``[0, 1]`` (before ImageNet normalisation), so the zero fill outside the image
is air in every window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict


class AugmentConfig(BaseModel):
    """Augmentation settings (section ``augment`` of a fit config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate_deg: float = 30.0
    noise_p: float = 0.3
    noise_std: float = 0.02
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    cutmix_alpha: float = 1.0
    cutmix_p: float = 0.5


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def random_affine(n: int, cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """``(n, 2, 3)`` matrices mapping output to input coordinates (``affine_grid`` convention).

    Each is crop x flip x (rotate, scale, shift) for one slice, drawn independently.
    """
    # random resized crop: area fraction s and aspect ratio r -> half-widths in [-1, 1] units
    area = _uniform(n, *cfg.crop_scale, device)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), device)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h)
    # flips
    fx = torch.where(torch.rand(n, device=device) < cfg.hflip, -1.0, 1.0)
    fy = torch.where(torch.rand(n, device=device) < cfg.vflip, -1.0, 1.0)
    # shift / scale / rotate
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, device) * (math.pi / 180.0)
    zoom = _uniform(n, 1.0 - cfg.scale, 1.0 + cfg.scale, device)
    tx = _uniform(n, -cfg.shift, cfg.shift, device) * 2
    ty = _uniform(n, -cfg.shift, cfg.shift, device) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # input = Crop(Flip(RotScale(out) + shift))
    a11, a12, a21, a22 = cos, -sin, sin, cos
    theta = torch.empty(n, 2, 3, device=device)
    theta[:, 0, 0] = w * fx * a11
    theta[:, 0, 1] = w * fx * a12
    theta[:, 0, 2] = w * fx * tx + cx
    theta[:, 1, 0] = h * fy * a21
    theta[:, 1, 1] = h * fy * a22
    theta[:, 1, 2] = h * fy * ty + cy
    return theta


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(coords**2) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), ky, groups=c)


@dataclass(frozen=True)
class SliceAugment:
    """Per-slice augmentation of ``(N, C, H, W)`` float images in ``[0, 1]``."""

    cfg: AugmentConfig

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.enabled or x.shape[0] == 0:
            return x
        n = x.shape[0]
        theta = random_affine(n, self.cfg, x.device).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.cfg.blur_p > 0:
            sel = torch.rand(n, device=x.device) < self.cfg.blur_p
            if bool(sel.any()):
                sigma = float(_uniform(1, *self.cfg.blur_sigma, x.device))
                x[sel] = _gaussian_blur(x[sel], sigma)
        if self.cfg.noise_p > 0 and self.cfg.noise_std > 0:
            sel = (torch.rand(n, 1, 1, 1, device=x.device) < self.cfg.noise_p).to(x.dtype)
            std = torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * self.cfg.noise_std
            x = x + torch.randn_like(x) * std * sel
        return x.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class CutMixResult:
    """Mixed images and soft labels, and what was mixed (for tests and logging)."""

    images: torch.Tensor  # (B, S, C, H, W)
    labels: torch.Tensor  # (B, S, K), lam * y + (1 - lam) * y[perm]
    lam: float  # kept-area ratio of the original image
    perm: torch.Tensor  # (B,) source study of the pasted box
    box: tuple[int, int, int, int]  # y0, y1, x0, x1


def cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> CutMixResult:
    """CutMix across the studies of a batch, slice by slice (Yun et al., ICCV 2019).

    Every slice ``s`` of study ``b`` gets a box pasted from slice ``s`` of study
    ``perm[b]``, so the z order inside each window stays intact for the LSTM. The box
    area follows ``1 - lam`` with ``lam ~ Beta(alpha, alpha)``; after clipping the box to
    the image, ``lam`` is recomputed as the kept-area ratio and the labels are mixed with
    it. Binary cross-entropy is linear in its target, so ``BCE(logit, mixed label)``
    equals the kept-area-weighted mix of the two losses.
    """
    b, _s, _c, h, w = images.shape
    dev = images.device
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    cut = math.sqrt(1.0 - lam)
    ch, cw = round(h * cut), round(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    perm = torch.randperm(b, generator=generator).to(dev)
    out = images.clone()
    out[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    mixed = kept * labels + (1.0 - kept) * labels[perm]
    return CutMixResult(out, mixed, kept, perm, (y0, y1, x0, x1))
