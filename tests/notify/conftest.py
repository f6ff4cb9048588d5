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
from pipeline.support import THRESHOLDS, pipeline_config

from models.checkpoint import CheckpointMeta, save_checkpoint
from models.network import CNNLSTM, NetworkConfig

#: ``any`` never present: a random-init sigmoid never reaches 1.0 (pipeline.support).
NEGATIVE_THRESHOLDS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def _checkpoint(path: Path, thresholds: tuple[float, ...]) -> Path:
    cfg = NetworkConfig(backbone="resnet18", lstm_hidden=16)
    meta = CheckpointMeta(
        network=cfg, input_size=64, thresholds=thresholds, trained_on="random-init"
    )
    save_checkpoint(path, CNNLSTM(cfg), meta)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``positive``: any + epidural always present; ``negative``: nothing ever present."""
    root = tmp_path_factory.mktemp("notify-models")
    return {
        "positive": _checkpoint(root / "positive.pt", THRESHOLDS),
        "negative": _checkpoint(root / "negative.pt", NEGATIVE_THRESHOLDS),
    }


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
