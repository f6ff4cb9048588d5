"""The study index: rows for studies, series and instances, with states, on SQLite (the
embedded default) or PostgreSQL (several receivers and workers sharing one queue).

The spool files are the truth and this index is a cache of them: ``dicom-node reindex``
rebuilds it from the files alone, and start-up adds any file the index lacks (see
:meth:`dicom_node.store.spool.Spool.reconcile`). That is why SQLite commits use
``synchronous=NORMAL``: in WAL mode a commit survives a crash of the process, and what an
OS crash could take from the index is put back from the fsynced files at the next start.

States (PS3.4 has no notion of them; they are ours)::

    receiving -> complete -> queued -> processing -> done | failed
              -> skipped (with a reason: nothing a CT model can read)

An instance arriving for a study in any state other than ``receiving`` reopens it:
state back to ``receiving``, ``generation`` + 1, so results of the old generation can be
told from the new and superseded. A worker takes a ``queued`` study with
:meth:`Index.claim_next` and holds it on a lease (``claimed_by``, ``lease_until``) that
its heartbeat renews; a study whose lease ran out goes back to the queue
(:meth:`Index.requeue_expired`), and a write guarded by ``owner`` from a worker that lost
its lease changes nothing.

One module serves both databases through SQLAlchemy Core (no ORM: the C-STORE commit
path stays a handful of cached statements). The schema is in
:mod:`dicom_node.store.index_schema`. The two databases differ only in how connections
are held:

* SQLite: one connection behind one lock for every write, each write transaction a
  ``BEGIN IMMEDIATE``. One writer is what SQLite allows anyway; holding its lock up front
  keeps the C-STORE commit free of busy retries. Monitoring reads (:meth:`Index.counts`,
  :meth:`Index.browse`, :meth:`Index.workers`) use a second, read-only connection: in WAL
  mode they never wait for, nor delay, that writer.
* PostgreSQL: a connection pool, READ COMMITTED, no process-wide lock: row locks
  (``SELECT ... FOR UPDATE``, ``SKIP LOCKED`` for claims) and single conditional
  ``UPDATE`` statements keep concurrent processes correct. Each C-STORE's
  :meth:`Index.has_instance` and, while its study is receiving, :meth:`Index.record` are
  one autocommit statement each on a second pool (:mod:`dicom_node.store.pg_record`).

Every database error surfaces as :class:`IndexDBError` (a C-STORE is then answered Out
of Resources, never Success).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dicom_node.store import series_outcome
from dicom_node.store.index_record import (
    CoreRunner,
    DuplicateError,
    RecordStatements,
    SqliteCompiled,
    SqliteRunner,
    insert,
)
from dicom_node.store.index_record import record as record_instance
from dicom_node.store.index_rows import (
    REINDEX_HINT,
    STATES,
    AuditRow,
    DeliveryRow,
    DeliveryState,
    Dialect,
    IndexDamagedError,
    IndexDBError,
    InstanceRow,
    Recorded,
    StudyRow,
    StudyState,
    WorkerRow,
    iso,
)
from dicom_node.store.index_schema import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    SchemaTooNewError,
    audit,
    deliveries,
    instances,
    migrate,
    series,
    stored_version,
    studies,
    workers,
)
from dicom_node.store.pg_record import PgRecordPath
from dicom_node.store.private import private_db_file, private_dir
from dicom_node.store.series_outcome import SeriesOutcome
from dicom_node.store.study_listing import COUNT_COLUMNS, StudyListing


class _NoSchemaError(IndexDamagedError):
    """``Index(..., create=False)`` found a database without the index's tables."""


__all__ = [
    "REINDEX_HINT",
    "SCHEMA_VERSION",
    "STATES",
    "_MIGRATIONS",
    "AuditRow",
    "DeliveryRow",
    "DeliveryState",
    "Index",
    "IndexDBError",
    "IndexDamagedError",
    "InstanceRow",
    "Recorded",
    "StudyRow",
    "StudyState",
    "WorkerRow",
    "iso",
    "open_checked",
    "set_aside_if_damaged",
]


def _parse_target(target: str | Path) -> tuple[URL, Path | None]:
    """``target`` as a SQLAlchemy URL, and the file's path for SQLite (None: PostgreSQL).

    A plain path or ``sqlite:///<path>`` is a SQLite file; ``postgresql+psycopg://`` (or
    ``postgresql://``, which gets psycopg) a PostgreSQL database; anything else is refused.
    """
    if isinstance(target, Path) or "://" not in target:
        path = Path(target)
    else:
        try:
            url = make_url(target)
        except sa.exc.ArgumentError as exc:
            raise IndexDBError(f"index_db is not a database URL: {exc}") from None
        backend = url.get_backend_name()
        if backend == "postgresql":
            if url.drivername == "postgresql":
                url = url.set(drivername="postgresql+psycopg")
            if url.get_driver_name() != "psycopg":
                raise IndexDBError(
                    f"index_db {url.render_as_string()}: PostgreSQL is reached through "
                    "psycopg (postgresql+psycopg://...)"
                )
            return url, None
        if backend != "sqlite" or not url.database or url.database == ":memory:":
            raise IndexDBError(
                f"index_db {url.render_as_string()}: a file path, sqlite:///<file> or "
                "postgresql+psycopg://user:password@host:port/database"
            )
        path = Path(url.database)
    return URL.create("sqlite", database=str(path)), path


