"""``python -m train predict``: a Kaggle submission CSV for the RSNA stage-2 test set.

Rows ``ID_<hex>_<subtype>,<probability>`` with header ``ID,Label`` (the format of the
competition's ``stage_2_sample_submission.csv``), one per slice and class, for every
slice of every prepared study. Slices are predicted with their whole study as context,
as in validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from models.checkpoint import load_checkpoint
from models.predict import resolve_device
from train.evaluate import open_or_prepare, predict_studies

log = logging.getLogger(__name__)


def predict_submission(
    checkpoint: Path,
    data: Path,
    out_csv: Path,
    *,
    cache: Path | None = None,
    tta: bool = False,
    device: str = "auto",
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Predict every slice of the (stage-2 test) studies in ``data``; write ``out_csv``."""
    from train.data.rsna import write_submission_rows

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(checkpoint, resolve_device(device))
    store = open_or_prepare(
        "rsna",
        Path(data),
        loaded.meta,
        cache,
        out_csv.parent,
        subset="test",
        workers=workers,
        limit=limit,
        progress=progress,
    )
    preds = predict_studies(loaded, store, device=device, tta=tta, progress=progress)
    ids: list[str] = []
    probs: list[np.ndarray] = []
    for key in preds.keys:
        ids.extend(store.image_ids(key))
        probs.append(preds.slice_probs[key])
    lines = write_submission_rows(ids, np.concatenate(probs))
    tmp = out_csv.with_name(f".{out_csv.name}.tmp")
    tmp.write_text("ID,Label\n" + "\n".join(lines) + "\n")
    tmp.replace(out_csv)
    log.info("predict.done", extra={"images": len(ids), "studies": len(preds.keys)})
    return out_csv
