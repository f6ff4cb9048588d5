"""Durable timers as claimed rows, on an SQLite file and on a real PostgreSQL database.

Several :class:`StudyScheduler` objects on one database stand for several processes (each
its own owner and runtime key). Job bodies are in :mod:`pipeline.timer_support`, named by
text reference as the node's own jobs are. Nothing here asserts a duration: each test
waits for a condition with a generous deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodes import wait_for
from pipeline import timer_support as ts
from sqlalchemy import select, update

from dicom_node.pipeline.scheduler import StudyScheduler, complete_job_id, default_owner
from dicom_node.pipeline.timers import TIMERS, Timer, TimerStore, next_due, open_engine

Make = Callable[..., StudyScheduler]


@pytest.fixture
def store(timers_url: str) -> Iterator[TimerStore]:
    """The test's own view of the table (as another process would see it)."""
    s = TimerStore(open_engine(timers_url))
    yield s
    s.engine.dispose()


@pytest.fixture
def make(timers_url: str) -> Iterator[Make]:
    """Factory of schedulers on the test's database; all shut down at teardown."""
    made: list[StudyScheduler] = []
    ts.reset()

    def _make(key: str = "node-a", **kwargs: Any) -> StudyScheduler:
        kwargs.setdefault("quiet_seconds", 60)
        sched = StudyScheduler(timers_url, runtime_key=key, **kwargs)
        made.append(sched)
        return sched

    yield _make
    ts.reset()  # releases any job still blocked
    for sched in made:
        sched.shutdown(wait=True)


def _row(store: TimerStore, job_id: str) -> Any:
    with store.engine.begin() as con:
        return con.execute(select(TIMERS).where(TIMERS.c.id == job_id)).one_or_none()


def _set_lease(store: TimerStore, job_id: str, owner: str, until: float) -> None:
    with store.engine.begin() as con:
        con.execute(
            update(TIMERS).where(TIMERS.c.id == job_id).values(owner=owner, lease_until=until)
        )


def test_a_due_job_runs_once_with_the_runners_key(make: Make) -> None:
    sched = make("runner")
    sched.start()
    sched.schedule_job(ts.RECORD, "deliver:one", time.time(), ["one"], name="deliver")
    wait_for(lambda: ts.calls("runner")["one"] == 1, 30, "the job")
    wait_for(lambda: not sched.has_job("deliver:one"), 30, "its row deleted")
    sched.shutdown(wait=True)
    assert ts.all_calls() == {"one": 1}
    assert ts.runtime_keys() == {"runner"}


def test_a_job_rescheduled_while_running_keeps_its_new_due(make: Make, store: TimerStore) -> None:
    sched = make()
    sched.start()
    entered, release = ts.gate("moving")
    sched.schedule_job(ts.BLOCK, "deliver:moving", time.time(), ["moving"], name="deliver")
    assert entered.wait(30)
    later = time.time() + 3600
    sched.schedule_job(ts.BLOCK, "deliver:moving", later, ["moving"], name="deliver")
    release.set()
    sched.shutdown(wait=True)  # the run has finished and its row is settled
    row = _row(store, "deliver:moving")
    assert row is not None, "the finished run deleted the row it had rescheduled"
    assert row.due == pytest.approx(later)
    assert row.owner is None
    assert ts.all_calls() == {"moving": 1}


def test_an_overdue_job_runs_once_at_start(make: Make) -> None:
    before = make("down")
    before.schedule_job(ts.RECORD, "deliver:late", time.time() - 600, ["late"], name="deliver")
    before.shutdown(wait=True)  # never started: the node was down when it was due
    after = make("up")
    after.start()
    wait_for(lambda: not after.has_job("deliver:late"), 30, "the overdue job")
    after.shutdown(wait=True)
    assert ts.all_calls() == {"late": 1}
    assert ts.calls("up") == {"late": 1}


def test_an_interval_job_missed_many_times_runs_once_and_moves_past_now(
    make: Make, store: TimerStore
) -> None:
    interval = 3600.0
    first = time.time() - 10 * interval - 5
    store.upsert(Timer("sweep", ts.RECORD, ["sweep"], first, "default", "retention", interval))
    sched = make()
    sched.start()
    wait_for(lambda: _row(store, "sweep").due > time.time(), 30, "the interval row moved on")
    sched.shutdown(wait=True)
    row = _row(store, "sweep")
    assert row.due == pytest.approx(first + 11 * interval)
    assert row.owner is None
    assert ts.all_calls() == {"sweep": 1}


def test_next_due_coalesces_missed_runs() -> None:
    assert next_due(100.0, 10.0, 100.0) == 110.0
    assert next_due(100.0, 10.0, 95.0) == 110.0  # ran early: still one interval on
    assert next_due(100.0, 10.0, 135.0) == 140.0
    assert next_due(100.0, 10.0, 140.0) == 150.0


def test_two_processes_run_each_of_50_jobs_exactly_once(make: Make) -> None:
    one = make("node-a", workers=4)
    two = make("node-b", workers=4)
    assert one.owner != two.owner
    one.start()
    two.start()
    now = time.time()
    ids = [f"deliver:{i}" for i in range(50)]
    for i, job_id in enumerate(ids):
        one.schedule_job(ts.SLOW_RECORD, job_id, now, [str(i)], name="deliver")
    wait_for(lambda: sum(ts.all_calls().values()) >= 50, 60, "50 runs")
    wait_for(lambda: not any(two.has_job(j) for j in ids), 60, "every row deleted")
    one.shutdown(wait=True)
    two.shutdown(wait=True)
    assert ts.all_calls() == {str(i): 1 for i in range(50)}
    assert ts.runtime_keys() <= {"node-a", "node-b"}


