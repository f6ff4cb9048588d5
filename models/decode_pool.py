"""Decode the slices of one series on several cores, in helper processes.

Why *processes*: none of the JPEG decoders pydicom can use releases the GIL
(pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls and python-gdcm do not call
``PyEval_SaveThread``, and ``bench/decode.py`` measures two threads decoding no faster
than one), so a thread pool would decode at one core's speed.

Why not :mod:`multiprocessing`: its ``spawn`` and ``forkserver`` children first import
the parent's ``__main__`` script (for ``dicom-node`` that pulls in torch: seconds and
hundreds of MB per helper), and ``fork`` copies a threaded process (the node runs
network, scheduler and inference threads), which is unsafe and deprecated from Python
3.12 on. A helper here is ``python -c`` importing only :mod:`models.decode` (about
0.3 s), fed slice paths on its stdin and answering with HU bytes on its stdout. It exits
when its stdin closes, so it cannot outlive its parent, and a codec that crashes on a
corrupt slice kills the helper, not the node.

Helpers run with glibc's allocator told to keep freed memory (``MALLOC_*`` below):
with its defaults every slice-sized buffer is mapped fresh from the kernel, and on the
2-core VM those page faults (500-1100 per slice) cost as much as decoding RLE or JPEG
Lossless itself. That is tuned in the helpers, which are ours, not in the caller.

``workers`` helpers decode while the calling thread hands out slices and copies the
answers into the series array, so it holds the GIL only briefly (the node's network
threads keep running). The caller decodes itself only while no helper is ready: the
first slices of a plain call, while its helpers boot. Helpers get at most
:data:`PREFETCH` slices at a time, so the work spreads by speed. Every slice is decoded
by the same :func:`models.decode.decode_slice`, so the result does not depend on who
decoded which slice: it is byte-identical to the sequential path.

Errors keep the sequential semantics: the ``SeriesError`` raised is the one of the
lowest-numbered bad slice. Once a slice fails no further slices are handed out, the
ones in flight are drained, and slices below the bad one still finish so that the
reported slice is the first bad one, whoever decoded it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import numpy as np
from numpy.typing import NDArray
from pydicom import config as pydicom_config

from models.decode import DecodedSlice, decode_slice
from models.errors import SeriesError

log = logging.getLogger(__name__)

#: Slices sent ahead to one helper: one being decoded, one waiting in its pipe, so it
#: never idles while the caller is busy with another helper's answer.
PREFETCH: Final = 2
#: Without a pool of its own, a series smaller than this (pixels still to decode after
#: the first slice) is decoded in the calling thread: starting a helper costs ~0.3 s of
#: CPU, more than 16 compressed 512x512 slices take to decode.
MIN_PARALLEL_PIXELS: Final = 16 * 512 * 512
#: Wanted size of a helper's answer pipe: a 512x512 slice in HU and its header.
PIPE_BYTES: Final = 2 << 20
#: How long :meth:`DecodePool.close` waits for a helper to exit before killing it.
CLOSE_WAIT_S: Final = 5.0

#: glibc: buffers under 16 MB come from the heap, and freed memory stays mapped up to
#: 64 MB, so a helper reuses the same pages slice after slice (see the module doc).
_HELPER_MALLOC: Final = {
    "MALLOC_MMAP_THRESHOLD_": str(16 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
}
_TASK = struct.Struct("<IIIBI")  # slice index, rows, columns, validation mode, path length
_RESULT = struct.Struct("<IBBI")  # slice index, status, quirk corrected, payload length
_OK, _FAILED = 0, 1
_READY = 0xFFFFFFFF  # index of the message a helper sends once its imports are done
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from models.decode_pool import helper_main; helper_main()"
)


def default_workers() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------
# The helper process
# --------------------------------------------------------------------------------------


def helper_main() -> None:
    """Loop of a helper process: read a task from stdin, answer on stdout, until EOF.

    Stray prints (a library writing to stdout) would corrupt the answers, so the answer
    stream is a private copy of fd 1 and fd 1 itself then points to stderr. SIGINT is
    ignored: Ctrl-C reaches the whole process group, and the parent decides. Each task
    carries the parent's pydicom reading validation mode (the training cache switches
    it off for RSNA's non-UID identifiers), so a helper reads a file as the parent would.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    out.write(_RESULT.pack(_READY, _OK, 0, 0))
    out.flush()
    buf = np.empty(0, dtype=np.float32)  # reused: see models.decode.stored_to_hu_counted
    while True:
        head = inp.read(_TASK.size)
        if len(head) < _TASK.size:
            break
        index, rows, cols, validation, n = _TASK.unpack(head)
        path = Path(os.fsdecode(inp.read(n)))
        pydicom_config.settings.reading_validation_mode = validation
        if buf.size != rows * cols:
            buf = np.empty(rows * cols, dtype=np.float32)
        try:
            done = decode_slice(path, rows, cols, buf.reshape(rows, cols))
        except SeriesError as exc:
            msg = str(exc).encode()
            out.write(_RESULT.pack(index, _FAILED, 0, len(msg)) + msg)
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises SeriesError
            msg = f"unexpected {type(exc).__name__} while decoding".encode()
            out.write(_RESULT.pack(index, _FAILED, 0, len(msg)) + msg)
        else:
            out.write(_RESULT.pack(index, _OK, int(done.corrected), done.hu.nbytes))
            out.write(done.hu.data.cast("B"))
        out.flush()
    out.close()
    os._exit(0)  # nothing to clean up; skips interpreter teardown on close()


