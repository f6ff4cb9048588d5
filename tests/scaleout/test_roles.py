"""Roles in one process each, around one PostgreSQL index: what an admin sees of them
(``/api/health``, ``dicom-node workers``) and the start-up checks that keep a queue sane.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from nodes import storescu, wait_for, write_config
from pipeline.support import make_checkpoint, phantom
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.config import load_settings
from dicom_node.errors import ConfigError
from dicom_node.pipeline.heartbeat import ModelMismatchError
from dicom_node.service import Service
from dicom_node.web.auth import token_digest

TOKEN = "scale-out-test-" + "k" * 32


@pytest.fixture
def services() -> Iterator[list[Service]]:
    running: list[Service] = []
    yield running
    for service in reversed(running):
        service.stop(grace_s=2)


def role_config(root: Path, index_url: str, role: str, checkpoint: Path, **inference: Any) -> Path:
    """One process's config: shared spool and results beside ``root``, its own web port."""
    root.mkdir(parents=True, exist_ok=True)
    shared = root.parent / "shared"
    return write_config(
        root,
        node={"role": role, "worker_id": root.name},
        storage={
            "index_db": index_url,
            "spool_dir": str(shared / "spool"),
            "results_dir": str(shared / "results"),
        },
        inference={
            "enabled": True,
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "amp": False,
            **inference,
        },
        web={"api_tokens": [{"name": "admin", "token_sha256": token_digest(TOKEN)}]},
    )


def start(services: list[Service], cfg: Path) -> Service:
    service = Service(load_settings(cfg), cfg)
    services.append(service)
    service.start()
    return service


def test_health_and_workers_list_every_process_on_the_index(
    tmp_path: Path, postgres_url: str, checkpoint: Path, services: list[Service]
) -> None:
    receiver = start(services, role_config(tmp_path / "recv", postgres_url, "receiver", checkpoint))
    worker = start(services, role_config(tmp_path / "work", postgres_url, "worker", checkpoint))
    assert worker.acceptor is None
    assert worker.server is None
    assert receiver.worker is None  # a receiver loads no model
    answer = httpx.get(
        f"http://127.0.0.1:{worker.web_port}/api/health",
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200
    body = answer.json()
    assert body["role"] == "worker"
    assert body["worker_id"] == "work"
    listed = {w["worker_id"]: w for w in body["workers"]}
    assert set(listed) == {"recv", "work"}
    assert listed["recv"]["role"] == "receiver"
    assert listed["recv"]["model_uid"] is None
    assert listed["work"]["device"] == "cpu"
    assert listed["work"]["model_uid"] == worker.worker.predictor.meta.model_uid  # type: ignore[union-attr]
    assert listed["work"]["load"] == {"busy": False, "processed": 0}
    unauthenticated = httpx.get(f"http://127.0.0.1:{worker.web_port}/api/health", timeout=30)
    assert unauthenticated.status_code == 401

    cli = CliRunner().invoke(app, ["workers", "--config", str(receiver_cfg(tmp_path)), "--json"])
    assert cli.exit_code == 0, cli.output
    assert {w["worker_id"] for w in json.loads(cli.stdout)} == {"recv", "work"}

    worker.stop()  # a clean stop takes the process's row out
    after = CliRunner().invoke(app, ["workers", "--config", str(receiver_cfg(tmp_path)), "--json"])
    assert {w["worker_id"] for w in json.loads(after.stdout)} == {"recv"}


def receiver_cfg(tmp_path: Path) -> Path:
    return tmp_path / "recv" / "config.yaml"


def test_a_worker_with_another_model_refuses_to_share_the_queue(
    tmp_path: Path, postgres_url: str, checkpoint: Path, services: list[Service]
) -> None:
    start(services, role_config(tmp_path / "work-a", postgres_url, "worker", checkpoint))
    torch.manual_seed(1234)  # other weights: another model UID
    other = tmp_path / "other.pt"
    make_checkpoint(other, input_size=64)
    cfg = role_config(tmp_path / "work-b", postgres_url, "worker", other)
    with pytest.raises(ModelMismatchError, match="allow_mixed_models"):
        start(services, cfg)
    # unless the site says it means it (a trial of two models side by side)
    mixed = role_config(tmp_path / "work-c", postgres_url, "worker", other,
                        allow_mixed_models=True)  # fmt: skip
    assert start(services, mixed).worker is not None


def test_a_worker_without_inference_is_a_configuration_error(
    tmp_path: Path, postgres_url: str, checkpoint: Path, services: list[Service]
) -> None:
    cfg = role_config(tmp_path / "work", postgres_url, "worker", checkpoint)
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    data["inference"]["enabled"] = False
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"inference\.enabled"):
        start(services, cfg)


def test_serve_refuses_an_unknown_role() -> None:
    result = CliRunner().invoke(app, ["serve", "--role", "boss"])
    assert result.exit_code != 0
    assert "boss" in result.output


def test_reprocess_on_a_receiver_queues_the_study_for_the_workers(
    tmp_path: Path, postgres_url: str, checkpoint: Path, services: list[Service]
) -> None:
    receiver = start(services, role_config(tmp_path / "recv", postgres_url, "receiver", checkpoint))
    worker = start(services, role_config(tmp_path / "work", postgres_url, "worker", checkpoint))
    study = phantom(tmp_path / "src", seed=5, n_slices=10)
    assert storescu(receiver.port, study.main.files).returncode == 0
    assert receiver.index is not None
    index = receiver.index
    wait_for(lambda: (r := index.study(study.study_uid)) is not None and r.state == "done",
             120, "the worker to finish the study")  # fmt: skip
    assert receiver.reprocess(study.study_uid) == "queued for inference"
    assert worker.worker is not None
    wait_for(lambda: worker.worker is not None and worker.worker.processed == 2, 120,
             "the worker to process it again")  # fmt: skip
