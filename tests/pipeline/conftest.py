"""Fixtures for the pipeline tests: a checkpoint, a node with inference on, real PACS peers.

Peers are real programs or real sockets on free loopback ports, started by fixtures that
poll for readiness: pynetdicom Storage SCPs in this process, Orthanc as a subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import ORTHANC, PEER_ENV, Node, Orthanc, running_nodes, wait_for
from peers import free_port
from pipeline.support import RecordingPacs, make_checkpoint, pipeline_config, start_pacs


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init resnet18 checkpoint at input size 64 (plumbing, not accuracy)."""
    path = tmp_path_factory.mktemp("model") / "random-r18-64.pt"
    make_checkpoint(path, input_size=64)
    return path


@pytest.fixture
def start_node(
    tmp_path: Path, checkpoint: Path, log_capture: io.StringIO
) -> Iterator[Callable[..., Node]]:
    """Factory: ``start_node(destinations, root=None, **sections)`` runs a node with
    inference on in this process; every node is stopped at teardown."""

    def make_config(base: Path, destinations: list[dict[str, Any]], **sections: Any) -> Path:
        return pipeline_config(base, checkpoint, destinations, **sections)

    with running_nodes(tmp_path, log_capture, make_config) as start:
        yield start


@pytest.fixture
def pacs_factory() -> Iterator[Callable[..., RecordingPacs]]:
    """Factory: ``pacs_factory(port=0, ae_title="PACS", require_calling_aet=None)``."""
    servers: list[RecordingPacs] = []

    def start(port: int = 0, **kwargs: Any) -> RecordingPacs:
        pacs = start_pacs(port, **kwargs)
        servers.append(pacs)
        return pacs

    yield start
    for pacs in servers:
        pacs.stop()


#: Debian's DICOMweb plugin of Orthanc (package ``orthanc-dicomweb``).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc (own free ports, TCP_NODELAY=1); the node is added as modality
    ``ich`` by the test through REST, once the node's port is known."""
    yield from _run_orthanc(tmp_path / "orthanc", {"Plugins": []})


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[Orthanc]:
    """The same Orthanc with its DICOMweb plugin, STOW-RS at ``/dicom-web/studies``."""
    if not DICOMWEB_PLUGIN.is_file():
        pytest.fail(f"{DICOMWEB_PLUGIN} missing: make deps installs orthanc-dicomweb")
    extra = {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    yield from _run_orthanc(tmp_path / "orthanc-dicomweb", extra)


def _run_orthanc(root: Path, extra: dict[str, Any]) -> Iterator[Orthanc]:
    root.mkdir()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "pipeline-orthanc",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomScuTimeout": 30,
        **extra,
    }
    (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen(
        [ORTHANC, f"--logfile={root / 'orthanc.log'}", str(root / "orthanc.json")],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peer = Orthanc(http_port, dicom_port, "ORTHANC", proc)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with {proc.returncode}")
        try:
            peer.request("GET", "/system", timeout=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    try:
        wait_for(ready, 30, "Orthanc REST")
        yield peer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
