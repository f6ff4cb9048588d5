"""Fixtures for the results and SCU tests: a phantom study on disk and real Storage SCPs.

The SCPs are real peers on loopback port 0 (pynetdicom in-process) or a free port
(dcmtk ``storescp`` as a subprocess); each fixture waits until its peer answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from nodes import terminate
from peers import free_port
from pipeline.support import storage_scp
from pydicom.dataset import Dataset
from pynetdicom.transport import ThreadedAssociationServer
from results.results_support import SENTINEL_ID, SENTINEL_NAME, RecordingSCP, Storescp

from models.dicom_io import CTSeries, read_series, scan_headers
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """A small positive head CT phantom (12 slices of 64 x 64) written as DICOM files."""
    spec = PhantomSpec(
        seed=3,
        n_slices=12,
        size=64,
        bleeds=("subdural", "intraparenchymal"),
        patient_name=SENTINEL_NAME,
        patient_id=SENTINEL_ID,
    )
    return write_study(tmp_path_factory.mktemp("phantom"), spec)


@pytest.fixture(scope="session")
def ct_series(phantom: WrittenStudy) -> CTSeries:
    return read_series(scan_headers(phantom.main.files).headers)


@pytest.fixture(scope="session")
def source_headers(phantom: WrittenStudy, ct_series: CTSeries) -> list[Dataset]:
    """Headers of the main series, in the CTSeries' slice order."""
    by_uid = {}
    for f in phantom.main.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_uid[str(ds.SOPInstanceUID)] = ds
    return [by_uid[u] for u in ct_series.sop_uids]


@pytest.fixture
def start_scp() -> Iterator[Callable[..., RecordingSCP]]:
    """Factory: ``start_scp(status=0x0000, ae_title="PACS", require_calling_aet=None)``."""
    servers: list[ThreadedAssociationServer] = []

    def start(
        status: int = 0x0000, ae_title: str = "PACS", require_calling_aet: list[str] | None = None
    ) -> RecordingSCP:
        holder: list[RecordingSCP] = []
        server = storage_scp(
            0,
            lambda e: holder[0].handle_store(e),
            ae_title=ae_title,
            require_calling_aet=require_calling_aet,
        )
        servers.append(server)
        scp = RecordingSCP(server=server, status=status)
        holder.append(scp)
        return scp

    yield start
    for s in servers:
        s.shutdown()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("storescp did not start listening")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Storescp]:
    """dcmtk ``storescp`` writing what it receives to ``tmp_path/in``."""
    out = tmp_path / "in"
    out.mkdir()
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), "+xa", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield Storescp(port=port, out_dir=out)
    finally:
        terminate(proc, timeout=10)