def _where(url: URL) -> str:
    """Host, port and database of a PostgreSQL URL, for messages (never the password)."""
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


_S = studies.c
_I = instances.c


#: A study row's own columns, in :func:`_study_row`'s order less the four counts
#: (which go after ``generation``); :mod:`dicom_node.store.study_listing` reads the first six.
_STUDY_COLUMNS: Final = (
    _S.study_uid, _S.state, _S.reason, _S.generation, _S.first_received, _S.last_received,
    _S.state_changed, _S.completed_at, _S.findings, _S.series_choice, _S.claimed_by,
    _S.lease_until,
)  # fmt: skip


def _study_select() -> sa.Select[Any]:
    return (
        sa.select(*_STUDY_COLUMNS[:4], *COUNT_COLUMNS, *_STUDY_COLUMNS[4:])
        .select_from(studies.outerjoin(instances, _I.study_uid == _S.study_uid))
        .group_by(_S.study_uid)
    )


_DELIVERY_COLUMNS: Final = (
    deliveries.c.study_uid, deliveries.c.destination, deliveries.c.generation,
    deliveries.c.state, deliveries.c.attempts, deliveries.c.last_error, deliveries.c.updated,
    deliveries.c.next_attempt,
)  # fmt: skip


class Index:
    """Thread-safe access to the index (see the module docstring for how each database's
    connections are held). ``target`` is a file path, ``sqlite:///<path>`` or
    ``postgresql+psycopg://user:password@host:port/database``.

    ``create=False`` refuses a database without the index's tables instead of creating
    them (:func:`open_checked`: an empty PostgreSQL database beside a full spool).
    """

    #: SQLite only: the writer's DBAPI connection, and the record path run on it.
    _raw_con: sqlite3.Connection
    _raw: SqliteRunner

    def __init__(self, target: str | Path, *, create: bool = True) -> None:
        url, path = _parse_target(target)
        self.path: Path | None = path
        self.dialect: Dialect = "sqlite" if path is not None else "postgresql"
        #: The database, password hidden: for log lines and messages.
        self.url: str = url.render_as_string(hide_password=True)
        self._where = str(path) if path is not None else _where(url)
        self._closed = False
        self._lock = threading.Lock()  # SQLite: the one writer connection
        self._read_lock = threading.Lock()  # SQLite: the monitoring connection
        self._conn: sa.Connection | None = None
        self._reader: sa.Connection | None = None
        self._reader_engine: sa.Engine | None = None
        self._stmts = RecordStatements(self.dialect)
        #: What the worklist's polls keep: counts aggregated again only where they can
        #: change, rows built again only where they did.
        self._listing: StudyListing[StudyRow] = StudyListing()
        if path is not None:
            self._engine = self._open_sqlite(path, create)
            assert self._conn is not None
            raw = self._conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            #: The record path's statements on the writer's DBAPI connection (see
            #: :mod:`dicom_node.store.index_record` for why not through SQLAlchemy).
            self._raw = SqliteRunner(SqliteCompiled(self._stmts, self._engine.dialect), raw)
            self._raw_con = raw
        else:
            self._engine = self._open_postgresql(url, create)
            #: The C-STORE path's two statements, one round trip each (see
            #: :mod:`dicom_node.store.pg_record`).
            self._pg_path = PgRecordPath(url, self._where, self._stmts.has_instance)

    # -- opening ----------------------------------------------------------------------

    def _open_sqlite(self, path: Path, create: bool) -> sa.Engine:
        def connect() -> sqlite3.Connection:
            con = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
            private_db_file(path)  # before WAL: SQLite gives -wal and -shm the file's mode
            return con

        try:
            private_dir(path.parent, tighten=False)
        except OSError as exc:
            raise IndexDBError(f"cannot open index {path}: {exc}") from exc
        engine = sa.create_engine(
            "sqlite://", creator=connect, poolclass=sa.pool.NullPool, hide_parameters=True
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        try:
            self._conn = engine.connect()
            with self._conn.begin():
                _begin_immediate(self._conn)
                found, _ = migrate(self._conn, create=create)
        except SchemaTooNewError as exc:
            self._dispose(engine)
            raise IndexDBError(f"index {path} has {exc}") from exc
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            self._dispose(engine)
            orig = getattr(exc, "orig", None)
            if isinstance(orig, sqlite3.DatabaseError):  # not a database, malformed, ...
                raise IndexDamagedError(
                    f"cannot open index {path}: {orig}; {REINDEX_HINT}"
                ) from exc
            raise IndexDBError(f"cannot open index {path}: {orig or exc}") from exc
        if found == 0 and not create:
            self._dispose(engine)
            raise _NoSchemaError(f"index {path} has no tables")
        return engine

    def _open_postgresql(self, url: URL, create: bool) -> sa.Engine:
        engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,  # docs/scale-out.md counts the connections
            isolation_level="READ COMMITTED",
            hide_parameters=True,
            connect_args={"connect_timeout": 10, "application_name": "dicom-node"},
        )
        try:
            with engine.begin() as conn:
                found, _ = migrate(conn, create=create)
        except SchemaTooNewError as exc:
            engine.dispose()
            raise IndexDBError(f"index database {self._where} has {exc}") from exc
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise IndexDBError(
                f"cannot connect to the index database {self._where} ({self.url}): {_detail(exc)}"
            ) from exc
        if found == 0 and not create:
            engine.dispose()
            raise _NoSchemaError(f"index database {self._where} has no tables")
        return engine

    def _dispose(self, engine: sa.Engine) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        engine.dispose()

    def check(self) -> None:
        """SQLite's ``quick_check`` over the whole file (``serve`` runs it at start-up):
        :class:`IndexDamagedError` naming ``reindex`` when a page is damaged. On
        PostgreSQL, which checks its own pages, a round trip and the schema version."""
        if self.dialect == "postgresql":
            self.schema_version  # noqa: B018 - raises IndexDBError when unreachable
            return
        try:
            with self._read() as conn:
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
        except IndexDBError as exc:
            raise IndexDamagedError(f"index {self.path} is damaged: {exc}; {REINDEX_HINT}") from exc
        if rows != ["ok"]:
            found = "; ".join(rows)
            raise IndexDamagedError(f"index {self.path} is damaged ({found}); {REINDEX_HINT}")

    @property
    def schema_version(self) -> int:
        with self._read() as conn:
            return stored_version(conn)

    def close(self) -> None:
        with self._read_lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._reader_engine is not None:
                self._reader_engine.dispose()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._engine.dispose()
            if self.dialect == "postgresql":
                self._pg_path.close()

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def _tx(self, doing: str = "write to") -> Iterator[sa.Connection]:
        """One write transaction: SQLite's ``BEGIN IMMEDIATE`` on the one connection under
        the lock, or a pooled PostgreSQL connection. Database errors become
        :class:`IndexDBError`; anything else raised inside rolls back and propagates."""
        try:
            if self.dialect == "sqlite":
                with self._lock:
                    conn = self._sqlite_conn()
                    with conn.begin():
                        _begin_immediate(conn)
                        yield conn
            else:
                self._check_open()
                with self._engine.begin() as conn:
                    yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise IndexDBError(f"cannot {doing} the index {self._where}: {_detail(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A read, in autocommit on both databases: each statement reads one consistent
        snapshot (as READ COMMITTED would), without a BEGIN and a ROLLBACK around it (two
        round trips to PostgreSQL saved on every C-STORE's ``has_instance``). On SQLite
        it runs on the writer's connection under its lock."""
        try:
            if self.dialect == "sqlite":
                with self._lock:
                    conn = self._sqlite_conn()
                    with conn.begin():
                        yield conn
            else:
                self._check_open()
                with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise IndexDBError(f"cannot read the index {self._where}: {_detail(exc)}") from exc

    @contextmanager
    def _monitor(self) -> Iterator[sa.Connection]:
        """The monitoring connection: SQLite's read-only second connection (opened on
        first use), or the pool on PostgreSQL, where readers never block writers."""
        if self.dialect == "postgresql":
            with self._read() as conn:
                yield conn
            return
        try:
            with self._read_lock:
                self._check_open()
                if self._reader is None:
                    self._reader_engine = sa.create_engine(
                        "sqlite://", creator=self._connect_read_only,
                        poolclass=sa.pool.NullPool, hide_parameters=True,
                    )  # fmt: skip
                    self._reader = self._reader_engine.connect()
                with self._reader.begin():
                    yield self._reader
        except sa.exc.SQLAlchemyError as exc:
            raise IndexDBError(f"cannot read the index {self._where}: {_detail(exc)}") from exc

    def _connect_read_only(self) -> sqlite3.Connection:
        return sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
            isolation_level=None, timeout=5.0,
        )  # fmt: skip

    def _sqlite_conn(self) -> sa.Connection:
        self._check_open()
        assert self._conn is not None
        return self._conn

    def _check_open(self) -> None:
        if self._closed:
            raise IndexDBError(f"index {self._where} is closed")

    # -- writes -----------------------------------------------------------------------

    def has_instance(self, sop_uid: str) -> bool:
        if self.dialect == "sqlite":
            try:
                with self._lock:
                    self._check_open()
                    return self._raw("has_instance", {"sop": sop_uid})[1] is not None
            except sqlite3.Error as exc:
                raise IndexDBError(f"cannot read the index {self._where}: {exc}") from exc
        return self._pg_path.has_instance(sop_uid)

    def record(self, row: InstanceRow) -> Recorded:
        """Add one stored instance; a duplicate SOP Instance UID changes nothing.

        A new instance of a study that is no longer ``receiving`` reopens it. On
        PostgreSQL several receivers may record instances of one new study at once: the
        study row is inserted ``ON CONFLICT DO NOTHING`` and then locked ``FOR UPDATE``,
        so the reopen decision and the generation are taken by one of them at a time
        (:func:`dicom_node.store.index_record.record`).
        """
        if self.dialect == "sqlite":
            return self._record_sqlite(row)
        fast = self._pg_path.record_receiving(row)
        if fast is not None:
            generation, inserted = fast
            return Recorded(inserted, False, False, generation)
        try:
            with self._tx("record an instance in") as conn:
                return record_instance(CoreRunner(self._stmts, conn), row)
        except DuplicateError:  # rolled back
            with self._read() as conn:
                _n, gen = CoreRunner(self._stmts, conn)("generation", {"study": row.study_uid})
            return Recorded(False, False, False, int(gen[0]) if gen is not None else 0)

    def _record_sqlite(self, row: InstanceRow) -> Recorded:
        """:meth:`record` on SQLite: ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer's
        DBAPI connection, under its lock."""
        try:
            with self._lock:
                self._check_open()
                con = self._raw_con
                try:
                    con.execute("BEGIN IMMEDIATE")
                    rec = record_instance(self._raw, row)
                    con.execute("COMMIT")
                    return rec
                except DuplicateError:
                    con.execute("ROLLBACK")
                    _n, gen = self._raw("generation", {"study": row.study_uid})
                    return Recorded(False, False, False, int(gen[0]) if gen is not None else 0)
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise IndexDBError(f"cannot record an instance in {self._where}: {exc}") from exc

    def finish_receiving(
        self,
        study_uid: str,
        generation: int,
        last_received: float,
        state: StudyState,
        reason: str | None = None,
    ) -> bool:
        """Move a ``receiving`` study on, only if nothing arrived since it was read.

        The guard on ``generation`` and ``last_received`` is what makes completion safe
        against an instance committed between the check and this update.
        """
        now = time.time()
        stmt = (
            sa.update(studies)
            .where(_S.study_uid == study_uid, _S.state == "receiving",
                   _S.generation == generation, _S.last_received == last_received)
            .values(state=state, reason=reason, state_changed=now, completed_at=now)
        )  # fmt: skip
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def set_state(
        self,
        study_uid: str,
        state: StudyState,
        reason: str | None = None,
        *,
        expect: Sequence[StudyState] = (),
        generation: int | None = None,
        owner: str | None = None,
    ) -> bool:
        """Set a study's state (for the worker); ``expect``, ``generation`` and ``owner``
        (the worker holding its claim) guard it. Leaving ``processing`` drops the claim."""
        values: dict[str, Any] = {"state": state, "reason": reason, "state_changed": time.time()}
        if state != "processing":
            values |= {"claimed_by": None, "lease_until": None}
        stmt = sa.update(studies).where(_S.study_uid == study_uid).values(values)
        if expect:
            stmt = stmt.where(_S.state.in_(expect))
        if generation is not None:
            stmt = stmt.where(_S.generation == generation)
        if owner is not None:
            stmt = stmt.where(_S.claimed_by == owner)
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def set_series_choice(
        self, study_uid: str, generation: int, outcomes: Sequence[SeriesOutcome]
    ) -> bool:
        """Record what series choice decided for each series (the worker, when it chose).

        Guarded by ``generation`` like every write of the worker; a reopened study's
        choice is cleared (:meth:`record`) until it is chosen again.
        """
        stmt = (
            sa.update(studies)
            .where(_S.study_uid == study_uid, _S.generation == generation)
            .values(series_choice=series_outcome.dumps(outcomes))
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def add_audit(self, study_uid: str, user: str, action: str, outcome: str) -> AuditRow:
        """Record that ``user`` did ``action`` on a study, and what came of it."""
        row = AuditRow(study_uid, time.time(), user, action, outcome)
        with self._tx() as conn:
            conn.execute(
                sa.insert(audit).values(study_uid=row.study_uid, at=row.at, user=row.user,
                                        action=row.action, outcome=row.outcome)
            )  # fmt: skip
        return row

    def audit(self, study_uid: str) -> list[AuditRow]:
        """A study's audit trail, oldest first."""
        a = audit.c
        stmt = (
            sa.select(a.study_uid, a.at, a.user, a.action, a.outcome)
            .where(a.study_uid == study_uid)
            .order_by(a.at, a.id)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [AuditRow(r[0], float(r[1]), r[2], r[3], r[4]) for r in rows]

    def delete_study(self, study_uid: str) -> None:
        with self._tx() as conn:
            for table in (audit, instances, series, deliveries, studies):
                conn.execute(sa.delete(table).where(table.c.study_uid == study_uid))

    def clear(self) -> None:
        """Drop every study's rows (``reindex`` starts from nothing)."""
        with self._tx() as conn:
            for table in (audit, instances, series, deliveries, studies):
                conn.execute(sa.delete(table))

    def set_study_times(self, study_uid: str, first: float, last: float) -> None:
        """Set received times of a study (``reindex`` takes them from file times)."""
        stmt = (
            sa.update(studies)
            .where(_S.study_uid == study_uid)
            .values(first_received=first, last_received=last, state_changed=last)
        )
        with self._tx() as conn:
            conn.execute(stmt)

    # -- claims and leases (workers sharing one queue) ----------------------------------

    def claim_next(self, worker_id: str, lease_s: float) -> StudyRow | None:
        """Take the oldest ``queued`` study for ``worker_id``: ``processing``, claimed,
        leased for ``lease_s`` seconds. None when nothing is queued.

        ``FOR UPDATE SKIP LOCKED`` lets workers claim at once on PostgreSQL without
        waiting on each other or ever taking the same study; on SQLite the write lock
        (``BEGIN IMMEDIATE``) already makes the pick and the update one step.
        """
        pick = (
            sa.select(_S.study_uid)
            .where(_S.state == "queued")
            .order_by(_S.first_received, _S.study_uid)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._tx("claim a study in") as conn:
            uid = conn.execute(pick).scalar()
            if uid is None:
                return None
            now = time.time()
            conn.execute(
                sa.update(studies)
                .where(_S.study_uid == uid, _S.state == "queued")
                .values(state="processing", claimed_by=worker_id, lease_until=now + lease_s,
                        state_changed=now)
            )  # fmt: skip
            return self._study_on(conn, uid)

    def renew_leases(self, worker_id: str, lease_s: float) -> int:
        """Extend the lease of every study ``worker_id`` is processing; returns how many."""
        with self._tx() as conn:
            return self._renew(conn, worker_id, lease_s)

    @staticmethod
    def _renew(conn: sa.Connection, worker_id: str, lease_s: float) -> int:
        stmt = (
            sa.update(studies)
            .where(_S.state == "processing", _S.claimed_by == worker_id)
            .values(lease_until=time.time() + lease_s)
        )
        return int(conn.execute(stmt).rowcount)

    def requeue_expired(self, now: float | None = None, *, owner: str | None = None) -> list[str]:
        """Put ``processing`` studies whose lease ran out (or that have none: claimed
        before leases existed) back in the queue; with ``owner``, also every study that
        worker holds, whatever its lease (a restarted worker takes its own back at once).
        Returns their UIDs."""
        now = time.time() if now is None else now
        lost = sa.or_(_S.lease_until < now, _S.lease_until.is_(None))
        if owner is not None:
            lost = sa.or_(lost, _S.claimed_by == owner)
        pick = (
            sa.select(_S.study_uid)
            .where(_S.state == "processing", lost)
            .order_by(_S.study_uid)
            .with_for_update(skip_locked=True)
        )
        with self._tx("requeue studies in") as conn:
            uids = list(conn.execute(pick).scalars())
            if uids:
                conn.execute(
                    sa.update(studies)
                    .where(_S.study_uid.in_(uids), _S.state == "processing")
                    .values(state="queued", claimed_by=None, lease_until=None,
                            state_changed=time.time())
                )  # fmt: skip
        return uids

    # -- the worker registry ------------------------------------------------------------

    def register_worker(self, row: WorkerRow) -> None:
        """Add or replace a process's row (at its start)."""
        values = {
            "worker_id": row.worker_id, "role": row.role, "host": row.host, "pid": row.pid,
            "device": row.device, "model_uid": row.model_uid, "started": row.started,
            "heartbeat": row.heartbeat, "load": json.dumps(row.load),
        }  # fmt: skip
        stmt = insert(self.dialect, workers).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[workers.c.worker_id],
            set_={k: stmt.excluded[k] for k in values if k != "worker_id"},
        )
        with self._tx() as conn:
            conn.execute(stmt)

    def heartbeat(
        self, worker_id: str, load: Mapping[str, Any], lease_s: float | None = None
    ) -> None:
        """A process is alive with this load; with ``lease_s`` its study leases are
        renewed in the same transaction."""
        stmt = (
            sa.update(workers)
            .where(workers.c.worker_id == worker_id)
            .values(heartbeat=time.time(), load=json.dumps(dict(load)))
        )
        with self._tx() as conn:
            conn.execute(stmt)
            if lease_s is not None:
                self._renew(conn, worker_id, lease_s)

    def workers(self, alive_within_s: float | None = None) -> list[WorkerRow]:
        """Registered processes (those heard from in the last ``alive_within_s`` seconds),
        by role then id; read on the monitoring connection (``/api/health`` asks)."""
        w = workers.c
        stmt = sa.select(
            w.worker_id, w.role, w.host, w.pid, w.device, w.model_uid, w.started,
            w.heartbeat, w.load,
        ).order_by(w.role, w.worker_id)  # fmt: skip
        if alive_within_s is not None:
            stmt = stmt.where(w.heartbeat >= time.time() - alive_within_s)
        with self._monitor() as conn:
            rows = conn.execute(stmt).all()
        return [
            WorkerRow(
                r[0],
                r[1],
                r[2],
                int(r[3]),
                r[4],
                r[5],
                float(r[6]),
                float(r[7]),
                json.loads(r[8]) if r[8] else {},
            )
            for r in rows
        ]

    def remove_worker(self, worker_id: str) -> None:
        with self._tx() as conn:
            conn.execute(sa.delete(workers).where(workers.c.worker_id == worker_id))

    # -- reads ------------------------------------------------------------------------

    def study(self, study_uid: str) -> StudyRow | None:
        with self._read() as conn:
            return self._study_on(conn, study_uid)

    @staticmethod
    def _study_on(conn: sa.Connection, study_uid: str) -> StudyRow | None:
        row = conn.execute(_study_select().where(_S.study_uid == study_uid)).first()
        if row is None:
            return None
        ds = conn.execute(
            sa.select(*_DELIVERY_COLUMNS)
            .where(deliveries.c.study_uid == study_uid)
            .order_by(deliveries.c.destination)
        ).all()
        return _study_row(row, [_delivery_row(d) for d in ds])

    def study_uids(self) -> list[str]:
        """Every study's UID, nothing else (cheap: no join over the instances)."""
        with self._read() as conn:
            return list(conn.execute(sa.select(_S.study_uid)).scalars())

    def studies(self, states: Sequence[str] = ()) -> list[StudyRow]:
        with self._read() as conn:
            return _studies_on(conn, states)

    # -- results and deliveries (the worker's) ------------------------------------------

    def save_result(
        self,
        study_uid: str,
        generation: int,
        findings: str,
        result: str,
        owner: str | None = None,
    ) -> bool:
        """Record a study's findings and result (JSON text): ``processing`` -> ``done``.

        Guarded by ``generation`` (a study reopened meanwhile keeps its new state) and,
        given ``owner``, by the claim (a worker whose lease was taken over writes nothing).
        """
        stmt = (
            sa.update(studies)
            .where(_S.study_uid == study_uid, _S.state == "processing",
                   _S.generation == generation)
            .values(state="done", reason=None, findings=findings, result=result,
                    state_changed=time.time(), claimed_by=None, lease_until=None)
        )  # fmt: skip
        if owner is not None:
            stmt = stmt.where(_S.claimed_by == owner)
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def restore_processing(
        self,
        study_uid: str,
        *,
        state: StudyState,
        generation: int,
        findings: str | None,
        result: str | None,
        series_choice: str | None,
        deliveries: Sequence[dict[str, Any]],
        reason: str | None = None,
    ) -> None:
        """Put back a study's processing state from its marker (``reindex``, see
        :mod:`dicom_node.store.study_marker`): state and its reason, generation, result,
        deliveries."""
        now = time.time()
        values: dict[str, Any] = {
            "state": state, "reason": reason, "generation": generation, "findings": findings,
            "result": result, "series_choice": series_choice, "state_changed": now,
            "claimed_by": None, "lease_until": None,
        }  # fmt: skip
        if state in ("done", "skipped", "failed"):
            values["completed_at"] = now
        with self._tx() as conn:
            conn.execute(sa.update(studies).where(_S.study_uid == study_uid).values(values))
            for d in deliveries:
                self._put_delivery(
                    conn, study_uid, d["destination"], int(d["generation"]), d["state"],
                    int(d["attempts"]), d["last_error"], now, None,
                )  # fmt: skip

    def result(self, study_uid: str) -> dict[str, Any] | None:
        """The latest result record of a study (generation, UIDs, files, timings)."""
        with self._read() as conn:
            value = conn.execute(
                sa.select(_S.result).where(_S.study_uid == study_uid)
            ).scalar_one_or_none()
        return json.loads(value) if value else None

    def set_delivery(
        self,
        study_uid: str,
        destination: str,
        generation: int,
        state: DeliveryState,
        attempts: int,
        last_error: str | None,
        next_attempt: float | None = None,
        *,
        same_generation: bool = False,
    ) -> None:
        """Write a delivery's row; ``next_attempt`` is kept only while it is pending.

        ``same_generation``: an attempt's outcome, written only while the row is still of
        ``generation``. A newer result may have replaced the row (a new generation,
        pending) while the attempt ran; its outcome must not overwrite that one.
        """
        due = next_attempt if state == "pending" else None
        with self._tx() as conn:
            self._put_delivery(conn, study_uid, destination, generation, state, attempts,
                               last_error, time.time(), due,
                               only_generation=generation if same_generation else None)  # fmt: skip

    def _put_delivery(
        self, conn: sa.Connection, study_uid: str, destination: str, generation: int,
        state: str, attempts: int, last_error: str | None, updated: float,
        next_attempt: float | None, only_generation: int | None = None,
    ) -> None:  # fmt: skip
        stmt = insert(self.dialect, deliveries).values(
            study_uid=study_uid, destination=destination, generation=generation, state=state,
            attempts=attempts, last_error=last_error, updated=updated,
            next_attempt=next_attempt,
        )  # fmt: skip
        keep = ("generation", "state", "attempts", "last_error", "updated", "next_attempt")
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[deliveries.c.study_uid, deliveries.c.destination],
                set_={k: stmt.excluded[k] for k in keep},
                where=(
                    deliveries.c.generation == only_generation
                    if only_generation is not None
                    else None
                ),
            )
        )

    def delivery(self, study_uid: str, destination: str) -> DeliveryRow | None:
        rows = [d for d in self.deliveries(study_uid) if d.destination == destination]
        return rows[0] if rows else None

    def deliveries(
        self, study_uid: str | None = None, states: Sequence[str] = ()
    ) -> list[DeliveryRow]:
        d = deliveries.c
        stmt = sa.select(*_DELIVERY_COLUMNS).order_by(d.study_uid, d.destination)
        if study_uid is not None:
            stmt = stmt.where(d.study_uid == study_uid)
        if states:
            stmt = stmt.where(d.state.in_(states))
        with self._read() as conn:
            return [_delivery_row(r) for r in conn.execute(stmt)]

    def instances(self, study_uid: str) -> list[InstanceRow]:
        i = instances.c
        stmt = (
            sa.select(i.sop_uid, i.study_uid, i.series_uid, i.sop_class_uid,
                      i.transfer_syntax, i.eligible, i.size, i.path, i.received)
            .where(i.study_uid == study_uid)
            .order_by(i.series_uid, i.path)
        )  # fmt: skip
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [
            InstanceRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), int(r[6]), r[7], float(r[8]))
            for r in rows
        ]

    def sop_classes(self, study_uid: str) -> list[str]:
        stmt = sa.select(_I.sop_class_uid).where(_I.study_uid == study_uid).distinct()
        with self._read() as conn:
            return list(conn.execute(stmt).scalars())

    def known_paths(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(sa.select(_I.path)).scalars())

    def counts(self) -> tuple[dict[str, int], int]:
        """Studies per state and pending deliveries, read on the monitoring connection."""
        per_state = sa.select(_S.state, sa.func.count()).group_by(_S.state)
        pending = sa.select(sa.func.count()).where(deliveries.c.state == "pending")
        with self._monitor() as conn:
            states = {str(k): int(v) for k, v in conn.execute(per_state).all()}
            n_pending = int(conn.execute(pending).scalar_one())
        return states, n_pending

    def browse(self, states: Sequence[str] = ()) -> list[StudyRow]:
        """:meth:`studies` on the monitoring connection, for the worklist's polls.

        A listing reads every study row; on SQLite's writer connection it would hold the
        lock every C-STORE commit waits for, on the monitoring one WAL lets both run. The
        counts of studies that are not receiving are kept between polls
        (:mod:`dicom_node.store.study_listing`): aggregating every instance of 10,000
        studies of 300 images took 0.8 s a poll (BENCHMARKS.md, Worklist reads).
        """
        with self._monitor() as conn:
            return _studies_on(conn, states, self._listing)

    def total_size(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.sum(_I.size), 0))).scalar_one()
            )


