"""The C-STORE commit path of the index: :func:`record` and the statements it runs.

Each statement is written once, as a SQLAlchemy Core construct per dialect
(:class:`RecordStatements`); only how it is run differs:

* PostgreSQL: through SQLAlchemy (:class:`CoreRunner`). A round trip to the server costs
  more than SQLAlchemy's bookkeeping, and several receivers commit at once.
* SQLite: compiled once to SQL text and run on the DBAPI connection (:class:`SqliteRunner`)
  under the index's writer lock. SQLAlchemy spends about 30 us of Python per
  ``execute`` (measured on the 2-core test machine), which is several times the cost of
  the statement itself; run through it, the three or four statements of each C-STORE
  commit made ingest measurably slower, and they run under the lock that every
  association's commit waits for.

The logic of :func:`record` is the same for both: the common case (another instance of a
study being received) is three statements; a new study is inserted ``ON CONFLICT DO
NOTHING`` and then locked ``FOR UPDATE``, so that receivers recording the first instances
of one study at once on PostgreSQL agree on one row and one generation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_sql
from sqlalchemy.dialects import sqlite as sqlite_sql
from sqlalchemy.sql.compiler import SQLCompiler

from dicom_node.store.index_rows import InstanceRow, Recorded
from dicom_node.store.index_schema import instances, series, studies

_S = studies.c
_I = instances.c


def greatest(dialect: str, a: Any, b: Any) -> sa.ColumnElement[Any]:
    """The larger of two values: SQLite's scalar ``max(a, b)``, PostgreSQL's ``greatest``."""
    return sa.func.greatest(a, b) if dialect == "postgresql" else sa.func.max(a, b)


def insert(dialect: str, table: sa.Table) -> pg_sql.Insert | sqlite_sql.Insert:
    """The dialect's INSERT, which knows ``ON CONFLICT`` (both spell it the same)."""
    return pg_sql.insert(table) if dialect == "postgresql" else sqlite_sql.insert(table)


class DuplicateError(Exception):
    """The SOP Instance is already indexed: the transaction must be rolled back."""


