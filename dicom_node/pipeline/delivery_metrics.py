"""Delivery outcomes counted for ``/metrics``: a :class:`Deliverer` that times and counts
each attempt by destination and outcome.

A subclass around the public :meth:`Deliverer.attempt`, rather than counters inside
``delivery``: the retry logic stays free of monitoring, and each attempt's outcome is
exactly the state it returns (``pending`` after a failed attempt is a retry).
"""

from __future__ import annotations

import time
from typing import Any, Final

from dicom_node.metrics import NodeMetrics
from dicom_node.pipeline.delivery import Deliverer

_OUTCOMES: Final = {"sent": "sent", "pending": "retry", "failed": "failed"}


class MeteredDeliverer(Deliverer):
    """:class:`Deliverer` plus ``dicom_node_deliveries_total`` and the delivery stage time."""

    def __init__(self, *args: Any, metrics: NodeMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        metrics.destinations(self.channels)

    def attempt(self, study_uid: str, destination: str) -> str:
        t0 = time.perf_counter()
        state = super().attempt(study_uid, destination)
        outcome = _OUTCOMES.get(state)  # "skip": nothing was attempted
        if outcome is not None:
            self.metrics.delivery(destination, outcome, time.perf_counter() - t0)
        return state
