"""``python -m train evaluate``: a checkpoint on RSNA (slice-level Kaggle metric) or CQ500.

RSNA (METHOD.md "Metrics"): Kaggle weighted log loss over all labelled slices, overall
and per class, slice and study AUCs. CQ500: a scan is positive for a finding when at
least 2 of 3 readers mark it; the scan score is the maximum slice probability of the
series chosen from the headers (``models.series_choice``); AUC per finding with
bootstrap 95 % intervals, and sensitivity/specificity at the checkpoint's thresholds and
at a high-sensitivity point. Outputs: ``report.md``, ``metrics.json``, ``roc_*.png`` and
``study_scores.csv`` in the output folder.

``--data`` may be a prepared cache or a raw download; a raw download is prepared first
(at the checkpoint's input size and windows) into ``<out>/cache`` or ``--cache``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from models.checkpoint import CheckpointMeta, LoadedCheckpoint, load_checkpoint
from models.labels import LABELS
from models.predict import resolve_device
from train.dataset import StudyStore
from train.inference import amp_dtype, predict_store
from train.metrics import (
    auc,
    bootstrap_ci,
    per_class_log_loss,
    sensitivity_specificity,
    study_scores,
    threshold_for_sensitivity,
    weighted_log_loss,
)
from train.report import cq500_markdown, plot_rocs, rsna_markdown, write_json

log = logging.getLogger(__name__)

Layout = Literal["rsna", "cq500"]


class EvaluateError(RuntimeError):
    """The data do not fit the checkpoint (windows) or hold nothing to evaluate."""


def is_prepared_cache(path: Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def open_or_prepare(
    layout: Layout,
    data: Path,
    meta: CheckpointMeta,
    cache: Path | None,
    out: Path,
    subset: str = "train",
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> Any:
    """A :class:`~train.data.cache.PreparedCache` for ``data`` (preparing it if raw)."""
    from train.data.cache import PreparedCache, prepare

    if is_prepared_cache(data):
        store = PreparedCache(data)
    else:
        target = cache or (out / "cache")
        store = prepare(
            layout,
            data,
            target,
            size=meta.input_size,
            workers=workers,
            limit=limit,
            subset=subset,  # type: ignore[arg-type]
            windows=meta.windows,
            progress=progress,
        )
    if getattr(store, "source", layout) != layout:
        raise EvaluateError(f"{data} is a {store.source} cache, not {layout}")
    if store.size != meta.input_size:
        log.warning(
            "evaluate.size_mismatch",
            extra={"cache_size": store.size, "checkpoint_size": meta.input_size},
        )
    if tuple(store.windows) != tuple(meta.windows):
        raise EvaluateError(
            f"cache windows {store.windows} differ from the checkpoint's {meta.windows}"
        )
    return store


@dataclass(frozen=True)
class StudyPredictions:
    """Slice probabilities per study plus study-level labels and scores, in key order."""

    keys: list[str]
    slice_probs: dict[str, NDArray[np.float32]]
    study_labels: NDArray[np.uint8]  # (N, 6)
    study_scores: NDArray[np.float64]  # (N, 6)


def predict_studies(
    loaded: LoadedCheckpoint,
    store: StudyStore,
    keys: Sequence[str] | None = None,
    device: str = "auto",
    tta: bool = False,
    chunk: int = 32,
    progress: bool = True,
) -> StudyPredictions:
    """Run the checkpoint over whole studies of ``store``."""
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    labels_by_key = {s.key: np.asarray(s.study_labels, dtype=np.uint8) for s in store.studies}
    keys = list(keys) if keys is not None else list(labels_by_key)
    if not keys:
        raise EvaluateError("no studies to evaluate")
    probs = predict_store(
        model,
        store,
        keys,
        dev,
        size=loaded.meta.input_size,
        dtype=amp_dtype("auto", dev),
        tta=tta,
        chunk=chunk,
        progress=progress,
        desc="evaluate",
    )
    return StudyPredictions(
        keys=keys,
        slice_probs=probs,
        study_labels=np.stack([labels_by_key[k] for k in keys]),
        study_scores=study_scores([probs[k] for k in keys]),
    )


def _operating_points(
    y: NDArray[np.integer], s: NDArray[np.floating], threshold: float, target: float
) -> dict[str, float]:
    sens, spec = sensitivity_specificity(y, s, threshold)
    out = {"threshold": threshold, "sensitivity": sens, "specificity": spec}
    if y.any():
        hs = threshold_for_sensitivity(y, s, target)
        hs_sens, hs_spec = sensitivity_specificity(y, s, hs)
        out.update({"hs_threshold": hs, "hs_sensitivity": hs_sens, "hs_specificity": hs_spec})
    else:
        out.update(
            {
                "hs_threshold": float("nan"),
                "hs_sensitivity": float("nan"),
                "hs_specificity": float("nan"),
            }
        )
    return out


def rsna_metrics(
    store: StudyStore,
    preds: StudyPredictions,
    thresholds: Sequence[float],
    target: float = 0.95,
) -> dict[str, Any]:
    """Slice-level Kaggle metric and AUCs, study-level AUCs and operating points."""
    labelled = {s.key for s in store.studies if s.has_slice_labels}
    keys = [k for k in preds.keys if k in labelled]
    if not keys:
        raise EvaluateError("no study carries slice labels (an unlabelled test set?)")
    y = np.concatenate([store.slice_labels(k) for k in keys]).astype(np.float64)
    p = np.concatenate([preds.slice_probs[k] for k in keys]).astype(np.float64)
    per = per_class_log_loss(y, p)
    idx = [preds.keys.index(k) for k in keys]
    sy, ss = preds.study_labels[idx], preds.study_scores[idx]
    per_class: dict[str, dict[str, float]] = {}
    for c, lab in enumerate(LABELS):
        per_class[lab] = {
            "log_loss": float(per[c]),
            "slice_auc": auc(y[:, c], p[:, c]),
            "study_auc": auc(sy[:, c], ss[:, c]),
            "n_pos_slices": float(y[:, c].sum()),
            "n_pos_studies": float(sy[:, c].sum()),
            **_operating_points(sy[:, c], ss[:, c], float(thresholds[c]), target),
        }
    return {
        "layout": "rsna",
        "n_studies": len(keys),
        "n_slices": int(y.shape[0]),
        "weighted_log_loss": weighted_log_loss(y, p),
        "per_class": per_class,
        "high_sensitivity_target": target,
    }


def cq500_metrics(
    preds: StudyPredictions,
    thresholds: Sequence[float],
    target: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Scan-level AUC with bootstrap CI and operating points per finding."""
    y, s = preds.study_labels, preds.study_scores
    per_class: dict[str, dict[str, float]] = {}
    for c, lab in enumerate(LABELS):
        ci = bootstrap_ci(y[:, c], s[:, c], auc, n_boot=n_boot, seed=seed + c)
        per_class[lab] = {
            "auc": ci.estimate,
            "auc_low": ci.low,
            "auc_high": ci.high,
            "n": int(y.shape[0]),
            "n_pos": int(y[:, c].sum()),
            **_operating_points(y[:, c], s[:, c], float(thresholds[c]), target),
        }
    return {
        "layout": "cq500",
        "n_studies": int(y.shape[0]),
        "per_class": per_class,
        "high_sensitivity_target": target,
        "bootstrap_resamples": n_boot,
    }


