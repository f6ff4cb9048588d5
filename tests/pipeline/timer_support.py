"""Job bodies for the timer tests, importable by text reference (``pipeline.timer_support:...``).

Timers name module-level functions, so the functions a test schedules live here; what
they did is kept in thread-safe module state keyed by the runtime key of the scheduler
that ran them (the last argument a timer passes).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

_LOCK = threading.Lock()
_CALLS: dict[str, Counter[str]] = {}
_ENTERED: dict[str, threading.Event] = {}
_RELEASE: dict[str, threading.Event] = {}

RECORD = "pipeline.timer_support:record"
SLOW_RECORD = "pipeline.timer_support:slow_record"
BLOCK = "pipeline.timer_support:block"
FAIL = "pipeline.timer_support:fail"


def reset() -> None:
    with _LOCK:
        _CALLS.clear()
        for event in _RELEASE.values():
            event.set()  # no job of an earlier test stays blocked
        _ENTERED.clear()
        _RELEASE.clear()


def _count(tag: str, runtime_key: str) -> None:
    with _LOCK:
        _CALLS.setdefault(runtime_key, Counter())[tag] += 1


def calls(runtime_key: str) -> Counter[str]:
    """What jobs run with ``runtime_key`` recorded, by tag (a copy)."""
    with _LOCK:
        return Counter(_CALLS.get(runtime_key, Counter()))


def all_calls() -> Counter[str]:
    """Every tag recorded by any runtime key, summed."""
    with _LOCK:
        total: Counter[str] = Counter()
        for counter in _CALLS.values():
            total.update(counter)
        return total


def runtime_keys() -> set[str]:
    with _LOCK:
        return set(_CALLS)


def record(tag: str, runtime_key: str) -> None:
    _count(tag, runtime_key)


def slow_record(tag: str, runtime_key: str) -> None:
    """Counts, then holds its thread a moment so that claims of two schedulers overlap."""
    _count(tag, runtime_key)
    time.sleep(0.02)


def gate(tag: str) -> tuple[threading.Event, threading.Event]:
    """The (entered, release) events of ``block(tag)``."""
    with _LOCK:
        return (
            _ENTERED.setdefault(tag, threading.Event()),
            _RELEASE.setdefault(tag, threading.Event()),
        )


def block(tag: str, runtime_key: str) -> None:
    """Counts, says it entered, and waits until the test releases it."""
    _count(tag, runtime_key)
    entered, release = gate(tag)
    entered.set()
    release.wait(60)


def fail(tag: str, runtime_key: str) -> None:
    _count(tag, runtime_key)
    raise RuntimeError(f"job {tag} failed on purpose")