def _begin_immediate(conn: sa.Connection) -> None:
    """Start SQLite's write transaction with its lock taken up front (the pysqlite
    connection runs in autocommit, ``isolation_level=None``, so SQLAlchemy's ``begin()``
    emits nothing and this is the transaction's BEGIN; its COMMIT or ROLLBACK is
    SQLAlchemy's). Sent on the driver connection: the statement is fixed and this is
    the C-STORE path's hottest line."""
    try:
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc


def _sqlite_pragmas(dbapi_con: Any, _record: Any) -> None:
    """Every SQLite connection of the index: WAL, ``synchronous=NORMAL`` (see the module
    docstring), foreign keys enforced (a study's rows go with it)."""
    cur = dbapi_con.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _detail(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's own message (first line), without SQLAlchemy's statement echo."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _studies_on(
    conn: sa.Connection, states: Sequence[str], listing: StudyListing[StudyRow] | None = None
) -> list[StudyRow]:
    """The studies (of ``states``, or all), oldest first, with their deliveries; their
    counts aggregated over all their instances, or kept by ``listing`` (the worklist's)."""
    if listing is None:
        stmt = _study_select().order_by(_S.first_received, _S.study_uid)
    else:
        stmt = sa.select(*_STUDY_COLUMNS).order_by(_S.first_received, _S.study_uid)
    if states:
        stmt = stmt.where(_S.state.in_(states))
    rows = conn.execute(stmt).all()
    by_study: dict[str, list[Any]] = {}
    if rows:
        for r in conn.execute(
            sa.select(*_DELIVERY_COLUMNS).order_by(deliveries.c.study_uid, deliveries.c.destination)
        ):
            by_study.setdefault(r[0], []).append(r)
    if listing is None:
        return [_study_row(r, [_delivery_row(d) for d in by_study.get(r[0], ())]) for r in rows]

    def build(r: Sequence[Any], counts: tuple[int, int, int, int], dl: list[Any]) -> StudyRow:
        return _study_row((*r[:4], *counts, *r[4:]), [_delivery_row(d) for d in dl])

    return listing.rows(conn, rows, by_study, build, every_study=not states)


