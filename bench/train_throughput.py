"""Training throughput: slices/s from the prepared cache versus decoding DICOM in the loop.

    .venv/bin/python bench/train_throughput.py [--studies 16] [--size 256] [--steps 6]
    .venv/bin/python bench/train_throughput.py --gpu      # resnet50 @ 512, AMP, on CUDA

CPU part (issue 5): a phantom RSNA download at 512 px is prepared into a cache at
``--size``; then, with the same ``WindowDataset`` sampling (5 studies x 10 slices):

1. loader only, cache: windows/s out of a DataLoader over the memory-mapped cache;
2. loader only, DICOM: the same windows decoded from the DICOM files in the worker
   (pydicom -> HU -> windows -> resize, what training without a cache must do);
3. training step (resnet18 CNN-LSTM forward + backward + AdamW) on batches from each.

GPU part: forward+backward slices/s of the paper's model (resnet50 CNN-LSTM, 512 px,
bf16 autocast, 5 x 10 slices per micro-batch) on random input: the model's own ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from models.dicom_io import read_series, scan_headers
from models.network import CNNLSTM, NetworkConfig
from models.preprocess import hu_to_uint8
from train.data import rsna
from train.data.cache import PreparedCache, prepare
from train.data.synth import synth_rsna
from train.dataset import WindowDataset, to_model_input
from train.fit import masked_weighted_bce

# RSNA's SOP Instance UIDs are "ID_<hex>", not valid UIDs: pydicom warns on every file
warnings.filterwarnings("ignore", message="Invalid value for VR UI")


class DicomWindowDataset(Dataset[dict[str, Any]]):
    """Like ``WindowDataset`` but decodes the window's DICOM files on every access."""

    def __init__(self, studies: list[rsna.RsnaStudy], size: int, window: int = 10) -> None:
        self.studies, self.size, self.window = studies, size, window

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.studies[index]
        n, w = s.n_slices, self.window
        start = int(torch.randint(0, n - w + 1, (1,))) if n > w else 0
        paths = list(s.paths[start : start + w])
        hu = read_series(scan_headers(paths).headers).hu
        imgs = hu_to_uint8(hu, self.size)
        images = torch.zeros((w, 3, self.size, self.size), dtype=torch.uint8)
        labels = torch.zeros((w, 6))
        mask = torch.zeros(w, dtype=torch.bool)
        k = imgs.shape[0]
        images[:k] = torch.from_numpy(imgs)
        labels[:k] = torch.from_numpy(s.slice_labels[start : start + k].astype(np.float32))
        mask[:k] = True
        return {"images": images, "labels": labels, "mask": mask}


def batches_of(ds: Dataset[dict[str, Any]], workers: int) -> Iterator[dict[str, Any]]:
    """Batches of 5 studies (shuffled, a new epoch when one ends) for as long as asked."""
    dl = DataLoader(ds, batch_size=5, shuffle=True, num_workers=workers, drop_last=True)
    if len(dl) == 0:
        raise ValueError("fewer than 5 studies: not one batch")
    while True:
        yield from dl


def loader_rate(ds: Dataset[dict[str, Any]], workers: int, batches: int) -> float:
    """Slices per second delivered by a DataLoader (5 studies x window per batch)."""
    n, t0 = 0, None
    it = batches_of(ds, workers)
    for i in range(batches + 1):
        b = next(it)
        if i == 0:
            t0 = time.perf_counter()  # first batch includes worker start-up
            continue
        n += int(b["mask"].sum())
    assert t0 is not None
    return n / (time.perf_counter() - t0)


def train_rate(ds: Dataset[dict[str, Any]], size: int, workers: int, steps: int) -> float:
    """Training slices/s: loader + resnet18 CNN-LSTM forward/backward/step on CPU."""
    torch.manual_seed(0)
    model = CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    w = torch.tensor([2.0, 1, 1, 1, 1, 1])
    it = batches_of(ds, workers)
    n, t0 = 0, 0.0
    for i in range(steps + 1):
        b = next(it)
        if i == 1:
            t0, n = time.perf_counter(), 0
        x = to_model_input(b["images"], size)
        loss = masked_weighted_bce(model(x, b["mask"]), b["labels"], b["mask"], w)
        loss.backward()
        opt.step()
        opt.zero_grad()
        n += int(b["mask"].sum())
    return n / (time.perf_counter() - t0)


def cpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        return _cpu_bench(args, Path(tmp))


def _cpu_bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    t = time.perf_counter()
    synth_rsna(
        root / "rsna",
        args.studies,
        seed=1,
        size=512,
        slices=(24, 36),
        test_studies=0,
        unreadable=0,
        quirk_studies=0,
        progress=False,
    )
    synth_s = time.perf_counter() - t
    t = time.perf_counter()
    cache = prepare(
        "rsna", root / "rsna", root / "cache", size=args.size, workers=args.workers, progress=False
    )
    prepare_s = time.perf_counter() - t
    n_slices = sum(s.n_slices for s in cache.studies)
    keys = [s.key for s in cache.studies]
    cached = WindowDataset(PreparedCache(root / "cache"), keys, 10)
    index = rsna.load(root / "rsna", "train", workers=1, progress=False)
    dicom = DicomWindowDataset(index.studies, args.size, 10)
    out = {
        "studies": args.studies,
        "slices": n_slices,
        "size": args.size,
        "threads": args.threads,
        "workers": args.workers,
        "prepare_slices_per_s": n_slices / prepare_s,
        "synth_s": synth_s,
        "loader_cache_slices_per_s": loader_rate(cached, args.workers, args.batches),
        "loader_dicom_slices_per_s": loader_rate(dicom, args.workers, args.batches),
    }
    # the model dominates and the machine is shared: alternate the two sources and keep
    # the best of ``--rounds`` measurements of each
    rates: dict[str, list[float]] = {"cache": [], "dicom": []}
    for _ in range(args.rounds):
        rates["cache"].append(train_rate(cached, args.size, args.workers, args.steps))
        rates["dicom"].append(train_rate(dicom, args.size, args.workers, args.steps))
    out["train_cache_slices_per_s"] = max(rates["cache"])
    out["train_dicom_slices_per_s"] = max(rates["dicom"])
    out["train_rounds"] = {k: [round(v, 2) for v in vs] for k, vs in rates.items()}
    return out


def _gpu_one(backbone: str, steps: int, dev: torch.device) -> tuple[float, float]:
    """(train, inference) slices/s of one backbone's CNN-LSTM at 512 px in bf16."""
    model = CNNLSTM(NetworkConfig(backbone=backbone)).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    b, s = 5, 10
    x = torch.randn(b, s, 3, 512, 512, device=dev)
    y = torch.randint(0, 2, (b, s, 6), device=dev).float()
    m = torch.ones(b, s, dtype=torch.bool, device=dev)
    w = torch.tensor([2.0, 1, 1, 1, 1, 1], device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = masked_weighted_bce(model(x, m), y, m, w)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    train = steps * b * s / (time.perf_counter() - t)
    # inference (validation / the node): whole 40-slice studies
    model.eval()
    xs = torch.randn(40, 3, 512, 512, device=dev).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model.predict_series(xs, chunk=40)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model.predict_series(xs, chunk=40)
        torch.cuda.synchronize()
    return train, steps * 40 / (time.perf_counter() - t)


def gpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev)}
    for backbone in args.backbones.split(","):
        train, infer = _gpu_one(backbone, args.gpu_steps, dev)
        out[f"{backbone}_512_bf16_train_slices_per_s"] = train
        out[f"{backbone}_512_bf16_infer_slices_per_s"] = infer
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--studies", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--gpu-steps", type=int, default=20)
    p.add_argument("--backbones", default="resnet50,seresnext50_32x4d")
    args = p.parse_args()
    result = gpu_bench(args) if args.gpu else cpu_bench(args)
    print(
        json.dumps(
            {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}, indent=1
        )
    )


if __name__ == "__main__":
    main()
