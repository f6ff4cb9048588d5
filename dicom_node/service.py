"""``dicom-node serve``: wire index, spool, scheduler, assembler and SCP; stop cleanly.

Start-up order matters for "never lose an acknowledged image":

1. open the index, build the spool, and :meth:`~dicom_node.store.spool.Spool.reconcile` it
   (files an OS crash kept but the index lost are indexed again);
2. load the checkpoint (once), start the inference worker (it requeues studies a crash
   left ``processing``), register the assembler and the deliverer, then start the
   scheduler: overdue completion and delivery jobs from the job store run now;
3. give every ``receiving`` study without a job a deadline (``last + quiet``);
4. only then listen for associations;
5. serve HTTP (``web.enabled``): ``/healthz``, ``/readyz``, ``/metrics`` on a thread of
   its own (:mod:`dicom_node.web.server`), so it never stands in the receive path.

Shutdown reverses it: stop accepting, let running associations finish their current
store (up to a grace period), stop the web server, stop the scheduler (pending jobs stay
in the job store), close the index.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType

from dicom_node.config import Destination, Settings
from dicom_node.errors import ConfigError
from dicom_node.logs import quiet_pynetdicom
from dicom_node.metrics import NodeMetrics, NodeState
from dicom_node.net import tls
from dicom_node.net.acceptor import Acceptor
from dicom_node.net.callers import CallerPolicy, RequestedCheck
from dicom_node.net.handlers import (
    AssociationLog,
    BusyAssociations,
    RejectLogger,
    StoreHandler,
    handle_echo,
)
from dicom_node.net.scp import NodelayAssociationServer, build_ae, start_server
from dicom_node.net.scu import ScuTimeouts
from dicom_node.net.sessions import Sessions
from dicom_node.pipeline.assembly import (
    Assembler,
    CompletionHook,
    register_runtime,
    registered_hooks,
    unregister_runtime,
)
from dicom_node.pipeline.delivery import (
    Channel,
    Deliverer,
    DeliverySettings,
    destination_channel,
    register_deliverer,
    unregister_deliverer,
)
from dicom_node.pipeline.delivery_metrics import MeteredDeliverer
from dicom_node.pipeline.heartbeat import Heartbeat, check_models, default_worker_id, worker_row
from dicom_node.pipeline.holds import HoldRefresher
from dicom_node.pipeline.notifying import notify_channels
from dicom_node.pipeline.scheduler import StudyScheduler, jobs_url
from dicom_node.store.index import STATES, Index, StudyRow, open_checked
from dicom_node.store.spool import Spool, Stored

if TYPE_CHECKING:  # torch is imported only when inference is enabled (receive-only: ~100 MB)
    import torch

    from dicom_node.pipeline.worker import InferenceWorker
    from dicom_node.web.health import Check
    from dicom_node.web.server import WebServer  # FastAPI only when web.enabled

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S: Final = 3600.0


def runtime_key(config: Path | None) -> str:
    """The key durable jobs carry to find this node: the config file's absolute path."""
    return str(config.resolve()) if config is not None else "<embedded-defaults>"


