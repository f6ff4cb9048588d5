"""Fixtures for the receive-path tests (net, store, node): phantom studies in every
transfer syntax, a running node, a real Orthanc. Peers are real programs on free loopback
ports; readiness is polled.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import (
    DCMCJPEG,
    DCMCJPLS,
    DCMCONV,
    DCMCRLE,
    NODE_AET,
    ORTHANC,
    PEER_ENV,
    SENTINEL_ID,
    SENTINEL_NAME,
    Node,
    Orthanc,
    run_tool,
    running_nodes,
    write_config,
)
from peers import free_port
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

# -- phantoms ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """A small head CT (4 slices of 64x64, unsigned 12-bit) with sentinel patient data."""
    out = tmp_path_factory.mktemp("phantom")
    spec = PhantomSpec(
        seed=7, n_slices=4, size=64, patient_name=SENTINEL_NAME, patient_id=SENTINEL_ID
    )
    return write_study(out, spec, signed=False)


def _pydicom_encode(src: Path, dst: Path, syntax: str, **kwargs: Any) -> None:
    ds = dcmread(src)
    ds.compress(syntax, generate_instance_uid=False, **kwargs)
    ds.save_as(dst, enforce_file_format=True)


@pytest.fixture(scope="session")
def ts_variants(
    phantom: WrittenStudy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Path]]:
    """The phantom's files in each transfer syntax the node must accept, keyed by TS UID.

    dcmtk tools make most of them (as a PACS would have); JPEG 2000 comes from pydicom's
    encoder (pylibjpeg-openjpeg), as dcmtk has no free JPEG 2000 codec.
    """
    root = tmp_path_factory.mktemp("variants")
    makers: dict[str, Callable[[Path, Path], Any]] = {
        str(ExplicitVRLittleEndian): lambda s, d: shutil.copyfile(s, d),
        str(ImplicitVRLittleEndian): lambda s, d: run_tool([DCMCONV, "+ti", str(s), str(d)]),
        str(DeflatedExplicitVRLittleEndian): lambda s, d: run_tool(
            [DCMCONV, "+td", str(s), str(d)]
        ),
        str(JPEGBaseline8Bit): lambda s, d: run_tool([DCMCJPEG, "+eb", "+un", str(s), str(d)]),
        str(JPEGLosslessSV1): lambda s, d: run_tool([DCMCJPEG, "+e1", "+un", str(s), str(d)]),
        str(JPEGLSLossless): lambda s, d: run_tool([DCMCJPLS, "+el", "+un", str(s), str(d)]),
        str(JPEGLSNearLossless): lambda s, d: run_tool([DCMCJPLS, "+en", "+un", str(s), str(d)]),
        str(RLELossless): lambda s, d: run_tool([DCMCRLE, "+un", str(s), str(d)]),
        str(JPEG2000Lossless): lambda s, d: _pydicom_encode(s, d, JPEG2000Lossless),
        str(JPEG2000): lambda s, d: _pydicom_encode(s, d, JPEG2000, j2k_cr=[10]),
    }
    out: dict[str, list[Path]] = {}
    for ts, make in makers.items():
        folder = root / ts
        folder.mkdir()
        files = []
        for src in phantom.main.files:
            dst = folder / src.name
            make(src, dst)
            assert dst.exists(), f"could not make {ts} from {src.name}"
            got = str(dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            assert got == ts, f"{dst} has transfer syntax {got}, wanted {ts}"
            files.append(dst)
        out[ts] = files
    return out


# -- the node ------------------------------------------------------------------------------


@pytest.fixture
def start_node(tmp_path: Path, log_capture: io.StringIO) -> Iterator[Callable[..., Node]]:
    """Factory: start a node in this process with config overrides; stopped at teardown."""
    with running_nodes(tmp_path, log_capture, write_config) as start:
        yield start


# -- Orthanc -------------------------------------------------------------------------------


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[[int], Orthanc]]:
    """Factory: start Orthanc (config written into tmp_path) pointing at a node port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(node_port: int) -> Orthanc:
        root = tmp_path / "orthanc"
        root.mkdir(exist_ok=True)
        http_port, dicom_port = free_port(), free_port()
        config = {
            "Name": "test-orthanc",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"ich": [NODE_AET, "127.0.0.1", node_port]},
            "DicomScuTimeout": 30,
            "Plugins": [],
        }
        (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
        proc = subprocess.Popen(
            [ORTHANC, f"--logfile={root / 'orthanc.log'}", str(root / "orthanc.json")],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        orthanc = Orthanc(http_port, dicom_port, "ORTHANC", proc)
        orthanc.wait_ready()
        return orthanc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