def _delivery_row(r: Sequence[Any]) -> DeliveryRow:
    return DeliveryRow(
        r[0], r[1], int(r[2]), r[3], int(r[4]), r[5], float(r[6]),
        float(r[7]) if r[7] is not None else None,
    )  # fmt: skip


def open_checked(target: str | Path, spool_dir: Path) -> Index:
    """The index ``serve`` runs on, refused when it cannot be trusted: missing or empty
    while the spool holds received files (deleted or truncated while the node was
    stopped; on PostgreSQL: a database without the index's tables), or damaged pages
    (SQLite's ``quick_check``). Either way the message names ``reindex``; starting on a
    blank index would forget what was processed and sent. A PostgreSQL server that
    cannot be reached is an :class:`IndexDBError` naming its host, port and database."""
    _url, path = _parse_target(target)
    if path is not None:
        fresh = not path.exists() or path.stat().st_size == 0
        if fresh and _holds_files(spool_dir):
            raise IndexDamagedError(
                f"index {path} is missing or empty while the spool {spool_dir} holds "
                f"received files; {REINDEX_HINT}"
            )
        index = Index(path)
    else:
        try:
            index = Index(target, create=False)
        except _NoSchemaError as exc:
            if _holds_files(spool_dir):
                raise IndexDamagedError(
                    f"{exc} while the spool {spool_dir} holds received files; {REINDEX_HINT}"
                ) from exc
            index = Index(target)
    try:
        index.check()
    except IndexDBError:
        index.close()
        raise
    return index


