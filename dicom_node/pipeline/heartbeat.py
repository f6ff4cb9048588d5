"""This process's row in the index's ``workers`` table, and the leases it holds.

Why: receivers and workers may run as several processes on several machines around one
PostgreSQL index (docs/scale-out.md). Each writes who it is (role, host, pid, device,
model UID) and what it is doing (its load) every third of ``inference.lease_s``, so that
``/api/health`` and ``dicom-node workers`` show the whole group. A worker's beat also
renews the lease of the study in its hands; a worker that stops beating (killed, its
machine gone) loses the study when the lease runs out, and the next beat of any other
worker puts it back in the queue (:meth:`~dicom_node.store.index.Index.requeue_expired`).

The first beat happens in :meth:`Heartbeat.start`, before the process takes work: a
worker that refuses to share the queue (:func:`check_models`) refuses before its row
claims anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from dicom_node.errors import NodeError
from dicom_node.store.index import Index, IndexDBError, WorkerRow

log = logging.getLogger(__name__)

#: A worker whose last beat is older than this many leases counts as gone.
ALIVE_LEASES: Final = 3.0


def default_worker_id(role: str, runtime_key: str) -> str:
    """Host, role and a digest of the config path: stable across restarts (a restarted
    worker takes its own studies back at once) and distinct for two processes with two
    configs on one machine."""
    digest = hashlib.sha256(runtime_key.encode()).hexdigest()[:8]
    return f"{socket.gethostname()}/{role}/{digest}"


class ModelMismatchError(NodeError):
    """Workers on one queue would load different models."""


def check_models(index: Index, me: str, model_uid: str | None, lease_s: float) -> None:
    """Refuse to start a worker whose model differs from a live worker's on this queue.

    A study's findings must not depend on which worker happened to claim it; a site that
    means to run two models side by side (a trial) says so with
    ``inference.allow_mixed_models``.
    """
    if model_uid is None:
        return
    for other in index.workers(alive_within_s=ALIVE_LEASES * lease_s):
        if other.worker_id != me and other.model_uid and other.model_uid != model_uid:
            raise ModelMismatchError(
                f"worker {other.worker_id} on this queue runs model {other.model_uid}, this "
                f"one loads {model_uid}; load the same checkpoint, or set "
                "inference.allow_mixed_models: true to let both take studies"
            )


class Heartbeat:
    """Beats every ``lease_s / 3`` on a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        index: Index,
        row: WorkerRow,
        load: Callable[[], dict[str, Any]],
        *,
        lease_s: float,
        claims: bool,
        on_requeued: Callable[[int], None] | None = None,
    ) -> None:
        self.index = index
        self.row = row
        self.load = load
        self.lease_s = lease_s
        self.claims = claims  # a worker: renew its leases, return expired ones to the queue
        self.on_requeued = on_requeued
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def worker_id(self) -> str:
        return self.row.worker_id

    def start(self) -> None:
        self.index.register_worker(self.row)
        self.beat()
        self._thread = threading.Thread(target=self._run, name="ich-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """One beat: this row's time and load, this worker's leases, expired leases."""
        self.index.heartbeat(self.worker_id, self.load(), self.lease_s if self.claims else None)
        if self.claims:
            back = self.index.requeue_expired()
            if back:
                log.warning("worker.leases_expired", extra={"studies": len(back)})
                if self.on_requeued is not None:
                    self.on_requeued(len(back))

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.beat()
            except IndexDBError as exc:  # the database is down: beat again next time
                log.error("heartbeat.failed", extra={"error": type(exc).__name__})

    def stop(self) -> None:
        """Stop beating and take this process's row out (a clean stop is not a death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        try:
            self.index.remove_worker(self.worker_id)
        except IndexDBError as exc:
            log.warning("heartbeat.unregister_failed", extra={"error": type(exc).__name__})


def worker_row(worker_id: str, role: str, device: str | None, model_uid: str | None) -> WorkerRow:
    """This process as the ``workers`` table lists it (load comes with each beat)."""
    now = time.time()
    return WorkerRow(
        worker_id=worker_id,
        role=role,
        host=socket.gethostname(),
        pid=os.getpid(),
        device=device,
        model_uid=model_uid,
        started=now,
        heartbeat=now,
        load={},
    )
