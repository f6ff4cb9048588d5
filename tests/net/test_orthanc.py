"""A real PACS pushes to the node: Orthanc with our node as modality ``ich``."""

from __future__ import annotations

import json
from collections.abc import Callable

from nodes import Node, Orthanc, dataset_bytes
from pydicom import dcmread

from train.data.phantoms import WrittenStudy


def test_orthanc_pushes_a_study_with_c_store(
    phantom: WrittenStudy,
    start_node: Callable[..., Node],
    orthanc_factory: Callable[[int], Orthanc],
) -> None:
    node = start_node(node={"allowed_calling_aets": ["ORTHANC"]})
    orthanc = orthanc_factory(node.port)
    assert orthanc.request("POST", "/modalities/ich/echo", b"{}") == {}
    ids = [orthanc.upload(f) for f in phantom.main.files]
    study_id = orthanc.request("GET", f"/instances/{ids[0]}/study")["ID"]
    body = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
    answer = orthanc.request("POST", "/modalities/ich/store", body)
    assert answer["InstancesCount"] == len(phantom.main.files)
    assert answer["FailedInstancesCount"] == 0
    study = node.wait_state(phantom.study_uid, "complete")
    assert study.instances == len(phantom.main.files)
    for src in phantom.main.files:
        sds = dcmread(src, stop_before_pixels=True)
        stored = (
            node.root / "spool" / str(sds.StudyInstanceUID) / str(sds.SeriesInstanceUID)
            / f"{sds.SOPInstanceUID}.dcm"
        )  # fmt: skip
        assert dataset_bytes(stored) == dataset_bytes(src)  # stored as Orthanc sent it
    assert "calling_aet=ORTHANC" in node.log.getvalue()