def _bp(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


#: Per-instance values of the instance row, as bind parameters (``v_<column>``).
_INSTANCE_VALUES: Final = {c.name: _bp(f"v_{c.name}") for c in instances.c}


class RecordStatements:
    """The statements of :func:`record` and :meth:`Index.has_instance` for one dialect."""

    def __init__(self, dialect: str) -> None:
        t = _bp("t", sa.Double)
        self.has_instance = sa.select(_I.sop_uid).where(_I.sop_uid == _bp("sop"))
        self.generation = sa.select(_S.generation).where(_S.study_uid == _bp("study"))
        self.lock_study = (
            sa.select(_S.state, _S.generation)
            .where(_S.study_uid == _bp("study"))
            .with_for_update()  # nothing on SQLite, whose write lock is held already
        )
        self.touch_receiving = (
            sa.update(studies)
            .where(_S.study_uid == _bp("study"), _S.state == "receiving")
            .values(last_received=greatest(dialect, _S.last_received, t))
            .returning(_S.generation)
        )
        self.insert_study = (
            insert(dialect, studies)
            .values(
                study_uid=_bp("study"),
                state="receiving",
                generation=1,
                first_received=t,
                last_received=t,
                state_changed=t,
            )
            .on_conflict_do_nothing(index_elements=[_S.study_uid])
            .execution_options(preserve_rowcount=True)  # SQLAlchemy keeps it for UPDATE only
        )
        self.reopen_study = (
            sa.update(studies)
            .where(_S.study_uid == _bp("study"))
            .values(
                state="receiving",
                reason=None,
                generation=_bp("generation"),
                series_choice=None,
                claimed_by=None,
                lease_until=None,
                last_received=greatest(dialect, _S.last_received, t),
                state_changed=t,
            )
        )
        ins_series = insert(dialect, series).values(
            series_uid=_bp("series"), study_uid=_bp("study"), first_received=t, last_received=t
        )
        self.upsert_series = ins_series.on_conflict_do_update(
            index_elements=[series.c.series_uid],
            set_={
                "last_received": greatest(
                    dialect, series.c.last_received, ins_series.excluded.last_received
                )
            },
        )
        self.insert_instance = (
            insert(dialect, instances)
            .values(_INSTANCE_VALUES)
            .on_conflict_do_nothing(index_elements=[_I.sop_uid])
            .execution_options(preserve_rowcount=True)
        )


class Runner(Protocol):
    """Runs one of :class:`RecordStatements` by name: (rows changed, first row or None)."""

    def __call__(
        self, name: str, params: Mapping[str, Any]
    ) -> tuple[int, Sequence[Any] | None]: ...


class CoreRunner:
    """Through a SQLAlchemy connection (PostgreSQL)."""

    def __init__(self, stmts: RecordStatements, conn: sa.Connection) -> None:
        self._stmts = stmts
        self._conn = conn

    def __call__(self, name: str, params: Mapping[str, Any]) -> tuple[int, Sequence[Any] | None]:
        result = self._conn.execute(getattr(self._stmts, name), params)
        if result.returns_rows:
            return 0, result.first()
        return result.rowcount, None


class _Compiled:
    """A statement as SQLite's SQL text, and how to order its ``?`` parameters."""

    def __init__(self, stmt: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        #: Values fixed in the statement (``state='receiving'``, ...), by parameter name.
        self.fixed: dict[str, Any] = {
            name: bind.effective_value for name, bind in compiled.binds.items()
        }

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        fixed = self.fixed
        return tuple(params[n] if n in params else fixed[n] for n in self.names)


class SqliteCompiled:
    """:class:`RecordStatements` compiled once for SQLite."""

    def __init__(self, stmts: RecordStatements, dialect: sa.Dialect) -> None:
        self.by_name: dict[str, _Compiled] = {
            name: _Compiled(stmt, dialect) for name, stmt in vars(stmts).items()
        }


class SqliteRunner:
    """On the pysqlite DBAPI connection (the caller holds the writer lock)."""

    def __init__(self, compiled: SqliteCompiled, con: sqlite3.Connection) -> None:
        self._by_name = compiled.by_name
        self._con = con

    def __call__(self, name: str, params: Mapping[str, Any]) -> tuple[int, Sequence[Any] | None]:
        c = self._by_name[name]
        cur = self._con.execute(c.sql, c.args(params))
        if cur.description is not None:
            return 0, cur.fetchone()
        return cur.rowcount, None


def record(run: Runner, row: InstanceRow) -> Recorded:
    """The statements of one :meth:`Index.record`, inside the caller's write transaction.

    Raises :class:`DuplicateError` when the SOP Instance is already indexed; the caller
    rolls back (whatever this did to the study is undone) and reports no insertion.
    """
    study_uid, t = row.study_uid, row.received
    _n, touched = run("touch_receiving", {"study": study_uid, "t": t})
    new_study = reopened = False
    if touched is not None:
        generation = int(touched[0])
    else:  # a new study, or one to reopen
        _n, study = run("lock_study", {"study": study_uid})
        if study is None:
            inserted, _row = run("insert_study", {"study": study_uid, "t": t})
            new_study = inserted == 1
            if not new_study:  # another receiver inserted it since: wait for its lock
                _n, study = run("lock_study", {"study": study_uid})
        if study is None:
            generation = 1
        elif study[0] != "receiving":
            reopened, generation = True, int(study[1]) + 1
            run("reopen_study", {"study": study_uid, "t": t, "generation": generation})
        else:  # made receiving again by another receiver between the two statements
            generation = int(study[1])
            run("touch_receiving", {"study": study_uid, "t": t})
    run("upsert_series", {"series": row.series_uid, "study": study_uid, "t": t})
    n, _row = run(
        "insert_instance",
        {
            "v_sop_uid": row.sop_uid,
            "v_study_uid": study_uid,
            "v_series_uid": row.series_uid,
            "v_sop_class_uid": row.sop_class_uid,
            "v_transfer_syntax": row.transfer_syntax,
            "v_eligible": int(row.eligible),
            "v_size": row.size,
            "v_path": row.path,
            "v_received": t,
            "v_generation": generation,
        },
    )
    if n != 1:
        raise DuplicateError(row.sop_uid)
    return Recorded(True, new_study, reopened, generation)
