"""The durable spool: received instances as files, exactly as they arrived, plus the index.

``put`` is the path of every C-STORE: append the bytes to the write-ahead journal,
write ``<spool>/<study>/<series>/<sop>.dcm`` (temporary name, then rename), wait for
the journal's group-committed flush, record the row in the index, and only then may
the handler answer Success (PS3.4 B.2.3: after Success the sender may delete its
copy). One flush per store, shared by concurrent associations, instead of two per
file (file, then folder): see :mod:`dicom_node.store.journal`, which also makes the files
themselves durable in the background and replays them after a crash. Nothing is
decoded or transcoded: the bytes are pynetdicom's encoded dataset behind a File Meta
header built from the negotiated transfer syntax.

The files are the truth once checkpointed. :meth:`Spool.reconcile` (every start)
indexes files the index lacks, :func:`reindex` rebuilds a lost index from the files
alone; both run after the journal has been replayed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from dicom_node.errors import NodeError
from dicom_node.store.index import Index, IndexDBError, InstanceRow, Recorded
from dicom_node.store.journal import Journal, make_folders, recover, write_file
from dicom_node.store.private import private_dir
from dicom_node.store.uid_scan import (
    SERIES_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_UID,
    WANTED,
    scan_uids,
)
from dicom_node.store.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    InvalidUID,
    check_uid,
)

log = logging.getLogger(__name__)

MIB: Final = 1 << 20
GIB: Final = 1 << 30

#: SOP classes the CT model can read. Anything else is stored but not eligible.
ELIGIBLE_SOP_CLASSES: Final = frozenset(
    {str(CTImageStorage), str(EnhancedCTImageStorage), str(LegacyConvertedEnhancedCTImageStorage)}
)

# DIMSE statuses (PS3.4 Annex B.2.3 and PS3.7 C.4.2)
SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700
DATASET_MISMATCH: Final = 0xA900  # Data Set does not match SOP Class
CANNOT_UNDERSTAND: Final = 0xC000

#: The journal's folder inside the spool (dot: never taken for a study).
JOURNAL_DIR: Final = ".journal"

_LAST_TAG_NEEDED: Final = 0x0020000E  # Series Instance UID; Study (0020,000D) comes before


class SpoolFull(NodeError):  # noqa: N818 - reads as the condition
    """Free disk below the minimum or spool above its maximum: answer 0xA700."""


class BadInstance(NodeError):  # noqa: N818
    """The dataset cannot be stored: ``status`` is the DIMSE status to answer."""

    def __init__(self, message: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """The four UIDs that place an instance, all validated, and its transfer syntax."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str

    @property
    def eligible(self) -> bool:
        return self.sop_class_uid in ELIGIBLE_SOP_CLASSES

    def relpath(self) -> str:
        return f"{self.study_uid}/{self.series_uid}/{self.sop_uid}.dcm"


def _make_ref(raw_values: Mapping[int, object], transfer_syntax: str) -> InstanceRef:
    """An :class:`InstanceRef` from the raw values of the four UID elements (by tag),
    whether a header walk or pydicom read them; each is checked before it can name a
    path."""

    if not any(raw_values.get(tag) is not None for tag in WANTED):
        # nothing found: saying only "Study Instance UID is missing" would hide that the
        # bytes were no dataset at all (text, an image file, zeros) or one cut short
        raise InvalidUID(
            "no SOP Class, SOP Instance, Study or Series UID found: not a DICOM dataset, "
            "or one cut short or corrupt before them"
        )

    def uid(tag: int, what: str) -> str:
        value = raw_values.get(tag)
        if value is None:
            raise InvalidUID(f"{what} is missing")
        return check_uid(value, what)

    return InstanceRef(
        study_uid=uid(STUDY_UID, "Study Instance UID"),
        series_uid=uid(SERIES_UID, "Series Instance UID"),
        sop_uid=uid(SOP_INSTANCE_UID, "SOP Instance UID"),
        sop_class_uid=uid(SOP_CLASS_UID, "SOP Class UID"),
        transfer_syntax=transfer_syntax,
    )


def _raw_values(ds: Dataset) -> dict[int, object]:
    """The UID elements' values, taken raw: pydicom's own validation of a bad value warns
    with the value in the message, and a warning is not ours to log."""
    return {tag: elem.value for tag in WANTED if (elem := ds.get_item(tag)) is not None}


