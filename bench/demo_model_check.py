"""The demo checkpoint through the node's own reading path, on phantoms it never saw.

    .venv/bin/python bench/demo_model_check.py [--checkpoint var/models/demo.pt] [--n 40]

Writes ``--n`` phantom studies as 512 x 512 CT DICOM (seeds from ``--start``, 5,000,000:
outside every range used for training, thresholds or the learning bench), then does
what the node's worker does per study, through :func:`dicom_node.classify.classify_path`
(``dicom-node classify``): scan the headers, choose the series, decode it
(:func:`models.dicom_io.read_series`) and classify it with
:class:`models.predict.Predictor`. Reported: study AUC per finding, and sensitivity and
specificity at the checkpoint's own thresholds (the ones the node reports with).
``make demo`` trains the checkpoint when it is missing; this is how its numbers in
BENCHMARKS.md "Demo model" were made.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dicom_node.classify import classify_path
from models.labels import LABELS
from models.predict import Predictor
from train.data.phantoms import random_spec, write_study
from train.metrics import auc, sensitivity_specificity

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "var/models/demo.pt")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--start", type=int, default=5_000_000, help="first phantom seed")
    args = p.parse_args()
    predictor = Predictor.from_path(args.checkpoint, device="cpu")
    labels, scores, present = [], [], []
    with tempfile.TemporaryDirectory(prefix="demo-check-") as tmp:
        for seed in tqdm(range(args.start, args.start + args.n), desc="phantoms"):
            folder = Path(tmp) / str(seed)
            written = write_study(folder, random_spec(seed, 0.5, size=512))
            (result,) = classify_path(folder, predictor)  # `dicom-node classify`'s steps
            pred = result.prediction
            if pred is None:
                raise RuntimeError(f"phantom {seed}: not classified ({result.skipped})")
            labels.append(written.volume.study_labels)
            scores.append(pred.study_probs)
            present.append(pred.present)
    y, s, call = np.stack(labels), np.stack(scores), np.stack(present)
    rows = {}
    for c, lab in enumerate(LABELS):
        sens, spec = sensitivity_specificity(y[:, c], call[:, c].astype(float), 0.5)
        rows[lab] = {
            "positives": int(y[:, c].sum()),
            "auc": auc(y[:, c], s[:, c]),
            "threshold": predictor.meta.thresholds[c],
            "sensitivity": sens,
            "specificity": spec,
        }
    print(json.dumps({"checkpoint": str(args.checkpoint), "n": args.n, "rows": rows}, indent=1))
    print(f"\n| finding | positives / {args.n} | study AUC | sensitivity | specificity |")
    print("|---|---|---|---|---|")
    for lab, r in rows.items():
        print(
            f"| {lab} | {r['positives']} | {r['auc']:.3f} "
            f"| {r['sensitivity']:.2f} | {r['specificity']:.2f} |"
        )


if __name__ == "__main__":
    main()
