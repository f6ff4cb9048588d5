"""Two receivers and two workers as separate processes on one PostgreSQL and one spool.

What issue 14 asks of a scaled-out node: every study processed exactly once however its
series are split across receivers; a worker killed mid-study loses it to another worker
after the lease, with nothing delivered twice; PostgreSQL restarted during ingest costs
Out of Resources answers, never an acknowledged instance.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from nodes import NODE_AET, SENTINEL_ID, SENTINEL_NAME, Orthanc, storescu, wait_for
from pg import PostgresServer
from pipeline.support import phantom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from reliability.crash_support import pacs_results
from scaleout.cluster import Cluster

from train.data.phantoms import PhantomSpec, WrittenStudy, write_study

STUDIES = 20


def split_study(root: Path, seed: int) -> WrittenStudy:
    """A head CT with its main series and a localizer (a scanner's usual two)."""
    spec = PhantomSpec(seed=seed, n_slices=12, size=64, patient_name=SENTINEL_NAME,
                       patient_id=SENTINEL_ID)  # fmt: skip
    return write_study(root / f"s{seed}", spec, extra_series=("localizer",))


def assert_one_current_result(orthanc: Orthanc, study_uid: str) -> None:
    held = pacs_results(orthanc, study_uid)
    assert len(held.srs) == 1, len(held.srs)  # processed once: one SR ever sent
    assert len(held.scs) == 1, len(held.scs)
    assert held.duplicates == 0


def test_two_receivers_two_workers_process_each_split_study_once(
    tmp_path: Path, cluster: Cluster, orthanc: Orthanc
) -> None:
    receivers = [cluster.start("recv-a", "receiver"), cluster.start("recv-b", "receiver")]
    cluster.start("work-a", "worker")
    cluster.start("work-b", "worker")
    studies = [split_study(tmp_path / "src", seed) for seed in range(STUDIES)]
    for i, study in enumerate(studies):
        first, other = receivers[i % 2], receivers[(i + 1) % 2]
        main = study.main.files
        localizer = [f for s in study.series if s.kind == "localizer" for f in s.files]
        # the main series to one receiver, the localizer to the other, then the last two
        # slices of the main series late, to the other one too (within the quiet period)
        for port, files in ((first.port, main[:-2]), (other.port, localizer),
                            (other.port, main[-2:])):  # fmt: skip
            done = storescu(port, files)
            assert done.returncode == 0, done.stderr

    wait_for(lambda: cluster.states()["done"] == STUDIES, 300, "every study done")
    rows = {r["study_uid"]: r for r in cluster.rows()}
    assert set(rows) == {s.study_uid for s in studies}
    for study in studies:
        row = rows[study.study_uid]
        assert row["instances"] == len(study.files)
        assert row["generation"] == 1  # completed once: never completed under a sender
        assert row["claimed_by"] is None  # released when done
    wait_for(
        lambda: all(d["state"] == "sent" for r in cluster.rows()
                    for d in r["deliveries"].values()),
        120, "every delivery sent",
    )  # fmt: skip
    for study in studies:
        assert_one_current_result(orthanc, study.study_uid)
    # processed exactly once across the workers, and both workers took studies
    done = cluster.log_events("study.done")
    assert sum(done.values()) == STUDIES
    assert done.get("work-a", 0) > 0
    assert done.get("work-b", 0) > 0
    assert done.get("recv-a", 0) == done.get("recv-b", 0) == 0
    completed = cluster.log_events("study.queued")
    assert sum(completed.values()) == STUDIES  # each deadline fired once, in one receiver


def test_killed_worker_loses_its_study_to_another_after_the_lease(
    tmp_path: Path, cluster: Cluster, orthanc: Orthanc
) -> None:
    receiver = cluster.start("recv", "receiver")
    cluster.start("work-a", "worker")
    study = phantom(tmp_path / "src", seed=7, n_slices=60, size=128)
    assert storescu(receiver.port, study.main.files).returncode == 0

    def held_by_a() -> bool:
        return any(r["claimed_by"] == "work-a" for r in cluster.rows())

    wait_for(held_by_a, 120, "worker a to claim the study")
    cluster.kill("work-a")
    assert cluster.states()["processing"] == 1  # killed with the study in its hands
    cluster.start("work-b", "worker")
    wait_for(lambda: cluster.states()["done"] == 1, 180, "worker b to finish the study")
    (row,) = cluster.rows()
    assert row["result"] is not None
    wait_for(
        lambda: all(d["state"] == "sent" for d in cluster.rows()[0]["deliveries"].values()),
        120, "the delivery",
    )  # fmt: skip
    assert_one_current_result(orthanc, study.study_uid)
    assert cluster.log_events("study.done") == {"recv": 0, "work-a": 0, "work-b": 1}


def store_one(port: int, path: Path) -> int:
    """One C-STORE over its own association (pynetdicom SCU); the status, or -1 when the
    association itself failed."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_store(pydicom.dcmread(path))
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()


def test_postgres_restart_during_ingest_loses_nothing_acknowledged(
    tmp_path: Path, cluster: Cluster, postgres: PostgresServer
) -> None:
    receiver = cluster.start("recv", "receiver")
    study = phantom(tmp_path / "src", seed=11, n_slices=24, size=64)
    files = list(study.main.files)
    statuses: dict[Path, int] = {}
    for f in files[:8]:
        statuses[f] = store_one(receiver.port, f)
    postgres.stop("fast")
    try:
        for f in files[8:16]:
            statuses[f] = store_one(receiver.port, f)
    finally:
        postgres.start()
    for f in files[16:]:
        statuses[f] = store_one(receiver.port, f)
    down = [statuses[f] for f in files[8:16]]
    assert 0x0000 not in down  # never Success without the index row
    assert set(down) <= {0xA700, -1}
    acked = {f for f, s in statuses.items() if s == 0x0000}
    assert set(files[:8]) <= acked
    assert set(files[16:]) <= acked
    # the modality resends what was not acknowledged, as modalities do
    for f in files:
        if f not in acked:
            assert store_one(receiver.port, f) == 0x0000
    cluster.start("work", "worker")
    wait_for(lambda: cluster.states()["done"] == 1, 180, "the study done after the outage")
    (row,) = cluster.rows()
    assert row["instances"] == len(files)
    for f in files:  # every acknowledged instance is in the spool
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert list(cluster.spool.rglob(f"{sop}*")), sop
