"""Results of one study as DICOM: a TID 1500 SR and an RGB Secondary Capture.

The worker calls :func:`build_results` once per processed study and generation, stores
the objects with :meth:`ResultObjects.save` and hands the files to
:func:`dicom_node.net.scu.send`. Identity rules (see :mod:`dicom_node.results.common`):

* same study, source series, model and generation -> same Series/SOP Instance UIDs, so
  a re-send is deduplicated by PACS;
* a new generation (re-processing after late instances) -> new UIDs; the SR lists the
  previous SR in Predecessor Documents Sequence and the SC names the previous SC.

Both say which series was read and why each other series of the study was not (series
choice), and whether a thin series was averaged into slabs (:mod:`models.slabs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from highdicom.sc import SCImage
from highdicom.sr import Comprehensive3DSR
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from dicom_node.results.common import (
    AlgorithmInfo,
    ReportError,
    ResultUIDs,
    derived_uid,
    result_uids,
)
from dicom_node.results.sc import build_sc
from dicom_node.results.sr import build_sr
from dicom_node.store.private import open_private, private_dir
from dicom_node.store.series_outcome import SeriesOutcome
from models.checkpoint import CheckpointMeta
from models.dicom_io import CTSeries
from models.predict import SeriesPrediction

log = logging.getLogger(__name__)
# highdicom logs the source's SOP Instance UID at INFO ("copy Patient-related attributes
# from dataset <uid>") and every copied attribute at DEBUG; neither may reach our logs.
logging.getLogger("highdicom").setLevel(logging.WARNING)

__all__ = [
    "AlgorithmInfo",
    "ReportError",
    "ResultObjects",
    "ResultUIDs",
    "build_results",
    "result_uids",
    "warm_up",
]


@dataclass(frozen=True)
class ResultObjects:
    """The DICOM results of one generation, ready to write and send."""

    uids: ResultUIDs
    supersedes: ResultUIDs | None
    sr: Comprehensive3DSR
    sc: SCImage

    def by_kind(self) -> dict[str, Dataset]:
        """``{"sr": ..., "sc": ...}``, the keys that ``Destination.send`` lists."""
        return {"sr": self.sr, "sc": self.sc}

    def save(self, out_dir: Path) -> dict[str, Path]:
        """Write both as DICOM Part 10 files named by kind and SOP Instance UID.

        Written to a temporary name and renamed, so a crash never leaves a partial file
        that a later send would pick up.
        """
        private_dir(out_dir)
        paths: dict[str, Path] = {}
        for kind, ds in self.by_kind().items():
            path = out_dir / f"{kind}-{ds.SOPInstanceUID}.dcm"
            tmp = path.with_suffix(".tmp")
            with open_private(tmp) as fh:
                ds.save_as(fh, enforce_file_format=True)
            tmp.replace(path)
            paths[kind] = path
        return paths


def build_results(
    prediction: SeriesPrediction,
    sources: Sequence[Dataset],
    series: CTSeries,
    meta: CheckpointMeta,
    *,
    generation: int = 0,
    supersedes: ResultUIDs | None = None,
    series_choice: Sequence[SeriesOutcome] = (),
    earlier: Sequence[ResultUIDs] = (),
) -> ResultObjects:
    """Build the SR and SC for ``prediction``.

    ``sources``: headers (pixels not needed) of every instance of the predicted series;
    ``series``: the series the model saw, as HU (the SC shows its key slices; slabs when
    the prediction was made on slabs); ``meta``: the checkpoint that made the prediction;
    ``series_choice``: every series of the study with the choice's outcome.
    ``generation`` is the study's generation in the index (it grows when late instances
    reopen a study); ``supersedes`` is the result this one replaces, as recorded when it
    was made (None for a study's first result). It is never guessed from ``generation``:
    the previous generation may have been skipped, or made from another series or model.
    ``earlier`` is every result of the study made before this one (``supersedes``
    included): the SR names them all as predecessors and the SC references every earlier
    SC, because a PACS may never have received the one just before (its delivery was
    replaced while the PACS was down) and must still see the result it holds superseded.

    Raises :class:`ReportError` (a ``PermanentError``) when the inputs do not fit
    together; messages carry counts, never patient data or UIDs.
    """
    if series.series_uid != prediction.series_uid or series.study_uid != prediction.study_uid:
        raise ReportError("CT series and prediction are of different series")
    algorithm = AlgorithmInfo.from_meta(meta)
    uids = result_uids(prediction.study_uid, prediction.series_uid, meta.model_uid, generation)
    t0 = time.perf_counter()
    sr = build_sr(prediction, sources, algorithm, uids, supersedes, series_choice, earlier)
    t1 = time.perf_counter()
    sc = build_sc(prediction, sources, series, algorithm, uids, supersedes, series_choice, earlier)
    t2 = time.perf_counter()
    log.info(
        "report.built",
        extra={
            "generation": generation,
            "n_present": int(prediction.present.sum()),
            "sr_s": round(t1 - t0, 4),
            "sc_s": round(t2 - t1, 4),
        },
    )
    return ResultObjects(uids=uids, supersedes=supersedes, sr=sr, sc=sc)


def warm_up(meta: CheckpointMeta) -> float:
    """Build and discard the results of a synthetic two-slice series; returns seconds.

    The first SR/SC a process builds pays one-time costs that later ones do not:
    highdicom loads the standard's IOD/module tables (JSON, ~0.4 s) and matplotlib its
    font cache, together ~1 s on CPU (``bench/e2e.py``, cold vs warm run). The worker
    calls this before it takes its first study, so that the first study after a start
    is not that much slower than the rest. Nothing is written or sent; the synthetic
    identities carry no patient data.
    """
    t0 = time.perf_counter()
    study, series_uid = derived_uid("warm-up", "study"), derived_uid("warm-up", "series")
    sops = [derived_uid("warm-up", "sop", str(i)) for i in range(2)]
    sources = []
    for i, sop in enumerate(sops):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.BodyPartExamined = "HEAD"
        ds.InstanceNumber = i + 1
        sources.append(ds)
    series = CTSeries(
        study_uid=study,
        series_uid=series_uid,
        sop_uids=sops,
        hu=np.zeros((2, 16, 16), dtype=np.float32),
        positions_mm=np.array([0.0, 5.0]),
        pixel_spacing=(1.0, 1.0),
        duplicates_dropped=0,
        quirk_corrected=0,
    )
    probs = np.array([[0.9] * 6, [0.1] * 6], dtype=np.float32)
    prediction = SeriesPrediction(
        study_uid=study,
        series_uid=series_uid,
        sop_uids=sops,
        slice_probs=probs,
        study_probs=probs.max(axis=0),
        thresholds=tuple(meta.thresholds),
    )
    build_results(prediction, sources, series, meta)
    return time.perf_counter() - t0
