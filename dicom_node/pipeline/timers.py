"""Durable timers as rows of a ``timers`` table that any process claims when they are due.

Why rows in the database rather than an APScheduler job store: APScheduler 3 says a job
store must never be shared between schedulers (each scheduler assumes it alone reads and
deletes the jobs), so completion deadlines and delivery retries could not survive the
loss of one process once several processes share a PostgreSQL index. A row per timer,
claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``, lets any process run any due timer,
and the same code serves the single-node SQLite file (where ``SKIP LOCKED`` renders
nothing and ``BEGIN IMMEDIATE`` makes the claim atomic): one mechanism for both databases.

The lease: a claim writes ``owner`` and ``lease_until = now + lease_s``. While the job runs
its owner renews the lease every ``lease_s / 3``, so a long delivery is not taken over; a
process that dies stops renewing, and once ``lease_until`` has passed another process
claims the row and runs it again (at least once, never lost). A process restarted under
the same owner id frees its own leases at start instead of waiting for them to expire.
Leases compare wall clocks of different hosts: keep ``lease_s`` far above their skew.

After a run, a one-shot row is deleted only if its ``version`` is the one claimed: a job
that moved its own deadline while running (a completion seeing late images, a delivery
scheduling its retry) bumped the version and its new row stands. An interval row moves
on by whole intervals past now (missed runs coalesce into one).

A job is a text reference to a module-level function (``module:function``) and JSON
arguments *without* a runtime key: the dispatcher appends the runtime key of the process
that runs it, so a job scheduled by a process that died runs in whichever process claims
it (see :mod:`dicom_node.pipeline.runtimes`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.store.private import private_db_file, private_dir

log = logging.getLogger(__name__)

METADATA: Final = MetaData()

TIMERS: Final = Table(
    "timers",
    METADATA,
    Column("id", Text, primary_key=True),  # job id: digests, never a UID
    Column("func", Text, nullable=False),  # module:function
    Column("args", Text, nullable=False),  # JSON list, without the runtime key
    Column("due", Double, nullable=False),  # epoch seconds
    Column("executor", Text, nullable=False),  # thread pool: "default" | "delivery"
    Column("kind", Text, nullable=False),  # which roles run it: complete|retention|delivery
    Column("interval_s", Double, nullable=True),  # repeating rows only
    Column("owner", Text, nullable=True),  # process holding the lease
    Column("lease_until", Double, nullable=True),  # epoch seconds
    Column("version", Integer, nullable=False, default=0),  # bumped on every reschedule
    Index("timers_kind_due", "kind", "due"),
)

EXECUTORS: Final = ("default", "delivery")


def open_engine(url: str) -> Engine:
    """An engine on ``url``: PostgreSQL as is; an SQLite file private (0600), in WAL mode,
    every transaction ``BEGIN IMMEDIATE`` (a claim is a read then a write: taking the write
    lock first makes it atomic between processes and threads)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError("the timers' SQLite database must be a file")
    path = Path(parsed.database)
    private_dir(path.parent, tighten=False)
    private_db_file(path)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_con: Any, _record: Any) -> None:
        dbapi_con.isolation_level = None  # pysqlite's own BEGIN off: ours is IMMEDIATE
        # NORMAL: a commit survives a crash of the process; what a power cut could take is
        # rebuilt at start (receiving studies and pending deliveries without a timer).
        dbapi_con.execute("PRAGMA journal_mode=WAL")
        dbapi_con.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(con: Connection) -> None:
        con.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _insert(engine: Engine) -> Any:
    """The dialect's INSERT with ``ON CONFLICT`` (both spell it alike)."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(TIMERS)
    return sqlite.insert(TIMERS)


@dataclass(frozen=True)
class Timer:
    """One row as a caller sets it."""

    id: str
    func: str
    args: Sequence[str]
    due: float
    executor: str
    kind: str
    interval_s: float | None = None


@dataclass(frozen=True)
class Claimed:
    """A row this process claimed: what to run and what to compare after the run."""

    id: str
    func: str
    args: list[str]
    due: float
    executor: str
    interval_s: float | None
    version: int


class TimerStore:
    """The ``timers`` table: every read and write of it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        METADATA.create_all(engine)

    def upsert(self, timer: Timer) -> None:
        """Insert or replace the row (lease freed, version bumped)."""
        with self.engine.begin() as con:
            self.upsert_in(con, timer)

    def upsert_in(self, con: Connection, timer: Timer, *, keep_existing: bool = False) -> None:
        """:meth:`upsert` within ``con``'s transaction; ``keep_existing``: leave a row
        already there untouched (an import that may run twice)."""
        values = {
            "id": timer.id,
            "func": timer.func,
            "args": json.dumps(list(timer.args)),
            "due": timer.due,
            "executor": timer.executor,
            "kind": timer.kind,
            "interval_s": timer.interval_s,
            "owner": None,
            "lease_until": None,
            "version": 0,
        }
        stmt = _insert(self.engine).values(values)
        if keep_existing:
            stmt = stmt.on_conflict_do_nothing(index_elements=[TIMERS.c.id])
        else:
            new = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=[TIMERS.c.id],
                set_={
                    "func": new.func,
                    "args": new.args,
                    "due": new.due,
                    "executor": new.executor,
                    "kind": new.kind,
                    "interval_s": new.interval_s,
                    "owner": None,
                    "lease_until": None,
                    "version": TIMERS.c.version + 1,
                },
            )
        con.execute(stmt)

    def due_of(self, job_id: str) -> float | None:
        with self.engine.begin() as con:
            due = con.execute(select(TIMERS.c.due).where(TIMERS.c.id == job_id)).scalar()
        return None if due is None else float(due)

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as con:
            con.execute(delete(TIMERS).where(TIMERS.c.id == job_id))

    def release(self, owner: str) -> int:
        """Free every lease ``owner`` holds; returns how many."""
        with self.engine.begin() as con:
            result = con.execute(
                update(TIMERS).where(TIMERS.c.owner == owner).values(owner=None, lease_until=None)
            )
        return int(result.rowcount)

    def claim(
        self,
        owner: str,
        kinds: Iterable[str],
        slots: dict[str, int],
        now: float,
        lease_s: float,
    ) -> tuple[list[Claimed], float | None]:
        """Claim due rows of ``kinds`` with a free lease, oldest first, at most ``slots``
        per executor; returns them and the earliest later due of executors still free."""
        free_lease = or_(
            TIMERS.c.owner.is_(None), TIMERS.c.lease_until.is_(None), TIMERS.c.lease_until < now
        )
        mine = TIMERS.c.kind.in_(sorted(kinds))
        claimed: list[Claimed] = []
        with self.engine.begin() as con:
            for executor, n in slots.items():
                if n <= 0:
                    continue
                rows = con.execute(
                    select(
                        TIMERS.c.id,
                        TIMERS.c.func,
                        TIMERS.c.args,
                        TIMERS.c.due,
                        TIMERS.c.interval_s,
                        TIMERS.c.version,
                    )
                    .where(mine, TIMERS.c.executor == executor, TIMERS.c.due <= now, free_lease)
                    .order_by(TIMERS.c.due)
                    .limit(n)
                    .with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    continue
                con.execute(
                    update(TIMERS)
                    .where(TIMERS.c.id.in_([r.id for r in rows]))
                    .values(owner=owner, lease_until=now + lease_s)
                )
                claimed += [
                    Claimed(
                        r.id,
                        r.func,
                        json.loads(r.args),
                        float(r.due),
                        executor,
                        r.interval_s,
                        int(r.version),
                    )
                    for r in rows
                ]
            still_free = [e for e, n in slots.items() if n > sum(c.executor == e for c in claimed)]
            nxt = None
            if still_free:
                nxt = con.execute(
                    select(func.min(TIMERS.c.due)).where(
                        mine, TIMERS.c.executor.in_(still_free), TIMERS.c.due > now, free_lease
                    )
                ).scalar()
        return claimed, None if nxt is None else float(nxt)

    def renew(self, owner: str, ids: Iterable[str], until: float) -> None:
        ids = sorted(set(ids))
        if not ids:
            return
        with self.engine.begin() as con:
            con.execute(
                update(TIMERS)
                .where(TIMERS.c.owner == owner, TIMERS.c.id.in_(ids))
                .values(lease_until=until)
            )

    def finish(self, job: Claimed, now: float) -> None:
        """After a run: drop a one-shot row, move an interval row past ``now``; either only
        if nobody rescheduled it meanwhile (same version)."""
        same = (TIMERS.c.id == job.id) & (TIMERS.c.version == job.version)
        with self.engine.begin() as con:
            if job.interval_s is None:
                con.execute(delete(TIMERS).where(same))
            else:
                con.execute(
                    update(TIMERS)
                    .where(same)
                    .values(
                        due=next_due(job.due, job.interval_s, now), owner=None, lease_until=None
                    )
                )


def next_due(due: float, interval_s: float, now: float) -> float:
    """The first ``due + k * interval_s`` (k >= 1) after ``now``: missed runs coalesce."""
    k = max(1, math.floor((now - due) / interval_s) + 1)
    return due + k * interval_s


def resolve_func(ref: str) -> Callable[..., object]:
    """The module-level function a text reference ``module:qualname`` names."""
    module, _, name = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{ref} is not callable")
    return obj  # type: ignore[no-any-return]


class Dispatcher:
    """The thread that claims due rows and the thread pools that run them."""

    def __init__(
        self,
        store: TimerStore,
        *,
        owner: str,
        kinds: frozenset[str],
        runtime_key: str,
        workers: int,
        poll_s: float,
        lease_s: float,
    ) -> None:
        self.store = store
        self.owner = owner
        self.kinds = kinds
        self.runtime_key = runtime_key
        self.workers = workers
        self.poll_s = poll_s
        self.lease_s = lease_s
        self._pools = {
            e: ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"timers-{e}")
            for e in EXECUTORS
        }
        self._cond = threading.Condition()
        self._busy: Counter[str] = Counter()  # running jobs per executor
        self._held: Counter[str] = Counter()  # ids of running jobs (one may run twice)
        self._kick = False
        self._wake_at = math.inf  # when the thread wakes by itself (inf: it is awake)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._db_down = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="timers", daemon=True)
        self._thread.start()

    def poke(self, due: float) -> None:
        """A row of ours is due at ``due``: wake the thread if that is sooner than planned."""
        with self._cond:
            if due < self._wake_at:
                self._kick = True
                self._cond.notify()

    def stop(self, wait: bool) -> None:
        """Claim no more; with ``wait`` let running jobs finish (and their rows be settled)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        for pool in self._pools.values():
            pool.shutdown(wait=wait)

    def _loop(self) -> None:
        renew_at = 0.0
        while True:
            now = time.time()
            claimed: list[Claimed] = []
            nxt: float | None = None
            try:
                with self._cond:
                    slots = {e: self.workers - self._busy[e] for e in EXECUTORS}
                    held = list(self._held)
                if held and now >= renew_at:
                    self.store.renew(self.owner, held, now + self.lease_s)
                    renew_at = now + self.lease_s / 3
                claimed, nxt = self.store.claim(self.owner, self.kinds, slots, now, self.lease_s)
                if self._db_down:
                    self._db_down = False
                    log.info("scheduler.db_back")
            except SQLAlchemyError as exc:
                if not self._db_down:  # once per outage, not once per poll
                    self._db_down = True
                    log.warning("scheduler.db_unavailable", extra={"error": type(exc).__name__})
            with self._cond:
                for job in claimed:
                    self._busy[job.executor] += 1
                    self._held[job.id] += 1
                holding = bool(self._held)
            for job in claimed:
                self._pools[job.executor].submit(self._run, job)
            now = time.time()
            wait = self.poll_s
            if nxt is not None:
                wait = min(wait, max(0.0, nxt - now))
            if holding:
                wait = min(wait, max(0.0, renew_at - now))
            with self._cond:
                if self._stopping:
                    return
                if not self._kick and wait > 0:
                    self._wake_at = now + wait
                    self._cond.wait(wait)
                    self._wake_at = math.inf
                self._kick = False
                if self._stopping:
                    return

    def _run(self, job: Claimed) -> None:
        try:
            resolve_func(job.func)(*job.args, self.runtime_key)
        except Exception as exc:  # noqa: BLE001 - a failed job is logged and counts as run
            # the error type only (its message may quote data); ids carry digests, no UID
            log.error("scheduler.job_failed", extra={"job": job.id, "error": type(exc).__name__})
        try:
            self.store.finish(job, time.time())
        except SQLAlchemyError as exc:  # the lease expires and the row runs again
            log.warning(
                "scheduler.finish_failed", extra={"job": job.id, "error": type(exc).__name__}
            )
        finally:
            with self._cond:
                self._busy[job.executor] -= 1
                self._held[job.id] -= 1
                if self._held[job.id] <= 0:
                    del self._held[job.id]
                self._kick = True  # a slot is free: due rows may be waiting for it
                self._cond.notify()