def _ref_from(ds: Dataset) -> InstanceRef:
    """The reference of a Part 10 dataset (its transfer syntax from the File Meta)."""
    ts = check_uid(ds.file_meta.get("TransferSyntaxUID"), "Transfer Syntax UID")
    return _make_ref(_raw_values(ds), ts)


def _stop_after_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_TAG_NEEDED


def _matching_command(
    ref: InstanceRef, command_sop_class: str | None, command_sop_instance: str | None
) -> InstanceRef:
    """``ref`` if the C-STORE command's Affected SOP Class/Instance UID match it
    (PS3.4 B.2.3: else 0xA900 / 0xC000)."""
    if command_sop_class is not None and command_sop_class != ref.sop_class_uid:
        raise BadInstance("SOP Class UID differs from the C-STORE request", DATASET_MISMATCH)
    if command_sop_instance is not None and command_sop_instance != ref.sop_uid:
        raise BadInstance("SOP Instance UID differs from the C-STORE request")
    return ref


def parse_instance(
    data: bytes,
    *,
    command_sop_class: str | None = None,
    command_sop_instance: str | None = None,
) -> InstanceRef:
    """Read the UIDs from a Part 10 byte string, stopping after Series Instance UID.

    Cheap by design: elements past (0020,000E) are never read, pixel data included.
    The dataset's SOP Class and Instance must match the C-STORE command's Affected SOP
    Class/Instance UID (PS3.4 B.2.3: else 0xA900 / 0xC000).
    """
    try:
        ref = _ref_from(read_partial(BytesIO(data), stop_when=_stop_after_series_uid))
    except InvalidUID as exc:
        raise BadInstance(str(exc)) from exc
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, NotImplementedError) as exc:  # fmt: skip
        # The message is not kept: pydicom may quote element values in it.
        raise BadInstance(f"undecodable dataset ({type(exc).__name__})") from exc
    return _matching_command(ref, command_sop_class, command_sop_instance)


#: Bytes of a deflated dataset inflated to find its UIDs (they precede the pixel data).
_MAX_INFLATED: Final = 16 << 20


def parse_dataset(
    raw: bytes | memoryview,
    transfer_syntax: str,
    *,
    command_sop_class: str | None = None,
    command_sop_instance: str | None = None,
) -> InstanceRef:
    """Like :func:`parse_instance`, for a dataset as it came over the wire (no File Meta).

    The C-STORE path uses this one. The UIDs come from a header walk
    (:func:`dicom_node.store.uid_scan.scan_uids`), with pydicom as the fallback whenever the
    walk is unsure; pynetdicom building and encoding a File Meta dataset with pydicom
    would cost more CPU per image than everything else in the handler together, so
    :func:`part10_header` writes the same bytes directly.
    """
    ts = check_uid(transfer_syntax, "Transfer Syntax UID")
    try:
        implicit = ts == ImplicitVRLittleEndian
        body = raw
        if ts == DeflatedExplicitVRLittleEndian:  # PS3.5 A.5: raw deflate, no zlib header
            # Capped: only the header is needed, and a small deflated dataset may
            # inflate to gigabytes (a deflate bomb must not exhaust memory).
            body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, _MAX_INFLATED)
        values: Mapping[int, object] | None = scan_uids(body, implicit)
        if values is None:  # the walk is unsure: pydicom reads the header
            ds = read_dataset(BytesIO(body), implicit, True, stop_when=_stop_after_series_uid)
            values = _raw_values(ds)
        ref = _make_ref(values, ts)
    except InvalidUID as exc:
        raise BadInstance(str(exc)) from exc
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, NotImplementedError, struct.error) as exc:  # fmt: skip
        raise BadInstance(f"undecodable dataset ({type(exc).__name__})") from exc
    except zlib.error as exc:  # its class is called "error": say what it is
        raise BadInstance("undecodable dataset (corrupt deflate stream)") from exc
    return _matching_command(ref, command_sop_class, command_sop_instance)


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    tag = struct.pack("<HH", group_elem >> 16, group_elem & 0xFFFF)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def part10_header(ref: InstanceRef, source_aet: str = "") -> bytes:
    """Preamble, ``DICM`` and the File Meta group (PS3.10 7.1) for a received dataset.

    Explicit VR little endian, as PS3.10 requires for group 0002 whatever the dataset's
    transfer syntax; Implementation Class UID and Version Name are the node's (it wrote
    only this header: the dataset bytes that follow are the sender's).
    """
    elements = [
        _meta_element(0x00020001, b"OB", b"\x00\x01"),
        _meta_element(0x00020002, b"UI", ref.sop_class_uid.encode()),
        _meta_element(0x00020003, b"UI", ref.sop_uid.encode()),
        _meta_element(0x00020010, b"UI", ref.transfer_syntax.encode()),
        _meta_element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
        _meta_element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
    ]
    aet = source_aet.strip()
    if aet and aet.isascii() and "\\" not in aet and len(aet) <= 16:
        elements.append(_meta_element(0x00020016, b"AE", aet.encode()))
    body = b"".join(elements)
    group_length = _meta_element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def read_file_ref(path: Path) -> InstanceRef:
    """The UIDs of a spooled file (header only, up to Series Instance UID)."""
    try:
        with path.open("rb") as fh:
            return _ref_from(read_partial(fh, stop_when=_stop_after_series_uid))
    except (InvalidUID, InvalidDicomError, EOFError, OSError, ValueError, KeyError,
            TypeError, AttributeError, NotImplementedError) as exc:  # fmt: skip
        raise BadInstance(f"unreadable spool file ({type(exc).__name__})") from exc


