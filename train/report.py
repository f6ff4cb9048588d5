"""Evaluation outputs: ``metrics.json``, ROC curves as PNG, and ``report.md``.

The report puts our numbers beside the published ones (METHOD.md "Published results"),
so a reader sees at once whether a run reproduces the paper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.labels import LABELS
from train.metrics import roc_curve

#: METHOD.md "Published results": RSNA weighted log loss.
PAPER_RSNA: dict[str, dict[str, float]] = {
    "CNN-LSTM ResNet-50": {"private_lb": 0.05289, "stage1_validation": 0.06370},
    "CNN-LSTM SE-ResNeXt-50": {"private_lb": 0.05218, "stage1_validation": 0.06292},
    "Kaggle 1st place": {"private_lb": 0.04383},
}

#: METHOD.md "Published results": CQ500 AUC per finding (our label names).
PAPER_CQ500: dict[str, dict[str, float]] = {
    "Qure.ai (Lancet 2018)": {
        "any": 0.9419,
        "intraparenchymal": 0.9544,
        "intraventricular": 0.9310,
        "subarachnoid": 0.9574,
        "subdural": 0.9521,
        "epidural": 0.9731,
    },
    "CNN-LSTM ResNet-50": {
        "any": 0.9597,
        "intraparenchymal": 0.9616,
        "intraventricular": 0.9901,
        "subarachnoid": 0.9662,
        "subdural": 0.9654,
        "epidural": 0.9740,
    },
    "CNN-LSTM SE-ResNeXt-50": {
        "any": 0.9613,
        "intraparenchymal": 0.9674,
        "intraventricular": 0.9858,
        "subarachnoid": 0.9696,
        "subdural": 0.9644,
        "epidural": 0.9731,
    },
}


def _clean(value: Any) -> Any:
    """JSON has no NaN: write ``null`` for undefined metrics (e.g. AUC with one class)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2))
    tmp.replace(path)


def plot_rocs(
    out: Path,
    y_true: NDArray[np.integer],
    scores: NDArray[np.floating],
    title: str,
    labels: Sequence[str] = LABELS,
) -> list[Path]:
    """One ``roc_<label>.png`` per class (skipped where a class has one outcome only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for c, lab in enumerate(labels):
        t = y_true[:, c].astype(bool)
        if t.all() or not t.any():
            continue
        fpr, tpr, _ = roc_curve(t, scores[:, c])
        area = float(np.trapezoid(tpr, fpr))
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, lw=2, label=f"AUC {area:.4f} (n+={int(t.sum())}, n-={int((~t).sum())})")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"{title}: {lab}")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out / f"roc_{lab}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def rsna_markdown(metrics: Mapping[str, Any], header: Mapping[str, str]) -> str:
    """``report.md`` for an RSNA evaluation (slice-level Kaggle metric)."""
    lines = ["# RSNA 2019 evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "## Weighted log loss (Kaggle metric, slice level)",
        "",
        "| | weighted log loss |",
        "|---|---|",
        f"| **this checkpoint** | **{_fmt(metrics['weighted_log_loss'], 5)}** |",
    ]
    for name, vals in PAPER_RSNA.items():
        for split, v in vals.items():
            lines.append(f"| {name} (paper, {split.replace('_', ' ')}) | {v:.5f} |")
    lines += [
        "",
        "## Per class",
        "",
        "| class | log loss | slice AUC | study AUC | sens @ thr | spec @ thr | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for lab in LABELS:
        c = metrics["per_class"][lab]
        lines.append(
            f"| {lab} | {_fmt(c['log_loss'])} | {_fmt(c['slice_auc'])} | {_fmt(c['study_auc'])} "
            f"| {_fmt(c['sensitivity'], 3)} | {_fmt(c['specificity'], 3)} "
            f"| {_fmt(c['threshold'], 3)} |"
        )
    lines += ["", "ROC curves (study level): `roc_<class>.png`.", ""]
    return "\n".join(lines)


def cq500_markdown(metrics: Mapping[str, Any], header: Mapping[str, str]) -> str:
    """``report.md`` for a CQ500 evaluation (scan level, majority of three readers)."""
    lines = ["# CQ500 evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "Scan label: positive when at least 2 of 3 readers mark it. Scan score: maximum "
        "slice probability over the chosen series. AUC with a percentile-bootstrap 95 % "
        "interval.",
        "",
        "## AUC beside the published numbers",
        "",
        "| finding | n+ / n | **this checkpoint** (95 % CI) | " + " | ".join(PAPER_CQ500) + " |",
        "|---|---|---|" + "---|" * len(PAPER_CQ500),
    ]
    order = ("any", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "epidural")
    for lab in order:
        c = metrics["per_class"][lab]
        ci = f"{_fmt(c['auc'])} ({_fmt(c['auc_low'])}-{_fmt(c['auc_high'])})"
        paper = " | ".join(f"{vals[lab]:.4f}" for vals in PAPER_CQ500.values())
        lines.append(f"| {lab} | {c['n_pos']} / {c['n']} | **{ci}** | {paper} |")
    target = metrics.get("high_sensitivity_target", 0.95)
    lines += [
        "",
        "## Operating points",
        "",
        f"| finding | threshold (checkpoint) | sensitivity | specificity | "
        f"threshold for sens >= {target:.2f} | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for lab in order:
        c = metrics["per_class"][lab]
        lines.append(
            f"| {lab} | {_fmt(c['threshold'], 3)} | {_fmt(c['sensitivity'], 3)} "
            f"| {_fmt(c['specificity'], 3)} | {_fmt(c['hs_threshold'], 3)} "
            f"| {_fmt(c['hs_sensitivity'], 3)} | {_fmt(c['hs_specificity'], 3)} |"
        )
    lines += [
        "",
        "The high-sensitivity threshold is chosen on this same set (it shows the trade-off; "
        "an unbiased operating point comes from the checkpoint's validation thresholds).",
        "",
        "ROC curves: `roc_<finding>.png`.",
        "",
    ]
    return "\n".join(lines)