def test_a_job_whose_owner_died_runs_in_another_process(make: Make, store: TimerStore) -> None:
    store.upsert(Timer("deliver:orphan", ts.RECORD, ["orphan"], time.time(), "delivery",
                       "delivery"))  # fmt: skip
    _set_lease(store, "deliver:orphan", "dead-host:0", time.time() + 3600)  # still leased
    sched = make("survivor")
    sched.start()
    # A later row runs first: the leased one is not taken while its lease holds.
    sched.schedule_job(ts.RECORD, "deliver:after", time.time(), ["after"], name="deliver")
    wait_for(lambda: not sched.has_job("deliver:after"), 30, "the later job")
    assert ts.all_calls()["orphan"] == 0
    assert _row(store, "deliver:orphan").owner == "dead-host:0"
    _set_lease(store, "deliver:orphan", "dead-host:0", time.time() - 1)  # its owner died
    wait_for(lambda: not sched.has_job("deliver:orphan"), 30, "the orphan taken over")
    assert ts.calls("survivor") == {"after": 1, "orphan": 1}


def test_a_restarted_owner_takes_its_leases_back_at_start(make: Make, store: TimerStore) -> None:
    store.upsert(Timer("deliver:mine", ts.RECORD, ["mine"], time.time(), "delivery", "delivery"))
    _set_lease(store, "deliver:mine", default_owner("same-config"), time.time() + 3600)
    sched = make("same-config")  # the same host, config and roles: the same owner
    sched.start()
    wait_for(lambda: not sched.has_job("deliver:mine"), 30, "the job it held before")
    assert ts.all_calls() == {"mine": 1}


def test_a_running_job_keeps_renewing_its_lease(make: Make, store: TimerStore) -> None:
    lease = 1.0
    holder = make("holder", lease_s=lease, poll_s=0.1)
    other = make("other", lease_s=lease, poll_s=0.1)
    holder.start()
    entered, release = ts.gate("long")
    holder.schedule_job(ts.BLOCK, "deliver:long", time.time(), ["long"], name="deliver")
    assert entered.wait(30)
    claimed_until = _row(store, "deliver:long").lease_until
    other.start()
    # Several lease lengths later (seen in the row, not timed), the other has not taken it.
    wait_for(
        lambda: _row(store, "deliver:long").lease_until > claimed_until + 3 * lease,
        30,
        "the lease renewed three times",
    )
    assert ts.calls("other")["long"] == 0
    assert _row(store, "deliver:long").owner == holder.owner
    release.set()
    wait_for(lambda: not holder.has_job("deliver:long"), 30, "the long job finished")
    assert ts.all_calls() == {"long": 1}


def test_a_delivery_only_process_never_runs_a_completion(make: Make, store: TimerStore) -> None:
    now = time.time()
    store.upsert(Timer("complete:x", ts.RECORD, ["complete"], now - 1, "default", "complete"))
    deliveries = make("delivery-role", kinds=frozenset({"delivery"}))
    deliveries.start()
    deliveries.schedule_job(ts.RECORD, "deliver:y", now, ["delivery"], name="deliver")
    wait_for(lambda: not deliveries.has_job("deliver:y"), 30, "the delivery")
    assert ts.all_calls() == {"delivery": 1}  # the older completion row was never claimed
    assert _row(store, "complete:x").owner is None
    completions = make("completion-role", kinds=frozenset({"complete", "retention"}))
    completions.start()
    wait_for(lambda: ts.calls("completion-role")["complete"] == 1, 30, "the completion")
    assert ts.calls("delivery-role") == {"delivery": 1}


def test_a_failing_job_is_logged_without_its_arguments_and_counts_as_run(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "1.2.826.0.1.3680043.8.498.99"
    sched = make()
    sched.start()
    with caplog.at_level(logging.ERROR, logger="dicom_node.pipeline.timers"):
        sched.schedule_job(ts.FAIL, "deliver:bad", time.time(), [secret], name="deliver")
        wait_for(lambda: not sched.has_job("deliver:bad"), 30, "the failed job's row gone")
    (rec,) = [r for r in caplog.records if r.getMessage() == "scheduler.job_failed"]
    assert rec.__dict__["error"] == "RuntimeError"
    assert rec.__dict__["job"] == "deliver:bad"
    assert secret not in caplog.text


def test_completion_rows_carry_a_digest_and_can_be_cancelled(make: Make, store: TimerStore) -> None:
    uid = "1.2.826.0.1.3680043.8.498.7"
    sched = make()
    at = time.time() + 3600
    sched.schedule_completion(uid, at)
    assert sched.completion_time(uid) == pytest.approx(at)
    row = _row(store, complete_job_id(uid))
    assert uid not in row.id
    assert uid in row.args
    assert row.kind == "complete"
    assert row.executor == "default"
    sched.cancel_completion(uid)
    assert sched.completion_time(uid) is None


def test_nothing_is_scheduled_once_shut_down(make: Make) -> None:
    sched = make()
    sched.start()
    sched.shutdown(wait=True)
    assert not sched.running
    sched.schedule_job(ts.RECORD, "deliver:late", time.time(), ["late"], name="deliver")
    assert not sched.has_job("deliver:late")


def test_jobs_live_in_their_own_file_unless_the_index_is_on_postgresql(tmp_path: Any) -> None:
    from dicom_node.config import load_settings
    from dicom_node.pipeline.scheduler import jobs_url

    cfg = tmp_path / "node.yaml"
    cfg.write_text("storage: {jobs_db: state/jobs.sqlite, index_db: state/index.sqlite}\n")
    settings = load_settings(cfg)
    assert jobs_url(settings) == f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}"
    pg = "postgresql+psycopg://node@db.example:5432/ich"
    shared = settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"index_db": pg})}
    )
    assert jobs_url(shared) == pg
