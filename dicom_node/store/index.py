"""The study index: SQLite (WAL) rows for studies, series and instances, with states.

The spool files are the truth and this index is a cache of them: ``dicom-node reindex``
rebuilds it from the files alone, and start-up adds any file the index lacks (see
:meth:`dicom_node.store.spool.Spool.reconcile`). That is why commits use
``synchronous=NORMAL``: in WAL mode a commit survives a crash of the process, and what an
OS crash could take from the index is put back from the fsynced files at the next start.

States (PS3.4 has no notion of them; they are ours)::

    receiving -> complete -> queued -> processing -> done | failed
              -> skipped (with a reason: nothing a CT model can read)

An instance arriving for a study in any state other than ``receiving`` reopens it:
state back to ``receiving``, ``generation`` + 1, so results of the old generation can be
told from the new and superseded.

The schema lives here only, with :data:`SCHEMA_VERSION`. Later issues add columns
(``findings`` on studies) and tables (``deliveries``) as numbered migrations in
:data:`_MIGRATIONS`; an index file of an older version is brought up to date when it is
opened, its rows kept.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from dicom_node.errors import NodeError
from dicom_node.store import series_outcome
from dicom_node.store.private import private_db_file, private_dir
from dicom_node.store.series_outcome import SeriesOutcome

StudyState = Literal["receiving", "complete", "queued", "processing", "done", "failed", "skipped"]
STATES: Final[tuple[StudyState, ...]] = (
    "receiving",
    "complete",
    "queued",
    "processing",
    "done",
    "failed",
    "skipped",
)

SCHEMA_VERSION: Final = 5

_SCHEMA_V1: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid      TEXT PRIMARY KEY,
    state          TEXT NOT NULL DEFAULT 'receiving',
    reason         TEXT,
    generation     INTEGER NOT NULL DEFAULT 1,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL,
    state_changed  REAL NOT NULL,
    completed_at   REAL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid         TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
    series_uid      TEXT NOT NULL,
    sop_class_uid   TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    eligible        INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    path            TEXT NOT NULL,
    received        REAL NOT NULL,
    generation      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
"""

# Version 2: results of the worker (findings JSON, result record) and deliveries to PACS.
_SCHEMA_V2: Final = """
ALTER TABLE studies ADD COLUMN findings TEXT;
ALTER TABLE studies ADD COLUMN result TEXT;
CREATE TABLE IF NOT EXISTS deliveries (
    study_uid   TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated     REAL NOT NULL,
    PRIMARY KEY (study_uid, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state);
"""

# Version 3: the outcome of series choice for every series of the study (JSON list of
# :class:`SeriesOutcome`), written by the worker when it chooses; NULL before that.
_SCHEMA_V3: Final = """
ALTER TABLE studies ADD COLUMN series_choice TEXT;
"""

# Version 4: the audit trail of what users did to a study from the web side (reprocess,
# resend): who, when, and what came of it. A study's trail goes with the study when
# retention deletes it: the rows name the study and nothing outlives its images here.
_SCHEMA_V4: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
    at        REAL NOT NULL,
    user      TEXT NOT NULL,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_study ON audit (study_uid);
