"""Fixtures for the pipeline tests: a node with inference on, on either index database.

The checkpoint and the peers (pynetdicom Storage SCPs in this process, Orthanc as a
subprocess, on free loopback ports, polled for readiness) are the shared ones from
``node_fixtures``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_fixtures import checkpoint, orthanc, pacs, pacs_factory
from nodes import Node, Orthanc, running_nodes, running_orthanc
from pg import PostgresServer
from pipeline.support import RecordingPacs, destination, pipeline_config

__all__ = ["checkpoint", "orthanc", "pacs", "pacs_factory"]


@pytest.fixture(params=["sqlite", "postgresql"])
def index_backend(request: pytest.FixtureRequest) -> str:
    """Every pipeline test runs on both index databases: the embedded SQLite default and
    a real PostgreSQL server (what several receivers and workers share)."""
    return str(request.param)


@pytest.fixture
def index_for(
    index_backend: str, request: pytest.FixtureRequest
) -> Callable[[Path], dict[str, Any]]:
    """``index_for(root)``: the ``storage`` settings of a node kept in ``root``. On
    PostgreSQL each root gets a database of its own, and the same one again when a test
    restarts the node on that root."""
    server: PostgresServer | None = (
        request.getfixturevalue("postgres") if index_backend == "postgresql" else None
    )
    urls: dict[Path, str] = {}

    def storage(root: Path) -> dict[str, Any]:
        if server is None:
            return {}
        if root not in urls:
            urls[root] = server.database()
        return {"index_db": urls[root]}

    return storage


@pytest.fixture
def start_node(
    tmp_path: Path,
    checkpoint: Path,
    log_capture: io.StringIO,
    index_for: Callable[[Path], dict[str, Any]],
) -> Iterator[Callable[..., Node]]:
    """Factory: ``start_node(destinations, root=None, **sections)`` runs a node with
    inference on in this process (index on SQLite or PostgreSQL, see ``index_backend``);
    every node is stopped at teardown."""

    def make_config(base: Path, destinations: list[dict[str, Any]], **sections: Any) -> Path:
        sections["storage"] = {**index_for(base), **sections.get("storage", {})}
        return pipeline_config(base, checkpoint, destinations, **sections)

    with running_nodes(tmp_path, log_capture, make_config) as start:
        yield start


@pytest.fixture
def node(start_node: Callable[..., Node], pacs: RecordingPacs) -> Node:
    """A node with inference on whose one destination is ``pacs``."""
    return start_node([destination(pacs.port)])


@pytest.fixture(params=["sqlite", "postgresql"])
def timers_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a scheduler keeps its timers, once per database: ``jobs.sqlite`` in
    ``tmp_path`` (the file an older release kept its APScheduler jobs in), or a PostgreSQL
    index's fresh database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[Orthanc]:
    """The same Orthanc with its DICOMweb plugin, STOW-RS at ``/dicom-web/studies``."""
    with running_orthanc(tmp_path / "orthanc-dicomweb", dicomweb=True) as peer:
        yield peer
