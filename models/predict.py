"""Inference as ``model_series -> pre_process -> predict -> post_process`` for one CT series.

Shared by the node's worker, ``dicom-node classify`` and the training package's
evaluation, so a probability means the same thing everywhere. ``model_series`` averages
a thin series into slabs of the checkpoint's training slice thickness
(:mod:`models.slabs`; on unless the predictor is built with ``slab_thin_series=False``);
the prediction then has one row per slab and names each slab by its middle source slice.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from models.checkpoint import LoadedCheckpoint, load_checkpoint
from models.dicom_io import CTSeries
from models.labels import LABELS
from models.network import study_probabilities
from models.preprocess import hu_to_model_input
from models.slabs import SlabSummary, to_slabs


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class SeriesPrediction:
    """Per-slice and per-study probabilities and the decisions taken from them.

    With ``slabs`` set, the rows of ``slice_probs`` are slabs and ``sop_uids`` names each
    slab's middle source slice (:mod:`models.slabs`).
    """

    study_uid: str
    series_uid: str
    sop_uids: list[str]
    slice_probs: NDArray[np.float32]  # (S, 6), slices inferior -> superior
    study_probs: NDArray[np.float32]  # (6,)
    thresholds: tuple[float, ...]
    timings_s: dict[str, float] = field(default_factory=dict)
    slabs: SlabSummary | None = None
    #: Per row, the frame number within the multi-frame instance ``sop_uids`` names
    #: (Enhanced CT); None when every row is a single-frame instance.
    frame_numbers: list[int] | None = None

    def frame_of(self, row: int) -> int | None:
        """The Referenced Frame Number of row ``row``'s image, None for a single frame."""
        return None if self.frame_numbers is None else self.frame_numbers[row]

    @property
    def present(self) -> NDArray[np.bool_]:
        """Per-class decisions at the checkpoint's thresholds, kept consistent.

        ``any`` is present whenever a subtype is: a report saying "no hemorrhage" above
        "subdural hemorrhage present" would mislead the reader; the probabilities stay
        as the model gave them.
        """
        present = self.study_probs >= np.asarray(self.thresholds, dtype=np.float32)
        present[0] |= bool(present[1:].any())
        return present

    def findings(self) -> dict[str, dict[str, float | bool]]:
        """``{label: {"probability": p, "present": bool}}`` in canonical label order."""
        present = self.present
        return {
            label: {"probability": float(self.study_probs[i]), "present": bool(present[i])}
            for i, label in enumerate(LABELS)
        }

    def key_slices(self, label: str, k: int = 5) -> list[int]:
        """Indices of the slices that drove ``label``: at or above threshold, best first.

        Falls back to the single most probable slice so every finding has evidence.
        """
        c = LABELS.index(label)
        probs = self.slice_probs[:, c]
        order = np.argsort(-probs, kind="stable")
        above = [int(i) for i in order if probs[i] >= self.thresholds[c]]
        return above[:k] if above else [int(order[0])]

    def top_slices(self, k: int = 5) -> list[str]:
        """SOP Instance UIDs of the ``k`` slices with the highest ``any`` probability."""
        order = np.argsort(-self.slice_probs[:, 0], kind="stable")[:k]
        return [self.sop_uids[int(i)] for i in order]


class Predictor:
    """A loaded checkpoint bound to a device, ready to classify series."""

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        device: torch.device,
        chunk: int = 32,
        amp: bool = True,
        slab_thin_series: bool = True,
    ) -> None:
        self.checkpoint = checkpoint
        self.meta = checkpoint.meta
        self.model = checkpoint.model.to(device).eval()
        self.device = device
        self.chunk = chunk
        self.amp = amp and device.type == "cuda"
        self.slab_thin_series = slab_thin_series

    @classmethod
    def from_path(
        cls,
        path: Path,
        device: str = "auto",
        chunk: int = 32,
        amp: bool = True,
        slab_thin_series: bool = True,
    ) -> Predictor:
        dev = resolve_device(device)
        return cls(
            load_checkpoint(path, dev), dev, chunk=chunk, amp=amp, slab_thin_series=slab_thin_series
        )

    def model_series(self, series: CTSeries) -> tuple[CTSeries, SlabSummary | None]:
        """The series as the model sees it, and how it was averaged (None: as read).

        A series much thinner than the checkpoint's training slices becomes slabs of that
        thickness (:mod:`models.slabs`) when ``slab_thin_series`` is on. The worker keeps
        the returned series for the results: their slice indices are its slabs.
        """
        if not self.slab_thin_series:
            return series, None
        return to_slabs(series, self.meta.slice_thickness_mm)

    def pre_process(self, series: CTSeries) -> torch.Tensor:
        """HU -> windows -> resize -> ImageNet normalisation, on the model's device.

        Takes the series as given: pass it through :meth:`model_series` first (as
        ``__call__`` does) for the slab averaging.
        """
        return hu_to_model_input(series.hu, self.meta.input_size, self.meta.windows, self.device)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(S, 6)``; bf16/fp16 autocast on GPU when enabled."""
        ctx = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        )
        with ctx:
            return self.model.predict_series(x, chunk=self.chunk).float()

    def post_process(
        self, series: CTSeries, logits: torch.Tensor, slabs: SlabSummary | None = None
    ) -> SeriesPrediction:
        """Probabilities and decisions for ``series`` (the one the model saw)."""
        slice_probs = torch.sigmoid(logits).cpu().numpy().astype(np.float32)
        study = study_probabilities(logits).cpu().numpy().astype(np.float32)
        return SeriesPrediction(
            study_uid=series.study_uid,
            series_uid=series.series_uid,
            sop_uids=list(series.sop_uids),
            slice_probs=slice_probs,
            study_probs=study,
            thresholds=tuple(self.meta.thresholds),
            slabs=slabs,
            frame_numbers=None if series.frame_numbers is None else list(series.frame_numbers),
        )

    def __call__(self, series: CTSeries) -> SeriesPrediction:
        t0 = time.perf_counter()
        seen, slabs = self.model_series(series)
        x = self.pre_process(seen)
        t1 = time.perf_counter()
        logits = self.predict(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        pred = self.post_process(seen, logits, slabs)
        pred.timings_s.update({"preprocess": t1 - t0, "inference": t2 - t1})
        return pred