"""

# Version 5: when a pending delivery's next attempt is due (epoch seconds; NULL once it is
# sent or failed), so ``dicom-node studies --json`` shows an outage's retry schedule.
_SCHEMA_V5: Final = """
ALTER TABLE deliveries ADD COLUMN next_attempt REAL;
"""

# version -> SQL that brings the schema from version - 1 to version.
_MIGRATIONS: Final[dict[int, str]] = {
    1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4, 5: _SCHEMA_V5,
}  # fmt: skip

DeliveryState = Literal["pending", "sent", "failed"]


class IndexDBError(NodeError):
    """The index database cannot be opened or written."""


#: What every "the index is lost or damaged" message tells the admin to do.
REINDEX_HINT: Final = (
    "stop the node and run `dicom-node reindex --config <config.yaml>` to rebuild it "
    "from the spool (results already delivered are not sent again)"
)


class IndexDamagedError(IndexDBError):
    """The index file is missing while the spool holds files, or SQLite finds it damaged:
    the node refuses to start rather than forget what it received and did."""


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """What the index knows about one stored instance."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    eligible: bool
    size: int
    path: str  # relative to the spool folder
    received: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Recorded:
    """Outcome of :meth:`Index.record`: was the instance new, and what the study became."""

    inserted: bool
    new_study: bool
    reopened: bool
    generation: int


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study as listed by ``dicom-node studies``."""

    study_uid: str
    state: str
    reason: str | None
    generation: int
    instances: int
    eligible_instances: int
    series: int
    size: int
    first_received: float
    last_received: float
    state_changed: float
    completed_at: float | None
    findings: dict[str, Any] | None = None
    deliveries: tuple[DeliveryRow, ...] = ()
    #: Every series of the study with the worker's choice (empty until it chose).
    series_choice: tuple[SeriesOutcome, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "state": self.state,
            "instances": self.instances,
            "eligible_instances": self.eligible_instances,
            "series": self.series,
            "size_bytes": self.size,
            "reason": self.reason,
            "generation": self.generation,
            "first_received": iso(self.first_received),
            "last_received": iso(self.last_received),
            "state_changed": iso(self.state_changed),
            "completed_at": iso(self.completed_at) if self.completed_at is not None else None,
            "findings": self.findings,
            "series_choice": [o.to_json() for o in self.series_choice],
            "deliveries": {d.destination: d.to_json() for d in self.deliveries},
        }


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """The state of sending one study's results to one destination."""

    study_uid: str
    destination: str
    generation: int
    state: str
    attempts: int
    last_error: str | None
    updated: float
    #: When the next attempt is due (pending rows only).
    next_attempt: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "generation": self.generation,
            "updated": iso(self.updated),
            "next_attempt": iso(self.next_attempt) if self.next_attempt is not None else None,
        }


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One action a user took on a study (``reprocess``, ``resend``) and its outcome."""

    study_uid: str
    at: float
    user: str
    action: str
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "user": self.user, "action": self.action,
                "outcome": self.outcome}  # fmt: skip


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_STUDY_SELECT: Final = """
SELECT s.study_uid, s.state, s.reason, s.generation,
       COUNT(i.sop_uid), COALESCE(SUM(i.eligible), 0), COUNT(DISTINCT i.series_uid),
       COALESCE(SUM(i.size), 0), s.first_received, s.last_received, s.state_changed,
       s.completed_at, s.findings, s.series_choice
