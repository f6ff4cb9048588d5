"""The C-STORE commit path of the index: :func:`record` and the statements it runs.

Each statement is written once, as a SQLAlchemy Core construct per dialect
(:class:`RecordStatements`); only how it is run differs:

* PostgreSQL: the common case, one more instance of a study that is receiving, is one
  statement (:class:`PgFastRecord`: the study touched, the series upserted and the instance
  inserted by data-modifying CTEs), compiled once and run in autocommit on a pooled
  psycopg connection: one round trip where the transaction below takes six (BEGIN, three
  statements, COMMIT and the pool's ping), and no SQLAlchemy ``execute``. Everything else
  (a new study, a study to reopen, a duplicate) falls back to the transaction, run
  through SQLAlchemy (:class:`CoreRunner`): it happens once per study.
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


class PgFastRecord:
    """The record of an instance of a study already ``receiving``, in one PostgreSQL
    statement, or no row when the study is new, not receiving, or already holds the SOP
    Instance: then :func:`record`'s transaction decides (and rolls back a duplicate).

    ``NOT EXISTS`` keeps a duplicate from touching the study. Two receivers storing the
    same new SOP Instance at once can both pass it; the loser's instance insert then
    does nothing and it reports a duplicate, having moved the study's and the series'
    ``last_received`` to its own time (as a new instance of them would have).

    :attr:`sql` is the statement as psycopg's ``%(name)s`` text; :meth:`params` adds the
    values fixed in it to an instance's. Values go in unconverted: every column here is
    text, an integer or a float, which psycopg adapts itself.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        t = _bp("t", sa.Double)
        study = _bp("study", sa.Text)
        touched = (
            sa.update(studies)
            .where(
                _S.study_uid == study,
                _S.state == "receiving",
                ~sa.exists().where(_I.sop_uid == _bp("v_sop_uid", sa.Text)),
            )
            .values(last_received=sa.func.greatest(_S.last_received, t))
            .returning(_S.generation)
            .cte("touched")
        )
        ins_series = pg_sql.insert(series).from_select(
            ["series_uid", "study_uid", "first_received", "last_received"],
            sa.select(_bp("series", sa.Text), study, t, t).select_from(touched),
        )
        upsert_series = ins_series.on_conflict_do_update(
            index_elements=[series.c.series_uid],
            set_={
                "last_received": sa.func.greatest(
                    series.c.last_received, ins_series.excluded.last_received
                )
            },
        ).cte("upserted")
        given = [c for c in instances.c if c.name != "generation"]  # generation: the study's
        inserted = (
            pg_sql.insert(instances)
            .from_select(
                [c.name for c in given] + ["generation"],
                sa.select(*(_bp(f"v_{c.name}", c.type) for c in given), touched.c.generation),
            )
            .on_conflict_do_nothing(index_elements=[_I.sop_uid])
            .returning(_I.sop_uid)
            .cte("inserted")
        )
        count = sa.select(sa.func.count()).select_from(inserted).scalar_subquery()
        stmt = sa.select(touched.c.generation, count).add_cte(upsert_series)
        compiled = stmt.compile(dialect=dialect)
        self.sql: str = compiled.string
        #: Values fixed in the statement (``state = 'receiving'``), by parameter name.
        self._fixed: dict[str, Any] = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if bind.effective_value is not None and f"%({name})s" in self.sql
        }

    def params(self, row: InstanceRow) -> dict[str, Any]:
        return {
            **self._fixed,
            "study": row.study_uid,
            "series": row.series_uid,
            "t": row.received,
            **_instance_values(row, None),
        }


def _instance_values(row: InstanceRow, generation: int | None) -> dict[str, Any]:
    values = {
        "v_sop_uid": row.sop_uid,
        "v_study_uid": row.study_uid,
        "v_series_uid": row.series_uid,
        "v_sop_class_uid": row.sop_class_uid,
        "v_transfer_syntax": row.transfer_syntax,
        "v_eligible": int(row.eligible),
        "v_size": row.size,
        "v_path": row.path,
        "v_received": row.received,
    }
    if generation is not None:
        values["v_generation"] = generation
    return values


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
    n, _row = run("insert_instance", _instance_values(row, generation))
    if n != 1:
        raise DuplicateError(row.sop_uid)
    return Recorded(True, new_study, reopened, generation)
