"""Fixtures shared by the node's test areas, in one place: phantom studies in every
transfer syntax, a receive-only node, a random-init checkpoint, recording PACSs and a real
Orthanc. An area's ``conftest.py`` imports the ones it uses (net, store, node and
reliability the receive path; pipeline, web and scaleout the checkpoint and the peers).
Peers are real programs on free loopback ports; readiness is polled.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from nodes import (
    DCMCJPEG,
    DCMCJPLS,
    DCMCONV,
    DCMCRLE,
    NODE_AET,
    SENTINEL_ID,
    SENTINEL_NAME,
    Node,
    Orthanc,
    run_tool,
    running_nodes,
    running_orthanc,
    write_config,
)
from pipeline.support import RecordingPacs, random_checkpoint, start_pacs
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


# -- the model and the peers a node sends to ------------------------------------------------


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init resnet18 checkpoint at input size 64 (plumbing, not accuracy)."""
    return random_checkpoint(tmp_path_factory, input_size=64)


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
def pacs(pacs_factory: Callable[..., RecordingPacs]) -> RecordingPacs:
    """A recording Storage SCP (AE ``PACS``) on a free port, stopped at teardown."""
    return pacs_factory()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc (own free ports, TCP_NODELAY=1); the node is added as modality
    ``ich`` by the test through REST, once the node's port is known."""
    with running_orthanc(tmp_path / "orthanc") as peer:
        yield peer


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[[int], Orthanc]]:
    """Factory: start Orthanc with a node's port configured as modality ``ich`` from the
    start (its configuration file, not REST); every one stopped at teardown."""
    with ExitStack() as stack:

        def start(node_port: int) -> Orthanc:
            modalities = {"DicomModalities": {"ich": [NODE_AET, "127.0.0.1", node_port]}}
            return stack.enter_context(running_orthanc(tmp_path / "orthanc", settings=modalities))

        yield start
