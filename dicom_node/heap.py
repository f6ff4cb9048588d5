"""Give the C heap's free pages back to the system after each study (glibc ``malloc_trim``).

Why: the node runs many threads (one per association, the prepare and infer threads,
delivery, the web server), and glibc gives threads their own malloc arenas (up to 8 per
core). Python objects over 512 bytes, pydicom's element values, numpy arrays, SQLite's
page cache and torch's CPU buffers all come from those arenas; when a study's data is
freed, the free chunks stay in the arena's heap, resident, unless they happen to sit at
its top. Measured on the 600-study soak (BENCHMARKS.md, "Load"): Python objects did not
grow (tracemalloc and ``gc`` counts level), the main heap and the other mappings stayed
flat, and all of the growth was in the thread arenas; one ``malloc_trim(0)`` on the
running node gave back 40 of their 101 MiB. Trimming walks every arena and ``madvise``s
the free pages away, which costs well under a millisecond here against a study's
seconds, so the infer thread does it after each study instead of the node carrying
whatever the busiest moment left behind.

Only glibc has ``malloc_trim``; elsewhere (musl, macOS) :func:`trim` does nothing and
says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    """Whether :func:`trim` can give memory back here (glibc)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Return the free pages of every malloc arena to the system; True if glibc released
    any, False if there was nothing to release or no glibc."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
