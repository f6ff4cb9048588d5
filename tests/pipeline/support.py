"""Helpers for the pipeline tests: random-init checkpoints, a recording PACS, node configs.

Everything here drives real peers (pynetdicom Storage SCPs on loopback, Orthanc, the node
itself); the receive-path helpers (``nodes``) are reused, not copied.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
import yaml
from nodes import NODE_AET, SENTINEL_ID, SENTINEL_NAME, Node, Orthanc, wait_for, write_config
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import load_settings
from dicom_node.store.index import StudyRow
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.network import CNNLSTM, NetworkConfig
from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

PACS_AET = "PACS"

#: Thresholds that make a random-init model's decisions deterministic: ``any`` and
#: ``epidural`` are always present (threshold 0), the other four always absent (a sigmoid
#: never reaches 1.0 for a random-init network's logits). Plumbing, not accuracy.
THRESHOLDS = (0.0, 0.0, 1.0, 1.0, 1.0, 1.0)
EXPECTED_PRESENT = (True, True, False, False, False, False)


def make_checkpoint(
    path: Path,
    input_size: int = 64,
    backbone: str = "resnet18",
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> str:
    """A random-init checkpoint (no download, no training); returns its model UID.
    ``thresholds`` decide what the random network finds (default: ``THRESHOLDS``)."""
    cfg = NetworkConfig(backbone=backbone, lstm_hidden=16)
    meta = save_checkpoint(
        path,
        CNNLSTM(cfg),
        CheckpointMeta(
            network=cfg, input_size=input_size, thresholds=thresholds, trained_on="random-init"
        ),
    )
    return meta.model_uid


def random_checkpoint(tmp_path_factory: pytest.TempPathFactory, input_size: int = 64) -> Path:
    """:func:`make_checkpoint` in a fresh temporary folder, for a fixture to share: the
    input size is what the tests tune (64: plumbing; larger: inference slow enough to be
    caught in the act on CPU)."""
    path = tmp_path_factory.mktemp(f"model-{input_size}") / f"random-r18-{input_size}.pt"
    make_checkpoint(path, input_size=input_size)
    return path


def phantom(
    out: Path,
    seed: int,
    *,
    n_slices: int = 10,
    size: int = 64,
    bleeds: tuple[str, ...] = (),
    body_part: str = "HEAD",
    modality: str = "CT",
) -> WrittenStudy:
    """A small phantom study with the sentinel patient name and ID."""
    spec = PhantomSpec(
        seed=seed,
        n_slices=n_slices,
        size=size,
        bleeds=bleeds,
        patient_name=SENTINEL_NAME,
        patient_id=SENTINEL_ID,
        body_part=body_part,
        modality=modality,
    )
    return write_study(out, spec)


def pipeline_config(
    root: Path,
    checkpoint: Path,
    destinations: list[dict[str, Any]],
    **sections: dict[str, Any],
) -> Path:
    """A node config with inference on (CPU) and ``destinations``; quiet period 1 s."""
    inference = {"enabled": True, "checkpoint": str(checkpoint), "device": "cpu", "amp": False}
    inference.update(sections.pop("inference", {}))
    storage = {"results_dir": "results", **sections.pop("storage", {})}
    cfg = write_config(
        root,
        inference=inference,
        storage=storage,
        logging={"level": "DEBUG", "hash_key": "test-key"},
        **sections,
    )
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    data["destinations"] = destinations
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    return cfg


def destination(
    port: int,
    *,
    name: str = "pacs",
    ae_title: str = PACS_AET,
    retry_base_s: float = 0.3,
    max_attempts: int = 8,
) -> dict[str, Any]:
    return {
        "name": name,
        "ae_title": ae_title,
        "host": "127.0.0.1",
        "port": port,
        "send": ["sr", "sc"],
        "max_attempts": max_attempts,
        "retry_base_s": retry_base_s,
        "retry_cap_s": 2.0,
    }


@dataclass
class RecordingPacs:
    """A pynetdicom Storage SCP that keeps every dataset it acknowledged."""

    server: ThreadedAssociationServer
    received: list[Dataset] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def handle_store(self, event: Event) -> int:
        ds = pydicom.dcmread(io.BytesIO(event.encoded_dataset()))
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def sop_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(str(ds.SOPInstanceUID) for ds in self.received)

    def by_class(self, sop_class: str) -> list[Dataset]:
        with self._lock:
            return [ds for ds in self.received if ds.SOPClassUID == sop_class]

    def stop(self) -> None:
        self.server.shutdown()


def storage_scp(
    port: int,
    on_store: Callable[[Event], int],
    *,
    ae_title: str = PACS_AET,
    require_calling_aet: list[str] | None = None,
) -> ThreadedAssociationServer:
    """A pynetdicom Storage SCP (every storage SOP class) on 127.0.0.1:``port`` (0 = any
    free port) that answers each C-STORE with what ``on_store`` returns.

    ``start_server`` returns once the socket listens, so no readiness wait is needed.
    """
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = StoragePresentationContexts
    if require_calling_aet is not None:
        ae.require_calling_aet = require_calling_aet
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    return server


def start_pacs(
    port: int = 0, *, ae_title: str = PACS_AET, require_calling_aet: list[str] | None = None
) -> RecordingPacs:
    """Start a recording Storage SCP on 127.0.0.1:``port`` (0 = any free port)."""
    holder: list[RecordingPacs] = []
    server = storage_scp(
        port,
        lambda e: holder[0].handle_store(e),
        ae_title=ae_title,
        require_calling_aet=require_calling_aet,
    )
    holder.append(RecordingPacs(server))
    return holder[0]


def index_url(config: Path | str) -> str:
    """The SQLAlchemy URL of a node's index, from its config file (SQLite or PostgreSQL);
    a path that is no YAML file is taken for an SQLite index file itself, a string for
    the URL itself (a cluster's shared PostgreSQL database)."""
    if isinstance(config, str):
        return config
    if config.suffix not in (".yaml", ".yml"):
        return f"sqlite:///{config}"
    target = load_settings(config).index_target()
    return f"sqlite:///{target}" if isinstance(target, Path) else target


def index_sql(config: Path | str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a node's index (``config``: its config file, an SQLite index
    file or a database URL, see :func:`index_url`) from outside the node (a second
    connection, as an admin's tool would): the rows it returns, committed. Empty when the
    index does not exist yet (SQLite: no file; the node is still creating its schema)."""
    return _run_sql(index_url(config), sql, params, read_only=False)


def _run_sql(
    url: str, sql: str, params: dict[str, Any], *, read_only: bool
) -> list[tuple[Any, ...]]:
    """:func:`index_sql` on ``url``; ``read_only`` opens SQLite with ``mode=ro``."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return []
        if read_only:
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as con:
            result = con.execute(sa.text(sql), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    except sa.exc.ProgrammingError:  # PostgreSQL: no table yet
        return []
    except sa.exc.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        engine.dispose()


def lose_index(config: Path) -> None:
    """The index is gone while the node is stopped: its SQLite files deleted, or every
    table of its PostgreSQL database dropped (the spool and results stay)."""
    url = index_url(config)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return
    index_sql(config, "DROP SCHEMA public CASCADE")
    index_sql(config, "CREATE SCHEMA public")


def study_state(config: Path, study_uid: str) -> dict[str, Any] | None:
    """A study's state, result and deliveries (``config``: the node's config file, or an
    SQLite index file), read from the index by a second connection
    (the node in another process owns it; reads cannot disturb it)."""
    rows = index_sql(
        config,
        "SELECT state, reason, generation, result FROM studies WHERE study_uid = :uid",
        uid=study_uid,
    )
    if not rows:
        return None
    row = rows[0]
    deliveries = {
        d[0]: {"state": d[1], "attempts": int(d[2]), "generation": int(d[3])}
        for d in index_sql(
            config,
            "SELECT destination, state, attempts, generation FROM deliveries "
            "WHERE study_uid = :uid",
            uid=study_uid,
        )
    }
    return {
        "state": row[0],
        "reason": row[1],
        "generation": int(row[2]),
        "result": json.loads(row[3]) if row[3] else None,
        "deliveries": deliveries,
    }


def index_rows(config: Path | str) -> list[dict[str, Any]]:
    """Every study of a node's index (``config`` as for :func:`index_sql`) with its state,
    generation, owner (``claimed_by``: a cluster's worker), result, instance count and
    deliveries (destination -> state, attempts, generation).

    An SQLite index is opened read-only: the tests that kill the node read it between the
    kill and the restart, and a reader that could write would merge the dead node's WAL
    into the database before the restarted node recovers it itself."""
    url = index_url(config)
    studies = _run_sql(
        url,
        "SELECT s.study_uid, s.state, s.generation, s.claimed_by, s.result, "
        "COUNT(i.sop_uid) FROM studies s "
        "LEFT JOIN instances i ON i.study_uid = s.study_uid GROUP BY s.study_uid",
        {},
        read_only=True,
    )
    deliveries: dict[str, dict[str, dict[str, Any]]] = {}
    for uid, dest, state, attempts, generation in _run_sql(
        url,
        "SELECT study_uid, destination, state, attempts, generation FROM deliveries",
        {},
        read_only=True,
    ):
        deliveries.setdefault(uid, {})[dest] = {
            "state": state,
            "attempts": int(attempts),
            "generation": int(generation),
        }
    return [
        {
            "study_uid": r[0],
            "state": r[1],
            "generation": int(r[2]),
            "claimed_by": r[3],
            "result": json.loads(r[4]) if r[4] else None,
            "instances": int(r[5]),
            "deliveries": deliveries.get(r[0], {}),
        }
        for r in studies
    ]


#: The states a study does not leave by itself.
FINAL = ("done", "failed", "skipped")


def wait_study(
    node: Node, uid: str, check: Callable[[StudyRow], bool], what: str, timeout: float = 60
) -> StudyRow:
    """The study's index row, polled through the node in this process until ``check``."""

    def probe() -> StudyRow | None:
        s = node.study(uid)
        return s if s is not None and check(s) else None

    row: StudyRow = wait_for(probe, timeout, what)
    return row


def delivered(study: StudyRow, generation: int | None = None) -> bool:
    """Whether a delivery of the study (of ``generation``, if given) was sent."""
    return any(
        d.state == "sent" and (generation is None or d.generation == generation)
        for d in study.deliveries
    )


def phi_of(study: WrittenStudy) -> list[str]:
    """Identifying values of a phantom study that must never reach a log line."""
    ds = pydicom.dcmread(study.main.files[0], stop_before_pixels=True)
    values = [SENTINEL_NAME, SENTINEL_ID, study.study_uid, str(ds.AccessionNumber)]
    values += [str(ds.SeriesInstanceUID), *study.main.sop_uids]
    return [v for v in values if v]


def assert_no_phi(log_text: str, *studies: WrittenStudy) -> None:
    """No patient name/ID, accession number or instance UID of ``studies`` in ``log_text``."""
    assert log_text, "nothing was logged: the check would be vacuous"
    for study in studies:
        for value in phi_of(study):
            at = log_text.find(value)
            if at >= 0:  # show the log line with the value masked, to find its source
                start = log_text.rfind("\n", 0, at) + 1
                end = log_text.find("\n", at)
                line = log_text[start : end if end >= 0 else None].replace(value, "<LEAKED>")
                raise AssertionError(f"patient data or a UID reached the node's log: {line}")


def http_bytes(url: str, timeout: float = 30) -> bytes:
    """GET ``url`` and return the body (Orthanc's ``/instances/{id}/file``)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback Orthanc only
        return bytes(resp.read())


def orthanc_sends(orthanc: Orthanc, node_port: int, study: WrittenStudy) -> str:
    """Orthanc as the modality: the node (on ``node_port``) added as modality ``ich``
    through REST, ``study`` uploaded and pushed to it with C-STORE, synchronously and
    without a failed instance. Returns Orthanc's ID of the study."""
    modality = {"AET": NODE_AET, "Host": "127.0.0.1", "Port": node_port}
    orthanc.request("PUT", "/modalities/ich", json.dumps(modality).encode())
    ids = [orthanc.upload(f) for f in study.main.files]
    study_id = str(orthanc.request("GET", f"/instances/{ids[0]}/study")["ID"])
    body = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
    answer = orthanc.request("POST", "/modalities/ich/store", body)
    assert answer["FailedInstancesCount"] == 0, answer
    return study_id


def orthanc_holds(orthanc: Orthanc, study_id: str, count: int, what: str) -> list[Any]:
    """Orthanc's instances of study ``study_id`` once there are ``count`` (polled)."""
    held: list[Any] = wait_for(
        lambda: (
            len(got := orthanc.request("GET", f"/studies/{study_id}/instances")) == count and got
        ),
        90,
        what,
    )
    return held