FROM studies s LEFT JOIN instances i ON i.study_uid = s.study_uid
"""


class Index:
    """Thread-safe access to the index file: one connection, one lock.

    One writer is what SQLite allows anyway; a lock around a single connection keeps the
    commit path short (no connection pool, no busy retries) for the C-STORE handlers.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            private_dir(path.parent, tighten=False)
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            private_db_file(path)  # before WAL: SQLite gives -wal and -shm the file's mode
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:  # not a database, malformed, ...
            raise IndexDamagedError(f"cannot open index {path}: {exc}; {REINDEX_HINT}") from exc
        except (OSError, sqlite3.Error) as exc:
            raise IndexDBError(f"cannot open index {path}: {exc}") from exc
        self._lock = threading.Lock()
        #: A second connection for monitoring reads (:meth:`counts`), opened on first use:
        #: in WAL mode a reader neither waits for the C-STORE path's writer nor takes its
        #: lock, so a metrics scrape never delays an acknowledgement.
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._closed = False

    def _migrate(self) -> None:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise IndexDBError(
                f"index {self.path} has schema {version}, newer than this node ({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._db.executescript(_MIGRATIONS[target])
            version = target
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )

    def _version(self) -> int:
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return 0
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def check(self) -> None:
        """SQLite's ``quick_check`` over the whole file (``serve`` runs it at start-up):
        :class:`IndexDamagedError` naming ``reindex`` when a page is damaged."""
        try:
            with self._lock:
                rows = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise IndexDamagedError(f"index {self.path} is damaged: {exc}; {REINDEX_HINT}") from exc
        if rows != ["ok"]:
            found = "; ".join(rows)
            raise IndexDamagedError(f"index {self.path} is damaged ({found}); {REINDEX_HINT}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._version()

    def close(self) -> None:
        with self._read_lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # -- writes -----------------------------------------------------------------------

    def has_instance(self, sop_uid: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)
            ).fetchone()
        return row is not None

    def record(self, row: InstanceRow) -> Recorded:
        """Add one stored instance; a duplicate SOP Instance UID changes nothing.

        A new instance of a study that is no longer ``receiving`` reopens it.
        """
        try:
            with self._tx() as db:
                if db.execute(
                    "SELECT 1 FROM instances WHERE sop_uid = ?", (row.sop_uid,)
                ).fetchone():
                    gen = db.execute(
                        "SELECT generation FROM studies WHERE study_uid = ?", (row.study_uid,)
                    ).fetchone()
                    return Recorded(False, False, False, int(gen[0]) if gen else 0)
                study = db.execute(
                    "SELECT state, generation FROM studies WHERE study_uid = ?", (row.study_uid,)
                ).fetchone()
                new_study = study is None
                reopened = study is not None and study[0] != "receiving"
                if new_study:
                    generation = 1
                    db.execute(
                        "INSERT INTO studies (study_uid, state, generation, first_received, "
                        "last_received, state_changed) VALUES (?, 'receiving', 1, ?, ?, ?)",
                        (row.study_uid, row.received, row.received, row.received),
                    )
                elif reopened:
                    generation = int(study[1]) + 1
                    db.execute(
                        "UPDATE studies SET state = 'receiving', reason = NULL, generation = ?, "
                        "series_choice = NULL, last_received = MAX(last_received, ?), "
                        "state_changed = ? WHERE study_uid = ?",
                        (generation, row.received, row.received, row.study_uid),
                    )
                else:
                    generation = int(study[1])
                    db.execute(
                        "UPDATE studies SET last_received = MAX(last_received, ?) "
                        "WHERE study_uid = ?",
                        (row.received, row.study_uid),
                    )
                db.execute(
                    "INSERT INTO series (series_uid, study_uid, first_received, last_received) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (series_uid) DO UPDATE SET "
                    "last_received = MAX(last_received, excluded.last_received)",
                    (row.series_uid, row.study_uid, row.received, row.received),
                )
                db.execute(
                    "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.sop_uid,
                        row.study_uid,
                        row.series_uid,
                        row.sop_class_uid,
                        row.transfer_syntax,
                        int(row.eligible),
                        row.size,
                        row.path,
                        row.received,
                        generation,
                    ),
                )
                return Recorded(True, new_study, reopened, generation)
        except sqlite3.Error as exc:
            raise IndexDBError(f"cannot record an instance in {self.path}: {exc}") from exc

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
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET state = ?, reason = ?, state_changed = ?, completed_at = ? "
                "WHERE study_uid = ? AND state = 'receiving' AND generation = ? "
                "AND last_received = ?",
                (state, reason, now, now, study_uid, generation, last_received),
            )
            return cur.rowcount == 1

    def set_state(
        self,
        study_uid: str,
        state: StudyState,
        reason: str | None = None,
        *,
        expect: Sequence[StudyState] = (),
        generation: int | None = None,
    ) -> bool:
        """Set a study's state (for the worker); ``expect`` and ``generation`` guard it."""
        sql = "UPDATE studies SET state = ?, reason = ?, state_changed = ? WHERE study_uid = ?"
        args: list[Any] = [state, reason, time.time(), study_uid]
        if expect:
            sql += f" AND state IN ({', '.join('?' * len(expect))})"
            args.extend(expect)
        if generation is not None:
            sql += " AND generation = ?"
            args.append(generation)
        with self._tx() as db:
            return db.execute(sql, args).rowcount == 1

    def set_series_choice(
        self, study_uid: str, generation: int, outcomes: Sequence[SeriesOutcome]
    ) -> bool:
        """Record what series choice decided for each series (the worker, when it chose).

        Guarded by ``generation`` like every write of the worker; a reopened study's
        choice is cleared (:meth:`record`) until it is chosen again.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET series_choice = ? WHERE study_uid = ? AND generation = ?",
                (series_outcome.dumps(outcomes), study_uid, generation),
            )
            return cur.rowcount == 1

    def add_audit(self, study_uid: str, user: str, action: str, outcome: str) -> AuditRow:
        """Record that ``user`` did ``action`` on a study, and what came of it."""
        row = AuditRow(study_uid, time.time(), user, action, outcome)
        with self._tx() as db:
            db.execute(
                "INSERT INTO audit (study_uid, at, user, action, outcome) VALUES (?, ?, ?, ?, ?)",
                (row.study_uid, row.at, row.user, row.action, row.outcome),
            )
        return row

    def audit(self, study_uid: str) -> list[AuditRow]:
        """A study's audit trail, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid, at, user, action, outcome FROM audit WHERE study_uid = ? "
                "ORDER BY at, id",
                (study_uid,),
            ).fetchall()
        return [AuditRow(r[0], float(r[1]), r[2], r[3], r[4]) for r in rows]

    def delete_study(self, study_uid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM audit WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM series WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))

    def clear(self) -> None:
        """Drop every row (``reindex`` starts from nothing)."""
        with self._tx() as db:
            db.execute("DELETE FROM audit")
            db.execute("DELETE FROM instances")
            db.execute("DELETE FROM series")
            db.execute("DELETE FROM studies")

    def set_study_times(self, study_uid: str, first: float, last: float) -> None:
        """Set received times of a study (``reindex`` takes them from file times)."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET first_received = ?, last_received = ?, state_changed = ? "
                "WHERE study_uid = ?",
                (first, last, last, study_uid),
            )

    # -- reads ------------------------------------------------------------------------

    def study(self, study_uid: str) -> StudyRow | None:
        with self._lock:
            row = self._db.execute(
                _STUDY_SELECT + " WHERE s.study_uid = ? GROUP BY s.study_uid", (study_uid,)
            ).fetchone()
        return _study_row(row, self.deliveries(study_uid)) if row else None

    def study_uids(self) -> list[str]:
        """Every study's UID, nothing else (cheap: no join over the instances)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT study_uid FROM studies")]

    def studies(self, states: Sequence[str] = ()) -> list[StudyRow]:
        sql = _STUDY_SELECT
        if states:
            sql += f" WHERE s.state IN ({', '.join('?' * len(states))})"
        sql += " GROUP BY s.study_uid ORDER BY s.first_received, s.study_uid"
        with self._lock:
            rows = self._db.execute(sql, tuple(states)).fetchall()
        by_study: dict[str, list[DeliveryRow]] = {}
        if rows:
            for d in self.deliveries():
                by_study.setdefault(d.study_uid, []).append(d)
        return [_study_row(r, by_study.get(r[0], ())) for r in rows]

    # -- results and deliveries (the worker's) ------------------------------------------

    def save_result(self, study_uid: str, generation: int, findings: str, result: str) -> bool:
        """Record a study's findings and result (JSON text): ``processing`` -> ``done``.

        Guarded by ``generation``: a study reopened meanwhile keeps its new state.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET state = 'done', reason = NULL, findings = ?, result = ?, "
                "state_changed = ? WHERE study_uid = ? AND state = 'processing' "
                "AND generation = ?",
                (findings, result, time.time(), study_uid, generation),
            )
            return cur.rowcount == 1

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
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state = ?, reason = ?, generation = ?, findings = ?, "
                "result = ?, series_choice = ?, state_changed = ?, completed_at = CASE "
                "WHEN ? IN ('done', 'skipped', 'failed') THEN ? ELSE completed_at END "
                "WHERE study_uid = ?",
                (state, reason, generation, findings, result, series_choice, now, state, now,
                 study_uid),
            )  # fmt: skip
            for d in deliveries:
                db.execute(
                    "INSERT OR REPLACE INTO deliveries (study_uid, destination, generation, "
                    "state, attempts, last_error, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (study_uid, d["destination"], int(d["generation"]), d["state"],
                     int(d["attempts"]), d["last_error"], now),
                )  # fmt: skip

    def result(self, study_uid: str) -> dict[str, Any] | None:
        """The latest result record of a study (generation, UIDs, files, timings)."""
        with self._lock:
            row = self._db.execute(
                "SELECT result FROM studies WHERE study_uid = ?", (study_uid,)
            ).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def set_delivery(
        self,
        study_uid: str,
        destination: str,
        generation: int,
        state: DeliveryState,
        attempts: int,
        last_error: str | None,
        next_attempt: float | None = None,
    ) -> None:
        """Write a delivery's row; ``next_attempt`` is kept only while it is pending."""
        due = next_attempt if state == "pending" else None
        with self._tx() as db:
            db.execute(
                "INSERT INTO deliveries (study_uid, destination, generation, state, attempts, "
                "last_error, updated, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (study_uid, destination) DO UPDATE SET "
                "generation = excluded.generation, state = excluded.state, "
                "attempts = excluded.attempts, last_error = excluded.last_error, "
                "updated = excluded.updated, next_attempt = excluded.next_attempt",
                (study_uid, destination, generation, state, attempts, last_error, time.time(),
                 due),
            )  # fmt: skip

    def delivery(self, study_uid: str, destination: str) -> DeliveryRow | None:
        rows = [d for d in self.deliveries(study_uid) if d.destination == destination]
        return rows[0] if rows else None

    def deliveries(
        self, study_uid: str | None = None, states: Sequence[str] = ()
    ) -> list[DeliveryRow]:
        sql = (
            "SELECT study_uid, destination, generation, state, attempts, last_error, updated, "
            "next_attempt FROM deliveries WHERE 1 = 1"
        )
        args: list[Any] = []
        if study_uid is not None:
            sql += " AND study_uid = ?"
            args.append(study_uid)
        if states:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args.extend(states)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY study_uid, destination", args).fetchall()
        return [_delivery_row(r) for r in rows]

    def instances(self, study_uid: str) -> list[InstanceRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_uid, study_uid, series_uid, sop_class_uid, transfer_syntax, "
                "eligible, size, path, received FROM instances WHERE study_uid = ? "
                "ORDER BY series_uid, path",
                (study_uid,),
            ).fetchall()
        return [
            InstanceRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), int(r[6]), r[7], float(r[8]))
            for r in rows
        ]

    def sop_classes(self, study_uid: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT sop_class_uid FROM instances WHERE study_uid = ?", (study_uid,)
            ).fetchall()
        return [r[0] for r in rows]

    def known_paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM instances")}

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The monitoring connection (read-only, opened on first use)."""
        with self._read_lock:
            if self._closed:
                raise IndexDBError(f"index {self.path} is closed")
            if self._reader is None:
                self._reader = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                    isolation_level=None, timeout=5.0,
                )  # fmt: skip
            yield self._reader

    def counts(self) -> tuple[dict[str, int], int]:
        """Studies per state and pending deliveries, read on the monitoring connection."""
        with self._reading() as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state"))
            (pending,) = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()
        return {str(k): int(v) for k, v in states.items()}, int(pending)

    def browse(self, states: Sequence[str] = ()) -> list[StudyRow]:
        """:meth:`studies` on the monitoring connection, for the worklist's polls.

        Its aggregate over every instance takes a while on a large index (0.6 s for 10,000
        studies of 300 images, BENCHMARKS.md); on the writer's connection it would hold
        the lock every C-STORE commit waits for, here WAL lets both run at once.
        """
        sql = _STUDY_SELECT
        if states:
            sql += f" WHERE s.state IN ({', '.join('?' * len(states))})"
        sql += " GROUP BY s.study_uid ORDER BY s.first_received, s.study_uid"
        with self._reading() as db:
            rows = db.execute(sql, tuple(states)).fetchall()
            deliveries = db.execute(
                "SELECT study_uid, destination, generation, state, attempts, last_error, "
                "updated, next_attempt FROM deliveries ORDER BY study_uid, destination"
            ).fetchall()
        by_study: dict[str, list[DeliveryRow]] = {}
        for r in deliveries:
            by_study.setdefault(r[0], []).append(_delivery_row(r))
        return [_study_row(r, by_study.get(r[0], ())) for r in rows]

    def total_size(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()
        return int(row[0])


def _delivery_row(r: Sequence[Any]) -> DeliveryRow:
    return DeliveryRow(
        r[0], r[1], int(r[2]), r[3], int(r[4]), r[5], float(r[6]),
        float(r[7]) if r[7] is not None else None,
    )  # fmt: skip


def open_checked(path: Path, spool_dir: Path) -> Index:
    """The index ``serve`` runs on, refused when it cannot be trusted: missing or empty
    while the spool holds received files (deleted or truncated while the node was
    stopped), or damaged pages (SQLite's ``quick_check``). Either way the message names
    ``reindex``; starting on a blank index would forget what was processed and sent."""
    fresh = not path.exists() or path.stat().st_size == 0
    if fresh and _holds_files(spool_dir):
        raise IndexDamagedError(
            f"index {path} is missing or empty while the spool {spool_dir} holds received "
            f"files; {REINDEX_HINT}"
        )
    index = Index(path)
    try:
        index.check()
    except IndexDBError:
        index.close()
        raise
    return index


def set_aside_if_damaged(path: Path) -> Path | None:
    """Rename a damaged index file (and its ``-wal``/``-shm``) to ``<name>.damaged-<time>``
    so that ``reindex`` starts a new one; returns the new name, None if it was sound."""
    if not path.exists() or _sound(path):
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
    )