def set_aside_if_damaged(target: str | Path) -> Path | None:
    """Rename a damaged SQLite index file (and its ``-wal``/``-shm``) to
    ``<name>.damaged-<time>`` so that ``reindex`` starts a new one; returns the new name,
    None if it was sound (or the index is on PostgreSQL, which has no file to set aside)."""
    _url, path = _parse_target(target)
    if path is None or not path.exists() or _sound(path):
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.rename(aside.with_name(aside.name + suffix))
    return aside


def _sound(path: Path) -> bool:
    try:
        index = Index(path)
    except IndexDBError:
        return False
    try:
        index.check()
    except IndexDBError:
        return False
    finally:
        index.close()
    return True


def _holds_files(spool_dir: Path) -> bool:
    """Whether any spooled ``.dcm`` file exists (stops at the first one)."""
    for _dirpath, dirnames, filenames in os.walk(spool_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(n.endswith(".dcm") and not n.startswith(".") for n in filenames):
            return True
    return False


def _study_row(r: Sequence[Any], deliveries: Sequence[DeliveryRow] = ()) -> StudyRow:
    return StudyRow(
        study_uid=r[0],
        state=r[1],
        reason=r[2],
        generation=int(r[3]),
        instances=int(r[4]),
        eligible_instances=int(r[5]),
        series=int(r[6]),
        size=int(r[7]),
        first_received=float(r[8]),
        last_received=float(r[9]),
        state_changed=float(r[10]),
        completed_at=float(r[11]) if r[11] is not None else None,
        findings=json.loads(r[12]) if r[12] else None,
        deliveries=tuple(deliveries),
        series_choice=series_outcome.loads(r[13]),
        claimed_by=r[14],
        lease_until=float(r[15]) if r[15] is not None else None,
    )