# --------------------------------------------------------------------------------------
# The parent's side
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Helper:
    proc: subprocess.Popen[bytes]
    stdin: IO[bytes]
    stdout: IO[bytes]
    ready: bool = False
    can_send: bool = True  # False once a write failed (the helper is going away)
    inflight: deque[int] = field(default_factory=deque)


def _spawn() -> _Helper:
    """Start one helper that imports the same ``models`` package as this process."""
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOT, root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        close_fds=True,
        env={**_HELPER_MALLOC, **os.environ},  # the caller's own settings win
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    _widen(proc.stdout)
    return _Helper(proc, proc.stdin, proc.stdout)


def _widen(pipe: IO[bytes]) -> None:
    """Grow the answer pipe to hold most of a slice (Linux; 64 KiB by default).

    With 64 KiB a 512x512 slice crosses in 16 turns of writer-blocks, reader-wakes,
    each a trip through the scheduler; on a busy machine that cost more than decoding
    RLE. The limit is ``/proc/sys/fs/pipe-max-size`` (1 MiB by default); if it cannot
    be raised the pipe just keeps its size.
    """
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(limit, PIPE_BYTES))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not Linux
        pass


def _stop(helpers: list[_Helper]) -> None:
    """Close helpers: EOF on stdin ends an idle one; one still booting is killed."""
    for h in helpers:
        with contextlib.suppress(OSError):
            h.stdin.close()
        if not h.ready and h.proc.poll() is None:
            h.proc.kill()
    deadline = time.monotonic() + CLOSE_WAIT_S
    for h in helpers:
        try:
            h.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            h.proc.kill()
            h.proc.wait()
        h.stdout.close()
    helpers.clear()


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    """``n`` bytes from a raw pipe, or ``None`` if it ends first (the helper died)."""
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _readinto_exact(stream: IO[bytes], target: memoryview) -> bool:
    got = 0
    while got < len(target):
        n = stream.readinto(target[got:])  # type: ignore[attr-defined]
        if not n:
            return False
        got += n
    return True


