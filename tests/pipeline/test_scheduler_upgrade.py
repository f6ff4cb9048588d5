"""Jobs stored by a release from before the subpackages still run after an upgrade."""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path

from dicom_node.pipeline.scheduler import COMPLETE_FUNC, StudyScheduler, complete_job_id

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _rewrite_func(jobs_db: Path, func: str) -> None:
    """Make the stored job look as an earlier release wrote it."""
    con = sqlite3.connect(jobs_db)
    with con:
        ((job_id, blob),) = con.execute("SELECT id, job_state FROM apscheduler_jobs").fetchall()
        state = pickle.loads(blob)
        state["func"] = func
        con.execute(
            "UPDATE apscheduler_jobs SET job_state = ? WHERE id = ?", (pickle.dumps(state), job_id)
        )
    con.close()


def test_a_completion_job_naming_the_old_module_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    first = StudyScheduler(db, quiet_seconds=60, runtime_key="k")
    first.start()
    first.schedule_completion(STUDY, time.time() + 3600)
    first.shutdown()
    _rewrite_func(db, "dicom_node.assembly:run_complete_job")

    second = StudyScheduler(db, quiet_seconds=60, runtime_key="k")
    second.start()
    try:
        job = second._scheduler.get_job(complete_job_id(STUDY))
        assert job is not None, "APScheduler dropped the job it could not restore"
        assert job.func_ref == COMPLETE_FUNC
        assert second.completion_time(STUDY) is not None
    finally:
        second.shutdown()
