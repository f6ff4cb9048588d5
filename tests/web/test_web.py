"""The node's web server over real HTTP: /healthz, /readyz, /metrics, and its lifecycle.

A study goes in with dcmtk storescu, through the random-init model, out to a recording
PACS; what /metrics then says is checked against what was sent. /readyz is failed for
real: the spool replaced by a file (as when its volume goes away), a free-disk minimum
above what is free, a checkpoint that is not there.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from nodes import (
    SENTINEL_ID,
    SENTINEL_NAME,
    Node,
    ServeProcess,
    dataset_bytes,
    storescu,
    wait_for,
    write_config,
)
from pipeline.support import EXPECTED_PRESENT, RecordingPacs, destination, phantom
from web.web_support import Scrape, get, scrape

from models.labels import LABELS


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _no_patient_data(*texts: str) -> None:
    for text in texts:
        assert SENTINEL_NAME not in text
        assert SENTINEL_ID not in text


def test_a_study_through_the_node_shows_in_metrics_and_probes(
    tmp_path: Path, start_node: Callable[..., Node], pacs: RecordingPacs
) -> None:
    node = start_node([destination(pacs.port)])
    study = phantom(tmp_path / "study", seed=11, n_slices=10)
    files = [f for series in study.series for f in series.files]
    sent = storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    wait_for(
        lambda: scrape(node).value("dicom_node_deliveries_total", destination="pacs",
                                   outcome="sent") == 1,
        90, "the delivery counted",
    )  # fmt: skip

    health = get(node, "/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = get(node, "/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["failing"] == []
    assert set(body["checks"]) == {"model", "spool", "disk", "scheduler", "receiver"}
    model_uid = node.service.worker.predictor.meta.model_uid
    assert body["checks"]["model"] == {"ok": True, "detail": f"loaded {model_uid}"}

    m = scrape(node)
    assert m.value("dicom_node_instances_received_total") == len(files)
    assert m.value("dicom_node_instances_duplicate_total") == 0
    assert m.value("dicom_node_received_bytes_total") == sum(len(dataset_bytes(f)) for f in files)
    assert m.value("dicom_node_associations_accepted_total") == 1
    assert m.value("dicom_node_associations_open") == 0
    assert m.value("dicom_node_studies", state="done") == 1
    for state in ("receiving", "complete", "queued", "processing", "failed", "skipped"):
        assert m.value("dicom_node_studies", state=state) == 0
    assert m.value("dicom_node_queue_depth") == 0
    assert m.value("dicom_node_deliveries_pending") == 0
    assert m.value("dicom_node_deliveries_total", destination="pacs", outcome="retry") == 0
    assert m.value("dicom_node_spool_bytes") == sum(f.stat().st_size for f in node.spool_files())
    assert m.value("dicom_node_spool_free_bytes") > 0
    # The drift signal: one p(any) observation, positives as the thresholds decide.
    assert m.value("dicom_node_p_any_count") == 1
    assert m.value("dicom_node_studies_classified_total") == 1
    for label, present in zip(LABELS, EXPECTED_PRESENT, strict=True):
        assert m.value("dicom_node_positives_total", finding=label) == int(present)
    for stage in ("completion", "inference", "build", "delivery"):
        assert m.value("dicom_node_stage_seconds_count", stage=stage) == 1
    # last instance -> complete waits the quiet period (1 s in these configs)
    assert m.value("dicom_node_stage_seconds_sum", stage="completion") >= 1.0
    assert m.value("dicom_node_model_info", model_uid=model_uid, backbone="resnet18") == 1
    # No patient data and no UID of the study in any response.
    _no_patient_data(m.text, health.text, ready.text)
    for uid in (study.study_uid, *study.main.sop_uids):
        assert uid not in m.text


def test_readyz_fails_when_the_spool_cannot_be_written(
    start_receiver: Callable[..., Node],
) -> None:
    node = start_receiver()
    assert get(node, "/readyz").status_code == 200
    spool = node.root / "spool"
    aside = node.root / "spool.away"
    spool.rename(aside)  # the spool's volume went away; a file stands where it was
    spool.write_bytes(b"")
    try:
        resp = get(node, "/readyz")
        assert resp.status_code == 503
        body = resp.json()
        assert body["ready"] is False
        assert body["failing"] == ["spool"]
        assert "cannot write" in body["checks"]["spool"]["detail"]
        assert body["checks"]["model"]["ok"] is True  # receive-only: no model needed
        assert get(node, "/healthz").status_code == 200  # up, only not ready
    finally:
        spool.unlink()
        aside.rename(spool)
    assert get(node, "/readyz").status_code == 200


def test_readyz_fails_below_the_free_disk_minimum_and_stores_are_refused(
    tmp_path: Path, start_receiver: Callable[..., Node]
) -> None:
    node = start_receiver(storage={"min_free_disk_mb": 1 << 40})  # an exbibyte: never free
    resp = get(node, "/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["failing"] == ["disk"]
    assert f"minimum {1 << 40} MiB" in body["checks"]["disk"]["detail"]
    study = phantom(tmp_path / "study", seed=12, n_slices=2)
    # Answered 0xA700 Out of Resources (storescu gives up the association after it).
    storescu(node.port, study.main.files[:1])
    m = scrape(node)
    assert m.value("dicom_node_stores_refused_total", status="0xA700") == 1
    assert m.value("dicom_node_instances_received_total") == 0


def test_readyz_fails_without_a_model(
    tmp_path: Path, start_node: Callable[..., Node], pacs: RecordingPacs
) -> None:
    node = start_node(
        [destination(pacs.port)], inference={"checkpoint": str(tmp_path / "missing.pt")}
    )
    resp = get(node, "/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["failing"] == ["model"]
    assert "no model loaded" in body["checks"]["model"]["detail"]


@pytest.mark.parametrize("engine", ["native", "pynetdicom"])
def test_associations_counted_on_both_engines_and_nodes_do_not_share_metrics(
    tmp_path: Path, start_receiver: Callable[..., Node], engine: str
) -> None:
    node = start_receiver(node={"engine": engine})
    other = start_receiver(node={"engine": engine})
    study = phantom(tmp_path / "study", seed=13, n_slices=3)
    assert storescu(node.port, study.main.files).returncode == 0
    assert storescu(node.port, study.main.files[:1]).returncode == 0  # a duplicate
    storescu(node.port, study.main.files[:1], aec="NOTUS")  # wrong called AE: rejected
    m = wait_for(
        lambda: (s := scrape(node)).value("dicom_node_associations_open") == 0 and s,
        20, "associations ended",
    )  # fmt: skip
    assert isinstance(m, Scrape)
    assert m.value("dicom_node_associations_accepted_total") == 2
    assert m.value("dicom_node_associations_refused_total", reason="called-ae-not-recognised") == 1
    assert m.value("dicom_node_instances_received_total") == 4
    assert m.value("dicom_node_instances_duplicate_total") == 1
    assert m.value("dicom_node_received_bytes_total") == sum(
        len(dataset_bytes(f)) for f in [*study.main.files, study.main.files[0]]
    )
    theirs = scrape(other)
    assert theirs.value("dicom_node_instances_received_total") == 0
    assert theirs.value("dicom_node_associations_accepted_total") == 0


def test_web_server_stops_with_the_node(start_receiver: Callable[..., Node]) -> None:
    node = start_receiver()
    port = node.service.web_port
    assert get(node, "/healthz").status_code == 200
    node.service.stop(grace_s=5)
    assert _closed(port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_serve_answers_http_and_sigterm_closes_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = ServeProcess(cfg, tmp_path / "serve.log")
    try:
        line_port = _web_port_of(tmp_path / "serve.log")
        resp = httpx.get(f"http://127.0.0.1:{line_port}/readyz", timeout=30)
        assert resp.status_code == 200, resp.text
    finally:
        code = proc.stop()
    assert code == 0
    assert _closed(line_port)
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "event=web.stopped" in log


def _web_port_of(log: Path) -> int:
    """The bound port, from the node's own ``web.listening`` log line."""
    for line in log.read_text(encoding="utf-8").splitlines():
        if "event=web.listening" in line:
            return int(line.split("port=")[1].split()[0])
    raise AssertionError("no web.listening line in the node's log")


def test_readyz_reports_a_stopped_scheduler(start_receiver: Callable[..., Node]) -> None:
    node = start_receiver()
    assert node.service.scheduler is not None
    node.service.scheduler.shutdown(wait=True)
    body = get(node, "/readyz").json()
    assert body["failing"] == ["scheduler"]
    assert body["checks"]["scheduler"]["detail"] == "not running"
