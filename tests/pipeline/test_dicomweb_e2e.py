"""End to end with a real DICOMweb archive: Orthanc (with Debian's DICOMweb plugin)
pushes a study to the node over C-STORE, and the node's SR and SC go back over STOW-RS
into the same study; a destination whose URL has a wrong path (404) fails permanently,
and one whose archive is down is retried until it is up."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from nodes import Node, Orthanc, running_orthanc, storescu, wait_for
from peers import free_port
from pipeline.support import assert_no_phi, http_bytes, orthanc_holds, orthanc_sends, phantom
from prometheus_client import generate_latest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from typer.testing import CliRunner

from dicom_node.cli import app


def dicomweb(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "dicomweb",
        "name": name,
        "url": url,
        "timeout_s": 30,
        "max_attempts": 3,
        "retry_base_s": 0.3,
        **extra,
    }


def test_sr_and_sc_arrive_over_stow_rs_and_a_404_fails_permanently(
    tmp_path: Path, orthanc_dicomweb: Orthanc, start_node: Callable[..., Node]
) -> None:
    orthanc = orthanc_dicomweb
    node = start_node(
        [
            dicomweb("archive", orthanc.url("/dicom-web")),
            dicomweb("wrong-path", orthanc.url("/no-such-root")),
        ],
        node={"allowed_calling_aets": [orthanc.aet]},
    )
    study = phantom(tmp_path / "src", seed=67, n_slices=12, bleeds=("subdural",))
    study_id = orthanc_sends(orthanc, node.port, study)

    n_src = len(study.main.files)
    held = orthanc_holds(
        orthanc,
        study_id,
        n_src + 2,
        "Orthanc to hold the SR and the SC (over STOW-RS) in the source study",
    )
    source_sops = set(study.main.sop_uids)
    kinds = {}
    for item in held:
        if item["MainDicomTags"]["SOPInstanceUID"] in source_sops:
            continue
        path = tmp_path / f"{item['ID']}.dcm"
        path.write_bytes(http_bytes(orthanc.url(f"/instances/{item['ID']}/file")))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.SeriesInstanceUID != study.main.series_uid
        kinds[ds.SOPClassUID] = ds.SOPInstanceUID
    assert set(kinds) == {Comprehensive3DSRStorage, SecondaryCaptureImageStorage}

    def deliveries() -> dict[str, Any] | None:
        cli = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
        assert cli.exit_code == 0, cli.output
        (row,) = json.loads(cli.stdout)
        d: dict[str, Any] = row["deliveries"]
        settled = all(v["state"] != "pending" for v in d.values())
        return d if settled and set(d) == {"archive", "wrong-path"} else None

    rows = wait_for(deliveries, 60, "both deliveries to settle")
    assert rows["archive"]["state"] == "sent"
    assert rows["archive"]["attempts"] == 1
    assert rows["archive"]["last_error"] is None
    assert rows["wrong-path"]["state"] == "failed"
    assert rows["wrong-path"]["attempts"] == 1  # permanent: not retried
    assert "HTTP 404" in rows["wrong-path"]["last_error"]

    # An attempt is counted once it returns, a moment after its row was written.
    counted = (
        'dicom_node_deliveries_total{destination="archive",outcome="sent"} 1.0\n',
        'dicom_node_deliveries_total{destination="wrong-path",outcome="failed"} 1.0\n',
    )
    wait_for(
        lambda: all(c in generate_latest(node.service.metrics.registry).decode() for c in counted),
        30,
        "both attempts counted",
    )
    assert_no_phi(node.log.getvalue(), study)


def test_archive_down_is_retried_and_sent_once_it_is_up(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    http_port = free_port()  # where the archive will listen; nothing does yet
    node = start_node(
        [
            dicomweb(
                "archive",
                f"http://127.0.0.1:{http_port}/dicom-web",
                max_attempts=100,
                retry_base_s=0.2,
                retry_cap_s=0.5,
            )
        ]
    )
    study = phantom(tmp_path / "src", seed=68, n_slices=10)
    assert storescu(node.port, study.main.files).returncode == 0

    def delivery() -> Any:
        s = node.study(study.study_uid)
        rows = {d.destination: d for d in s.deliveries} if s is not None else {}
        return rows.get("archive")

    down = wait_for(
        lambda: (d := delivery()) is not None and d.attempts >= 2 and d,
        90,
        "two failed attempts while the archive is down",
    )
    assert down.state == "pending"  # transient: still to be retried
    assert "cannot reach STOW-RS endpoint" in (down.last_error or "")

    with running_orthanc(tmp_path / "archive", dicomweb=True, http_port=http_port) as archive:
        sent = wait_for(
            lambda: (d := delivery()) is not None and d.state != "pending" and d,
            60,
            "the delivery to settle once the archive is up",
        )
        assert sent.state == "sent"
        assert sent.attempts > down.attempts
        (held,) = archive.request("GET", "/studies")
        tags = archive.request("GET", f"/studies/{held}")["MainDicomTags"]
        assert tags["StudyInstanceUID"] == study.study_uid
        assert len(archive.request("GET", f"/studies/{held}/instances")) == 2  # SR + SC
    assert_no_phi(node.log.getvalue(), study)
