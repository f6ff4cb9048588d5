"""Offline classification of DICOM files on disk: ``dicom-node classify PATH``.

The same steps the worker runs on a received study (series choice, read, slab averaging
of a thin series, predict), without any network, so a radiologist or admin can check a
study by hand, and see for every series of the study whether it was read and why not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.store.series_outcome import SeriesOutcome, outcomes_of
from models.decode_pool import DecodePool, default_workers
from models.dicom_io import iter_dicom_files, read_series, scan_headers
from models.errors import ModelsError
from models.predict import Predictor, SeriesPrediction
from models.series_choice import SeriesRule, choose_series, group_by_study, rule_keywords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyResult:
    """One study's outcome: a prediction, or the reason it was skipped.

    ``n_slices`` counts the source slices read; ``series_choice`` lists every series of
    the study with the choice's outcome.
    """

    study_uid: str
    series_uid: str | None
    n_slices: int
    prediction: SeriesPrediction | None
    skipped: str | None
    series_choice: tuple[SeriesOutcome, ...] = ()

    def to_json(self, top_k: int = 5) -> dict[str, Any]:
        slabs = self.prediction.slabs if self.prediction else None
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "n_slices": self.n_slices,
            "findings": self.prediction.findings() if self.prediction else None,
            "top_slices": self.prediction.top_slices(top_k) if self.prediction else [],
            "skipped": self.skipped,
            "slabs": slabs.to_json() if slabs is not None else None,
            "series_choice": [o.to_json() for o in self.series_choice],
        }


@dataclass(frozen=True)
class Unreadable:
    """A file under the path that is not a DICOM instance the scan could place."""

    path: Path
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


def classify_path(
    path: Path,
    predictor: Predictor,
    rules: Sequence[SeriesRule] = (),
    unreadable: list[Unreadable] | None = None,
) -> Iterator[StudyResult]:
    """Classify every study found under ``path`` (a file or a folder), one at a time.

    ``rules``: the site's series-choice rules (``series_choice.rules`` in the config).
    ``unreadable`` (if given) receives the files that are not DICOM instances, with
    why, before the first study is yielded: without them a folder of such files would
    just look empty.
    Compressed series are decoded by one set of helper processes for the whole run
    (started with the first such series), not a new set per study.
    """
    scan = scan_headers(iter_dicom_files(path), extra_tags=rule_keywords(rules))
    if unreadable is not None:
        unreadable.extend(Unreadable(p, scan.why.get(p, "unreadable")) for p in scan.unreadable)
    workers = default_workers()
    with ExitStack() as stack:
        pool = stack.enter_context(DecodePool(workers)) if workers > 1 else None
        for study_uid, headers in group_by_study(scan.headers).items():
            choice = choose_series(headers, rules)
            outcomes = outcomes_of(choice)
            if not choice.eligible or choice.chosen is None:
                yield StudyResult(study_uid, None, 0, None, choice.reason, outcomes)
                continue
            try:
                series = read_series(choice.headers, pool=pool)
                pred = predictor(series)
            except ModelsError as exc:
                log.warning("classify.failed", extra={"error": str(exc)})
                yield StudyResult(
                    study_uid, choice.chosen.series_uid, 0, None, f"failed: {exc}", outcomes
                )
                continue
            yield StudyResult(study_uid, series.series_uid, series.n_slices, pred, None, outcomes)
