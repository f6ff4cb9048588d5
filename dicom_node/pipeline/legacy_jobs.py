"""Upgrade: import the APScheduler jobs an earlier release stored into the ``timers`` table.

Releases before the ``timers`` table kept their timers in an APScheduler 3
``SQLAlchemyJobStore`` (table ``apscheduler_jobs`` in ``storage.jobs_db``): one pickled
job state per row. Unpickling a state needs the ``apscheduler`` classes it names (its
trigger), so the ``apscheduler`` dependency stays, for this upgrade path only; nothing
else imports it. Each job becomes a row (its function mapped through
:data:`MOVED_FUNCS`, its trailing runtime-key argument dropped: the running process
appends its own), then the old table is dropped, in one transaction when both tables are
in one file. Where they are not (the timers moved to PostgreSQL), the rows are inserted
first and only then the old table dropped; an import interrupted between the two runs
again at the next start without overwriting newer rows.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, inspect, text

from dicom_node.pipeline.timers import Timer, TimerStore, open_engine

log = logging.getLogger(__name__)

LEGACY_TABLE: Final = "apscheduler_jobs"

COMPLETE_FUNC: Final = "dicom_node.pipeline.assembly:run_complete_job"
RETENTION_FUNC: Final = "dicom_node.pipeline.assembly:run_retention_job"
DELIVER_FUNC: Final = "dicom_node.pipeline.delivery:run_delivery_job"
#: Text references that stored jobs of earlier releases name, and where each now lives:
#: without this map an upgrade would drop a study pending completion or a result pending
#: delivery.
MOVED_FUNCS: Final = {
    "dicom_node.assembly:run_complete_job": COMPLETE_FUNC,
    "dicom_node.assembly:run_retention_job": RETENTION_FUNC,
    "dicom_node.delivery:run_delivery_job": DELIVER_FUNC,
}
KIND_OF_FUNC: Final = {
    COMPLETE_FUNC: "complete",
    RETENTION_FUNC: "retention",
    DELIVER_FUNC: "delivery",
}


def timer_of_state(state: dict[str, Any], next_run: float | None, now: float) -> Timer:
    """The row for one unpickled APScheduler job state."""
    ref = str(state["func"])
    ref = MOVED_FUNCS.get(ref, ref)
    executor = str(state.get("executor") or "default")
    kind = KIND_OF_FUNC.get(ref, "delivery" if executor == "delivery" else "complete")
    args = [str(a) for a in state.get("args", ())]
    interval = getattr(state.get("trigger"), "interval_length", None)
    return Timer(
        id=str(state["id"]),
        func=ref,
        args=args[:-1],  # every job of those releases carried the runtime key last
        due=now if next_run is None else float(next_run),
        executor=executor,
        kind=kind,
        interval_s=None if interval is None else float(interval),
    )


def _read(con: Connection, now: float) -> list[Timer]:
    rows = con.execute(text(f"SELECT id, next_run_time, job_state FROM {LEGACY_TABLE}")).all()
    # S301: our own job store, read as APScheduler itself reads it
    return [timer_of_state(pickle.loads(r.job_state), r.next_run_time, now) for r in rows]  # noqa: S301


def _has_legacy(con: Connection) -> bool:
    return bool(inspect(con).has_table(LEGACY_TABLE))


def import_legacy_jobs(store: TimerStore, legacy_db: Path | None, now: float) -> int:
    """Move every job of ``apscheduler_jobs`` into ``timers``; returns how many.

    ``legacy_db``: the SQLite file of the old job store when it is not the timers' own
    database (None: look in the timers' database, which is then that file).
    """
    engine = store.engine
    same_file = (
        legacy_db is not None
        and engine.dialect.name == "sqlite"
        and Path(str(engine.url.database)).resolve() == legacy_db.resolve()
    )
    if same_file:
        legacy_db = None  # one transaction below
    if legacy_db is None:
        with engine.begin() as con:
            if not _has_legacy(con):
                return 0
            timers = _read(con, now)
            for t in timers:
                store.upsert_in(con, t, keep_existing=True)
            con.execute(text(f"DROP TABLE {LEGACY_TABLE}"))
        return len(timers)
    if not legacy_db.exists():
        return 0
    source: Engine = open_engine(f"sqlite:///{legacy_db}")
    try:
        with source.begin() as src:
            if not _has_legacy(src):
                return 0
            timers = _read(src, now)
            with engine.begin() as con:
                for t in timers:
                    store.upsert_in(con, t, keep_existing=True)
            src.execute(text(f"DROP TABLE {LEGACY_TABLE}"))
        return len(timers)
    finally:
        source.dispose()
