"""Helpers for the results tests: sentinel patient data, predictions, recording SCPs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from models.dicom_io import CTSeries
from models.labels import LABELS
from models.predict import SeriesPrediction

#: Planted in the phantom's patient module; must never appear in logs or error messages.
SENTINEL_NAME = "SENTINELNAME^PHI"
SENTINEL_ID = "SENTINELID4711"


def make_prediction(series: CTSeries, present: tuple[str, ...]) -> SeriesPrediction:
    """A prediction built by hand: findings in ``present`` peak on two middle slices."""
    n = series.n_slices
    probs = np.full((n, len(LABELS)), 0.05, dtype=np.float32)
    for label in present:
        c = LABELS.index(label)
        probs[n // 2, c] = 0.91
        probs[n // 2 + 1, c] = 0.72
    if present:
        probs[:, 0] = np.maximum(probs[:, 0], probs[:, 1:].max(axis=1))
    return SeriesPrediction(
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        sop_uids=list(series.sop_uids),
        slice_probs=probs,
        study_probs=probs.max(axis=0),
        thresholds=(0.5, 0.4, 0.5, 0.5, 0.5, 0.6),
    )


@dataclass
class RecordingSCP:
    """A pynetdicom Storage SCP that keeps what it received and answers ``status``."""

    server: ThreadedAssociationServer
    received: list[Dataset] = field(default_factory=list)
    status: int = 0x0000

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def handle_store(self, event: Event) -> int:
        if self.status == 0x0000:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
        return self.status


@dataclass(frozen=True)
class Storescp:
    port: int
    out_dir: Path
    ae_title: str = "STORESCP"