class RateLimitedLog:
    """Log an event at most once per ``interval`` seconds (disk guard: not once per image)."""

    def __init__(self, interval: float = 60.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or log
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, event: str, **fields: object) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(event)
            if last is not None and now - last < self.interval:
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return False
            self._last[event] = now
            suppressed = self._suppressed.pop(event, 0)
        self.logger.warning(event, extra={**fields, "suppressed": suppressed})
        return True


#: ``OSError`` numbers that mean "no room": the disk is full or a quota is reached.
NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskEpisode:
    """One error when the spool starts refusing instances for lack of space, one info
    line when it stores again: not one line per refused image.

    A modality sending 400 images into a full disk gets 400 answers of 0xA700, and the
    operator needs to read one line that says why (and, later, one that says it is
    over and how many were refused), not 400.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log
        self._lock = threading.Lock()
        self._refused = 0  # refusals in the current episode; 0: none running
        self._started = 0.0

    @property
    def active(self) -> bool:
        return self._refused > 0

    def refused(self, reason: str, **fields: object) -> None:
        """An instance was refused for lack of space; logs only the first of an episode."""
        with self._lock:
            self._refused += 1
            first = self._refused == 1
            if first:
                self._started = time.monotonic()
        if first:
            self.logger.error("store.disk_guard", extra={"reason": reason, **fields})

    def stored(self) -> None:
        """An instance was stored: ends a running episode (cheap when none runs)."""
        if not self._refused:
            return
        with self._lock:
            refused, self._refused = self._refused, 0
            seconds = time.monotonic() - self._started
        if refused:
            self.logger.info(
                "store.space_restored", extra={"refused": refused, "seconds": round(seconds, 1)}
            )


@dataclass(frozen=True, slots=True)
class Stored:
    """What :meth:`Spool.put` did: the index outcome and the file's place."""

    ref: InstanceRef
    recorded: Recorded
    path: Path
    received: float


#: On a spool shared by several receivers, a temporary file younger than this may be a
#: store in progress elsewhere (an instance of a GB at a slow link's pace), not a leftover.
SHARED_TMP_STALE_S: Final = 3600.0

#: On a shared spool, how old this receiver's figure of the spool's size may grow before
#: ``max_spool_gb`` is checked against the index's sum again: the other receivers' stores
#: and every process's retention change it too.
SHARED_SIZE_REFRESH_S: Final = 5.0


