"""Whole-study inference over a prepared store, shared by validation, evaluate and predict.

Uses the same network call as the node (``CNNLSTM.predict_series``: the backbone in
chunks, then the LSTM over the whole series), so a validation probability means what a
node probability means. Optional test-time augmentation averages the probabilities of
the study and its left-right mirror (METHOD.md "What the reference lacks": TTA that is
real, i.e. actually applied and averaged).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from models.network import CNNLSTM
from train.dataset import StudyStore, to_model_input


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (``None`` = full fp32).

    ``auto``: bf16 where the GPU supports it (Ampere and later), else fp16; CPU trains in
    fp32 (CPU autocast is slow for convolutions and gives no memory win worth having).
    Parameters, and so BatchNorm's weights and running statistics, stay fp32 under
    autocast; only activations of matmul/conv run in reduced precision.
    """
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast | nullcontext[None]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def study_slice_probs(
    model: CNNLSTM,
    images: NDArray[np.uint8],
    device: torch.device,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    tta: bool = False,
    chunk: int = 32,
) -> NDArray[np.float32]:
    """Slice probabilities ``(Z, 6)`` of one study's uint8 ``(Z, 3, H, W)`` slices."""
    x = to_model_input(
        torch.from_numpy(np.array(images)).to(device), size
    )  # copy: memmaps are read-only
    with autocast(device, dtype):
        probs = torch.sigmoid(model.predict_series(x, chunk=chunk).float())
        if tta:
            flipped = torch.sigmoid(model.predict_series(x.flip(-1), chunk=chunk).float())
            probs = (probs + flipped) / 2.0
    return probs.cpu().numpy().astype(np.float32)


def predict_store(
    model: CNNLSTM,
    store: StudyStore,
    keys: Sequence[str],
    device: torch.device,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    tta: bool = False,
    chunk: int = 32,
    progress: bool = True,
    desc: str = "predict",
) -> dict[str, NDArray[np.float32]]:
    """``{key: (Z, 6) slice probabilities}`` for each study, model left in its prior mode."""
    was_training = model.training
    model.eval()
    out: dict[str, NDArray[np.float32]] = {}
    try:
        for key in tqdm(keys, desc=desc, disable=not progress, leave=False):
            out[key] = study_slice_probs(
                model, store.images(key), device, size, dtype, tta=tta, chunk=chunk
            )
    finally:
        model.train(was_training)
    return out