class DecodePool:
    """Helper processes for :func:`decode_series`, reusable across series.

    ``helpers`` processes start on first use and are restarted if one died. One series
    is decoded at a time (a lock); the node keeps one pool for its lifetime, while a
    plain :func:`models.dicom_io.read_series` call without a pool makes one for the
    series and closes it before returning. :meth:`close` (or leaving a ``with`` block,
    or garbage collection, or interpreter exit) ends every helper.
    """

    def __init__(self, helpers: int) -> None:
        if helpers < 1:
            raise ValueError(f"a decode pool needs at least one helper, got {helpers}")
        self.size = helpers
        self._helpers: list[_Helper] = []
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop, self._helpers)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running helpers (for tests and diagnostics)."""
        return [h.proc.pid for h in self._helpers]

    def start(self, *, wait: bool = False) -> None:
        """Start missing helpers now; ``wait`` blocks until each reports ready."""
        with self._lock:
            self._replenish()
            if wait:
                for h in self._helpers:
                    while not h.ready:
                        if not self._read_answer(h, None):
                            raise SeriesError("decoder helper exited while starting")

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """End every helper; waits up to ``timeout`` for a decode running in another thread.

        Past that, the helpers are killed: that decode sees them die, finishes the series
        in its own thread (or fails the slices a helper died on) and reaps them.
        """
        self._closed = True
        if self._lock.acquire(timeout=timeout):
            try:
                self._finalizer()
            finally:
                self._lock.release()
        else:
            for h in list(self._helpers):
                h.proc.kill()

    def _replenish(self) -> None:
        if self._closed:
            return
        alive = [h for h in self._helpers if h.proc.poll() is None]
        dead = [h for h in self._helpers if h not in alive]
        if dead:
            _stop(dead)
        self._helpers[:] = alive
        while len(self._helpers) < self.size:
            self._helpers.append(_spawn())

    def _read_answer(self, h: _Helper, run: _Run | None) -> bool:
        """Read one answer from ``h`` into ``run``; False when the helper has died."""
        head = _read_exact(h.stdout, _RESULT.size)
        if head is None:
            return False
        index, status, corrected, n = _RESULT.unpack(head)
        if index == _READY:
            h.ready = True
            return True
        if run is None or not h.inflight or h.inflight[0] != index:
            raise RuntimeError(f"decoder helper answered slice {index} out of turn")
        h.inflight.popleft()
        if status == _OK and n == run.hu[index].nbytes:
            if not _readinto_exact(h.stdout, run.hu[index].data.cast("B")):
                return False
            run.quirks += corrected
            run.in_helpers += 1
            return True
        payload = _read_exact(h.stdout, n)
        if payload is None:
            return False
        detail = payload.decode(errors="replace") if status == _FAILED else "wrong size"
        run.fail(index, detail)
        return True

    def decode(self, run: _Run, todo: Sequence[int]) -> int:
        """Decode slices ``todo`` of ``run`` here and in the helpers; returns how many."""
        with self._lock:
            self._replenish()
            helpers = len(self._helpers)
            try:
                _Dispatch(self, run, todo).loop()
            finally:
                # An exception left answers in flight: they must not land in the next
                # series, so those helpers go (and are replaced on the next use).
                stale = [h for h in self._helpers if h.inflight]
                for h in stale:
                    h.proc.kill()
                    self._helpers.remove(h)
                _stop(stale)
                if self._closed:
                    self._finalizer()
        return helpers


class _Dispatch:
    """One series through a pool: who decodes which slice, and what if a helper dies."""

    def __init__(self, pool: DecodePool, run: _Run, todo: Sequence[int]) -> None:
        self.pool = pool
        self.run = run
        self.pending: deque[int] = deque(todo)
        self.helper_only: set[int] = set()  # slices a helper died on: never decoded here
        self.attempts: dict[int, int] = {}
        self.respawns = pool.size
        self.selector = selectors.DefaultSelector()
        for h in pool._helpers:
            self.selector.register(h.stdout, selectors.EVENT_READ, h)

    def loop(self) -> None:
        try:
            while True:
                self._trim_after_error()
                self._feed()
                mine = None
                if not any(h.ready and h.can_send for h in self._live()):
                    mine = next((i for i in self.pending if i not in self.helper_only), None)
                if mine is not None:
                    self.pending.remove(mine)
                    self.run.decode_here(mine)
                    self._poll(0.0)
                elif any(h.inflight or (self.pending and not h.ready) for h in self._live()):
                    self._poll(None)
                else:
                    break
            for i in self.pending:  # only slices a helper died on, and no helper left
                self.run.fail(i, "its decoder process died")
        finally:
            self.selector.close()

    def _live(self) -> list[_Helper]:
        return [h for h in self.pool._helpers if h.stdout in self.selector.get_map()]

    def _trim_after_error(self) -> None:
        if self.run.errors:
            first = min(self.run.errors)
            self.pending = deque(i for i in self.pending if i < first)

    def _feed(self) -> None:
        for h in self._live():
            while h.ready and h.can_send and len(h.inflight) < PREFETCH and self.pending:
                index = self.pending.popleft()
                path = os.fsencode(self.run.paths[index])
                msg = self.run.task_head(index, len(path)) + path
                try:
                    h.stdin.write(msg)
                except (OSError, ValueError):  # gone, or closed by DecodePool.close()
                    h.can_send = False
                    self.pending.appendleft(index)
                    break
                h.inflight.append(index)

    def _poll(self, timeout: float | None) -> None:
        while True:
            events = self.selector.select(timeout)
            if not events:
                return
            for key, _ in events:
                h: _Helper = key.data
                if not self.pool._read_answer(h, self.run):
                    self._buried(h)
            if timeout is None:
                return

    def _buried(self, h: _Helper) -> None:
        """A helper died: its slices go back to the queue, the one it was on only once."""
        self.selector.unregister(h.stdout)
        code = h.proc.wait()
        lost = list(h.inflight)
        h.inflight.clear()
        log.warning("decode.helper_died", extra={"exit_code": code, "slices_lost": len(lost)})
        if lost:
            culprit = lost[0]
            self.attempts[culprit] = self.attempts.get(culprit, 0) + 1
            if self.attempts[culprit] >= 2:
                self.run.fail(culprit, f"its decoder process died twice (exit code {code})")
                lost = lost[1:]
            else:
                self.helper_only.add(culprit)
        self.pending = deque(sorted([*self.pending, *lost]))
        self.pool._helpers.remove(h)
        _stop([h])
        # A helper that died before it was ready is a broken environment, not a slice.
        if h.ready and self.respawns > 0 and not self.pool._closed:
            self.respawns -= 1
            fresh = _spawn()
            self.pool._helpers.append(fresh)
            self.selector.register(fresh.stdout, selectors.EVENT_READ, fresh)


class _Run:
    """The output of one series being decoded, and the errors met so far."""

    def __init__(self, paths: Sequence[Path], rows: int, cols: int) -> None:
        self.paths = paths
        self.rows, self.cols = rows, cols
        self.hu: NDArray[np.float32] = np.empty((len(paths), rows, cols), dtype=np.float32)
        self.quirks = 0
        self.in_helpers = 0
        self.errors: dict[int, SeriesError] = {}

    def task_head(self, i: int, path_length: int) -> bytes:
        """What a helper needs besides the path, with pydicom's current reading validation."""
        mode = pydicom_config.settings.reading_validation_mode
        return _TASK.pack(i, self.rows, self.cols, mode, path_length)

    def label(self, i: int) -> str:
        """Position only: spool files are named by SOP Instance UID, which logs must not carry."""
        return f"slice {i + 1} of {len(self.paths)}"

    def fail(self, i: int, detail: str, cause: BaseException | None = None) -> None:
        err = SeriesError(f"{self.label(i)}: {detail}")
        err.__cause__ = cause
        self.errors[i] = err

    def decode_here(self, i: int) -> DecodedSlice | None:
        """Decode slice ``i`` in this thread, into a fresh array that is then copied.

        Not in place, unlike the helpers: this process's allocator keeps glibc's
        defaults, and freeing a slice-sized array is what makes glibc keep later ones
        on its heap (in place, the decoders' own buffers were mapped fresh every slice:
        500 page faults per RLE slice and 0.6x the speed, measured in a fresh process).
        """
        try:
            done = decode_slice(self.paths[i], self.rows, self.cols)
        except SeriesError as exc:
            self.fail(i, str(exc), exc)
            return None
        self.hu[i] = done.hu
        self.quirks += done.corrected
        return done

    def raise_first_error(self) -> None:
        if self.errors:
            raise self.errors[min(self.errors)]


