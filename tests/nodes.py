"""Helpers for the receive-path tests: dcmtk senders, polling, phantom studies, node config.

Peers are real programs on free loopback ports; readiness is polled, never slept for.
dcmtk tools are called by full path (the venv's pynetdicom installs same-named scripts).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from peers import free_port
from pydicom import dcmread

from dicom_node.config import load_settings
from dicom_node.service import Service
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

STORESCU = "/usr/bin/storescu"
DCMCONV = "/usr/bin/dcmconv"
DCMCJPEG = "/usr/bin/dcmcjpeg"
DCMCJPLS = "/usr/bin/dcmcjpls"
DCMCRLE = "/usr/bin/dcmcrle"
DCMODIFY = "/usr/bin/dcmodify"
ORTHANC = "/usr/sbin/Orthanc"

SENTINEL_NAME = "SENTINEL^LEAKCHECK"
SENTINEL_ID = "SENTINEL-4242"

NODE_AET = "ICHNODE"
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM ``proc`` and reap it; SIGKILL if it has not exited within ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_tool(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=PEER_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def storescu(
    port: int,
    files: list[Path],
    *,
    aet: str = "SENDER",
    aec: str = NODE_AET,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` over one association with dcmtk storescu (TCP_NODELAY=1)."""
    return run_tool(
        [STORESCU, "-v", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port)]
        + [str(f) for f in files]
    )


