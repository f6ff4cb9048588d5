"""``python -m train export``: the node's checkpoint, with validated thresholds and provenance.

The node decides "present" per study when the study probability (max over slices)
reaches the class threshold. Thresholds are therefore chosen on validation studies, per
class, as the highest threshold that still reaches a stated target sensitivity (e.g.
0.95: triage favours sensitivity). The file is named by its content hash,
``weights-<sha8>.pt`` (as timm and torchvision name released weights), so a node's log
line names exactly which weights it ran.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint import CheckpointMeta, file_sha256, load_checkpoint, save_checkpoint
from models.labels import LABELS
from models.predict import resolve_device
from train.dataset import StudyStore
from train.evaluate import StudyPredictions, predict_studies
from train.fit import git_commit
from train.metrics import auc, sensitivity_specificity, threshold_for_sensitivity

log = logging.getLogger(__name__)


def choose_thresholds(
    study_labels: np.ndarray, study_scores: np.ndarray, target_sensitivity: float
) -> tuple[float, ...]:
    """Per class, the highest study-level threshold with sensitivity >= target.

    Classes without a positive validation study keep 0.5 (nothing to calibrate on).
    """
    out = []
    for c in range(len(LABELS)):
        out.append(
            threshold_for_sensitivity(study_labels[:, c], study_scores[:, c], target_sensitivity)
        )
    return tuple(float(min(max(t, 0.0), 1.0)) for t in out)


def threshold_metrics(
    preds: StudyPredictions, thresholds: Sequence[float], target: float
) -> dict[str, float]:
    """Validation numbers stored in the checkpoint: study AUC, sens/spec at each threshold."""
    m: dict[str, float] = {"val_studies": float(len(preds.keys)), "target_sensitivity": target}
    for c, lab in enumerate(LABELS):
        y, s = preds.study_labels[:, c], preds.study_scores[:, c]
        a = auc(y, s)
        if np.isfinite(a):
            m[f"study_auc_{lab}"] = a
        sens, spec = sensitivity_specificity(y, s, thresholds[c])
        if np.isfinite(sens):
            m[f"sensitivity_{lab}"] = sens
        if np.isfinite(spec):
            m[f"specificity_{lab}"] = spec
    return m


def export(
    checkpoint: Path,
    out: Path,
    store: StudyStore,
    val_keys: Sequence[str] | None = None,
    *,
    target_sensitivity: float = 0.95,
    name: str | None = None,
    trained_on: str | None = None,
    demo: bool | None = None,
    provenance: Mapping[str, str] | None = None,
    slice_thickness_mm: float | None = None,
    tta: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Choose thresholds on ``store``/``val_keys`` and write the node's checkpoint.

    ``out`` is a folder (the file becomes ``<out>/weights-<sha8>.pt``) or a ``.pt`` path
    used as is (the demo model's fixed location). Returns the written path.
    ``slice_thickness_mm`` is the training slices' thickness, which the node averages
    thinner series to; None keeps the checkpoint's (``fit`` records 5 mm).
    """
    loaded = load_checkpoint(checkpoint, resolve_device(device))
    preds = predict_studies(loaded, store, val_keys, device=device, tta=tta, progress=progress)
    thresholds = choose_thresholds(preds.study_labels, preds.study_scores, target_sensitivity)
    metrics = threshold_metrics(preds, thresholds, target_sensitivity)
    old = loaded.meta
    prov: dict[str, str] = {
        **{k: str(v) for k, v in old.provenance.items()},
        "exported_from": f"{Path(checkpoint).name} sha256:{loaded.sha256[:16]}",
        "threshold_rule": (
            f"per class, highest study-level threshold with sensitivity >= "
            f"{target_sensitivity} on {len(preds.keys)} validation studies"
        ),
        "export_git_commit": git_commit(),
        **{k: str(v) for k, v in (provenance or {}).items()},
    }
    for k, v in old.validation_metrics.items():
        if k in ("val_loss", "epoch"):
            metrics.setdefault(f"fit_{k}", float(v))
    meta: CheckpointMeta = replace(
        old,
        thresholds=thresholds,
        validation_metrics=metrics,
        provenance=prov,
        name=name if name is not None else old.name,
        trained_on=trained_on if trained_on is not None else old.trained_on,
        demo=demo if demo is not None else old.demo,
        slice_thickness_mm=(
            slice_thickness_mm if slice_thickness_mm is not None else old.slice_thickness_mm
        ),
        model_uid="",
        created="",
    )
    out = Path(out)
    if out.suffix == ".pt":
        save_checkpoint(out, loaded.model.cpu(), meta)
        final = out
    else:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".export.pt"
        save_checkpoint(tmp, loaded.model.cpu(), meta)
        final = out / f"weights-{file_sha256(tmp)[:8]}.pt"
        tmp.replace(final)
    log.info(
        "export.done",
        extra={"file": final.name, "thresholds": [round(t, 4) for t in thresholds]},
    )
    return final


def summary(path: Path) -> dict[str, Any]:
    """What a written checkpoint says about itself (for the CLI's output)."""
    loaded = load_checkpoint(path)
    m = loaded.meta
    return {
        "file": str(path),
        "sha256": loaded.sha256,
        "name": m.name,
        "backbone": m.network.backbone,
        "lstm": m.network.lstm,
        "input_size": m.input_size,
        "slice_thickness_mm": m.slice_thickness_mm,
        "thresholds": dict(zip(LABELS, m.thresholds, strict=True)),
        "trained_on": m.trained_on,
        "demo": m.demo,
        "model_uid": m.model_uid,
        "validation_metrics": dict(m.validation_metrics),
    }