@dataclass(frozen=True, slots=True)
class DecodedSeries:
    """Slices in HU, in the order given, with counts for logs and tests."""

    hu: NDArray[np.float32]
    quirk_corrected: int
    decoded_by_helpers: int
    helpers: int


def decode_series(
    paths: Sequence[Path],
    rows: int,
    cols: int,
    *,
    workers: int | None = None,
    pool: DecodePool | None = None,
) -> DecodedSeries:
    """Decode ``paths`` (one slice each, in output order) to a (Z, rows, cols) HU array.

    The first slice is decoded here; if its syntax is uncompressed or RLE
    (:data:`models.decode.CHEAP_SYNTAXES`) the rest is too: those cost less to decode
    than to hand between processes. Otherwise the
    slices go to ``pool``'s helpers or, without a pool, to ``workers`` helpers started
    for this series and stopped before returning (``workers`` defaults to
    :func:`default_workers`; ``workers=1`` decodes in this thread only, even with a
    pool). Raises the ``SeriesError`` of the lowest-numbered slice that cannot be
    decoded.
    """
    if not paths:
        raise SeriesError("series has no instances")
    run = _Run(paths, rows, cols)
    first = run.decode_here(0)
    run.raise_first_error()
    assert first is not None
    n_workers = default_workers() if workers is None else max(1, workers)
    todo = range(1, len(paths))
    helpers = 0
    parallel = not first.cheap and n_workers > 1
    if parallel and pool is not None:
        helpers = pool.decode(run, todo)
    elif parallel and len(todo) * rows * cols >= MIN_PARALLEL_PIXELS:
        with DecodePool(n_workers) as own:
            helpers = own.decode(run, todo)
    else:
        for i in todo:
            if run.decode_here(i) is None:
                break
    run.raise_first_error()
    return DecodedSeries(run.hu, run.quirks, run.in_helpers, helpers)
