"""The study index on both databases it supports (SQLite file, real PostgreSQL server):
the same API, schema version 6 (claims, leases, the worker registry), exact float times,
errors surfacing as ``IndexDBError``, and, on PostgreSQL, what several processes sharing
one database do at once (two ``Index`` objects = two engines = two connection pools)."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg import running_postgres

from dicom_node.store import index as index_module
from dicom_node.store.index import (
    REINDEX_HINT,
    SCHEMA_VERSION,
    Index,
    IndexDamagedError,
    IndexDBError,
    InstanceRow,
    WorkerRow,
    open_checked,
    set_aside_if_damaged,
)
from dicom_node.store.index_schema import instances

CT = "1.2.840.10008.5.1.4.1.1.2"


def _row(sop: str, study: str = "1.2", series: str = "1.2.1", t: float = 100.0) -> InstanceRow:
    return InstanceRow(sop, study, series, CT, "1.2.840.10008.1.2.1", True, 10,
                       f"{study}/{series}/{sop}.dcm", t)  # fmt: skip


@pytest.fixture
def index(index_target: str | Path) -> Iterator[Index]:
    idx = Index(index_target)
    yield idx
    idx.close()


def _queued(index: Index, uid: str, t: float) -> None:
    """A study of one instance, complete and queued (as completion leaves it)."""
    index.record(_row(f"{uid}.9", study=uid, series=f"{uid}.1", t=t))
    assert index.finish_receiving(uid, 1, t, "complete")
    assert index.set_state(uid, "queued", expect=("complete",))


def test_dialect_url_and_schema(index: Index, index_target: str | Path) -> None:
    assert index.schema_version == SCHEMA_VERSION == 6
    if isinstance(index_target, Path):
        assert index.dialect == "sqlite"
        assert index.url == f"sqlite:///{index_target}"
    else:
        assert index.dialect == "postgresql"
        assert index.url == index_target  # the test server has no password to hide


def test_times_round_trip_exactly_and_guard_completion(index: Index) -> None:
    """``finish_receiving`` compares ``last_received`` for equality: an epoch float with
    sub-millisecond digits must come back bit for bit (DOUBLE PRECISION on PostgreSQL)."""
    t1 = time.time()
    t2 = t1 + 0.000123456789
    index.record(_row("1.2.1.1", t=t1))
    index.record(_row("1.2.1.2", t=t2))
    index.record(_row("1.2.1.3", t=t1))  # older: last_received stays t2
    study = index.study("1.2")
    assert study is not None
    assert (study.first_received, study.last_received) == (t1, t2)
    assert [i.received for i in index.instances("1.2")] == [t1, t2, t1]
    assert not index.finish_receiving("1.2", 1, t1, "complete")  # a stale view
    assert index.finish_receiving("1.2", 1, study.last_received, "complete")
    again = index.study("1.2")
    assert again is not None
    assert again.state == "complete"
    assert again.series == 1
    assert again.instances == again.eligible_instances == 3
    assert again.size == 30


def test_duplicates_reopen_and_delete(index: Index) -> None:
    first = index.record(_row("1.2.1.1"))
    assert (first.inserted, first.new_study, first.generation) == (True, True, 1)
    assert index.has_instance("1.2.1.1")
    assert not index.has_instance("1.2.1.9")
    dup = index.record(_row("1.2.1.1", t=500.0))
    assert (dup.inserted, dup.new_study, dup.reopened, dup.generation) == (False, False, False, 1)
    study = index.study("1.2")
    assert study is not None
    assert study.last_received == 100.0  # the duplicate changed nothing
    assert index.set_state("1.2", "done")
    late = index.record(_row("1.2.1.2", series="1.2.2", t=200.0))
    assert (late.inserted, late.reopened, late.generation) == (True, True, 2)
    dup_after = index.record(_row("1.2.1.2"))
    assert (dup_after.inserted, dup_after.generation) == (False, 2)
    more = index.record(_row("1.2.1.3", series="1.2.3", t=250.0))  # receiving again
    assert (more.inserted, more.new_study, more.reopened) == (True, False, False)
    assert more.generation == 2
    with index._read() as conn:  # the generation each instance row was written with
        gens = conn.execute(sa.select(instances.c.sop_uid, instances.c.generation)).all()
    assert sorted(tuple(r) for r in gens) == [("1.2.1.1", 1), ("1.2.1.2", 2), ("1.2.1.3", 2)]
    reopened = index.study("1.2")
    assert reopened is not None
    assert (reopened.series, reopened.last_received) == (3, 250.0)
    assert index.sop_classes("1.2") == [CT]
    assert index.known_paths() == {
        "1.2/1.2.1/1.2.1.1.dcm", "1.2/1.2.2/1.2.1.2.dcm", "1.2/1.2.3/1.2.1.3.dcm",
    }  # fmt: skip
    assert index.total_size() == 30
    assert index.study_uids() == ["1.2"]
    index.add_audit("1.2", "dr.house", "reprocess", "queued")
    index.set_delivery("1.2", "pacs", 2, "pending", 1, "refused", next_attempt=300.0)
    index.delete_study("1.2")
    assert index.study("1.2") is None
    assert index.deliveries() == []
    assert index.audit("1.2") == []
    assert index.known_paths() == set()


def test_audit_user_column_deliveries_and_monitoring_reads(index: Index) -> None:
    """``audit.user`` is a reserved word in PostgreSQL (quoted by SQLAlchemy)."""
    index.record(_row("1.2.1.1"))
    row = index.add_audit("1.2", "user", "resend", "queued for 1 destination")
    assert index.audit("1.2") == [row]
    index.set_delivery("1.2", "pacs", 1, "pending", 1, "HTTP 503", next_attempt=1000.5)
    index.set_delivery("1.2", "pacs", 1, "sent", 2, None, next_attempt=2000.0)
    index.set_delivery("1.2", "webhook:chat", 1, "pending", 1, "timeout", next_attempt=99.25)
    pacs = index.delivery("1.2", "pacs")
    assert pacs is not None
    assert (pacs.state, pacs.attempts, pacs.next_attempt) == ("sent", 2, None)
    assert [d.destination for d in index.deliveries(states=("pending",))] == ["webhook:chat"]
    assert index.counts() == ({"receiving": 1}, 1)
    assert index.browse() == index.studies()
    assert index.browse(("done",)) == index.studies(("done",)) == []
    assert index.study("1.2") == index.studies()[0]


def test_results_and_restore_processing(index: Index) -> None:
    _queued(index, "1.3", 10.0)
    assert index.set_state("1.3", "processing", expect=("queued",))
    findings = json.dumps({"any": {"probability": 0.7, "present": True}})
    assert not index.save_result("1.3", 2, findings, '{"generation": 2}')  # stale generation
    assert index.save_result("1.3", 1, findings, '{"generation": 1}')
    done = index.study("1.3")
    assert done is not None
    assert (done.state, done.findings) == ("done", json.loads(findings))
    assert index.result("1.3") == {"generation": 1}
    index.clear()
    assert index.studies() == []
    index.record(_row("1.3.9", study="1.3", series="1.3.1", t=10.0))
    index.set_study_times("1.3", 5.0, 12.5)
    index.restore_processing(
        "1.3", state="done", generation=3, findings=findings, result='{"generation": 3}',
        series_choice="[]", deliveries=[{"destination": "pacs", "generation": 3,
                                         "state": "sent", "attempts": 1, "last_error": None}],
    )  # fmt: skip
    back = index.study("1.3")
    assert back is not None
    assert (back.state, back.generation, back.first_received, back.last_received) == (
        "done", 3, 5.0, 12.5)  # fmt: skip
    assert back.completed_at is not None
    assert [(d.destination, d.state) for d in back.deliveries] == [("pacs", "sent")]


def test_claim_lease_and_requeue(index: Index) -> None:
    for n, uid in enumerate(("1.5", "1.4", "1.6")):
        _queued(index, uid, 100.0 + n)  # 1.5 is the oldest
    before = time.time()
    claimed = index.claim_next("w1", lease_s=60)
    assert claimed is not None
    assert (claimed.study_uid, claimed.state, claimed.claimed_by) == ("1.5", "processing", "w1")
    assert claimed.lease_until is not None
    assert before + 60 <= claimed.lease_until <= time.time() + 60
    assert claimed.to_json()["claimed_by"] == "w1"
    assert str(claimed.to_json()["lease_until"]).endswith("Z")
    second = index.claim_next("w2", lease_s=60)
    assert second is not None
    assert second.study_uid == "1.4"
    assert index.renew_leases("w1", 600) == 1
    renewed = index.study("1.5")
    assert renewed is not None
    assert renewed.lease_until is not None
    assert renewed.lease_until >= before + 600
    # Nothing expired yet; at a time past w2's lease only its study goes back.
    assert index.requeue_expired() == []
    assert index.requeue_expired(now=time.time() + 120) == ["1.4"]
    back = index.study("1.4")
    assert back is not None
    assert (back.state, back.claimed_by, back.lease_until) == ("queued", None, None)
    assert back.to_json()["lease_until"] is None
    # A worker whose lease was taken over writes nothing: w2's lost claim on 1.4 ...
    again = index.claim_next("w3", lease_s=60)
    assert again is not None
    assert again.study_uid == "1.4"
    assert not index.save_result("1.4", 1, "{}", "{}", owner="w2")
    assert not index.set_state("1.4", "failed", "boom", owner="w2")
    # ... while the owner's own writes go through and drop the claim.
    assert index.set_state("1.4", "failed", "model error", owner="w3")
    failed = index.study("1.4")
    assert failed is not None
    assert (failed.state, failed.claimed_by, failed.lease_until) == ("failed", None, None)
    assert index.save_result("1.5", 1, "{}", '{"generation": 1}', owner="w1")
    done = index.study("1.5")
    assert done is not None
    assert (done.state, done.claimed_by, done.lease_until) == ("done", None, None)
    # A restarted w4 takes its own study back at once, whatever its lease.
    mine = index.claim_next("w4", lease_s=3600)
    assert mine is not None
    assert mine.study_uid == "1.6"
    assert index.requeue_expired() == []
    assert index.requeue_expired(owner="w4") == ["1.6"]
    assert index.claim_next("w4", lease_s=60) is not None
    assert index.claim_next("w4", lease_s=60) is None  # nothing queued


def test_a_late_instance_reopens_a_claimed_study_and_drops_the_claim(index: Index) -> None:
    _queued(index, "1.7", 10.0)
    assert index.claim_next("w1", lease_s=60) is not None
    late = index.record(_row("1.7.8", study="1.7", series="1.7.1", t=20.0))
    assert (late.reopened, late.generation) == (True, 2)
    study = index.study("1.7")
    assert study is not None
    assert (study.state, study.claimed_by, study.lease_until) == ("receiving", None, None)
    assert index.renew_leases("w1", 60) == 0
    assert not index.save_result("1.7", 1, "{}", "{}", owner="w1")


def test_worker_registry(index: Index) -> None:
    now = time.time()
    gpu = WorkerRow("host-a:1:gpu", "worker", "host-a", 4242, "cuda:0", "1.2.3.4", now - 10,
                    now - 10, {"queue": 0})  # fmt: skip
    receiver = WorkerRow("host-b:7:rx", "receiver", "host-b", 7, None, None, now, now)
    index.register_worker(gpu)
    index.register_worker(receiver)
    assert index.workers() == [receiver, gpu]  # by role, then id
    assert gpu.to_json()["started"].endswith("Z")
    assert gpu.to_json()["load"] == {"queue": 0}
    _queued(index, "1.8", 10.0)
    claimed = index.claim_next(gpu.worker_id, lease_s=1)
    assert claimed is not None
    assert claimed.lease_until is not None
    index.heartbeat(gpu.worker_id, {"queue": 3, "gpu_mem_mb": 1024.5}, lease_s=3600)
    (beat,) = [w for w in index.workers() if w.worker_id == gpu.worker_id]
    assert beat.load == {"queue": 3, "gpu_mem_mb": 1024.5}
    assert beat.heartbeat >= now
    assert beat.started == gpu.started
    leased = index.study("1.8")
    assert leased is not None
    assert leased.lease_until is not None
    assert leased.lease_until > claimed.lease_until + 3000
    index.register_worker(gpu)  # re-registered at a restart: replaced, not doubled
    assert len(index.workers()) == 2
    assert [w.worker_id for w in index.workers(alive_within_s=5)] == [receiver.worker_id]
    index.remove_worker(receiver.worker_id)
    assert [w.worker_id for w in index.workers()] == [gpu.worker_id]


def test_a_closed_index_refuses(index_target: str | Path) -> None:
    idx = Index(index_target)
    idx.close()
    for call in (idx.counts, idx.studies, lambda: idx.record(_row("1.1")),
                 lambda: idx.has_instance("1.1")):  # fmt: skip
        with pytest.raises(IndexDBError):
            call()


def test_open_checked_refuses_a_blank_index_beside_a_full_spool(
    index_target: str | Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spool = tmp_path / "spool"
    (spool / "1.2" / "1.2.1").mkdir(parents=True)
    (spool / "1.2" / "1.2.1" / "1.2.1.1.dcm").write_bytes(b"x")
    with pytest.raises(IndexDamagedError) as info:
        open_checked(index_target, spool)
    assert REINDEX_HINT in str(info.value)
    with pytest.raises(IndexDamagedError):  # and again: the refusal created nothing
        open_checked(index_target, spool)
    # reindex makes it (set_aside_if_damaged has nothing to set aside), then it opens
    assert set_aside_if_damaged(index_target) is None
    Index(index_target).close()
    opened = open_checked(index_target, spool)
    assert opened.schema_version == SCHEMA_VERSION
    opened.close()
    empty = tmp_path / "empty-spool"
    empty.mkdir()
    if isinstance(index_target, Path):
        other: str | Path = index_target.with_name("fresh.sqlite")
    else:
        other = request.getfixturevalue("postgres").database()
    fresh = open_checked(other, empty)  # nothing received: a new index is made
    assert fresh.studies() == []
    fresh.close()


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "db" / "index.sqlite"
    idx = Index(f"sqlite:///{path}")
    idx.record(_row("1.2.1.1"))
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(path.with_name(path.name + suffix).stat().st_mode)
        assert mode == 0o600, (suffix, oct(mode))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    idx.close()


def test_schema_5_file_migrates_to_6_and_its_processing_study_is_requeued(
    tmp_path: Path,
) -> None:
    """A file as the previous version left it (schema 5): a ``processing`` study has no
    lease, so the first ``requeue_expired`` puts it back in the queue."""
    path = tmp_path / "index.sqlite"
    db = sqlite3.connect(path)
    for version in range(1, 6):
        db.executescript(index_module._MIGRATIONS[version])
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '5')")
    db.execute(
        "INSERT INTO studies (study_uid, state, generation, first_received, last_received, "
        "state_changed) VALUES ('1.9', 'processing', 2, 10, 11, 12)"
    )
    db.execute("INSERT INTO deliveries VALUES ('1.9', 'pacs', 1, 'pending', 1, 'refused', 13, 50)")
    db.commit()
    db.close()
    idx = Index(path)
    assert idx.schema_version == SCHEMA_VERSION
    (study,) = idx.studies()
    assert (study.state, study.generation, study.claimed_by, study.lease_until) == (
        "processing", 2, None, None)  # fmt: skip
    assert study.deliveries[0].next_attempt == 50.0
    assert idx.workers() == []
    assert idx.requeue_expired() == ["1.9"]
    idx.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    Index(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(IndexDBError, match="newer than this node"):
        Index(path)


@pytest.mark.parametrize(
    "target",
    ["mysql://u:p@h/db", "sqlite://", "sqlite:///:memory:", "postgresql+asyncpg://h/db"],
)
def test_unsupported_targets_are_refused(target: str) -> None:
    with pytest.raises(IndexDBError):
        Index(target)


def test_an_unreachable_server_names_where_and_hides_the_password() -> None:
    from peers import free_port

    port = free_port()
    url = f"postgresql+psycopg://node:s3cret-pw@127.0.0.1:{port}/ich"
    with pytest.raises(IndexDBError) as info:
        open_checked(url, Path("/nonexistent-spool"))
    message = str(info.value)
    assert f"127.0.0.1:{port}/ich" in message
    assert "s3cret-pw" not in message


# -- PostgreSQL: several processes on one database ---------------------------------------


def test_two_workers_claim_disjoint_studies(postgres_url: str) -> None:
    """Two engines (as two worker processes) claim from 20 queued studies at once."""
    setup = Index(postgres_url)
    for n in range(20):
        _queued(setup, f"2.{n}", 100.0 + n)
    workers = [Index(postgres_url) for _ in range(2)]
    start = threading.Barrier(2)
    got: dict[str, list[str]] = {"a": [], "b": []}

    def claim(name: str, idx: Index) -> None:
        start.wait()
        while (study := idx.claim_next(name, lease_s=60)) is not None:
            got[name].append(study.study_uid)

    threads = [threading.Thread(target=claim, args=(name, idx))
               for name, idx in zip(got, workers, strict=True)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not set(got["a"]) & set(got["b"])
    assert sorted(got["a"] + got["b"]) == sorted(f"2.{n}" for n in range(20))
    rows = setup.studies(("processing",))
    assert len(rows) == 20
    assert all(r.claimed_by == ("a" if r.study_uid in got["a"] else "b") for r in rows)
    for idx in (setup, *workers):
        idx.close()


def test_two_receivers_recording_one_new_study_make_one_study(postgres_url: str) -> None:
    """The first instances of one study arrive at two receivers at the same moment."""
    receivers = [Index(postgres_url) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def receive(k: int, idx: Index) -> None:
        start.wait()
        for n in range(15):
            rec = idx.record(_row(f"3.1.{k}.{n}", study="3", series=f"3.{k}", t=100.0 + n))
            with lock:
                outcomes.append(rec.new_study)
            assert rec.inserted
            assert rec.generation == 1
            assert not rec.reopened

    threads = [threading.Thread(target=receive, args=(k, idx)) for k, idx in enumerate(receivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == [False] * 29 + [True]
    (study,) = receivers[0].studies()
    assert (study.study_uid, study.generation, study.state) == ("3", 1, "receiving")
    assert (study.instances, study.series, study.last_received) == (30, 2, 114.0)
    for idx in receivers:
        idx.close()


def test_postgresql_down_means_index_errors_and_it_recovers() -> None:
    """A server stopped under a running index: every call raises ``IndexDBError`` (the
    C-STORE handler answers 0xA700 on it), and the same ``Index`` works again once the
    server is back (the index's pool checks connections before use; the C-STORE path's
    retries once on a new connection)."""
    with running_postgres() as server:
        idx = Index(server.database())
        assert idx.record(_row("4.1.1", study="4")).inserted
        server.stop("immediate")
        with pytest.raises(IndexDBError):
            idx.record(_row("4.1.2", study="4"))
        with pytest.raises(IndexDBError):
            idx.has_instance("4.1.2")
        server.start()
        assert idx.record(_row("4.1.2", study="4")).inserted
        study = idx.study("4")
        assert study is not None
        assert study.instances == 2
        idx.close()


def test_a_restarted_server_costs_no_c_store_an_error() -> None:
    """The C-STORE path's pool has no pre-ping: after a restart its connections are
    stale, and the first use of each fails. That failure must not reach a sender (it
    would be answered 0xA700 for nothing): the pool is emptied and the statement runs
    again on a new connection."""
    with running_postgres() as server:
        idx = Index(server.database())
        for n in range(3):
            assert idx.record(_row(f"5.1.{n}", study="5")).inserted
        assert idx.has_instance("5.1.0")
        server.stop("fast")
        server.start()
        assert idx.has_instance("5.1.2")
        server.stop("fast")
        server.start()
        rec = idx.record(_row("5.1.3", study="5", t=150.0))
        assert (rec.inserted, rec.new_study, rec.generation) == (True, False, 1)
        study = idx.study("5")
        assert study is not None
        assert (study.instances, study.last_received) == (4, 150.0)
        idx.close()


def test_the_worklist_listing_keeps_counts_only_while_they_cannot_change(index: Index) -> None:
    """``browse`` aggregates a study's instances again while it is receiving and whenever
    its row changed (reopened, deleted and received again); otherwise it keeps them."""

    def listed(states: tuple[str, ...] = ()) -> dict[str, tuple[int, int, int, int, str]]:
        return {
            r.study_uid: (r.instances, r.eligible_instances, r.series, r.size, r.state)
            for r in index.browse(states)
        }

    index.record(_row("7.1.1", study="7", series="7.1", t=100.0))
    index.record(_row("7.1.2", study="7", series="7.2", t=101.0))
    assert listed() == {"7": (2, 2, 2, 20, "receiving")}
    index.record(_row("7.1.3", study="7", series="7.2", t=102.0))
    assert listed() == {"7": (3, 3, 2, 30, "receiving")}  # receiving: read again
    assert index.finish_receiving("7", 1, 102.0, "complete")
    assert listed() == {"7": (3, 3, 2, 30, "complete")}
    index.set_delivery("7", "pacs", 1, "pending", 0, None)  # a row kept is built again
    assert [(d.destination, d.state) for d in index.browse()[0].deliveries] == [("pacs", "pending")]
    index.set_delivery("7", "pacs", 1, "sent", 1, None)
    assert [(d.destination, d.state) for d in index.browse()[0].deliveries] == [("pacs", "sent")]
    with index._read() as conn:  # behind the index's back: a complete study is kept
        conn.execute(sa.delete(instances).where(instances.c.sop_uid == "7.1.3"))
    assert listed() == {"7": (3, 3, 2, 30, "complete")}
    assert [(r.instances, r.size) for r in index.studies()] == [(2, 20)]  # not cached
    late = index.record(_row("7.1.4", study="7", series="7.3", t=200.0))
    assert late.reopened
    assert listed() == {"7": (3, 3, 3, 30, "receiving")}
    assert index.finish_receiving("7", 2, 200.0, "complete")
    assert listed(("complete",)) == {"7": (3, 3, 3, 30, "complete")}
    assert listed() == {"7": (3, 3, 3, 30, "complete")}
    index.delete_study("7")  # retention; then received again, with no poll between
    index.record(_row("7.1.9", study="7", series="7.9", t=300.0))
    assert index.finish_receiving("7", 1, 300.0, "complete")
    assert listed() == {"7": (1, 1, 1, 10, "complete")}
    index.delete_study("7")
    assert listed() == {}