def write_study_scores(path: Path, preds: StudyPredictions) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["study", *(f"label_{lab}" for lab in LABELS), *(f"score_{lab}" for lab in LABELS)]
        )
        for i, key in enumerate(preds.keys):
            w.writerow(
                [key, *preds.study_labels[i].tolist(), *(f"{v:.6f}" for v in preds.study_scores[i])]
            )


def evaluate(
    checkpoint: Path,
    layout: Layout,
    data: Path,
    out: Path,
    *,
    cache: Path | None = None,
    tta: bool = False,
    device: str = "auto",
    target_sensitivity: float = 0.95,
    n_boot: int = 2000,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    store: StudyStore | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` and write the report files into ``out``; return the metrics.

    ``keys`` restricts the evaluation to those studies (e.g. a run's validation split).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(checkpoint, resolve_device(device))
    meta = loaded.meta
    if store is None:
        store = open_or_prepare(
            layout, Path(data), meta, cache, out, "train", workers, limit, progress
        )
    if limit is not None:
        keys = list(keys if keys is not None else [s.key for s in store.studies])[:limit]
    preds = predict_studies(loaded, store, keys, device=device, tta=tta, progress=progress)
    if layout == "rsna":
        metrics = rsna_metrics(store, preds, meta.thresholds, target_sensitivity)
    else:
        metrics = cq500_metrics(preds, meta.thresholds, target_sensitivity, n_boot=n_boot)
    header: Mapping[str, str] = {
        "checkpoint": f"{Path(checkpoint).name} (sha256 {loaded.sha256[:12]})",
        "model": f"{meta.name}, {meta.network.backbone}, "
        f"{'CNN-LSTM' if meta.network.lstm else '2D baseline'}, input {meta.input_size} px",
        "trained on": meta.trained_on,
        "data": str(data),
        "studies": str(metrics["n_studies"]),
        "test-time augmentation": "horizontal flip, averaged" if tta else "none",
    }
    metrics["checkpoint"] = {"file": str(checkpoint), "sha256": loaded.sha256, "demo": meta.demo}
    metrics["tta"] = tta
    write_json(out / "metrics.json", metrics)
    write_study_scores(out / "study_scores.csv", preds)
    title = "RSNA" if layout == "rsna" else "CQ500"
    plot_rocs(out, preds.study_labels, preds.study_scores, title)
    text = rsna_markdown(metrics, header) if layout == "rsna" else cq500_markdown(metrics, header)
    (out / "report.md").write_text(text)
    log.info("evaluate.done", extra={"layout": layout, "studies": metrics["n_studies"]})
    return metrics
