"""A delivery channel sends only the result files its destination takes, and a result
whose files retention already removed is a permanent failure, not a retry for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from peers import free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.config import Destination, DicomwebDestination
from dicom_node.errors import PermanentError, TransientError
from dicom_node.net.scu import ScuTimeouts
from dicom_node.pipeline.delivery import DeliverySettings, destination_channel

SETTINGS = DeliverySettings("ICHNODE", ScuTimeouts(connect_s=2.0, acse_s=2.0))
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _sr_file(path: Path) -> Path:
    """A readable Part 10 file (the channel reads what it sends)."""
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _destinations(port: int, send: tuple[str, ...]) -> list[Any]:
    return [
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port, send=send),
        DicomwebDestination(
            kind="dicomweb", name="vna", url=f"http://127.0.0.1:{port}/dicom-web", send=send
        ),
    ]


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_a_result_whose_files_are_gone_fails_for_good(tmp_path: Path, kind: str) -> None:
    sr = tmp_path / "sr.dcm"
    sr.write_bytes(b"x")
    result = {"files": {"sr": str(sr), "sc": str(tmp_path / "sc.dcm")}}  # sc removed
    dest = next(d for d in _destinations(free_port(), ("sr", "sc")) if d.kind == kind)
    with pytest.raises(PermanentError, match="result files are missing"):
        destination_channel(dest, SETTINGS).send("1.2.3", result)


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_a_missing_file_the_destination_does_not_take_is_no_failure(
    tmp_path: Path, kind: str
) -> None:
    """SR only: the missing SC is not looked at; the attempt goes to the network (a
    closed port here: a transient failure, which is retried)."""
    sr = _sr_file(tmp_path / "sr.dcm")
    result = {"files": {"sr": str(sr), "sc": str(tmp_path / "sc.dcm")}}
    dest = next(d for d in _destinations(free_port(), ("sr",)) if d.kind == kind)
    with pytest.raises(TransientError):
        destination_channel(dest, SETTINGS).send("1.2.3", result)