class Spool:
    """Files under ``root`` and their index rows; safe to call from many threads."""

    def __init__(
        self, root: Path, index: Index, *, min_free_mb: float = 1024, max_spool_gb: float = 100,
        journal_segment_mb: float | None = None, journal_checkpoint_s: float = 2.0,
        shared: bool = False, size_refresh_s: float = SHARED_SIZE_REFRESH_S,
    ) -> None:  # fmt: skip
        self.root = root
        self.index = index
        #: Other receivers write into this folder too (docs/scale-out.md): a temporary
        #: file may be another process's store in progress, not a crash's leftover.
        self.shared = shared
        self.min_free_bytes = int(min_free_mb * MIB)
        self.max_spool_bytes = int(max_spool_gb * GIB)
        private_dir(root)
        self._size_lock = threading.Lock()
        self._size = index.total_size()
        self._size_read = time.monotonic()
        self._size_refresh_s = size_refresh_s
        self._size_thread: threading.Thread | None = None
        self.guard = DiskEpisode()
        # A crash may have left acknowledged instances only in the journal: replay them
        # before anything else looks at the files (reconcile, reindex, the SCP).
        self.recovery = recover(root / JOURNAL_DIR, root)
        self.journal: Journal | None = None
        if journal_segment_mb is not None:
            self.journal = Journal(
                root / JOURNAL_DIR, root, segment_bytes=int(journal_segment_mb * MIB),
                idle_checkpoint_s=journal_checkpoint_s,
            )  # fmt: skip

    def close(self) -> None:
        """Checkpoint and close the journal (a clean stop leaves nothing to replay), and
        let a read of the size finish before the index it reads is closed."""
        if self.journal is not None:
            self.journal.close()
        if self._size_thread is not None:
            self._size_thread.join()

    @property
    def size(self) -> int:
        """Bytes of all indexed instances: this process's running count, which on a shared
        spool is read again from the index every ``size_refresh_s`` (the count of one
        receiver misses the others' stores and retention). The read runs on a thread of
        its own: a sum over every instance row (tens of ms at a million) is not added to
        the C-STORE that happens to find the count stale, which goes by the count it has."""
        if self.shared and time.monotonic() - self._size_read >= self._size_refresh_s:
            with self._size_lock:  # one read at a time, started by whoever sees it due
                running = self._size_thread is not None and self._size_thread.is_alive()
                if not running and time.monotonic() - self._size_read >= self._size_refresh_s:
                    self._size_thread = threading.Thread(
                        target=self._refresh_size, name="spool-size", daemon=True
                    )
                    self._size_thread.start()
        return self._size

    def _refresh_size(self) -> None:
        try:
            total: int | None = self.index.total_size()
        except IndexDBError:
            total = None  # the stores themselves will say the index is away
        with self._size_lock:
            if total is not None:
                self._size = total
            self._size_read = time.monotonic()

    def path_of(self, ref: InstanceRef) -> Path:
        return self.root / ref.study_uid / ref.series_uid / f"{ref.sop_uid}.dcm"

    def check_space(self, incoming: int) -> None:
        """Raise :class:`SpoolFull` if storing ``incoming`` bytes breaks a disk limit."""
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if free - incoming < self.min_free_bytes:
            self.guard.refused(
                "free_disk", free_mb=free // MIB, min_free_mb=self.min_free_bytes // MIB
            )
            raise SpoolFull("free disk below storage.min_free_disk_mb")
        size = self.size
        if size + incoming > self.max_spool_bytes:
            self.guard.refused(
                "spool_full", spool_mb=size // MIB,
                max_spool_mb=self.max_spool_bytes // MIB,
            )  # fmt: skip
            raise SpoolFull("spool above storage.max_spool_gb")

    def put(
        self, ref: InstanceRef, data: bytes | memoryview, received: float | None = None,
        header: bytes = b"",
    ) -> Stored:  # fmt: skip
        """Store ``header + data`` durably and index it; a known SOP Instance is not rewritten.

        Durable means: its journal record flushed (group commit, see
        :mod:`dicom_node.store.journal`), or, without a journal or for an instance too large
        for one, the file fsynced and renamed and its folder fsynced.

        Raises :class:`SpoolFull` (answer 0xA700) or :class:`OSError` / index errors
        (likewise: out of resources, the sender keeps its copy and retries).
        """
        received = time.time() if received is None else received
        final = self.path_of(ref)
        size = len(header) + len(data)
        if self.index.has_instance(ref.sop_uid):
            rec = self.index.record(self._row(ref, size, received))
            return Stored(ref, rec, final, received)
        self.check_space(size)
        try:
            self._write(ref, final, size, header, data)
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            # The disk filled under the guard (another writer, a quota): the same answer
            # and the same one line; the write left no file behind (``write_file``).
            self.guard.refused("no_space", error=errno.errorcode.get(exc.errno or 0, "?"))
            raise SpoolFull("no space left on the spool's disk") from exc
        self.guard.stored()
        rec = self.index.record(self._row(ref, size, received))
        if rec.inserted:
            with self._size_lock:
                self._size += size
        return Stored(ref, rec, final, received)

    def _write(
        self, ref: InstanceRef, final: Path, size: int, header: bytes, data: bytes | memoryview
    ) -> None:
        """The file, durably: through the journal when it fits, else fsynced directly."""
        journal = self.journal
        if journal is None or not journal.fits(ref.relpath(), size):
            make_folders(self.root, final.parent)
            write_file(final, (header, data), durable=True)
        else:
            make_folders(self.root, final.parent, durable=False)
            # The file only after its record is durable: then any file a crash can leave
            # half-written has an intact record, and replay rewrites it before reconcile
            # could index it (a broken file indexed would make the sender's retry look
            # like a duplicate and keep the broken copy).
            ticket = journal.append(ref.relpath(), (header, data))
            written: Path | None = None
            try:
                journal.commit(ticket)
                write_file(final, (header, data))
                written = final
            finally:
                journal.release(ticket, written)

    def _row(self, ref: InstanceRef, size: int, received: float) -> InstanceRow:
        return InstanceRow(
            sop_uid=ref.sop_uid,
            study_uid=ref.study_uid,
            series_uid=ref.series_uid,
            sop_class_uid=ref.sop_class_uid,
            transfer_syntax=ref.transfer_syntax,
            eligible=ref.eligible,
            size=size,
            path=ref.relpath(),
            received=received,
        )

    # -- start-up, reindex, retention ---------------------------------------------------

    def iter_files(self) -> Iterator[Path]:
        """Every spooled ``.dcm`` file (temporary files start with a dot and are skipped)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(".dcm") and not name.startswith("."):
                    yield Path(dirpath) / name

    def remove_stale_tmp(self) -> int:
        """Delete temporary files a crash left behind (never answered Success).

        On a shared spool only those untouched for :data:`SHARED_TMP_STALE_S`: a younger
        one may be another receiver's store in progress.
        """
        n = 0
        horizon = time.time() - SHARED_TMP_STALE_S if self.shared else None
        for dirpath, dirs, filenames in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != JOURNAL_DIR]  # the journal's own files
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    path = Path(dirpath) / name
                    try:
                        if horizon is not None and path.stat().st_mtime > horizon:
                            continue
                        path.unlink()
                    except FileNotFoundError:  # its writer renamed or removed it meanwhile
                        continue
                    n += 1
        return n

    def index_file(self, path: Path) -> tuple[InstanceRef, Recorded] | None:
        """Index one existing file (its modification time stands for its arrival)."""
        try:
            ref = read_file_ref(path)
        except BadInstance as exc:
            log.warning("spool.unreadable", extra={"path": path.name, "error": str(exc)})
            return None
        rel = path.relative_to(self.root).as_posix()
        st = path.stat()
        row = dataclasses.replace(self._row(ref, st.st_size, st.st_mtime), path=rel)
        rec = self.index.record(row)
        if rec.inserted:
            with self._size_lock:
                self._size += st.st_size
        return ref, rec

    def reconcile(self) -> list[str]:
        """Index the files the index lacks (e.g. lost to an OS crash); return their studies."""
        known = self.index.known_paths()
        studies: set[str] = set()
        stale = self.remove_stale_tmp()
        added = 0
        for path in self.iter_files():
            rel = path.relative_to(self.root).as_posix()
            if rel in known:
                continue
            got = self.index_file(path)
            if got is not None and got[1].inserted:
                added += 1
                studies.add(got[0].study_uid)
        if added or stale:
            log.info("spool.reconciled", extra={"added": added, "stale_tmp": stale})
        return sorted(studies)

    def purge_study(self, study_uid: str) -> int:
        """Delete a study's files and rows; returns bytes freed."""
        freed = sum(r.size for r in self.index.instances(study_uid))
        folder = self.root / check_uid(study_uid, "Study Instance UID")
        shutil.rmtree(folder, ignore_errors=True)
        self.index.delete_study(study_uid)
        with self._size_lock:
            self._size = max(0, self._size - freed)
        return freed


def reindex(spool: Spool) -> int:
    """Rebuild the index from the spool files alone; returns the number of instances.

    Studies come back as ``receiving`` with their files' times: the next ``serve``
    completes them after the quiet period (their processing history was in the lost index).
    """
    spool.index.clear()
    with spool._size_lock:
        spool._size = 0
    spool.remove_stale_tmp()
    n = 0
    times: dict[str, tuple[float, float]] = {}
    for path in spool.iter_files():
        got = spool.index_file(path)
        if got is not None and got[1].inserted:
            n += 1
            study = got[0].study_uid
            mtime = path.stat().st_mtime
            lo, hi = times.get(study, (mtime, mtime))
            times[study] = (min(lo, mtime), max(hi, mtime))
    for study_uid, (first, last) in times.items():
        spool.index.set_study_times(study_uid, first, last)
    return n
