"""Where durable jobs find the live objects of the node that runs them.

Durable timers (:mod:`dicom_node.pipeline.timers`) are stored as a text reference to a
module-level function plus plain arguments, so they can run in a restarted process or in
another one. The process that runs a job appends its own runtime key (its config path);
the function looks the live object up here. A job run where no such object is
registered (a node starting or stopping) finds nothing and says so, rather than acting
on the wrong node.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Runtimes(Generic[T]):
    """A thread-safe map from runtime key to the live object jobs of that node use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, T] = {}

    def register(self, key: str, obj: T) -> None:
        with self._lock:
            self._by_key[key] = obj

    def unregister(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def get(self, key: str) -> T | None:
        with self._lock:
            return self._by_key.get(key)
