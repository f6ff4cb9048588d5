"""Fixtures of the scale-out tests: a slower checkpoint and a cluster on PostgreSQL; the
input-64 checkpoint (the role tests only load it) and the real Orthanc are the shared ones
from ``node_fixtures``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_fixtures import checkpoint, orthanc
from nodes import Orthanc
from pipeline.support import random_checkpoint
from scaleout.cluster import Cluster

__all__ = ["checkpoint", "orthanc"]


@pytest.fixture(scope="module")
def scaleout_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init weights at input 96: a study takes long enough on CPU to be caught
    in a worker's hands (plumbing, not accuracy)."""
    return random_checkpoint(tmp_path_factory, input_size=96)


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_url: str, scaleout_checkpoint: Path, orthanc: Orthanc
) -> Iterator[Cluster]:
    """No process yet: each test starts the receivers and workers it needs."""
    c = Cluster(tmp_path / "cluster", postgres_url, scaleout_checkpoint, orthanc)
    try:
        yield c
    finally:
        c.stop_all()
