"""Preprocessing throughput: read + HU + windows + resize of a 40-slice 512x512 series.

Ours (``models.dicom_io`` + ``models.preprocess``) against a plain pydicom + numpy
implementation written here, on the same files in the same run; the ratio is what
counts. Usage::

    .venv/bin/python bench/preprocess.py [--slices 40] [--size 256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.dicom_io import iter_dicom_files, read_series, scan_headers  # noqa: E402
from models.preprocess import hu_to_model_input  # noqa: E402
from models.series_choice import choose_series  # noqa: E402
from train.data.phantoms import PhantomSpec, write_study  # noqa: E402

WINDOWS = ((40.0, 80.0), (75.0, 215.0), (600.0, 2800.0))
MEAN = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)


def plain(folder: Path, size: int) -> np.ndarray:
    """What one writes without thinking about speed: pydicom pixel_array, float64 numpy."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    out = []
    for ds in datasets:
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        chans = [np.clip((hu - (lv - wd / 2)) / wd, 0, 1) for lv, wd in WINDOWS]
        img = np.stack(chans)
        f = img.shape[-1] // size  # integer-factor box filter resize
        img = img.reshape(3, size, f, size, f).mean(axis=(2, 4))
        out.append((img - MEAN) / STD)
    return np.stack(out).astype(np.float32)


def ours(folder: Path, size: int) -> torch.Tensor:
    """The node's path: header scan, series choice, read, torch windows + resize."""
    headers = scan_headers(iter_dicom_files(folder)).headers
    choice = choose_series(headers)
    series = read_series(choice.headers)
    return hu_to_model_input(series.hu, size)


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = write_study(
            Path(tmp), PhantomSpec(seed=1, n_slices=args.slices, bleeds=("subdural",))
        )
        folder = study.main.files[0].parent
        a, b = plain(folder, args.size), ours(folder, args.size).numpy()
        diff = float(np.abs(a - b).mean())
        t_plain, t_ours = [], []
        for _ in range(args.repeat):
            t_plain.append(timed(plain, folder, args.size))
            t_ours.append(timed(ours, folder, args.size))
    n = args.slices
    mp, mo = statistics.median(t_plain), statistics.median(t_ours)
    print(f"series: {n} slices 512x512 -> {args.size}, torch threads {torch.get_num_threads()}")
    print(f"plain pydicom+numpy : {n / mp:8.1f} slices/s ({mp * 1000:.0f} ms/series)")
    print(f"ours (models)       : {n / mo:8.1f} slices/s ({mo * 1000:.0f} ms/series)")
    print(f"ratio ours/plain    : {mp / mo:.2f}x   (mean |difference| {diff:.4f})")


if __name__ == "__main__":
    main()
