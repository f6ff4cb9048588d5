"""dicom_node.heap: freed pages left resident in a thread's malloc arena go back to the
system when the worker trims after a study (the soak's RSS growth, BENCHMARKS.md "Load").

Not timed: it compares this process's anonymous RSS before and after, in MiB.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dicom_node import heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="malloc_trim is glibc's")

CHUNK = 2000  # over pymalloc's 512 bytes: straight from malloc, like a study's buffers
TOTAL_MIB = 128


def anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def fragment_an_arena() -> list[bytes]:
    """Allocate TOTAL_MIB in CHUNK pieces from a thread (its own arena), keep one in 64
    (so the arena's top cannot shrink on its own), free the rest; return the survivors."""
    kept: list[bytes] = []

    def work() -> None:
        pieces = [bytes(CHUNK) for _ in range(TOTAL_MIB * 1024 * 1024 // CHUNK)]
        kept.extend(pieces[::64])
        del pieces[:]

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return kept


def test_trim_gives_freed_arena_pages_back() -> None:
    before = anon_mib()
    kept = fragment_an_arena()
    fragmented = anon_mib()
    assert fragmented - before > TOTAL_MIB / 2, "the freed pieces were already given back"
    assert heap.trim() is True
    trimmed = anon_mib()
    assert fragmented - trimmed > TOTAL_MIB / 2
    assert len(kept) == TOTAL_MIB * 1024 * 1024 // CHUNK // 64 + 1  # still alive
