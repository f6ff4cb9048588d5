"""How often the demo checkpoint gets every call right, per bleed pattern, over seeds.

    PYTHONPATH=$PWD .venv/bin/python bench/demo_subtype_sweep.py [--checkpoint var/models/demo.pt]

Why: ``make demo`` shows one bleed phantom; this says whether its pattern is one the demo
model separates or a lucky seed. Phantoms are rendered in memory at 256 px (as the demo
model's training data), 32 slices, seeds 11-30, each with the bleed pattern asked for,
and classified at the checkpoint's own thresholds. Reported per pattern: studies with
every call right, with any false positive, with any miss (of 20).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.checkpoint import load_checkpoint  # noqa: E402
from models.preprocess import hu_to_uint8  # noqa: E402
from train.data.phantoms import PhantomSpec, make_volume  # noqa: E402
from train.dataset import ArrayStore  # noqa: E402
from train.evaluate import predict_studies  # noqa: E402

PATTERNS: tuple[tuple[str, ...], ...] = (
    ("subdural",),
    ("subdural", "intraparenchymal"),
    ("subdural", "intraventricular"),
    ("subdural", "epidural"),
    ("epidural",),
    ("intraventricular",),
    ("intraparenchymal", "intraventricular"),
    ("subarachnoid",),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO / "var/models/demo.pt")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_checkpoint(args.checkpoint, "cpu")
    thresholds = np.asarray(loaded.meta.thresholds)
    store = ArrayStore(size=64)
    truth: dict[str, np.ndarray] = {}
    for seed in range(11, 11 + args.seeds):
        for pattern in PATTERNS:
            vol = make_volume(PhantomSpec(seed=seed, n_slices=32, bleeds=pattern, size=256))
            key = f"{seed}|{'+'.join(pattern)}"
            store.add(key, hu_to_uint8(vol.hu, 64), np.asarray(vol.slice_labels, dtype=np.uint8))
            truth[key] = np.asarray(vol.study_labels, dtype=bool)
    preds = predict_studies(loaded, store, progress=False)
    rows: dict[str, list[int]] = {"+".join(p): [0, 0, 0] for p in PATTERNS}
    for key, scores in zip(preds.keys, preds.study_scores, strict=True):
        called, true = scores >= thresholds, truth[key]
        row = rows[key.split("|")[1]]
        row[0] += int((called == true).all())
        row[1] += int((called & ~true).any())
        row[2] += int((~called & true).any())
    print(f"| bleed pattern | all calls right / {args.seeds} | any false positive | any miss |")
    print("|---|---|---|---|")
    for name, (exact, fp, fn) in rows.items():
        print(f"| {name} | {exact} | {fp} | {fn} |")


if __name__ == "__main__":
    main()
