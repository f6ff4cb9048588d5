"""STOW-RS sends against a real HTTP server on loopback: the multipart body it receives
parses back into the same DICOM instances, auth headers are sent, and each kind of answer
(5xx, 429, 4xx, a 200 listing failed SOP instances, nobody listening) is sorted into
transient or permanent as delivery's backoff needs."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_node.config import DicomwebDestination
from dicom_node.errors import PermanentError, TransientError
from dicom_node.net.stow import failed_count, store


@dataclass
class StowServer:
    """Answers every POST with ``status`` and ``body``; records what it received."""

    port: int
    status: int = 200
    body: bytes = b"{}"
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def stow_server() -> Iterator[StowServer]:
    state = StowServer(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers.items()), data))
            self.send_response(state.status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def instance(path: Path, study_uid: str) -> Path:
    """A small Secondary Capture as a GE console would write it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.SeriesDescription = "Axial 5mm SC"
    ds.save_as(path, enforce_file_format=True)
    return path


def dest(port: int, path: str = "/dicom-web", **extra: Any) -> DicomwebDestination:
    return DicomwebDestination(
        kind="dicomweb", name="archive", url=f"http://127.0.0.1:{port}{path}", **extra
    )


def test_body_is_multipart_related_of_the_instances_with_bearer_auth(
    tmp_path: Path, stow_server: StowServer
) -> None:
    study_uid = generate_uid()
    files = [instance(tmp_path / f"{i}.dcm", study_uid) for i in range(2)]
    store(dest(stow_server.port, auth={"bearer": "t0ken"}), files)

    ((path, headers, body),) = stow_server.requests
    assert path == "/dicom-web/studies"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Accept"] == "application/dicom+json"
    raw = f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 2
    got = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in parts]
    assert [d.SOPInstanceUID for d in got] == [pydicom.dcmread(f).SOPInstanceUID for f in files]


def test_basic_auth_header(tmp_path: Path, stow_server: StowServer) -> None:
    files = [instance(tmp_path / "a.dcm", generate_uid())]
    store(dest(stow_server.port, auth={"username": "ich", "password": "s3cret"}), files)
    ((_, headers, _),) = stow_server.requests
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"ich:s3cret").decode()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientError),
        (503, TransientError),
        (408, TransientError),
        (429, TransientError),
        (400, PermanentError),
        (401, PermanentError),
        (404, PermanentError),
        (409, PermanentError),
        (415, PermanentError),
    ],
)
def test_http_errors_are_sorted(
    tmp_path: Path, stow_server: StowServer, status: int, error: type[Exception]
) -> None:
    stow_server.status = status
    with pytest.raises(error, match=f"HTTP {status}"):
        store(dest(stow_server.port), [instance(tmp_path / "a.dcm", generate_uid())])


def failed_body(n: int) -> bytes:
    items = [
        {
            "00081150": {"vr": "UI", "Value": [SecondaryCaptureImageStorage]},
            "00081155": {"vr": "UI", "Value": [generate_uid()]},
            "00081197": {"vr": "US", "Value": [0xA700]},
        }
        for _ in range(n)
    ]
    return json.dumps({"00081198": {"vr": "SQ", "Value": items}}).encode()


@pytest.mark.parametrize("status", [200, 202])
def test_failed_sop_sequence_in_a_success_answer_is_a_failure(
    tmp_path: Path, stow_server: StowServer, status: int
) -> None:
    stow_server.status = status
    stow_server.body = failed_body(1)
    files = [instance(tmp_path / f"{i}.dcm", generate_uid()) for i in range(2)]
    with pytest.raises(TransientError, match="1 of 2 instances not stored"):
        store(dest(stow_server.port), files)


def test_failed_count_of_answers() -> None:
    assert failed_count(b"") == 0
    assert failed_count(b"{}") == 0
    assert failed_count(failed_body(3)) == 3
    assert failed_count(b"[" + failed_body(2) + b"]") == 2
    assert failed_count(b'{"00081198": {"vr": "SQ"}}') == 0  # present but empty
    xml = b'<NativeDicomModel><DicomAttribute tag="00081198" vr="SQ"><Item number="1"/>'
    assert failed_count(xml + b"</DicomAttribute></NativeDicomModel>") == 1


def test_nobody_listening_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="cannot reach STOW-RS endpoint"):
        store(dest(free_port()), [instance(tmp_path / "a.dcm", generate_uid())])
