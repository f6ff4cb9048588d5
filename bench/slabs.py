"""Thin series in slabs: what one model says on a 0.625 mm phantom series, with and
without the node's slab averaging, against two 5 mm versions of the same head.

    .venv/bin/python bench/slabs.py [--checkpoint var/models/demo.pt] [--n 16]

Per phantom (``random_spec`` seeds from ``--start``, 7,000,000: outside the training,
threshold and check ranges; rendered at 256 px like the demo's training data):

* **thin+slabs**: the head written as 0.625 mm CT DICOM, read as the node reads it and
  classified by :class:`models.predict.Predictor` (slabs of the checkpoint's 5 mm);
* **thin raw**: the same series with ``slab_thin_series=False`` (every 0.625 mm slice);
* **phantom 5 mm**: the phantom's own 5 mm series (DICOM). A phantom slice is the head
  at one height, whatever its thickness: no partial volume, unlike a real 5 mm slice;
* **scanner 5 mm**: what a scanner's 5 mm reconstruction would show: the head rendered
  every 0.3125 mm without noise (so at most 25 slices of 5 mm: the phantoms
  render 400 slices at most), averaged over +-2.5 mm around each 5 mm position, with
  the phantom's 8 HU noise added.

Reported: per finding the mean and largest absolute difference of study probabilities
and the share of equal present/absent calls (at the checkpoint's thresholds) between
pairs of inputs, and the study AUC of each input against the phantoms' truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.dicom_io import CTSeries, read_series, scan_headers
from models.labels import LABELS
from models.predict import Predictor, SeriesPrediction
from train.data.phantoms import PhantomSpec, make_volume, random_spec, write_study
from train.metrics import auc

REPO = Path(__file__).resolve().parents[1]
KINDS = ("thin+slabs", "thin raw", "phantom 5 mm", "scanner 5 mm")
PAIRS = (
    ("thin+slabs", "scanner 5 mm"),
    ("thin+slabs", "phantom 5 mm"),
    ("thin raw", "phantom 5 mm"),
    ("scanner 5 mm", "phantom 5 mm"),
)


def scanner_5mm(spec: PhantomSpec, like: CTSeries) -> CTSeries:
    """The 5 mm series a scanner would reconstruct: 16 noiseless samples per slice, +-2.5 mm."""
    n = spec.n_slices
    fine = make_volume(
        dataclasses.replace(spec, n_slices=16 * (n - 1) + 1, slice_thickness_mm=0.3125, noise_hu=0)
    )
    z, hu = fine.z_positions, fine.hu.astype(np.float32)
    centres = z[0] + 5.0 * np.arange(n)
    out = np.stack([hu[(z >= c - 2.5 - 1e-6) & (z < c + 2.5 - 1e-6)].mean(axis=0) for c in centres])
    rng = np.random.default_rng([spec.seed, 77])
    out += np.float32(spec.noise_hu) * rng.standard_normal(out.shape, dtype=np.float32)
    return CTSeries(
        study_uid=like.study_uid,
        series_uid=like.series_uid,
        sop_uids=[f"{like.series_uid}.{i}" for i in range(n)],
        hu=np.clip(np.rint(out), -1024, 3071),
        positions_mm=centres,
        pixel_spacing=like.pixel_spacing,
        duplicates_dropped=0,
        quirk_corrected=0,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "var/models/demo.pt")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--start", type=int, default=7_000_000, help="first phantom seed")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    slabs = Predictor.from_path(args.checkpoint, device="cpu")
    raw = Predictor(slabs.checkpoint, slabs.device, slab_thin_series=False)
    truth: list[np.ndarray] = []
    preds: dict[str, list[SeriesPrediction]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="slabs-") as tmp:
        for seed in tqdm(range(args.start, args.start + args.n), desc="phantoms"):
            spec = random_spec(seed, 0.5, size=args.size, n_slices=(16, 25))
            thin_spec = dataclasses.replace(
                spec, n_slices=8 * (spec.n_slices - 1) + 1, slice_thickness_mm=0.625
            )
            thin = read_series(
                scan_headers(write_study(Path(tmp) / f"{seed}-thin", thin_spec).main.files).headers
            )
            thick_study = write_study(Path(tmp) / f"{seed}-5mm", spec)
            thick = read_series(scan_headers(thick_study.main.files).headers)
            truth.append(thick_study.volume.study_labels)
            preds["thin+slabs"].append(slabs(thin))
            preds["thin raw"].append(raw(thin))
            preds["phantom 5 mm"].append(slabs(thick))
            preds["scanner 5 mm"].append(slabs(scanner_5mm(spec, thick)))
    assert all(p.slabs is not None for p in preds["thin+slabs"])
    y = np.stack(truth)
    probs = {k: np.stack([p.study_probs for p in v]) for k, v in preds.items()}
    calls = {k: np.stack([p.present for p in v]) for k, v in preds.items()}
    n_slabs = [p.slabs.n_slabs for p in preds["thin+slabs"] if p.slabs is not None]
    print(f"checkpoint {args.checkpoint} (model {slabs.meta.model_uid}), {args.n} phantoms, ")
    print(f"{args.size} px, {min(n_slabs)}-{max(n_slabs)} slabs each\n")
    print("| finding | " + " | ".join(f"{a} vs {b}" for a, b in PAIRS) + " |")
    print("|---|" + "---|" * len(PAIRS))
    for c, lab in enumerate(LABELS):
        cells = []
        for a, b in PAIRS:
            d = np.abs(probs[a][:, c] - probs[b][:, c])
            same = float((calls[a][:, c] == calls[b][:, c]).mean())
            cells.append(f"{d.mean():.3f} / {d.max():.3f} / {same:.2f}")
        print(f"| {lab} | " + " | ".join(cells) + " |")
    print("\ncells: mean |dp| / max |dp| / share of equal calls\n")
    print("| finding | positives | " + " | ".join(f"AUC {k}" for k in KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    for c, lab in enumerate(LABELS):
        aucs = " | ".join(f"{auc(y[:, c], probs[k][:, c]):.3f}" for k in KINDS)
        print(f"| {lab} | {int(y[:, c].sum())} | {aucs} |")


if __name__ == "__main__":
    main()
