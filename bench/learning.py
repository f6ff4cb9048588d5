"""Evidence that the model learns: CNN-LSTM versus the 2D baseline on phantom data sets.

    .venv/bin/python bench/learning.py [--seeds 0 1 2] [--epochs 12] [--test 200]

Both models use the same code, data, recipe and seed (``train/configs/phantom_demo.yaml``
and ``phantom_2d.yaml``: ResNet-18 from random initialisation, 64 px, CPU); they differ
in ``model.lstm`` and in the CNN-LSTM's additions ``model.residual``,
``optim.aux_weight`` and ``optim.sequence_lr_scale`` (BENCHMARKS.md says why). Training
phantoms use seeds ``0..train-1``, the validation set (best epoch) seeds from 1,000,000,
the held-out test set seeds from ``--test-start`` (4,000,000: the settings were chosen
on the studies from 2,000,000, and a first confirmation at 8 epochs used those from
3,000,000; BENCHMARKS.md has both), so no test study was seen in any form. Each model
is trained once per ``--seeds`` value (initial weights, windows, augmentation).
Reported: study-level AUC per finding (study score = max over slices) per run with
bootstrap 95 % intervals, and over all runs the mean AUC of each model and the mean
difference CNN-LSTM - 2D with a paired bootstrap interval (both models scored on the
same resampled studies). Target
(issue 5): AUC(any) >= 0.95 and the CNN-LSTM not worse than 2D on any finding; "worse"
= the paired interval of the mean difference lies entirely below 0.
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
    name: str, config: str, seed: int, args: argparse.Namespace, stores: dict[str, Any], out: Path
) -> dict[str, Any]:
    cfg = load_config(
        config,
        [
            f"run.out={out / f'{name}-seed{seed}'}",
            f"optim.epochs={args.epochs}",
            f"data.size={args.size}",
            f"run.seed={seed}",
            "run.device=cpu",
        ],
    )
    t = time.perf_counter()
    result = fit(cfg, store=stores["train"], val_store=stores["val"], progress=False)
    fit_s = time.perf_counter() - t
    loaded = load_checkpoint(result.best)
    preds = predict_studies(loaded, stores["test"], device="cpu", progress=False)
    row: dict[str, Any] = {
        "model": name,
        "seed": seed,
        "fit_s": round(fit_s),
        "best_epoch": result.best_epoch,
    }
    for c, lab in enumerate(LABELS):
        y, s = preds.study_labels[:, c], preds.study_scores[:, c]
        ci = bootstrap_ci(y, s, auc, n_boot=1000, seed=c)
        row[lab] = {"auc": ci.estimate, "low": ci.low, "high": ci.high, "n_pos": int(y.sum())}
    row["labels"], row["scores"] = preds.study_labels, preds.study_scores
    return row


def compare(lstm: list[dict[str, Any]], flat: list[dict[str, Any]]) -> dict[str, Interval]:
    """Per finding: mean over runs of AUC(CNN-LSTM) - AUC(2D), paired bootstrap 95 %."""
    out = {}
    for c, lab in enumerate(LABELS):
        y = lstm[0]["labels"][:, c]
        for row in lstm + flat:
            if not np.array_equal(y, row["labels"][:, c]):
                raise RuntimeError("the models were not scored on the same test studies")
        out[lab] = paired_bootstrap_diff(
            y,
            np.stack([r["scores"][:, c] for r in lstm]),
            np.stack([r["scores"][:, c] for r in flat]),
            auc,
            n_boot=1000,
            seed=c,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=int, default=150)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--test-start", type=int, default=4_000_000, help="first test phantom seed")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--p-bleed", type=float, default=0.7, help="training phantoms only")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
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
    test = range(args.test_start, args.test_start + args.test)
    stores = {
        "train": phantom_store(range(args.train), args.size, p_bleed=args.p_bleed, progress=False),
        "val": phantom_store(range(1_000_000, 1_000_000 + args.val), args.size, progress=False),
        "test": phantom_store(test, args.size, progress=False),
    }
    render_s = time.perf_counter() - t
    lstm, flat = [], []
    for seed in args.seeds:
        lstm.append(run("cnn-lstm", "phantom_demo", seed, args, stores, out))
        flat.append(run("2d", "phantom_2d", seed, args, stores, out))
    diffs = compare(lstm, flat)
    public = [{k: v for k, v in r.items() if k not in ("labels", "scores")} for r in lstm + flat]
    summary = {k: asdict(v) for k, v in diffs.items()}
    print(
        json.dumps(
            {
                "args": vars(args) | {"out": str(out)},
                "render_s": round(render_s),
                "runs": public,
                "cnn_lstm_minus_2d": summary,
            },
            indent=1,
            default=str,
        )
    )
    print()
    print("| seed | model | best epoch | fit s | " + " | ".join(LABELS) + " |")
    print("|---|---|---|---|" + "---|" * len(LABELS))
    for r in public:
        aucs = " | ".join(f"{r[lab]['auc']:.3f}" for lab in LABELS)
        print(f"| {r['seed']} | {r['model']} | {r['best_epoch']} | {r['fit_s']} | {aucs} |")
    print()
    n = len(args.seeds)
    print(
        f"| finding | test positives | CNN-LSTM mean AUC ({n} runs) | 2D mean AUC "
        "| CNN-LSTM - 2D (paired 95% CI) |"
    )
    print("|---|---|---|---|---|")
    for lab in LABELS:
        d = diffs[lab]
        mean_lstm = float(np.mean([r[lab]["auc"] for r in lstm]))
        mean_flat = float(np.mean([r[lab]["auc"] for r in flat]))
        print(
            f"| {lab} | {lstm[0][lab]['n_pos']} / {args.test} | {mean_lstm:.3f} | {mean_flat:.3f} "
            f"| {d.estimate:+.3f} ({d.low:+.3f} to {d.high:+.3f}) |"
        )
    worse = [lab for lab in LABELS if diffs[lab].high < 0]
    print(
        "\nCNN-LSTM worse than 2D (paired interval of the mean difference below 0) on: "
        + (", ".join(worse) if worse else "no finding")
    )


if __name__ == "__main__":
    main()
