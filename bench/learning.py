"""Evidence that the model learns: CNN-LSTM versus the 2D baseline on phantom data sets.

    .venv/bin/python bench/learning.py [--train 150] [--val 40] [--test 120] [--epochs 8]

Both models use the same code, data, recipe and seed (``train/configs/phantom_demo.yaml``
and ``phantom_2d.yaml``: ResNet-18 from random initialisation, 64 px, CPU); they differ
in ``model.lstm`` and in the CNN-LSTM's additions ``model.residual``,
``optim.aux_weight`` and ``optim.sequence_lr_scale`` (BENCHMARKS.md says why). Training
phantoms use seeds ``0..train-1``, the validation set (best epoch) seeds from 1,000,000,
the held-out test set seeds from 2,000,000, so no test study was seen in any form.
Reported: study-level AUC per finding (study score = max over slices) with bootstrap 95 %
intervals on the test set, and the difference CNN-LSTM - 2D with a paired bootstrap
interval (both models scored on the same resampled studies). Target (issue 5): AUC(any)
>= 0.95 and the CNN-LSTM not worse than 2D on any finding; "worse" = the paired interval
of the difference lies entirely below 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.labels import LABELS
from train.config import load_config
from train.demo_model import phantom_store
from train.evaluate import predict_studies
from train.fit import fit
from train.metrics import Interval, auc, bootstrap_ci, paired_bootstrap_diff


def run(
    name: str, config: str, args: argparse.Namespace, stores: dict[str, Any], out: Path
) -> dict[str, Any]:
    cfg = load_config(
        config,
        [
            f"run.out={out / name}",
            f"optim.epochs={args.epochs}",
            f"data.size={args.size}",
            f"run.seed={args.seed}",
            "run.device=cpu",
        ],
    )
    t = time.perf_counter()
    result = fit(cfg, store=stores["train"], val_store=stores["val"], progress=False)
    fit_s = time.perf_counter() - t
    loaded = load_checkpoint(result.best)
    preds = predict_studies(loaded, stores["test"], device="cpu", progress=False)
    row: dict[str, Any] = {"model": name, "fit_s": round(fit_s), "best_epoch": result.best_epoch}
    for c, lab in enumerate(LABELS):
        y, s = preds.study_labels[:, c], preds.study_scores[:, c]
        ci = bootstrap_ci(y, s, auc, n_boot=1000, seed=c)
        row[lab] = {"auc": ci.estimate, "low": ci.low, "high": ci.high, "n_pos": int(y.sum())}
    row["labels"], row["scores"] = preds.study_labels, preds.study_scores
    return row


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Interval]:
    """Per finding: AUC(a) - AUC(b) with a paired bootstrap 95 % interval (same cases)."""
    out = {}
    for c, lab in enumerate(LABELS):
        y = a["labels"][:, c]
        if not np.array_equal(y, b["labels"][:, c]):
            raise RuntimeError("the two models were not scored on the same test studies")
        out[lab] = paired_bootstrap_diff(
            y, a["scores"][:, c], b["scores"][:, c], auc, n_boot=1000, seed=c
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=int, default=150)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--test", type=int, default=120)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--p-bleed", type=float, default=0.7, help="training phantoms only")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
            _main(args, Path(tmp))
    else:
        _main(args, args.out)


def _main(args: argparse.Namespace, out: Path) -> None:
    t = time.perf_counter()
    stores = {
        "train": phantom_store(range(args.train), args.size, p_bleed=args.p_bleed, progress=False),
        "val": phantom_store(range(1_000_000, 1_000_000 + args.val), args.size, progress=False),
        "test": phantom_store(range(2_000_000, 2_000_000 + args.test), args.size, progress=False),
    }
    render_s = time.perf_counter() - t
    rows = [
        run("cnn-lstm", "phantom_demo", args, stores, out),
        run("2d", "phantom_2d", args, stores, out),
    ]
    diffs = compare(rows[0], rows[1])
    public = [{k: v for k, v in r.items() if k not in ("labels", "scores")} for r in rows]
    for r in public:
        r["auc_minus_2d"] = None
    public[0]["auc_minus_2d"] = {k: asdict(v) for k, v in diffs.items()}
    print(
        json.dumps(
            {"args": vars(args) | {"out": str(out)}, "render_s": round(render_s), "rows": public},
            indent=1,
            default=str,
        )
    )
    print()
    print(
        "| finding | test positives | CNN-LSTM AUC (95% CI) | 2D AUC (95% CI) "
        "| CNN-LSTM - 2D (paired 95% CI) |"
    )
    print("|---|---|---|---|---|")
    for lab in LABELS:
        a, b, d = rows[0][lab], rows[1][lab], diffs[lab]
        print(
            f"| {lab} | {a['n_pos']} / {args.test} "
            f"| {a['auc']:.3f} ({a['low']:.3f}-{a['high']:.3f}) "
            f"| {b['auc']:.3f} ({b['low']:.3f}-{b['high']:.3f}) "
            f"| {d.estimate:+.3f} ({d.low:+.3f} to {d.high:+.3f}) |"
        )
    print(f"\nfit time: CNN-LSTM {rows[0]['fit_s']} s, 2D {rows[1]['fit_s']} s")
    worse = [lab for lab in LABELS if diffs[lab].high < 0]
    print(
        "CNN-LSTM worse than 2D (paired interval entirely below 0) on: "
        + (", ".join(worse) if worse else "no finding")
    )


if __name__ == "__main__":
    main()
