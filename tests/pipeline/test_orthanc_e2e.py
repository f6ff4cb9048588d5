"""End to end with a real PACS: Orthanc pushes a study to the node, the node's SR and SC
come back into the same study in Orthanc, and are read back through Orthanc's REST API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
from nodes import Node, Orthanc
from peers import dciodvfy_errors
from pipeline.support import (
    EXPECTED_PRESENT,
    assert_no_phi,
    destination,
    http_bytes,
    orthanc_holds,
    orthanc_sends,
    phantom,
)
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.results.codes import PRIVATE_SCHEME
from models.labels import LABELS

#: Finding type per label, as the issue specifies it: (code value, scheme).
FINDING_CODES = {
    "any": ("1386000", "SCT"),
    "epidural": ("EDH", PRIVATE_SCHEME),
    "intraparenchymal": ("50960005", "SCT"),
    "intraventricular": ("50960005", "SCT"),
    "subarachnoid": ("50960005", "SCT"),
    "subdural": ("SDH", PRIVATE_SCHEME),
}
PRESENT, ABSENT = "52101004", "272519000"


def test_orthanc_study_comes_back_with_sr_and_sc_in_the_same_study(
    tmp_path: Path, orthanc: Orthanc, start_node: Callable[..., Node]
) -> None:
    node = start_node(
        [destination(orthanc.dicom_port, ae_title=orthanc.aet)],
        node={"allowed_calling_aets": [orthanc.aet]},
    )
    study = phantom(tmp_path / "src", seed=61, n_slices=12, bleeds=("subdural",))
    study_id = orthanc_sends(orthanc, node.port, study)

    n_src = len(study.main.files)
    held = orthanc_holds(
        orthanc, study_id, n_src + 2, "Orthanc to hold the SR and the SC in the source study"
    )
    by_sop = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in held}
    source_sops = set(study.main.sop_uids)
    assert source_sops <= set(by_sop)
    results: dict[str, Path] = {}
    for sop, orthanc_id in by_sop.items():
        if sop in source_sops:
            continue
        data = http_bytes(orthanc.url(f"/instances/{orthanc_id}/file"))
        path = tmp_path / f"{orthanc_id}.dcm"
        path.write_bytes(data)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kind = {Comprehensive3DSRStorage: "sr", SecondaryCaptureImageStorage: "sc"}[ds.SOPClassUID]
        results[kind] = path
    assert set(results) == {"sr", "sc"}

    sr = pydicom.dcmread(results["sr"])
    sc = pydicom.dcmread(results["sc"])
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == study.study_uid  # filed into the original study
        assert ds.SeriesInstanceUID != study.main.series_uid
    assert sr.VerificationFlag == "UNVERIFIED"
    assert "NOT FOR DIAGNOSIS" in sr.SeriesDescription
    assert sc.BurnedInAnnotation == "YES"
    assert {it.ReferencedSOPInstanceUID for it in sc.SourceImageSequence} <= source_sops

    groups = hd.sr.srread(results["sr"]).content.get_image_measurement_groups()
    assert len(groups) == 6
    probabilities = []
    for label, group, want_present in zip(LABELS, groups, EXPECTED_PRESENT, strict=True):
        ft = group.finding_type
        assert ft is not None
        assert (ft.value, ft.scheme_designator) == FINDING_CODES[label]
        (qual,) = group.get_qualitative_evaluations()
        assert qual.value.value == (PRESENT if want_present else ABSENT)
        (meas,) = group.get_measurements()
        p = float(meas.value)
        assert 0.0 <= p <= 1.0
        probabilities.append(p)
        refs = {r.referenced_sop_instance_uid for r in meas.referenced_images}
        assert bool(refs) == want_present  # positive findings cite their slices
        assert refs <= source_sops  # ... which Orthanc holds
    for path in results.values():
        assert dciodvfy_errors(path) == []

    cli = CliRunner().invoke(app, ["studies", "--config", str(node.config), "--json"])
    assert cli.exit_code == 0, cli.output
    (row,) = json.loads(cli.stdout)
    assert row["study_uid"] == study.study_uid
    assert row["state"] == "done"
    assert list(row["findings"]) == list(LABELS)
    for label, p, want_present in zip(LABELS, probabilities, EXPECTED_PRESENT, strict=True):
        f = row["findings"][label]
        assert f["present"] is want_present
        assert abs(f["probability"] - p) < 1e-6
    assert set(row["deliveries"]) == {"pacs"}
    assert row["deliveries"]["pacs"]["state"] == "sent"
    assert row["deliveries"]["pacs"]["attempts"] == 1
    assert row["deliveries"]["pacs"]["last_error"] is None
    assert_no_phi(node.log.getvalue(), study)
