"""The index's schema: SQLAlchemy Core tables for both databases, and its migrations.

:data:`metadata` describes the tables of the current :data:`SCHEMA_VERSION`; a new
database, SQLite or PostgreSQL, is made from it (``create_all``) and stamped with that
version in ``meta``. SQLite files written by older nodes (versions 1-5) are brought up to
date by the numbered DDL scripts in :data:`_MIGRATIONS`, their rows kept; those scripts
are the schema's history, so tests can build a file exactly as an older node left it.

Times are epoch seconds in ``REAL`` (SQLite) or ``DOUBLE PRECISION`` (PostgreSQL): both
keep a Python float exactly, which the completion guard needs (``finish_receiving``
compares ``last_received`` for equality).
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

SCHEMA_VERSION: Final = 6

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

# Version 6: several processes share one index (issue 14). A worker claims a queued
# study (``claimed_by``) for a lease it renews with its heartbeat (``lease_until``, epoch
# seconds); ``workers`` is the registry of live processes (role, GPU, model, load JSON).
_SCHEMA_V6: Final = """
ALTER TABLE studies ADD COLUMN claimed_by TEXT;
ALTER TABLE studies ADD COLUMN lease_until REAL;
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    role      TEXT NOT NULL,
    host      TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    device    TEXT,
    model_uid TEXT,
    started   REAL NOT NULL,
    heartbeat REAL NOT NULL,
    load      TEXT
);
"""

#: version -> SQLite DDL that brings an index file from version - 1 to version. A new
#: database (either kind) is made by :data:`metadata` instead, which describes the same
#: tables; these scripts are only for SQLite files written by an older node (PostgreSQL
#: indexes start at version 6).
_MIGRATIONS: Final[dict[int, str]] = {
    1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4, 5: _SCHEMA_V5, 6: _SCHEMA_V6,
}  # fmt: skip


#: Epoch seconds: REAL on SQLite, DOUBLE PRECISION on PostgreSQL (a float, exactly).
Time = sa.Double

metadata: Final = sa.MetaData()

meta: Final = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

studies: Final = sa.Table(
    "studies",
    metadata,
    sa.Column("study_uid", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False, server_default="receiving"),
    sa.Column("reason", sa.Text),
    sa.Column("generation", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("first_received", Time, nullable=False),
    sa.Column("last_received", Time, nullable=False),
    sa.Column("state_changed", Time, nullable=False),
    sa.Column("completed_at", Time),
    sa.Column("findings", sa.Text),  # JSON
    sa.Column("result", sa.Text),  # JSON
    sa.Column("series_choice", sa.Text),  # JSON list of SeriesOutcome
    sa.Column("claimed_by", sa.Text),  # worker_id holding the lease while processing
    sa.Column("lease_until", Time),
    sa.Index("studies_state", "state"),
)

series: Final = sa.Table(
    "series",
    metadata,
    sa.Column("series_uid", sa.Text, primary_key=True),
    sa.Column(
        "study_uid",
        sa.Text,
        sa.ForeignKey("studies.study_uid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("first_received", Time, nullable=False),
    sa.Column("last_received", Time, nullable=False),
    sa.Index("series_study", "study_uid"),
)

instances: Final = sa.Table(
    "instances",
    metadata,
    sa.Column("sop_uid", sa.Text, primary_key=True),
    sa.Column(
        "study_uid",
        sa.Text,
        sa.ForeignKey("studies.study_uid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("series_uid", sa.Text, nullable=False),
    sa.Column("sop_class_uid", sa.Text, nullable=False),
    sa.Column("transfer_syntax", sa.Text, nullable=False),
    sa.Column("eligible", sa.Integer, nullable=False),  # 0/1, summed per study
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text, nullable=False),  # relative to the spool folder
    sa.Column("received", Time, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Index("instances_study", "study_uid"),
)

deliveries: Final = sa.Table(
    "deliveries",
    metadata,
    sa.Column(
        "study_uid",
        sa.Text,
        sa.ForeignKey("studies.study_uid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    sa.Column("updated", Time, nullable=False),
    sa.Column("next_attempt", Time),
    sa.Index("deliveries_state", "state"),
)

audit: Final = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "study_uid",
        sa.Text,
        sa.ForeignKey("studies.study_uid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", Time, nullable=False),
    sa.Column("user", sa.Text, nullable=False),  # a reserved word in PostgreSQL: quoted
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Index("audit_study", "study_uid"),
    sqlite_autoincrement=True,
)

workers: Final = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("device", sa.Text),
    sa.Column("model_uid", sa.Text),
    sa.Column("started", Time, nullable=False),
    sa.Column("heartbeat", Time, nullable=False),
    sa.Column("load", sa.Text),  # JSON object
)

#: Any value; PostgreSQL's advisory lock that serialises schema creation and migration
#: between processes starting at once against one database.
_SCHEMA_LOCK: Final = 0x1C4_1DE8


def stored_version(conn: sa.Connection) -> int:
    """The schema version stamped in ``meta``; 0 for a database without it."""
    if not sa.inspect(conn).has_table("meta"):
        return 0
    value = conn.execute(
        sa.select(meta.c.value).where(meta.c.key == "schema_version")
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


class SchemaTooNewError(Exception):
    """The database was written by a newer node."""


def migrate(conn: sa.Connection, *, create: bool = True) -> tuple[int, int]:
    """Bring the schema to :data:`SCHEMA_VERSION` inside the caller's transaction;
    returns (version found, version now). With ``create=False`` a database without a
    schema is left alone (found = now = 0)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
    found = stored_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(f"schema {found}, newer than this node ({SCHEMA_VERSION})")
    if found == SCHEMA_VERSION or (found == 0 and not create):
        return found, found
    if found == 0:
        metadata.create_all(conn)
    elif conn.dialect.name == "sqlite":
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
    else:  # PostgreSQL indexes begin at version 6; nothing older can exist
        raise SchemaTooNewError(f"schema {found} on {conn.dialect.name} cannot be migrated")
    _stamp(conn)
    return found, SCHEMA_VERSION


def _stamp(conn: sa.Connection) -> None:
    updated = conn.execute(
        sa.update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
    )
    if updated.rowcount == 0:
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