class Service:
    """One running node. ``start()`` returns once it listens; ``stop()`` is idempotent."""

    def __init__(
        self,
        settings: Settings,
        config: Path | None = None,
        *,
        hooks: list[CompletionHook] | None = None,
        debounce_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.key = runtime_key(config)
        self._hooks = hooks
        self._debounce_s = debounce_s
        self.index: Index | None = None
        self.spool: Spool | None = None
        self.scheduler: StudyScheduler | None = None
        self.assembler: Assembler | None = None
        self.worker: InferenceWorker | None = None
        self.deliverer: Deliverer | None = None
        self.ae: AE | None = None
        self.server: NodelayAssociationServer | None = None  # engine "pynetdicom"
        self.acceptor: Acceptor | None = None  # engine "native"
        self.tls_server: NodelayAssociationServer | None = None  # pynetdicom, DICOM TLS
        self.tls_acceptor: Acceptor | None = None  # native, DICOM TLS
        self.web: WebServer | None = None
        #: This process in the index's ``workers`` table (every role beats).
        self.heartbeat: Heartbeat | None = None
        self.worker_id = ""
        #: Receivers sharing a PostgreSQL index: open associations hold their deadlines.
        self.holds: HoldRefresher | None = None
        #: This node's metrics (its own registry: nodes in one process do not clash).
        self.metrics = NodeMetrics(STATES)
        self._stopped = threading.Event()
        self._busy = BusyAssociations()
        #: Open associations and the studies they sent: they hold a study's completion.
        self.sessions = Sessions(self._on_association_ended)

    @property
    def port(self) -> int:
        """The plain DICOM port; the TLS port when only that one listens."""
        if self.acceptor is not None:
            return self.acceptor.port
        if self.server is not None:
            return int(self.server.server_address[1])
        return self.tls_port

    @property
    def tls_port(self) -> int:
        """The bound DICOM TLS port (``node.tls.port: 0`` picks a free one)."""
        if self.tls_acceptor is not None:
            return self.tls_acceptor.port
        assert self.tls_server is not None, "DICOM TLS not started (node.tls.enabled false?)"
        return int(self.tls_server.server_address[1])

    @property
    def web_port(self) -> int:
        """The bound HTTP port (``web.port: 0`` picks a free one)."""
        assert self.web is not None, "web server not started (web.enabled false?)"
        return self.web.port

    def start(self) -> None:
        s = self.settings
        quiet_pynetdicom()
        # TLS files first: a bad certificate stops start-up before anything is opened.
        s.check_files()
        server_tls = tls.server_context(s.node.tls, s.resolve) if s.node.tls.enabled else None
        client_tls = {
            d.name: tls.client_context(d.tls, s.resolve, f"destinations[{i}].tls")
            for i, d in enumerate(s.destinations)
            if isinstance(d, Destination) and d.tls is not None
        }
        role = s.node.role
        receives = role in ("all", "receiver")
        infers = s.inference.enabled and role in ("all", "worker")
        if role == "worker" and not s.inference.enabled:
            raise ConfigError("node.role worker needs inference.enabled: true")
        self.worker_id = s.node.worker_id or default_worker_id(role, self.key)
        self.index = open_checked(s.index_target(), s.resolve(s.storage.spool_dir))
        spool_dir = s.resolve(s.storage.spool_dir)
        shared = self.index.dialect != "sqlite"  # several processes may share the spool
        if shared and s.storage.journal_segment_mb:
            raise ConfigError(
                "storage.journal_segment_mb must be 0 with a PostgreSQL index: the spool is "
                "shared by every receiver, and the write-ahead journal belongs to one process"
            )
        if receives:
            self.spool = spool = Spool(
                spool_dir,
                self.index,
                min_free_mb=s.storage.min_free_disk_mb,
                max_spool_gb=s.storage.max_spool_gb,
                journal_segment_mb=s.storage.journal_segment_mb or None,
                journal_checkpoint_s=s.storage.journal_checkpoint_s,
                shared=shared,
            )
            self.spool.reconcile()
            spool_bytes: Callable[[], int] = lambda: spool.size  # noqa: E731
        else:
            spool_bytes = lambda: 0  # noqa: E731 - a worker writes no images
        self.metrics.state.state = NodeState(
            counts=self.index.counts, spool_bytes=spool_bytes, spool_dir=spool_dir
        )
        kinds = ({"complete", "retention"} if receives else set()) | (
            {"delivery"} if infers else set()
        )
        self.scheduler = StudyScheduler(
            jobs_url(s),
            legacy_jobs_db=s.resolve(s.storage.jobs_db),
            quiet_seconds=s.study.quiet_seconds,
            runtime_key=self.key,
            debounce_s=self._debounce_s,
            kinds=frozenset(kinds),
            owner=self.worker_id,
        )
        hooks = list(self._hooks) if self._hooks is not None else list(registered_hooks())
        hooks.append(self._observe_completion)
        if receives and s.inference.enabled and not infers:
            hooks.append(self._queue_for_workers)  # role receiver: workers elsewhere claim
        if infers:
            scu = DeliverySettings(
                calling_ae_title=s.node.ae_title,
                tls=client_tls,
                timeouts=ScuTimeouts(
                    acse_s=s.node.acse_timeout_s,
                    dimse_s=s.node.dimse_timeout_s,
                    network_s=s.node.network_timeout_s,
                ),
            )
            channels: list[Channel] = [destination_channel(d, scu) for d in s.destinations]
            self.deliverer = MeteredDeliverer(
                self.index,
                self.scheduler,
                channels + notify_channels(s, self.index),
                runtime_key=self.key,
                hash_key=s.logging.hash_key,
                results_dir=s.resolve(s.storage.results_dir),
                metrics=self.metrics,
            )
            register_deliverer(self.key, self.deliverer)
            self.worker = self._start_worker(self.deliverer)
            hooks.append(self.worker.enqueue)
        else:
            self._start_heartbeat(None, None)
        if self.spool is not None:
            self.assembler = Assembler(
                self.index,
                self.spool,
                self.scheduler,
                quiet_seconds=s.study.quiet_seconds,
                hash_key=s.logging.hash_key,
                retention_days=s.storage.retention_days,
                hooks=hooks,
                holds=self.sessions,
            )
            register_runtime(self.key, self.assembler)
        self.scheduler.start()
        if self.deliverer is not None:
            self.deliverer.reconcile()
        if receives:
            self.scheduler.schedule_retention(RETENTION_INTERVAL_S)
            self._restore_deadlines()
            self.holds = HoldRefresher(
                self.sessions, self.scheduler, s.study.quiet_seconds,
                shared=shared, sweep=self._restore_deadlines,
            )  # fmt: skip
            self.holds.start()
            self._start_receiving(server_tls)
        if s.web.enabled:
            self.web = self._start_web()

    def _restore_deadlines(self) -> int:
        """A deadline for every ``receiving`` study without one; returns how many."""
        assert self.scheduler is not None
        assert self.index is not None
        s = self.settings
        pending = 0
        for study in self.index.studies(("receiving",)):
            if self.scheduler.completion_time(study.study_uid) is None:
                self.scheduler.schedule_completion(
                    study.study_uid, study.last_received + s.study.quiet_seconds
                )
                pending += 1
        if pending:
            log.info("study.deadlines_restored", extra={"studies": pending})
        return pending

    def _start_receiving(self, server_tls: ssl.SSLContext | None) -> None:
        """Listen for associations (plain and/or DICOM TLS, on the configured engine)."""
        assert self.spool is not None
        s = self.settings
        self.ae = build_ae(s.node)
        store = StoreHandler(
            self.spool, s.logging.hash_key, self._on_stored, self._busy, self.metrics,
            self.sessions,
        )  # fmt: skip
        if s.node.engine == "native":
            contexts = self.ae.supported_contexts
            if s.node.plain_enabled:
                self.acceptor = Acceptor(s.node, store.store, contexts, self.metrics, self.sessions)
            if server_tls is not None:
                self.tls_acceptor = Acceptor(
                    s.node, store.store, contexts, self.metrics, self.sessions,
                    ssl_context=server_tls,
                )  # fmt: skip
            acceptors = [a for a in (self.acceptor, self.tls_acceptor) if a is not None]
            for a in acceptors:
                a.siblings = [b for b in acceptors if b is not a]
                a.start()
        else:
            if s.node.plain_enabled:
                self.server = start_server(
                    self.ae, s.node.host, s.node.port, self._handlers(store),
                    pdu_timeout_s=s.node.pdu_timeout_s,
                )  # fmt: skip
            if server_tls is not None:
                self.tls_server = start_server(
                    self.ae, s.node.host, s.node.tls.port, self._handlers(store),
                    ssl_context=server_tls, metrics=self.metrics,
                    pdu_timeout_s=s.node.pdu_timeout_s,
                )  # fmt: skip

    def _handlers(self, store: StoreHandler) -> list[EventHandlerType]:
        s = self.settings
        assoc_log = AssociationLog(self.metrics, self.sessions)
        return [
            (evt.EVT_C_STORE, store),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_REQUESTED, RequestedCheck(CallerPolicy.of(s.node), self.metrics)),
            (
                evt.EVT_REJECTED,
                RejectLogger(
                    s.node.ae_title,
                    s.node.calling_titles,
                    s.node.require_called_aet,
                    self.metrics,
                ),
            ),
            (evt.EVT_ACCEPTED, assoc_log.accepted),
            (evt.EVT_RELEASED, assoc_log.ended),
            (evt.EVT_ABORTED, assoc_log.ended),
            (evt.EVT_PDU_RECV, assoc_log.pdu_received),
            (evt.EVT_CONN_CLOSE, assoc_log.closed),
        ]

    def _start_web(self) -> WebServer:
        """Serve the probes and ``/metrics`` (FastAPI is imported only here)."""
        from dicom_node.web.app import create_app
        from dicom_node.web.auth import Authenticator
        from dicom_node.web.context import WebContext
        from dicom_node.web.server import WebServer
        from dicom_node.web.studies import StudySource

        s = self.settings
        assert self.index is not None
        studies = StudySource(self.index, s.resolve(s.storage.spool_dir), s.logging.hash_key, self)
        ctx = WebContext(
            self.metrics, self.readiness, Authenticator(s.web), studies,
            role=s.node.role, worker_id=self.worker_id,
        )  # fmt: skip
        web = WebServer(create_app(ctx), s.web.host, s.web.port)
        web.start()
        if not s.web.users and not s.web.api_tokens:
            log.warning("web.no_users", extra={"hint": "dicom-node user add NAME"})
        return web

    def reprocess(self, study_uid: str) -> str:
        """A user's "reprocess" (worklist): the study back into the worker's queue."""
        from dicom_node.web.studies import ActionRefused

        assert self.index is not None
        if not self.settings.inference.enabled:
            raise ActionRefused("inference is off on this node")
        if self.worker is not None:
            requeued = self.worker.requeue(study_uid) is not None
        else:  # role receiver: the shared queue, where a worker process claims it
            study = self.index.study(study_uid)
            requeued = study is not None and self.index.set_state(
                study_uid, "queued", expect=("done", "failed", "skipped"),
                generation=study.generation,
            )  # fmt: skip
        if not requeued:
            study = self.index.study(study_uid)
            state = study.state if study is not None else "gone"
            raise ActionRefused(f"study is {state}, not finished")
        return "queued for inference"

    def resend(self, study_uid: str) -> str:
        """A user's "resend" (worklist): the current results to every destination again,
        through the deliverer (durable jobs, retries), as after a new result."""
        from dicom_node.web.studies import ActionRefused

        assert self.index is not None
        if self.deliverer is None:
            raise ActionRefused("inference is off on this node: no results to send")
        study = self.index.study(study_uid)
        result = self.index.result(study_uid)
        if study is None or study.state != "done" or result is None:
            raise ActionRefused("no current result to send (study is not done)")
        files = {str(k): Path(v) for k, v in result["files"].items()}
        self.deliverer.enqueue(study_uid, int(result["generation"]), files)
        n = len(self.index.deliveries(study_uid, states=("pending",)))
        return f"queued for {n} destination{'s' if n != 1 else ''}"

    def readiness(self) -> list[Check]:
        """Every readiness check now (``/readyz``): model, spool, disk, scheduler, receiver."""
        from dicom_node.web.health import ReadinessSources

        s = self.settings
        return ReadinessSources(
            spool_dir=s.resolve(s.storage.spool_dir),
            min_free_mb=s.storage.min_free_disk_mb,
            model=self._model_status,
            scheduler_running=lambda: self.scheduler is not None and self.scheduler.running,
            receiver_listening=self._listening,
        ).checks()

    def _model_status(self) -> tuple[bool, str]:
        if not self.settings.inference.enabled:
            return True, "not used (inference.enabled is false: receive only)"
        if self.settings.node.role == "receiver":
            return True, "not used (node.role receiver: workers load the model)"
        if self.worker is None or self.worker.predictor is None:
            return False, (self.worker.unavailable or "no model") if self.worker else "not started"
        return True, f"loaded {self.worker.predictor.meta.model_uid}"

    def _listening(self) -> bool:
        if self._stopped.is_set():
            return False
        if self.settings.node.role == "worker":
            return True  # a worker listens for no association: nothing to check
        acceptors = [a for a in (self.acceptor, self.tls_acceptor) if a is not None]
        if acceptors:
            return all(a.listening for a in acceptors)
        return self.server is not None or self.tls_server is not None

    def _queue_for_workers(self, study: StudyRow) -> None:
        """Role ``receiver``: a complete study goes to the shared queue (``queued``), where
        a worker process claims it (:meth:`~dicom_node.store.index.Index.claim_next`)."""
        assert self.index is not None
        if self.index.set_state(
            study.study_uid, "queued", expect=("complete",), generation=study.generation
        ):
            log.info("study.queued", extra={"n": study.instances})

    def _start_heartbeat(self, device: str | None, model_uid: str | None) -> None:
        """Register this process in the index and beat (a worker's beat renews its
        leases and returns expired ones to the queue)."""
        assert self.index is not None
        s = self.settings
        worker = self.worker
        if worker is not None:
            load: Callable[[], dict[str, object]] = worker.load
        else:
            load = lambda: {"associations": len(self.sessions)}  # noqa: E731
        self.heartbeat = Heartbeat(
            self.index,
            worker_row(self.worker_id, s.node.role, device, model_uid),
            load,
            lease_s=s.inference.lease_s,
            claims=worker is not None,
            on_requeued=(lambda n: worker.wake()) if worker is not None else None,
        )
        self.heartbeat.start()

    def _observe_completion(self, study: StudyRow) -> None:
        self.metrics.study_completed(study.last_received, study.completed_at)

    def _start_worker(self, deliverer: Deliverer) -> InferenceWorker:
        """Load the checkpoint once; without a usable one the node still receives.

        Studies then wait in ``queued`` (with the reason) until a node with a valid
        checkpoint starts: nothing acknowledged is lost because a model file is missing.
        """
        from dicom_node.pipeline.worker import InferenceWorker
        from models.errors import ModelsError
        from models.predict import Predictor

        s = self.settings
        assert self.index is not None
        predictor: Predictor | None = None
        unavailable: str | None = None
        try:
            predictor = Predictor.from_path(
                s.resolve(s.inference.checkpoint),
                device=s.inference.device,
                chunk=s.inference.slice_chunk,
                amp=s.inference.amp,
                slab_thin_series=s.inference.slab_thin_series,
            )
            self.metrics.model_loaded(
                predictor.meta.model_uid, predictor.meta.network.backbone,
                str(predictor.device), predictor.meta.demo,
            )  # fmt: skip
            log.info(
                "model.loaded",
                extra={
                    "model_uid": predictor.meta.model_uid,
                    "backbone": predictor.meta.network.backbone,
                    "device": str(predictor.device),
                    "demo": predictor.meta.demo,
                },
            )
        except ModelsError as exc:
            unavailable = f"no model loaded ({exc})"
        model_uid = predictor.meta.model_uid if predictor is not None else None
        if not s.inference.allow_mixed_models:
            check_models(self.index, self.worker_id, model_uid, s.inference.lease_s)
        worker = InferenceWorker(
            self.index,
            s.resolve(s.storage.spool_dir),
            s.resolve(s.storage.results_dir),
            predictor,
            deliverer.enqueue,
            hash_key=s.logging.hash_key,
            unavailable=unavailable,
            series_rules=s.series_choice.series_rules(),
            metrics=self.metrics,
            worker_id=self.worker_id,
            lease_s=s.inference.lease_s,
            # Alone on SQLite every queued study wakes this worker; sharing a PostgreSQL
            # queue, studies queued by receivers elsewhere are found by looking.
            poll_s=5.0 if self.index.dialect == "sqlite" else 0.5,
        )
        self.worker = worker
        device = _device_name(predictor.device) if predictor is not None else None
        self._start_heartbeat(device, model_uid)
        worker.start()
        return worker

    def _on_stored(self, stored: Stored) -> None:
        assert self.scheduler is not None
        rec = stored.recorded
        self.scheduler.notify(
            stored.ref.study_uid, stored.received, force=rec.new_study or rec.reopened
        )

    def _on_association_ended(self, studies: Sequence[str], ended: float) -> None:
        """An association that stored ``studies`` released or aborted: their quiet
        period now counts from ``ended`` (the assembler checks the holds again then)."""
        if self.scheduler is None or self._stopped.is_set():
            return  # stopping: receiving studies get their deadline at the next start
        quiet = self.settings.study.quiet_seconds
        for uid in studies:
            self.scheduler.schedule_completion(uid, ended + quiet)

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop listening, let stores in progress finish (up to ``grace_s``), stop timers.

        Associations idle between stores are aborted at once; one inside a C-STORE
        handler finishes that store (its Success means durable) and is then aborted.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        acceptors = [a for a in (self.acceptor, self.tls_acceptor) if a is not None]
        for acceptor in acceptors:
            acceptor.shutdown()  # neither port takes new associations
        for acceptor in acceptors:
            acceptor.stop(grace_s)
        servers = [x for x in (self.server, self.tls_server) if x is not None]
        for server in servers:
            server.shutdown()  # no new associations
        deadline = time.monotonic() + grace_s
        while (active := [a for x in servers for a in x.active_associations]) and (
            time.monotonic() < deadline
        ):
            for assoc in active:
                if not self._busy.is_busy(assoc):
                    assoc.abort()  # idle (a PACS keeping it for reuse): nothing to finish
            time.sleep(0.05)
        for server in servers:
            for assoc in server.active_associations:
                assoc.abort()  # past the grace period: the sender retries what we did not ack
        if self.web is not None:
            self.web.stop()  # before the index closes: no scrape reads a closed index
        self.metrics.state.state = None
        if self.spool is not None:
            self.spool.close()  # checkpoint the journal: nothing left to replay at the next start
        if self.holds is not None:
            self.holds.stop()
        if self.worker is not None:
            self.worker.stop(self.settings.inference.stop_timeout_s)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        unregister_runtime(self.key)
        unregister_deliverer(self.key)
        if self.index is not None:
            self.index.close()
        log.info("node.stopped")

    def serve_until_signal(self, ready: Callable[[], None] | None = None) -> None:
        """Block until SIGTERM or SIGINT, then :meth:`stop`; ``ready`` is called once
        the signals are handled (``serve`` prints its "listening on" line there)."""
        wake = threading.Event()

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("node.signal", extra={"signal": signal.Signals(signum).name})
            wake.set()

        old_term = signal.signal(signal.SIGTERM, _on_signal)
        old_int = signal.signal(signal.SIGINT, _on_signal)
        try:
            if ready is not None:
                ready()
            while not wake.wait(1.0):
                pass
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.stop()


def _device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu``: what ``dicom-node workers`` shows."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
