"""Write-ahead journal for received instances: one shared disk flush per Success.

Why: answering a C-STORE with Success promises the sender it may delete its copy
(PS3.4 B.2.3), so the bytes must be on disk first. Writing each instance to its own
file and making that durable costs two flushes (the file, then the folder entry after
the rename); on a virtual disk a flush takes 0.4-8 ms, more than everything else a
store does. The journal turns that into one flush, shared by every association that is
storing at the same moment (group commit, as databases do it):

1. the instance (File Meta header + dataset bytes, exactly what its spool file will
   hold) is appended to a preallocated segment file with one ``pwritev``;
2. :meth:`Journal.commit` returns once an ``fdatasync`` of the segment that started
   after step 1 has finished. One caller flushes, the others waiting at that moment
   ride on the same flush. Overwriting blocks that are already allocated needs no
   file-system metadata commit, so this flush is the cheapest durable write there is;
3. only then is the spool file written (temporary name, then rename) *without* a
   flush. Any spool file a crash can leave half-written thus has an intact record.

A checkpointer thread later makes the spool files themselves durable (one ``syncfs``
for a whole segment's worth, or an ``fsync`` per file where ``syncfs`` is missing) and
recycles the segment. After a crash, :func:`recover` replays every intact record of
the segments not yet checkpointed whose spool file is missing or differs: an
acknowledged instance is never lost, whatever the page cache held.

Segments: ``seg-<seq>.wal`` (active or awaiting checkpoint) and ``free-<n>.wal``
(checkpointed, reusable). Records start on 4 KiB boundaries and carry the segment's
sequence number and two CRC-32s (header+path, payload), so stale records of a recycled
segment and torn writes are both recognised; recovery steps over a bad record 4 KiB at
a time, so a torn record never hides an intact one after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dicom_node.store.private import DIR_MODE, FILE_MODE, private_dir
from dicom_node.store.uids import InvalidUID, check_uid

log = logging.getLogger(__name__)

MAGIC: Final = b"ICHJ"
ALIGN: Final = 4096
#: magic, segment sequence number, path length, payload length, payload CRC-32
_HEAD: Final = struct.Struct("<4sQIQI")
_HCRC: Final = struct.Struct("<I")
_HEAD_SIZE: Final = _HEAD.size + _HCRC.size
_MAX_PATH: Final = 1024
_ZERO_CHUNK: Final = 1 << 20
#: Checkpointed segments kept for reuse (the active one and a spare are extra).
KEEP_FREE: Final = 2


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def fsync_dir(path: Path) -> None:
    """fsync a folder: a new or renamed entry in it is durable only then."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """``syncfs(2)`` (Linux): flush one file system in one call; None where missing."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def sync_filesystem(path: Path) -> bool:
    """Flush the file system holding ``path`` (``syncfs``); False if unavailable."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True


def write_file(target: Path, parts: Sequence[bytes | memoryview], *, durable: bool = False) -> None:
    """Write ``parts`` to ``target`` via a temporary file and a rename.

    A reader never sees a partial file. ``durable``: fsync the file before the rename
    and the folder after it; otherwise durability comes from the journal record.
    """
    tmp = target.parent / f".{target.stem}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        _write_all(fd, parts)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    tmp.replace(target)
    if durable:
        fsync_dir(target.parent)


def make_folders(root: Path, folder: Path, *, durable: bool = True) -> None:
    """Create ``<study>/<series>`` under ``root``; ``durable``: fsync each new entry's
    parent (not needed under the journal: recovery recreates folders)."""
    if folder.is_dir():  # the usual case: one stat per store
        return
    for d in (folder.parent, folder):
        if not d.is_dir():
            d.mkdir(mode=DIR_MODE, exist_ok=True)
            if durable:
                fsync_dir(d.parent)


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """All of ``parts``, in order: one ``writev`` in the usual case."""
    done = os.writev(fd, parts) if len(parts) > 1 else 0
    for part in parts:
        view = memoryview(part)
        skip = min(done, len(view))
        done -= skip
        view = view[skip:]
        while view:
            view = view[os.write(fd, view) :]


@dataclass(eq=False)
class _Segment:
    seq: int
    path: Path
    fd: int
    size: int
    write_pos: int = 0
    outstanding: int = 0
    records: int = 0
    files: list[Path] = field(default_factory=list)
    last_append: float = 0.0
    flushing: int = 0


@dataclass(frozen=True, slots=True)
class Ticket:
    """One appended record, to :meth:`Journal.commit` and then :meth:`Journal.release`.

    ``after``: how many flushes had started when its write completed; any flush
    numbered higher covers it.
    """

    segment: _Segment
    after: int


@dataclass
class JournalStats:
    records: int = 0
    flushes: int = 0
    checkpoints: int = 0


class Journal:
    """Appends, group-commits and checkpoints records; safe to call from many threads.

    ``max_record`` bounds what goes through the journal (a quarter of a segment);
    larger instances (a big multi-frame object) are written durably on their own.
    Open it only after :func:`recover` has replayed what a crash left.
    """

    def __init__(
        self, folder: Path, spool_root: Path, *, segment_bytes: int = 64 << 20,
        idle_checkpoint_s: float = 2.0,
    ) -> None:  # fmt: skip
        if segment_bytes < 16 * ALIGN:
            raise ValueError("journal segment too small")
        self.folder = folder
        self.spool_root = spool_root
        self.segment_bytes = _aligned(segment_bytes)
        self.max_record = self.segment_bytes // 4
        self.idle_checkpoint_s = idle_checkpoint_s
        self.stats = JournalStats()
        private_dir(folder)
        if any(folder.glob("seg-*.wal")):
            raise RuntimeError("journal not recovered: run recover() before opening it")
        # One lock, two conditions: stores waiting for a flush are woken only by flushes,
        # the checkpointer only by what it waits for (a full segment, a segment's last
        # store or flush ending, stop). One shared condition woke every waiter on every
        # store: measurable GIL traffic with four associations.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ckpt = threading.Condition(self._lock)
        self._flush_started = 0
        self._inflight: set[int] = set()
        self._failed: OSError | None = None
        self._dirty: set[_Segment] = set()
        self._full: list[_Segment] = []
        self._stop = False
        self._free = sorted(folder.glob("free-*.wal"))
        self._next_seq = 1 + max((int(p.stem.split("-", 1)[1]) for p in self._free), default=0)
        self._active = self._make_segment(*self._claim())
        self._spare: _Segment | None = None  # the checkpointer makes one in the background
        self._thread = threading.Thread(
            target=self._checkpointer, name="journal-checkpoint", daemon=True
        )
        self._thread.start()

    # -- segments ---------------------------------------------------------------------

    def _claim(self) -> tuple[int, Path | None]:
        """The next sequence number and a free segment file to reuse (call under lock)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq, (self._free.pop(0) if self._free else None)

    def _make_segment(self, seq: int, reuse: Path | None) -> _Segment:
        """Segment ``seq``, named ``seg-<seq>`` durably before anything is written to it.

        A new one is filled with zeros and fsynced once, so that every later write
        overwrites allocated blocks; a reused one is only renamed (its stale records
        carry an older sequence number and are never replayed).
        """
        path = self.folder / f"seg-{seq:012d}.wal"
        if reuse is not None:
            reuse.replace(path)
        else:
            tmp = self.folder / f".new-{seq}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                zeros = bytes(_ZERO_CHUNK)
                for _ in range(self.segment_bytes // _ZERO_CHUNK):
                    _write_all(fd, (zeros,))
                _write_all(fd, (bytes(self.segment_bytes % _ZERO_CHUNK),))
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(path)
        fsync_dir(self.folder)
        fd = os.open(path, os.O_RDWR)
        return _Segment(seq=seq, path=path, fd=fd, size=os.fstat(fd).st_size)

    def _rotate_locked(self) -> None:
        old = self._active
        if self._spare is not None:
            self._active, self._spare = self._spare, None
        else:  # the checkpointer has not made a spare yet: make one here (rare)
            self._active = self._make_segment(*self._claim())
        self._full.append(old)
        self._ckpt.notify_all()

    def _free_segment(self, seg: _Segment) -> None:
        """Close ``seg`` and keep it as ``free-<seq>`` for reuse (call under lock).

        At most :data:`KEEP_FREE` are kept: a burst that outran the checkpointer does
        not hold its segments' disk space for ever.
        """
        os.close(seg.fd)
        if len(self._free) >= KEEP_FREE:
            seg.path.unlink()
        else:
            free = self.folder / f"free-{seg.seq:012d}.wal"
            seg.path.replace(free)
            self._free.append(free)
        fsync_dir(self.folder)

    # -- append and group commit -------------------------------------------------------

    def fits(self, relpath: str, size: int) -> bool:
        """Whether a record of ``size`` bytes for ``relpath`` goes through the journal."""
        return _aligned(_HEAD_SIZE + len(relpath.encode()) + size) <= self.max_record

    def append(self, relpath: str, parts: Sequence[bytes | memoryview]) -> Ticket:
        """Append one record (``parts`` concatenated = the spool file's bytes).

        The caller must :meth:`release` the ticket whatever happens next.
        """
        path_b = relpath.encode()
        if len(path_b) > _MAX_PATH:
            raise ValueError("journal path too long")
        n = sum(len(p) for p in parts)
        if not self.fits(relpath, n):
            raise ValueError("record larger than the journal accepts")
        crc = 0
        for p in parts:
            crc = zlib.crc32(p, crc)
        length = _HEAD_SIZE + len(path_b) + n
        total = _aligned(length)
        with self._cond:
            if self._failed is not None:
                raise OSError("journal unusable after a failed flush") from self._failed
            if self._stop:
                raise OSError("journal closed")
            seg = self._active
            if seg.write_pos + total > seg.size:
                self._rotate_locked()
                seg = self._active
            off = seg.write_pos
            seg.write_pos += total
            seg.outstanding += 1
            seg.records += 1
            seg.last_append = time.monotonic()
        head = _HEAD.pack(MAGIC, seg.seq, len(path_b), n, crc)
        hcrc = _HCRC.pack(zlib.crc32(path_b, zlib.crc32(head)))
        try:
            buffers = [head, hcrc, path_b, *parts]
            written = os.pwritev(seg.fd, buffers, off)
            if written < length:  # short write: finish it by hand
                rest = memoryview(b"".join(buffers))[written:]
                while rest:
                    k = os.pwrite(seg.fd, rest, off + length - len(rest))
                    rest = rest[k:]
        except BaseException:
            self.release(Ticket(seg, -1))
            raise
        with self._cond:
            self._dirty.add(seg)
            self.stats.records += 1
            return Ticket(seg, self._flush_started)

    def commit(self, ticket: Ticket) -> None:
        """Return once a flush that started after ``ticket``'s write completed has finished.

        If such a flush is already running, wait for it; otherwise start one at once,
        even while others run: a virtual disk serves several flushes in parallel, and
        making a store wait for someone else's flush to end before starting its own
        costs 1.5 flushes of latency instead of one (measured: four associations went
        from 315 to 230 images/s when flushes were serialised).

        A failed flush makes the journal unusable until a restart (after a failed
        ``fdatasync`` the kernel may already have dropped the dirty pages: retrying
        could report a durability that is not there); every store then answers Out of
        Resources and the sender keeps its copy.
        """
        with self._cond:
            while True:
                if self._failed is not None:
                    raise OSError("journal flush failed") from self._failed
                if self._done() > ticket.after:
                    return
                if self._flush_started > ticket.after:  # a flush covering it is running
                    self._cond.wait()
                    continue
                break
            self._flush_started += 1
            gen = self._flush_started
            self._inflight.add(gen)
            segments = list(self._dirty)
            self._dirty.clear()
            for seg in segments:
                seg.flushing += 1
        error: OSError | None = None
        try:
            for seg in segments:
                os.fdatasync(seg.fd)
        except OSError as exc:
            error = exc
        with self._cond:
            self._inflight.discard(gen)
            for seg in segments:
                seg.flushing -= 1
            if error is None:
                self.stats.flushes += 1
            else:
                self._failed = error
                log.error("journal.flush_failed", extra={"error": type(error).__name__})
            self._cond.notify_all()
            if any(self._awaited(seg) for seg in segments):
                self._ckpt.notify_all()
        if error is not None:
            raise OSError("journal flush failed") from error

    def _done(self) -> int:
        """Highest flush number such that it and every earlier flush have finished."""
        return min(self._inflight) - 1 if self._inflight else self._flush_started

    def release(self, ticket: Ticket, written: Path | None = None) -> None:
        """The record's store is over (answered or failed); ``written`` = its spool file."""
        with self._cond:
            seg = ticket.segment
            seg.outstanding -= 1
            if written is not None:
                seg.files.append(written)
            if self._awaited(seg):
                self._ckpt.notify_all()

    def _awaited(self, seg: _Segment) -> bool:
        """May a checkpoint be waiting for ``seg``'s stores or flushes to end? (locked)"""
        return (seg is not self._active or self._stop) and not seg.outstanding and not seg.flushing

    # -- checkpoints -------------------------------------------------------------------

    def _idle_due(self) -> bool:
        seg = self._active
        return bool(seg.records) and time.monotonic() - seg.last_append >= self.idle_checkpoint_s

    def _checkpointer(self) -> None:
        """Checkpoint full segments (and the active one when idle); keep a spare ready."""
        while True:
            with self._cond:
                while (
                    not self._full and not self._stop and not self._idle_due()
                    and self._spare is not None
                ):  # fmt: skip
                    self._ckpt.wait(timeout=max(0.05, self.idle_checkpoint_s / 4))
                if self._stop and not self._full:
                    return
                if self._idle_due() and self._spare is not None:
                    self._rotate_locked()
                todo = list(self._full)
                claim = self._claim() if self._spare is None and not self._stop else None
            if claim is not None:
                spare = self._make_segment(*claim)
                with self._cond:
                    self._spare = spare
            for seg in todo:
                try:
                    self._checkpoint(seg)
                except OSError as exc:
                    log.error("journal.checkpoint_failed", extra={"error": type(exc).__name__})
                    with self._ckpt:
                        self._ckpt.wait(timeout=1.0)
                    break

    def _checkpoint(self, seg: _Segment) -> None:
        """Make the segment's spool files durable, then recycle the segment."""
        with self._ckpt:
            while seg.outstanding > 0:
                self._ckpt.wait()
            files = list(seg.files)
        if not sync_filesystem(self.spool_root):
            folders: set[Path] = set()
            for f in files:
                _fsync_file(f)
                folders.update((f.parent, f.parent.parent, self.spool_root))
            for d in folders:
                if d.is_dir():
                    fsync_dir(d)
        with self._ckpt:
            while seg.flushing:  # a flush in progress holds this segment's fd
                self._ckpt.wait()
            self._dirty.discard(seg)
            if seg in self._full:
                self._full.remove(seg)
            self._free_segment(seg)
            self.stats.checkpoints += 1

    def close(self) -> None:
        """Checkpoint everything and stop: a clean stop leaves nothing to replay."""
        with self._cond:
            if self._stop:
                return
            self._stop = True
            self._cond.notify_all()
            self._ckpt.notify_all()
        self._thread.join()
        if self._active.records:
            self._checkpoint(self._active)
        else:
            with self._cond:
                self._free_segment(self._active)
        with self._cond:
            if self._spare is not None:
                self._free_segment(self._spare)
                self._spare = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :func:`recover` found: intact records, and spool files it had to rewrite."""

    segments: int
    records: int
    rewritten: int
    skipped: int


def _safe_target(root: Path, relpath: str) -> Path | None:
    """``<study>/<series>/<sop>.dcm`` with every part a valid UID, else None."""
    parts = relpath.split("/")
    if len(parts) != 3 or not parts[2].endswith(".dcm"):
        return None
    try:
        for p in (parts[0], parts[1], parts[2][:-4]):
            check_uid(p, "UID")
    except InvalidUID:
        return None
    return root.joinpath(*parts)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # purged meanwhile
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_matches(path: Path, size: int, crc: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        return zlib.crc32(path.read_bytes()) == crc
    except OSError:
        return False


def _scan(fd: int, seq: int, size: int) -> list[tuple[str, int, int, int]]:
    """Intact records of segment ``seq``: (path, payload offset, length, CRC)."""
    found: list[tuple[str, int, int, int]] = []
    off = 0
    while off + _HEAD_SIZE <= size:
        raw = os.pread(fd, _HEAD_SIZE, off)
        magic, s, plen, n, crc = _HEAD.unpack_from(raw)
        if magic == MAGIC and s == seq and plen <= _MAX_PATH:
            end = off + _HEAD_SIZE + plen + n
            path_b = os.pread(fd, plen, off + _HEAD_SIZE)
            (hcrc,) = _HCRC.unpack_from(raw, _HEAD.size)
            if end <= size and zlib.crc32(path_b, zlib.crc32(raw[: _HEAD.size])) == hcrc:
                payload = os.pread(fd, n, off + _HEAD_SIZE + plen)
                if zlib.crc32(payload) == crc:
                    found.append((path_b.decode(errors="replace"), off + _HEAD_SIZE + plen, n, crc))
                off += _aligned(end - off)  # header intact: its length is trustworthy
                continue
        off += ALIGN
    return found


def recover(folder: Path, spool_root: Path) -> Recovery:
    """Replay the segments a crash left unchecked; then mark them free.

    Run before the node accepts anything (and before ``reindex``): every intact record
    whose spool file is missing or differs is written back durably.
    """
    segments = sorted(folder.glob("seg-*.wal")) if folder.is_dir() else []
    records = rewritten = skipped = 0
    present: list[Path] = []
    for path in segments:
        seq = int(path.stem.split("-", 1)[1])
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            for relpath, off, n, crc in _scan(fd, seq, size):
                records += 1
                target = _safe_target(spool_root, relpath)
                if target is None:
                    skipped += 1
                    continue
                if _file_matches(target, n, crc):
                    present.append(target)  # maybe only in the page cache: flushed below
                    continue
                make_folders(spool_root, target.parent)
                write_file(target, (os.pread(fd, n, off),), durable=True)
                rewritten += 1
        finally:
            os.close(fd)
    if segments:
        if not sync_filesystem(spool_root):
            for target in present:
                _fsync_file(target)
                for d in (target.parent, target.parent.parent, spool_root):
                    fsync_dir(d)
        for path in segments:
            path.replace(path.with_name("free-" + path.name.split("-", 1)[1]))
        fsync_dir(folder)
        log.info(
            "journal.recovered",
            extra={"segments": len(segments), "records": records, "rewritten": rewritten,
                   "skipped": skipped},
        )  # fmt: skip
    return Recovery(len(segments), records, rewritten, skipped)
