"""Helpers for the crash tests: a modality that resends what was not acknowledged, the
checks of the spool against the sender's checksums, and of Orthanc's result sets.

Everything drives real peers: ``dicom-node serve`` as a subprocess
(:class:`nodes.ServeProcess`), pynetdicom as the modality's Storage SCU, a real Orthanc
as the PACS the node delivers to. Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from nodes import NODE_AET, Orthanc, dataset_bytes
from pipeline.support import http_bytes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.net.scp import node_ae
from dicom_node.store.journal import _scan
from dicom_node.store.spool import JOURNAL_DIR
from train.data.phantoms import WrittenStudy

SR_MODALITY = "SR"
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ResendingSender:
    """A modality sending one study: one association at a time, one instance after the
    other (``pace_s`` apart), and after a refused or broken association it sends again
    every instance whose C-STORE did not get Success, until all did (as modalities do).

    ``acked`` maps SOP Instance UID -> sha256 of the dataset bytes that got Success.
    """

    port: int
    study: WrittenStudy
    pace_s: float = 0.03
    acked: dict[str, str] = field(default_factory=dict)
    associations: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ResendingSender:
        self._thread = threading.Thread(target=self._run, name="resender", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _files(self) -> list[tuple[Path, str]]:
        return list(zip(self.study.main.files, self.study.main.sop_uids, strict=True))

    def _run(self) -> None:
        # node_ae: pynetdicom drops a refused association's socket unclosed (a killed node
        # refuses many); the node's own AE closes it
        ae = node_ae("MODALITY")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        while not self._stop.is_set():
            todo = [(p, uid) for p, uid in self._files() if uid not in self.acked]
            if not todo:
                self.done.set()
                return
            if not _listening(self.port):  # node down (killed, restarting): try again
                time.sleep(0.2)
                continue
            assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AET)
            if not assoc.is_established:  # killed between the probe and the request
                time.sleep(0.2)
                continue
            self.associations += 1
            try:
                for path, uid in todo:
                    status = assoc.send_c_store(path)
                    if "Status" not in status or int(status.Status) != 0x0000:
                        break  # no answer (killed mid-store) or a failure: resend later
                    self.acked[uid] = digest(dataset_bytes(path))
                    if self._stop.wait(self.pace_s):
                        break
            except (OSError, RuntimeError, ValueError):
                pass  # the connection died under the send: what was not acked is resent
            finally:
                if assoc.is_established:
                    assoc.release()
                else:
                    assoc.abort()


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on ``port`` (pynetdicom leaks a socket
    on every refused association request, so the modality looks first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def drop_unflushed(spool: Path) -> int:
    """Power loss after a kill: delete every spool file whose journal record is not yet
    checkpointed (a checkpoint is what makes spool files durable; until then the page
    cache may hold them only). Returns how many files were dropped; the node's start-up
    recovery must write each back from the journal. Reads the journal with the node's
    own record scanner (:func:`dicom_node.store.journal._scan`), the reader ``recover``
    uses, so the test drops exactly what recovery is responsible for."""
    folder = spool / JOURNAL_DIR
    dropped = 0
    for seg in sorted(folder.glob("seg-*.wal")) if folder.is_dir() else []:
        seq = int(seg.stem.split("-", 1)[1])
        fd = os.open(seg, os.O_RDONLY)
        try:
            records = _scan(fd, seq, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        for relpath, _off, _n, _crc in records:
            target = spool / relpath
            if target.is_file():
                target.unlink()
                dropped += 1
    return dropped


def spool_paths(index_db: Path) -> dict[str, str]:
    """SOP Instance UID -> spool-relative path, read from the index (read-only)."""
    db = sqlite3.connect(f"file:{index_db}?mode=ro", uri=True, timeout=10)
    try:
        return {r[0]: r[1] for r in db.execute("SELECT sop_uid, path FROM instances")}
    finally:
        db.close()


def lost_instances(spool: Path, index_db: Path, acked: dict[str, str]) -> list[str]:
    """Acknowledged instances not in the spool with the very bytes that were sent (by
    the index's path, and, where the index lacks it, by a walk over every spool file)."""
    paths = spool_paths(index_db)
    on_disk: dict[str, str] = {}
    for uid, rel in paths.items():
        f = spool / rel
        if f.is_file():
            on_disk[uid] = digest(dataset_bytes(f))
    missing = [uid for uid in acked if on_disk.get(uid) != acked[uid]]
    if missing:  # the index could be what is wrong: look at the files themselves
        for f in spool.rglob("*.dcm"):
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            if uid in missing and digest(dataset_bytes(f)) == acked[uid]:
                missing.remove(uid)
    return missing


@dataclass(frozen=True)
class PacsStudy:
    """Our result objects that Orthanc holds for one study, and which of them are current.

    *Current* (the definition the crash test checks): an SR is current when no other SR of
    the study names it in its Predecessor Documents Sequence; an SC is current when no
    other SC of the study names it in its Referenced Image Sequence (the SC's supersedes
    reference, :func:`dicom_node.results.sc.build_sc`). A result set is current when both
    its SR and SC are; "exactly one current result set per study" means one current SR,
    one current SC, and they are of the same generation (the SC's UID is the one the
    node recorded beside the SR's).
    """

    srs: dict[str, set[str]]  # SR SOP Instance UID -> SOP Instance UIDs it names as predecessors
    scs: dict[str, set[str]]  # SC SOP Instance UID -> SOP Instance UIDs it references

    @classmethod
    def of(cls, datasets: Iterable[pydicom.Dataset]) -> PacsStudy:
        """Sort one study's objects held by a PACS into SRs and SCs (others ignored)."""
        srs: dict[str, set[str]] = {}
        scs: dict[str, set[str]] = {}
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if ds.Modality == SR_MODALITY:
                srs[uid] = _predecessors(ds)
            elif ds.SOPClassUID == SC_SOP_CLASS:
                scs[uid] = _sc_references(ds)
        return cls(srs, scs)

    @property
    def current_srs(self) -> set[str]:
        named = set().union(*self.srs.values()) if self.srs else set()
        return set(self.srs) - named

    @property
    def current_scs(self) -> set[str]:
        named = set().union(*self.scs.values()) if self.scs else set()
        return set(self.scs) - named

    @property
    def duplicates(self) -> int:
        """Current objects beyond the one SR and one SC a study may have."""
        return max(0, len(self.current_srs) - 1) + max(0, len(self.current_scs) - 1)


def _predecessors(ds: pydicom.Dataset) -> set[str]:
    out: set[str] = set()
    for study in ds.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for inst in series.get("ReferencedSOPSequence", []):
                out.add(str(inst.ReferencedSOPInstanceUID))
    return out


def _sc_references(ds: pydicom.Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedImageSequence", [])}


def pacs_results(orthanc: Orthanc, study_uid: str) -> PacsStudy:
    """What Orthanc holds of our results for ``study_uid`` (every SR and SC, parsed)."""
    found = orthanc.request(
        "POST",
        "/tools/find",
        (b'{"Level": "Instance", "Query": {"StudyInstanceUID": "%s"}}' % study_uid.encode()),
    )
    return PacsStudy.of(
        pydicom.dcmread(io.BytesIO(http_bytes(orthanc.url(f"/instances/{orthanc_id}/file"))))
        for orthanc_id in found
    )
