"""Fixtures for the pipeline tests: a checkpoint, a node with inference on, real PACS peers.

Peers are real programs or real sockets on free loopback ports, started by fixtures that
poll for readiness: pynetdicom Storage SCPs in this process, Orthanc as a subprocess.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import Node, Orthanc, running_nodes
from pipeline.support import (
    RecordingPacs,
    make_checkpoint,
    pipeline_config,
    running_orthanc,
    start_pacs,
)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init resnet18 checkpoint at input size 64 (plumbing, not accuracy)."""
    path = tmp_path_factory.mktemp("model") / "random-r18-64.pt"
    make_checkpoint(path, input_size=64)
    return path


@pytest.fixture
def node_storage() -> dict[str, Any]:
    """``storage`` keys every node of a test starts with (under what the test passes):
    none here; override or parametrise it (``{"index_db": postgres_url}``) to run the
    pipeline tests on another index database."""
    return {}


@pytest.fixture
def start_node(
    tmp_path: Path, checkpoint: Path, log_capture: io.StringIO, node_storage: dict[str, Any]
) -> Iterator[Callable[..., Node]]:
    """Factory: ``start_node(destinations, root=None, **sections)`` runs a node with
    inference on in this process; every node is stopped at teardown. ``storage=...``
    adds to :func:`node_storage`."""

    def make_config(base: Path, destinations: list[dict[str, Any]], **sections: Any) -> Path:
        sections["storage"] = {**node_storage, **sections.get("storage", {})}
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


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc (own free ports, TCP_NODELAY=1); the node is added as modality
    ``ich`` by the test through REST, once the node's port is known."""
    with running_orthanc(tmp_path / "orthanc") as peer:
        yield peer


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[Orthanc]:
    """The same Orthanc with its DICOMweb plugin, STOW-RS at ``/dicom-web/studies``."""
    with running_orthanc(tmp_path / "orthanc-dicomweb", dicomweb=True) as peer:
        yield peer
