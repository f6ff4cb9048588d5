"""Fixtures for the web server tests: nodes with inference on (random-init checkpoint) or
receive-only; the checkpoint and the recording PACS they send to are the shared ones from
``node_fixtures``.

Everything is real: the node in this process with uvicorn on a free port, dcmtk
storescu as the sender, HTTP over loopback (httpx), Prometheus text parsed by
prometheus-client's own parser.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_fixtures import checkpoint, pacs, pacs_factory
from nodes import Node, running_nodes, write_config
from pipeline.support import pipeline_config

__all__ = ["checkpoint", "pacs", "pacs_factory"]


@pytest.fixture
def start_node(
    tmp_path: Path, checkpoint: Path, log_capture: io.StringIO
) -> Iterator[Callable[..., Node]]:
    """Factory: ``start_node(destinations, **sections)`` with inference on (CPU)."""

    def make_config(base: Path, destinations: list[dict[str, Any]], **sections: Any) -> Path:
        return pipeline_config(base, checkpoint, destinations, **sections)

    with running_nodes(tmp_path, log_capture, make_config) as start:
        yield start


@pytest.fixture
def start_receiver(tmp_path: Path, log_capture: io.StringIO) -> Iterator[Callable[..., Node]]:
    """Factory: ``start_receiver(**sections)``, a receive-only node (no model)."""
    with running_nodes(tmp_path / "rx", log_capture, write_config) as start:
        yield start
