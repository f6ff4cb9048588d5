"""Shared fixtures. Area-specific fixtures live beside their tests."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pg import PostgresServer, running_postgres

from dicom_node.logs import KeyValueFormatter, quiet_pynetdicom

# Tests run on 2 CPU cores shared with peers (dcmtk, Orthanc); oversubscribing threads
# makes them slower, not faster.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Whatever a test installs on the root logger goes with it.

    A CLI command run in-process (typer's ``CliRunner``) calls ``setup_logging``, whose
    handler writes to the runner's stream; left in place, every later test's log lines
    would hit that closed stream ("--- Logging error ---" in their output).
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def log_capture() -> Iterator[io.StringIO]:
    """Everything this process logs (root at DEBUG, pynetdicom at INFO as the node sets it).

    The no-PHI tests read it: what a test plants as patient data must never appear here.
    """
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    quiet_pynetdicom()
    yield buf
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run (started on first use)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh empty database on the session's server, as a SQLAlchemy URL."""
    return postgres.database()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's study index lives, once per database the node supports: a SQLite
    file under ``tmp_path``, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "index.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url
