"""The node's Prometheus metrics: one :class:`NodeMetrics` per running node.

Why a registry of the node's own rather than prometheus-client's global default: two
nodes in one process (the tests start several) would otherwise register the same names
twice, and a restarted service would find its old counters. The object lives here, at
the top level beside ``logs``, because the layers that count (``net`` on the receive
path, ``pipeline`` in the worker and delivery) sit below the web server that exposes
it: they import this module, never ``dicom_node.web``.

Cost on the receive path: a store adds two counter increments (each a short lock
inside prometheus-client, no I/O), an association two gauge moves. What needs I/O to
know (studies by state, queue depth, spool bytes, free disk) is read only when
Prometheus scrapes, by :class:`StateCollector`, through callables the service binds.

Labels carry no patient data and no UIDs: destinations by their configured name,
findings by their label, refusals by a fixed reason word or a DIMSE status.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.labels import LABELS

#: Seconds buckets for the pipeline stages: completion waits the quiet period (30 s by
#: default), CPU inference takes seconds, a send to a slow PACS up to minutes.
STAGE_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: p(any) buckets: ten equal bins, so a drifting score distribution shows as a shape.
PROBABILITY_BUCKETS: Final = tuple(round(0.1 * i, 1) for i in range(1, 11))
STAGES: Final = ("completion", "inference", "build", "delivery")
DELIVERY_OUTCOMES: Final = ("sent", "retry", "failed")


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the scrape-time collector reads; bound by the service once it has them."""

    #: Studies per state and pending deliveries (one read of the index).
    counts: Callable[[], tuple[Mapping[str, int], int]]
    spool_bytes: Callable[[], int]
    spool_dir: Path


class StateCollector(Collector):
    """Gauges read at scrape time: studies by state, queue depth, spool, free disk.

    Unbound (the service has not started, or has stopped) it yields nothing, so a
    scrape during start-up or shutdown never touches a closed index.
    """

    def __init__(self, states: Iterable[str]) -> None:
        self.states = tuple(states)
        self.state: NodeState | None = None

    def collect(self) -> Iterable[Metric]:
        state = self.state
        if state is None:
            return
        counts, pending = state.counts()
        studies = GaugeMetricFamily(
            "dicom_node_studies", "Studies in the index by state", labels=["state"]
        )
        for name in self.states:
            studies.add_metric([name], counts.get(name, 0))
        yield studies
        yield GaugeMetricFamily(
            "dicom_node_queue_depth",
            "Studies waiting for the inference worker (state queued)",
            value=counts.get("queued", 0),
        )
        yield GaugeMetricFamily(
            "dicom_node_deliveries_pending",
            "Result deliveries waiting to be sent or retried",
            value=pending,
        )
        yield GaugeMetricFamily(
            "dicom_node_spool_bytes",
            "Bytes of all instances in the spool",
            value=state.spool_bytes(),
        )
        try:
            st = os.statvfs(state.spool_dir)
        except OSError:
            return  # the spool's volume is gone: /readyz says so; no number is better than 0
        yield GaugeMetricFamily(
            "dicom_node_spool_free_bytes",
            "Free bytes on the spool's file system (for unprivileged users)",
            value=st.f_bavail * st.f_frsize,
        )


class NodeMetrics:
    """Every metric of one node, registered in :attr:`registry`."""

    def __init__(self, states: Iterable[str] = ()) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.instances_received = Counter(
            "dicom_node_instances_received",
            "Instances answered Success (new and duplicate)",
            registry=r,
        )
        self.instances_duplicate = Counter(
            "dicom_node_instances_duplicate",
            "Instances answered Success that the spool already held",
            registry=r,
        )
        self.bytes_received = Counter(
            "dicom_node_received_bytes",
            "Dataset bytes of instances answered Success",
            registry=r,
        )
        self.stores_refused = Counter(
            "dicom_node_stores_refused",
            "C-STORE requests answered with a status other than Success",
            ["status"],
            registry=r,
        )
        self.associations_open = Gauge(
            "dicom_node_associations_open", "Associations established and not yet ended",
            registry=r,
        )  # fmt: skip
        self.associations_accepted = Counter(
            "dicom_node_associations_accepted", "Associations accepted", registry=r
        )
        self.associations_refused = Counter(
            "dicom_node_associations_refused",
            "Associations rejected or connections closed unread, by reason",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "dicom_node_stage_seconds",
            "Seconds per pipeline stage: completion (last instance to complete), "
            "inference, build (SR and SC), delivery (one successful send)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "dicom_node_deliveries",
            "Delivery attempts by destination and outcome (sent, retry, failed)",
            ["destination", "outcome"],
            registry=r,
        )
        self.p_any = Histogram(
            "dicom_node_p_any",
            "Study-level probability of any hemorrhage, per classified study (drift)",
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.studies_classified = Counter(
            "dicom_node_studies_classified", "Studies with a recorded result", registry=r
        )
        self.positives = Counter(
            "dicom_node_positives",
            "Classified studies with the finding present, per finding",
            ["finding"],
            registry=r,
        )
        self.model = Info("dicom_node_model", "The checkpoint in use", registry=r)
        self.state = StateCollector(states)
        r.register(self.state)
        # Children made once: every series exists (at 0) from the first scrape, so
        # rate() works from the start, and the hot path skips the label lookup.
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for label in LABELS:
            self.positives.labels(label)

    # -- receive path (net) --------------------------------------------------------------

    def instance_stored(self, nbytes: int, *, duplicate: bool) -> None:
        self.instances_received.inc()
        self.bytes_received.inc(nbytes)
        if duplicate:
            self.instances_duplicate.inc()

    def store_refused(self, status: int) -> None:
        self.stores_refused.labels(f"0x{status:04X}").inc()

    def association_accepted(self) -> None:
        self.associations_accepted.inc()
        self.associations_open.inc()

    def association_ended(self) -> None:
        self.associations_open.dec()

    def association_refused(self, reason: str) -> None:
        self.associations_refused.labels(reason).inc()

    # -- pipeline ------------------------------------------------------------------------

    def study_completed(self, last_received: float, completed_at: float | None) -> None:
        """A study became complete: observe last instance -> complete."""
        if completed_at is not None:
            self.stage_seconds.labels("completion").observe(max(0.0, completed_at - last_received))

    def classified(
        self,
        findings: Mapping[str, Mapping[str, float | bool]],
        *,
        inference_s: float,
        build_s: float,
    ) -> None:
        """A study's result was recorded: its stage times and the drift signal."""
        self.stage_seconds.labels("inference").observe(inference_s)
        self.stage_seconds.labels("build").observe(build_s)
        self.studies_classified.inc()
        if "any" in findings:
            self.p_any.observe(float(findings["any"]["probability"]))
        for label, finding in findings.items():
            if finding.get("present"):
                self.positives.labels(label).inc()

    def delivery(self, destination: str, outcome: str, seconds: float | None = None) -> None:
        """One delivery attempt ended: ``sent``, ``retry`` or ``failed``."""
        self.deliveries.labels(destination, outcome).inc()
        if outcome == "sent" and seconds is not None:
            self.stage_seconds.labels("delivery").observe(seconds)

    def destinations(self, names: Iterable[str]) -> None:
        """Make each configured destination's outcome series exist (at 0) from the start."""
        for name in names:
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(name, outcome)

    def model_loaded(self, model_uid: str, backbone: str, device: str, demo: bool) -> None:
        self.model.info(
            {"model_uid": model_uid, "backbone": backbone, "device": device,
             "demo": str(demo).lower()}
        )  # fmt: skip
