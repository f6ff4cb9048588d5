"""Fixtures for the notification tests: checkpoints that make phantoms positive or
negative, nodes with inference on, and real receivers (an HTTP server, an MLLP listener)
on loopback ports in this process."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import Node, running_nodes
from notify.receivers import HttpReceiver, MllpReceiver
from pipeline.support import THRESHOLDS, make_checkpoint, pipeline_config

#: ``any`` never present: a random-init sigmoid never reaches 1.0 (pipeline.support).
NEGATIVE_THRESHOLDS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``positive``: any + epidural always present; ``negative``: nothing ever present."""
    root = tmp_path_factory.mktemp("notify-models")
    paths = {"positive": root / "positive.pt", "negative": root / "negative.pt"}
    make_checkpoint(paths["positive"], thresholds=THRESHOLDS)
    make_checkpoint(paths["negative"], thresholds=NEGATIVE_THRESHOLDS)
    return paths


@pytest.fixture
def start_node(
    tmp_path: Path, checkpoints: dict[str, Path], log_capture: io.StringIO
) -> Iterator[Callable[..., Node]]:
    """``start_node(notify, model="positive", **sections)``: a node with no PACS and the
    given ``notify`` section; stopped at teardown."""

    def make_config(
        base: Path, notify: dict[str, Any], model: str = "positive", **sections: Any
    ) -> Path:
        web = {"base_url": "https://ich.example.org/"}
        return pipeline_config(base, checkpoints[model], [], notify=notify, web=web, **sections)

    with running_nodes(tmp_path, log_capture, make_config) as start:
        yield start


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def mllp_receiver() -> Iterator[MllpReceiver]:
    receiver = MllpReceiver.start()
    yield receiver
    receiver.stop()
