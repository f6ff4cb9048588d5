"""Jobs that an earlier release stored with APScheduler still run after an upgrade.

The old job store is built by APScheduler itself (its ``SQLAlchemyJobStore`` on the jobs
file), one job renamed afterwards to a function's place before the subpackages, as that
release wrote it; the new scheduler must import every job into ``timers`` and run them.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from nodes import wait_for
from pipeline import timer_support as ts
from sqlalchemy import select

from dicom_node.pipeline.scheduler import (
    COMPLETE_FUNC,
    RETENTION_FUNC,
    RETENTION_JOB_ID,
    StudyScheduler,
    complete_job_id,
)
from dicom_node.pipeline.timers import TIMERS, TimerStore, open_engine

STUDY = "1.2.826.0.1.3680043.8.498.1"
OLD_KEY = "/etc/old-node/config.yaml"


def _old_store(jobs_db: Path, completion_at: float) -> None:
    """A job store as a release with APScheduler wrote it: a completion, a delivery
    overdue, the retention sweep; every job carrying the old runtime key last."""
    old = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{jobs_db}")}, timezone=UTC
    )
    old.start(paused=True)
    old.add_job(
        COMPLETE_FUNC, trigger="date", run_date=datetime.fromtimestamp(completion_at, UTC),
        args=[STUDY, OLD_KEY], id=complete_job_id(STUDY), name="complete",
        misfire_grace_time=None, coalesce=True,
    )  # fmt: skip
    old.add_job(
        ts.RECORD, trigger="date", run_date=datetime.fromtimestamp(time.time() + 60, UTC),
        args=["legacy-delivery", OLD_KEY], id="deliver:legacy", name="deliver",
        executor="default", misfire_grace_time=None,
    )  # fmt: skip
    old.add_job(
        RETENTION_FUNC, trigger="interval", seconds=3600, args=[OLD_KEY], id=RETENTION_JOB_ID,
        name="retention",
    )  # fmt: skip
    old.shutdown(wait=True)  # every job in the future: a paused APScheduler still runs due ones
    # The release before the subpackages named the completion job's function thus.
    con = sqlite3.connect(jobs_db)
    with con:
        blob = con.execute(
            "SELECT job_state FROM apscheduler_jobs WHERE id = ?", (complete_job_id(STUDY),)
        ).fetchone()[0]
        state = pickle.loads(blob)
        state["func"] = "dicom_node.assembly:run_complete_job"
        con.execute(
            "UPDATE apscheduler_jobs SET job_state = ? WHERE id = ?",
            (pickle.dumps(state), complete_job_id(STUDY)),
        )
    con.close()
    # The delivery job: on the delivery executor, and overdue (the node was down).
    overdue = time.time() - 60
    con = sqlite3.connect(jobs_db)
    with con:
        blob = con.execute("SELECT job_state FROM apscheduler_jobs WHERE id = 'deliver:legacy'")
        state = pickle.loads(blob.fetchone()[0])
        state["executor"] = "delivery"
        state["next_run_time"] = datetime.fromtimestamp(overdue, UTC)
        con.execute(
            "UPDATE apscheduler_jobs SET job_state = ?, next_run_time = ? "
            "WHERE id = 'deliver:legacy'",
            (pickle.dumps(state), overdue),
        )
    con.close()


@pytest.fixture
def rows(timers_url: str) -> Iterator[Any]:
    """The new timers' rows (``timers_url``: the old file itself, or a PostgreSQL
    index's database)."""
    store = TimerStore(open_engine(timers_url))

    def read() -> dict[str, Any]:
        with store.engine.begin() as con:
            return {r.id: r for r in con.execute(select(TIMERS))}

    yield read
    store.engine.dispose()


def test_every_stored_job_is_imported_and_runs_with_the_new_key(
    tmp_path: Path, timers_url: str, rows: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jobs_db = tmp_path / "jobs.sqlite"
    completion_at = time.time() + 3600
    _old_store(jobs_db, completion_at)
    ts.reset()
    # Only deliveries run here: the completion and the sweep are checked as rows.
    sched = StudyScheduler(
        timers_url, quiet_seconds=60, runtime_key="new-key", kinds=frozenset({"delivery"}),
        legacy_jobs_db=jobs_db,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="dicom_node.pipeline.scheduler"):
        sched.start()
    try:
        wait_for(lambda: not sched.has_job("deliver:legacy"), 30, "the imported delivery")
        assert ts.calls("new-key") == {"legacy-delivery": 1}
        assert OLD_KEY not in ts.runtime_keys()
        assert sched.completion_time(STUDY) == pytest.approx(completion_at)
        got = rows()
        complete = got[complete_job_id(STUDY)]
        assert complete.func == COMPLETE_FUNC  # mapped from the old module's name
        assert (complete.kind, complete.executor) == ("complete", "default")
        assert complete.args == f'["{STUDY}"]'  # the old runtime key dropped
        sweep = got[RETENTION_JOB_ID]
        assert (sweep.func, sweep.kind, sweep.interval_s) == (RETENTION_FUNC, "retention", 3600)
        assert sweep.args == "[]"
    finally:
        sched.shutdown()
    (rec,) = [r for r in caplog.records if r.getMessage() == "scheduler.jobs_migrated"]
    assert rec.__dict__["count"] == 3
    with sqlite3.connect(jobs_db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert "apscheduler_jobs" not in tables  # imported once: a restart imports nothing


def test_a_restart_imports_nothing_again(tmp_path: Path) -> None:
    jobs_db = tmp_path / "jobs.sqlite"
    _old_store(jobs_db, time.time() + 3600)
    url = f"sqlite:///{jobs_db}"
    first = StudyScheduler(url, quiet_seconds=60, runtime_key="k", kinds=frozenset({"delivery"}))
    first.start()
    later = time.time() + 7200
    first.schedule_completion(STUDY, later)
    first.shutdown()
    second = StudyScheduler(url, quiet_seconds=60, runtime_key="k", kinds=frozenset({"delivery"}))
    second.start()
    try:
        assert second.completion_time(STUDY) == pytest.approx(later)
    finally:
        second.shutdown()