def raw_store_response(port: int, path: Path, calling: str = "RAWSCU", aec: str = NODE_AET) -> Any:
    """Send a file's dataset bytes as they are (pynetdicom chunked mode: never decoded),
    over a CT Image Storage context in Explicit VR Little Endian; returns the C-STORE
    response's status dataset (Status, and ErrorComment where the node gave one)."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        assoc.release()
    assert "Status" in status, "no C-STORE response"
    return status


def raw_store(port: int, path: Path, calling: str = "RAWSCU", aec: str = NODE_AET) -> int:
    """:func:`raw_store_response`'s status code."""
    return int(raw_store_response(port, path, calling, aec).Status)


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta group (what travels on the wire)."""
    data = path.read_bytes()
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=[])
    meta_len = int(ds.file_meta.FileMetaInformationGroupLength)
    # preamble 128 + "DICM" 4 + group length element 12 + the group's other elements
    return data[128 + 4 + 12 + meta_len :]


def make_study(out: Path, seed: int, n_slices: int = 4, size: int = 64) -> WrittenStudy:
    spec = PhantomSpec(
        seed=seed, n_slices=n_slices, size=size, patient_name=SENTINEL_NAME,
        patient_id=SENTINEL_ID,
    )  # fmt: skip
    return write_study(out, spec, signed=False)


@dataclass
class Node:
    """A node running in this process (thread), with its config and captured log."""

    service: Service
    config: Path
    root: Path
    log: io.StringIO

    @property
    def port(self) -> int:
        return self.service.port

    def study(self, uid: str) -> Any:
        assert self.service.index is not None
        return self.service.index.study(uid)

    def delivery_states(self, uid: str) -> list[str]:
        """The state of each of the study's deliveries ([] before the first is queued: a
        study is ``done`` a moment before its deliveries exist)."""
        study = self.study(uid)
        return [d.state for d in study.deliveries] if study is not None else []

    def wait_state(self, uid: str, state: str, timeout: float = 20.0) -> Any:
        return wait_for(
            lambda: (s := self.study(uid)) is not None and s.state == state and s,
            timeout,
            f"study state {state}",
        )

    def spool_files(self) -> list[Path]:
        return sorted(p for p in (self.root / "spool").rglob("*.dcm"))


@contextmanager
def running_nodes(
    tmp_path: Path, log_capture: io.StringIO, make_config: Callable[..., Path]
) -> Iterator[Callable[..., Node]]:
    """A ``start(*args, root=None, **sections)`` factory of in-process nodes, each with
    ``make_config(root, *args, **sections)``; all stopped on exit (fixtures' teardown)."""
    running: list[Service] = []

    def start(*args: Any, root: Path | None = None, **sections: dict[str, Any]) -> Node:
        base = root or tmp_path / f"node{len(running)}"
        base.mkdir(parents=True, exist_ok=True)
        cfg = make_config(base, *args, **sections)
        service = Service(load_settings(cfg), cfg)
        running.append(service)
        service.start()
        return Node(service, cfg, base, log_capture)

    try:
        yield start
    finally:
        for service in running:
            service.stop(grace_s=5)


def write_config(root: Path, **sections: dict[str, Any]) -> Path:
    """config.yaml in ``root`` with relative storage paths, a free port and quick quiet."""
    cfg: dict[str, Any] = {
        "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": 0},
        "storage": {
            "spool_dir": "spool",
            "index_db": "index.sqlite",
            "jobs_db": "jobs.sqlite",
            "min_free_disk_mb": 1,
        },
        "study": {"quiet_seconds": 1},
        # The web server runs in every test node (as it does by default): any free port.
        "web": {"host": "127.0.0.1", "port": 0},
        # Receive-only: these tests are about ingest; studies stay ``complete``.
        "inference": {"enabled": False},
        "logging": {"level": "DEBUG", "hash_key": "test-key"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@dataclass
class Orthanc:
    """A real Orthanc with our node configured as modality ``ich``."""

    http_port: int
    dicom_port: int
    aet: str
    proc: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 60
    ) -> Any:
        req = urllib.request.Request(self.url(path), data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else None

    def upload(self, path: Path) -> str:
        return str(self.request("POST", "/instances", path.read_bytes())["ID"])

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll the REST API until it answers; fail at once if Orthanc exited."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.proc.returncode}")
            try:
                self.request("GET", "/system", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False
            return True

        wait_for(ready, timeout, "Orthanc REST")


#: Debian's DICOMweb plugin of Orthanc (package ``orthanc-dicomweb``, ``make debs``).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@contextmanager
def running_orthanc(
    root: Path,
    *,
    dicomweb: bool = False,
    http_port: int | None = None,
    settings: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """A real Orthanc on free ports (or ``http_port``), stopped on exit; with
    ``dicomweb``, its DICOMweb plugin serves STOW-RS at ``/dicom-web/studies``;
    ``settings`` are further Orthanc configuration keys (they win)."""
    root.mkdir(exist_ok=True)
    http_port, dicom_port = http_port or free_port(), free_port()
    plugins: dict[str, Any] = {"Plugins": []}
    if dicomweb:
        assert DICOMWEB_PLUGIN.is_file(), f"{DICOMWEB_PLUGIN} missing: make debs installs it"
        plugins = {
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
    config = {
        "Name": "test-orthanc",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomScuTimeout": 30,
        **plugins,
        **(settings or {}),
    }
    (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen(
        [ORTHANC, f"--logfile={root / 'orthanc.log'}", str(root / "orthanc.json")],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peer = Orthanc(http_port, dicom_port, "ORTHANC", proc)
    try:
        peer.wait_ready()
        yield peer
    finally:
        terminate(proc)


class ServeProcess:
    """``python -m dicom_node.cli serve --config F`` as a subprocess, its log in a file.

    The constructor returns once the node prints that it listens (model loaded, worker
    started): that line is the readiness signal, no sleep.
    """

    def __init__(self, config: Path, log: Path, cwd: Path | None = None) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self._fh,
            env=PEER_ENV,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # blocks until listening (or exit)
        #: ``node.role worker`` listens for no association: it says "working as <id>"
        self.worker_id = line.split()[2].rstrip(";") if line.startswith("working as") else ""
        if not line.startswith("listening on") and not self.worker_id:
            self.kill()
            raise AssertionError(f"serve did not start: {log.read_text(encoding='utf-8')}")
        self.port = int(line.split()[2].rsplit(":", 1)[1]) if not self.worker_id else 0

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._fh.close()

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        self.proc.send_signal(signal.SIGKILL)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._close()

    def stop(self) -> int:
        """SIGTERM: a clean shutdown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._close()
