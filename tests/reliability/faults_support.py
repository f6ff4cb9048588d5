"""Helpers for the PACS-fault and disk-fault tests: the node as a subprocess
(``dicom-node serve``), its state as ``dicom-node studies --json`` prints it, dcmtk's
storescp as a PACS that comes up late, a PACS that accepts the association and then never
answers, and a small tmpfs for a real full disk.

Everything is a real process or a real socket on loopback; nothing is mocked.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes import PEER_ENV, Orthanc, ServeProcess, running_orthanc, terminate, wait_for

STORESCP = "/usr/bin/storescp"


@contextmanager
def serving(config: Path, log: Path) -> Iterator[ServeProcess]:
    """``dicom-node serve`` as a subprocess, stopped (SIGTERM) on exit."""
    node = ServeProcess(config, log)
    try:
        yield node
    finally:
        if node.proc.poll() is None:
            node.stop()


def studies_json(config: Path) -> list[dict[str, Any]]:
    """What an operator sees: ``dicom-node studies --json`` (a second process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "studies", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=120, check=False, env=PEER_ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def log_events(log: Path, event: str) -> list[str]:
    """The node's log lines of ``event`` (text format: ``event=<name>`` as a field)."""
    text = log.read_text(encoding="utf-8", errors="replace")
    return [ln for ln in text.splitlines() if f"event={event} " in ln + " "]


# -- dcmtk storescp: a PACS started late, on a port chosen before ----------------------------


@dataclass
class Storescp:
    """dcmtk's storescp writing each received object to its own file (``+uf``)."""

    proc: subprocess.Popen[bytes]
    out: Path
    port: int

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        terminate(self.proc)


def start_storescp(port: int, out: Path, log: Path, *, aet: str = "PACS") -> Storescp:
    """storescp on 127.0.0.1:``port``; returns once the port accepts connections."""
    out.mkdir(parents=True, exist_ok=True)
    fh = log.open("ab")
    proc = subprocess.Popen(
        [STORESCP, "-v", "-aet", aet, "+uf", "-od", str(out), str(port)],
        stdout=fh, stderr=subprocess.STDOUT, env=PEER_ENV,
    )  # fmt: skip
    fh.close()

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"storescp exited with {proc.returncode}: {log.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, 30, "storescp to listen")
    return Storescp(proc, out, port)


# -- Orthanc refusing every calling AE it does not know ------------------------------------


@contextmanager
def strict_orthanc(root: Path) -> Iterator[Orthanc]:
    """A real Orthanc that knows no modality and allows nothing to unknown ones: it
    rejects our association ("Calling AE Title Not Recognized", permanent)."""
    closed = {f"DicomAlwaysAllow{op}": False for op in ("Echo", "Store", "Find", "Move", "Get")}
    with running_orthanc(root, settings={"DicomModalities": {}, **closed}) as peer:
        yield peer


# -- a PACS that accepts the association and never answers a C-STORE ---------------------


@dataclass
class Connection:
    """One association the silent PACS accepted: what the caller sent, how it ended."""

    opened: float
    closed: float | None = None
    pdu_types: list[int] = field(default_factory=list)


def associate_ac(rq: bytes) -> bytes:
    """An A-ASSOCIATE-AC (PS3.8 9.3.3) accepting every context of the A-ASSOCIATE-RQ
    ``rq`` (its PDU body, after the 6-byte header) with its first transfer syntax."""
    called, calling = rq[4:20], rq[20:36]
    items = b""
    pos = 68
    while pos + 4 <= len(rq):
        kind, length = rq[pos], struct.unpack(">H", rq[pos + 2 : pos + 4])[0]
        value = rq[pos + 4 : pos + 4 + length]
        if kind == 0x10:  # application context: echoed
            items += rq[pos : pos + 4 + length]
        elif kind == 0x20:  # presentation context: accept with its first transfer syntax
            ctx_id, sub, first_ts = value[0], 4, b""
            while sub + 4 <= len(value):
                sk, sl = value[sub], struct.unpack(">H", value[sub + 2 : sub + 4])[0]
                if sk == 0x40 and not first_ts:
                    first_ts = value[sub + 4 : sub + 4 + sl]
                sub += 4 + sl
            body = bytes([ctx_id, 0, 0, 0]) + b"\x40\x00" + struct.pack(">H", len(first_ts))
            body += first_ts
            items += b"\x21\x00" + struct.pack(">H", len(body)) + body
        pos += 4 + length
    impl = b"1.2.826.0.1.3680043.9.7433.1"
    user = b"\x51\x00\x00\x04" + struct.pack(">I", 16384)
    user += b"\x52\x00" + struct.pack(">H", len(impl)) + impl
    items += b"\x50\x00" + struct.pack(">H", len(user)) + user
    body = b"\x00\x01\x00\x00" + called + calling + bytes(32) + items
    return b"\x02\x00" + struct.pack(">I", len(body)) + body


class SilentPacs:
    """Accepts associations (a real A-ASSOCIATE-AC) and then answers nothing: the C-STORE
    request is read and dropped, the socket left open until the caller closes it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = Connection(time.monotonic())
            with self._lock:
                self.connections.append(record)
            t = threading.Thread(target=self._talk, args=(conn, record), daemon=True)
            self._threads.append(t)
            t.start()

    def _talk(self, conn: socket.socket, record: Connection) -> None:
        conn.settimeout(0.2)
        buf = b""
        answered = False
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break  # the caller closed: what the DIMSE timeout must make it do
                buf += chunk
                while len(buf) >= 6:
                    length = struct.unpack(">I", buf[2:6])[0]
                    if len(buf) < 6 + length:
                        break
                    kind, body, buf = buf[0], buf[6 : 6 + length], buf[6 + length :]
                    record.pdu_types.append(kind)
                    if kind == 0x01 and not answered:
                        conn.sendall(associate_ac(body))
                        answered = True
            record.closed = time.monotonic()

    def closed(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if c.closed is not None]

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(timeout=5)


# -- a small filesystem that can really fill up -------------------------------------------


@contextmanager
def small_tmpfs(where: Path, size_mb: int, inodes: int = 4096) -> Iterator[Path | None]:
    """A tmpfs of ``size_mb`` and ``inodes`` files mounted at ``where`` (yields None where
    mounting is not allowed: not root, or no CAP_SYS_ADMIN in a container); unmounted on
    exit."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mb}m,nr_inodes={inodes},mode=0700"
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(where: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on ``where``'s filesystem."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    filler = where / "filler.bin"
    with filler.open("wb") as fh:
        remaining = max(0, free - leave_bytes)
        block = bytes(1 << 20)
        while remaining > 0:
            n = min(remaining, len(block))
            fh.write(block[:n])
            remaining -= n
    return filler


def fill_inodes(where: Path, leave: int) -> list[Path]:
    """Empty files on ``where`` until its filesystem has no inode left, then remove
    ``leave`` of them: blocks stay free (the spool's statvfs guard sees room), yet the
    ``leave + 1``-th new file fails with ENOSPC. Returns the files still there."""
    folder = where / "inode-filler"
    folder.mkdir()
    made: list[Path] = []
    while True:
        path = folder / f"{len(made)}"
        try:
            path.touch(exist_ok=False)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            break
        made.append(path)
    for path in made[-leave:]:
        path.unlink()
    return made[:-leave]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    """``nodes.wait_for`` with the generous hang guard a loaded 2-core machine needs."""
    return wait_for(predicate, timeout, what)
