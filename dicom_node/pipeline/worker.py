"""The processing queue and the one inference worker that owns the model.

Complete studies become ``queued`` in the index (nothing is held only in memory, so a
restart resumes them). A worker claims a study atomically under a lease
(:meth:`~dicom_node.store.index.Index.claim_next`: ``processing``, ``claimed_by`` this
worker), so several workers, in one or many processes around a PostgreSQL index, never
take the same study; a worker that dies loses its studies to the others when the lease
runs out, and a restarted one (same ``worker_id``) takes its own back at once. Every write
that ends processing names the owner: a worker whose lease was taken over cannot
overwrite the new owner's work. Two threads form a two-stage pipeline:

* **prepare**: claims the oldest queued study (``processing``), chooses the series
  (:func:`models.series_choice.choose_series`) and records the outcome for every series
  in the index (``dicom-node studies`` shows why each one was or was not read), reads
  the chosen one to HU, averages a thin series into slabs of the checkpoint's slice
  thickness (:meth:`models.predict.Predictor.model_series`) and builds the model input;
  a study with no eligible series ends ``skipped`` with the reason;
* **infer**: runs the model, builds SR + SC (:mod:`dicom_node.results.report`), saves them,
  records the findings (``done``) and hands the files to delivery.

At most one prepared study waits while another is inferred, so decoding and
preprocessing of the next study overlap inference of the current one without holding
more than two series in memory. A corrupt slice fails only its study (``failed`` with a
reason); the node keeps serving. Every state change is guarded by the study's
generation: a study reopened by late instances while it was processed is not
overwritten, it is processed again when it completes again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import pydicom
import torch
from pydicom.dataset import Dataset

from dicom_node import heap
from dicom_node.errors import NodeError
from dicom_node.logs import study_key
from dicom_node.metrics import NodeMetrics
from dicom_node.results.common import ResultUIDs, result_uids
from dicom_node.results.report import build_results, warm_up
from dicom_node.store import study_marker
from dicom_node.store.index import Index, StudyRow, StudyState
from dicom_node.store.private import private_dir
from dicom_node.store.series_outcome import SeriesOutcome, outcomes_of
from models.decode_pool import DecodePool, default_workers
from models.dicom_io import CTSeries, read_series, scan_headers
from models.errors import ModelsError
from models.labels import LABELS
from models.predict import Predictor
from models.series_choice import SeriesRule, choose_series, rule_keywords
from models.slabs import SlabSummary

log = logging.getLogger(__name__)

#: How long an idle worker sleeps before looking at the index again (a wake-up event
#: normally arrives first; this only bounds the delay if one is ever missed).
IDLE_POLL_S: Final = 5.0

#: ``deliver(study_uid, generation, {"sr": path, "sc": path})``
DeliverFn = Callable[[str, int, dict[str, Path]], None]


@dataclass
class Prepared:
    """A claimed study after the prepare stage.

    ``series`` is the series as the model sees it (slabs when averaged); ``sources``
    are the headers of every instance of the chosen series.
    """

    study: StudyRow
    series: CTSeries | None = None
    sources: list[Dataset] = field(default_factory=list)
    x: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    series_choice: tuple[SeriesOutcome, ...] = ()
    slabs: SlabSummary | None = None
    n_source_slices: int = 0


class InferenceWorker:
    """Owns the predictor; processes queued studies one at a time, oldest arrival first."""

    def __init__(
        self,
        index: Index,
        spool_dir: Path,
        results_dir: Path,
        predictor: Predictor | None,
        deliver: DeliverFn,
        *,
        hash_key: str,
        unavailable: str | None = None,
        series_rules: Sequence[SeriesRule] = (),
        metrics: NodeMetrics | None = None,
        worker_id: str = "local",
        lease_s: float = 30.0,
        poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.index = index
        self.spool_dir = spool_dir
        self.results_dir = results_dir
        self.predictor = predictor
        self.deliver = deliver
        self.hash_key = hash_key
        self.series_rules = tuple(series_rules)  # the site's series_choice.rules
        self.unavailable = unavailable if predictor is None else None
        self.metrics = metrics
        #: Who claims (``studies.claimed_by``) and for how long; the service's heartbeat
        #: renews the lease while a study is in hand (:mod:`dicom_node.pipeline.heartbeat`).
        self.worker_id = worker_id
        self.lease_s = lease_s
        #: How long an idle worker waits before it looks at the queue again: other
        #: processes (receivers, other workers) cannot wake this one, only the index can.
        self.poll_s = poll_s
        self.processed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        # set when stop() gave up waiting: the study in hand is left to the next start
        self._abandoned = threading.Event()
        self._current: StudyRow | None = None
        self._slot = threading.Semaphore(1)
        self._handoff: queue.Queue[Prepared | None] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
        # Helper processes that decode compressed series beside the prepare thread; made
        # by start(), they boot with the first compressed series and end with stop().
        self._decode_pool: DecodePool | None = None

    # -- queue ------------------------------------------------------------------------

    def enqueue(self, study: StudyRow) -> None:
        """Completion hook: ``complete`` -> ``queued``, then wake the worker. Never blocks."""
        reason = f"waiting: {self.unavailable}" if self.unavailable else None
        if self.index.set_state(
            study.study_uid, "queued", reason, expect=("complete",), generation=study.generation
        ):
            log.info(
                "study.queued",
                extra={"study": study_key(study.study_uid, self.hash_key), "n": study.instances},
            )
        self._wake.set()

    def requeue(self, study_uid: str) -> StudyRow | None:
        """A user's "reprocess": a finished study (done, failed, skipped) back to ``queued``
        in its current generation, then wake the worker; None when it is not finished
        (receiving, or already queued or in processing)."""
        study = self.index.study(study_uid)
        if study is None or not self.index.set_state(
            study_uid, "queued", expect=("done", "failed", "skipped"), generation=study.generation
        ):
            return None
        log.info("study.requeued", extra={"study": study_key(study_uid, self.hash_key)})
        self._wake.set()
        return study

    def start(self) -> None:
        """Requeue interrupted work, queue completed studies, start the two stages."""
        private_dir(self.results_dir)  # created, or tightened if an older start left it open
        # Studies this worker held when it stopped (same id: at once) and any whose
        # worker's lease ran out; then those a crash left ``complete`` before queueing.
        resumed = len(self.index.requeue_expired(owner=self.worker_id))
        for study in self.index.studies(("complete",)):
            if self.index.set_state(
                study.study_uid, "queued", expect=("complete",), generation=study.generation
            ):
                resumed += 1
        if resumed:
            log.info("worker.resumed", extra={"studies": resumed})
        if self.predictor is None:
            log.error("worker.no_model", extra={"reason": self.unavailable or "unknown"})
            return
        workers = default_workers()
        self._decode_pool = DecodePool(workers) if workers > 1 else None
        for name, target in (("prepare", self._prepare_loop), ("infer", self._infer_loop)):
            t = threading.Thread(target=target, name=f"ich-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the study in hand, then stop (queued studies stay queued).

        Past ``timeout`` (a long CPU inference) the study is abandoned, not failed: it
        stays ``processing`` and :meth:`start` requeues it at the next start. The infer
        thread then finishes on its own without touching the index (which the service
        closes next) and without a traceback.
        """
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        abandoned = any(t.is_alive() for t in self._threads)
        if abandoned:
            self._abandoned.set()
            current = self._current
            log.warning(
                "worker.stop_timeout",
                extra={
                    "waited_s": timeout,
                    "study": study_key(current.study_uid, self.hash_key) if current else None,
                    "next": "requeued at the next start",
                },
            )
        if self._decode_pool is not None:
            # An abandoned prepare may still be decoding: its helpers are killed at once
            # (it then fails alone, unrecorded); otherwise they are idle and just end.
            self._decode_pool.close(timeout=0.0 if abandoned else 5.0)
            self._decode_pool = None

    def idle(self) -> bool:
        """True when nothing is queued or in processing (tests and the demo wait on it)."""
        return not self.index.studies(("queued", "processing", "complete"))

    # -- prepare stage ----------------------------------------------------------------

    def wake(self) -> None:
        """Look at the queue now (a study was queued or a lease returned one)."""
        self._wake.set()

    def load(self) -> dict[str, Any]:
        """What this worker is doing, for its heartbeat row."""
        return {"busy": self._current is not None, "processed": self.processed}

    def _claim(self) -> StudyRow | None:
        """The oldest queued study, claimed atomically under this worker's lease."""
        return self.index.claim_next(self.worker_id, self.lease_s)

    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            self._slot.acquire()
            if self._stop.is_set():  # stopped while waiting for the slot: claim nothing
                self._slot.release()
                break
            study: StudyRow | None = None
            try:
                study = self._claim()
            except NodeError as exc:
                log.error("worker.claim_failed", extra={"error": type(exc).__name__})
            if study is None:
                self._slot.release()
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            prepared = self._prepare_guarded(study)
            if prepared is None:
                self._slot.release()
                continue
            self._handoff.put(prepared)
        self._handoff.put(None)

    def _prepare_guarded(self, study: StudyRow) -> Prepared | None:
        try:
            return self._prepare(study)
        except Exception as exc:
            if self._abandoned.is_set():  # see stop(): the study is left to the next start
                log.info("worker.abandoned", extra={"stage": "prepare"})
            elif isinstance(exc, ModelsError):
                self._finish(study, "failed", f"cannot read study: {exc}")
            else:
                reason = f"internal error while reading ({type(exc).__name__})"
                self._finish(study, "failed", reason)
                log.exception("worker.prepare_crashed")
        return None

    def _prepare(self, study: StudyRow) -> Prepared | None:
        assert self.predictor is not None
        t0 = time.perf_counter()
        paths = [self.spool_dir / row.path for row in self.index.instances(study.study_uid)]
        scan = scan_headers(paths, extra_tags=rule_keywords(self.series_rules))
        choice = choose_series(
            [h for h in scan.headers if h.study_uid == study.study_uid], self.series_rules
        )
        t1 = time.perf_counter()
        outcomes = outcomes_of(choice)
        self.index.set_series_choice(study.study_uid, study.generation, outcomes)
        if not choice.eligible:
            self._finish(study, "skipped", choice.reason or "no eligible series")
            return None
        series = read_series(choice.headers, pool=self._decode_pool)
        sources: list[Dataset] = [  # one per instance: Enhanced CT frames share a file
            pydicom.dcmread(path, stop_before_pixels=True)
            for path in dict.fromkeys(h.path for h in choice.headers)
        ]
        seen, slabs = self.predictor.model_series(series)
        x = self.predictor.pre_process(seen)
        t2 = time.perf_counter()
        if slabs is not None:
            log.info(
                "study.slabs",
                extra={
                    "study": study_key(study.study_uid, self.hash_key),
                    "slices": slabs.n_slices,
                    "slabs": slabs.n_slabs,
                    "spacing_mm": round(slabs.source_spacing_mm, 3),
                },
            )
        return Prepared(
            study,
            seen,
            sources,
            x,
            {"select": t1 - t0, "read_preprocess": t2 - t1},
            series_choice=outcomes,
            slabs=slabs,
            n_source_slices=series.n_slices,
        )

    # -- infer stage ------------------------------------------------------------------

    def _infer_loop(self) -> None:
        self._warm_up()
        while True:
            prepared = self._handoff.get()
            self._slot.release()
            if prepared is None:
                return
            if self._stop.is_set():
                # Prepared but not started when the node stopped: back to the queue, so
                # the index does not show it ``processing`` while no node runs.
                self.index.set_state(
                    prepared.study.study_uid,
                    "queued",
                    expect=("processing",),
                    generation=prepared.study.generation,
                    owner=self.worker_id,
                )
                continue
            self._current = prepared.study
            try:
                self._infer(prepared)
            except Exception as exc:
                if self._abandoned.is_set():
                    # stop() gave up on this study and the index may be closed: leave it
                    error = type(exc).__name__
                    log.info("worker.abandoned", extra={"stage": "infer", "error": error})
                    return
                if isinstance(exc, (ModelsError, NodeError)):
                    self._finish(prepared.study, "failed", f"inference failed: {exc}")
                else:
                    reason = f"internal error in inference ({type(exc).__name__})"
                    self._finish(prepared.study, "failed", reason)
                    log.exception("worker.infer_crashed")
            finally:
                self._current = None
                # The study's arrays, datasets and figure are freed by now; give their
                # pages back instead of leaving them resident in some thread's arena.
                heap.trim()
            if self._abandoned.is_set():
                return

    def _warm_up(self) -> None:
        """Pay the report builders' one-time costs now, not in the first study's latency
        (:func:`dicom_node.results.report.warm_up`); a failure costs only that time."""
        assert self.predictor is not None
        try:
            seconds = warm_up(self.predictor.meta)
        except Exception as exc:  # noqa: BLE001 - top of the infer thread; nothing depends on it
            log.warning("worker.warm_up_failed", extra={"error": type(exc).__name__})
            return
        log.info("worker.warmed_up", extra={"seconds": round(seconds, 3)})

    def _infer(self, p: Prepared) -> None:
        assert self.predictor is not None
        assert p.series is not None
        assert p.x is not None
        study = p.study
        t0 = time.perf_counter()
        logits = self.predictor.predict(p.x)
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize(self.predictor.device)
        pred = self.predictor.post_process(p.series, logits, p.slabs)
        t1 = time.perf_counter()
        previous = self.index.result(study.study_uid)
        supersedes = ResultUIDs(**previous["uids"]) if previous else None
        same = result_uids(
            study.study_uid, pred.series_uid, self.predictor.meta.model_uid, study.generation
        )
        if previous is not None and supersedes == same:
            # A user's "reprocess" with the same model, series and generation remakes the
            # same objects (same UIDs): they keep what the first make superseded, never
            # name themselves as their own predecessor.
            before = previous.get("supersedes")
            supersedes = ResultUIDs(**before) if before else None
            earlier = _lineage(previous)
        else:
            earlier = [*_lineage(previous), supersedes] if previous and supersedes else []
        objects = build_results(
            pred,
            p.sources,
            p.series,
            self.predictor.meta,
            generation=study.generation,
            supersedes=supersedes,
            series_choice=p.series_choice,
            earlier=earlier,
        )
        paths = objects.save(self.results_dir / study.study_uid / f"g{study.generation}")
        t2 = time.perf_counter()
        timings = {**p.timings, "inference": t1 - t0, "build": t2 - t1}
        result = {
            "generation": study.generation,
            "series_uid": pred.series_uid,
            "n_slices": p.n_source_slices,
            # every instance of the study this result was made from (reindex compares it
            # with the spool: more files there means the study changed after the result)
            "instances": study.instances,
            "slabs": pred.slabs.to_json() if pred.slabs is not None else None,
            "top_slices": pred.top_slices(),
            "uids": asdict(objects.uids),
            "supersedes": asdict(supersedes) if supersedes is not None else None,
            # every earlier result, oldest first: all are named as superseded (a PACS may
            # hold one whose successor never reached it)
            "lineage": [asdict(u) for u in earlier],
            "files": {kind: str(path) for kind, path in paths.items()},
            "model_uid": self.predictor.meta.model_uid,
            "model_name": self.predictor.meta.name,
            # what "present" meant for this result (notifications report it beside each p)
            "thresholds": dict(
                zip(LABELS, map(float, self.predictor.meta.thresholds), strict=True)
            ),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
        }
        if not self.index.save_result(
            study.study_uid,
            study.generation,
            json.dumps(pred.findings()),
            json.dumps(result),
            owner=self.worker_id,
        ):
            log.info(
                "study.superseded_during_processing",
                extra={"study": study_key(study.study_uid, self.hash_key)},
            )
            return
        study_marker.save(self.index, self.results_dir, study.study_uid)
        if self.metrics is not None:
            self.metrics.classified(pred.findings(), inference_s=t1 - t0, build_s=t2 - t1)
        log.info(
            "study.done",
            extra={
                "study": study_key(study.study_uid, self.hash_key),
                "generation": study.generation,
                "slices": p.n_source_slices,
                "present": int(pred.present.sum()),
                **{f"{k}_s": round(v, 3) for k, v in timings.items()},
            },
        )
        self.processed += 1
        self.deliver(study.study_uid, study.generation, paths)

    def _finish(self, study: StudyRow, state: StudyState, reason: str) -> None:
        key = study_key(study.study_uid, self.hash_key)
        if self.index.set_state(
            study.study_uid,
            state,
            reason,
            expect=("processing",),
            generation=study.generation,
            owner=self.worker_id,
        ):
            log.warning("study.finished", extra={"study": key, "state": state, "reason": reason})
            # Beside the results, for ``reindex``: without it a lost index would have the
            # study read, selected and skipped (or failed) all over again.
            try:
                study_marker.save(self.index, self.results_dir, study.study_uid)
            except OSError as exc:  # the end state is in the index; only reindex loses it
                log.error("marker.write_failed", extra={"study": key, "error": type(exc).__name__})


def _lineage(result: dict[str, Any] | None) -> list[ResultUIDs]:
    """The earlier results a recorded result named (records made before ``lineage`` was
    kept name only the one they superseded)."""
    if result is None:
        return []
    items = result.get("lineage")
    if items is None:
        items = [result["supersedes"]] if result.get("supersedes") else []
    return [ResultUIDs(**item) for item in items]
