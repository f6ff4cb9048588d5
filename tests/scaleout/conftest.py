"""Fixtures of the scale-out tests: a checkpoint, a real Orthanc, a cluster on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import Orthanc
from pipeline.support import make_checkpoint, running_orthanc
from scaleout.cluster import Cluster


@pytest.fixture(scope="module")
def scaleout_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init weights at input 96: a study takes long enough on CPU to be caught
    in a worker's hands (plumbing, not accuracy)."""
    path = tmp_path_factory.mktemp("scaleout-model") / "random-r18-96.pt"
    make_checkpoint(path, input_size=96)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init weights at input 64 (the role tests only load them)."""
    path = tmp_path_factory.mktemp("roles-model") / "random-r18-64.pt"
    make_checkpoint(path, input_size=64)
    return path


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc") as peer:
        yield peer


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
