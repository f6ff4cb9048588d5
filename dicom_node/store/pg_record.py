"""The per-instance statements of a C-STORE on PostgreSQL, one round trip each.

Every C-STORE asks the index whether it holds the SOP Instance and then records it.
Through SQLAlchemy on the index's pool that was eight round trips (a pre-ping on each of
two checkouts, BEGIN, three statements, COMMIT) and about 1.3 ms of client CPU per
instance on the 2-core test machine: PostgreSQL ingest ran at 0.56x SQLite's. Here both
are single statements in autocommit on a pool of its own, compiled once to psycopg's
text and run on the DBAPI connection (psycopg prepares them on the server after a few
uses):

* :attr:`PgRecordPath.has_instance`;
* :meth:`PgRecordPath.record_receiving`: :class:`~dicom_node.store.index_record.PgFastRecord`,
  the common case of a study already ``receiving``. Anything else returns ``None`` and
  :meth:`~dicom_node.store.index.Index.record` runs its transaction.

The pool has no pre-ping (a round trip per checkout). A connection the server dropped
(PostgreSQL restarted) fails on first use instead: the pool is then emptied and the
statement tried once more on a new connection. That retry is safe for both statements:
a record whose commit went through before the connection broke finds its instance on the
retry and falls back to the transaction, which reports it as already indexed; the file
is the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dicom_node.store.index_record import PgFastRecord
from dicom_node.store.index_rows import IndexDBError, InstanceRow


class PgRecordPath:
    """The pool and the two statements (``where`` names the database in errors)."""

    def __init__(self, url: URL, where: str, has_instance: sa.Select[Any]) -> None:
        """``has_instance``: :attr:`RecordStatements.has_instance
        <dicom_node.store.index_record.RecordStatements>`, the statement the transaction
        path and SQLite run too."""
        self._where = where
        self._engine = sa.create_engine(
            url,
            pool_size=5,
            max_overflow=10,  # docs/scale-out.md counts the connections
            pool_pre_ping=False,
            pool_reset_on_return=None,  # autocommit: no transaction to end
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,
            connect_args={"connect_timeout": 10, "application_name": "dicom-node"},
        )
        self._record = PgFastRecord(self._engine.dialect)
        self._has_sql: str = has_instance.compile(dialect=self._engine.dialect).string
        self._closed = False

    def has_instance(self, sop_uid: str) -> bool:
        return self._run(self._has_sql, {"sop": sop_uid}, "read") is not None

    def record_receiving(self, row: InstanceRow) -> tuple[int, bool] | None:
        """(generation, inserted) when the study was ``receiving`` and did not hold the
        instance; ``None`` otherwise (nothing was written)."""
        found = self._run(self._record.sql, self._record.params(row), "record an instance in")
        if found is None:
            return None
        return int(found[0]), int(found[1]) == 1

    def _run(self, sql: str, params: Mapping[str, Any], doing: str) -> tuple[Any, ...] | None:
        for attempt in (1, 2):
            if self._closed:
                raise IndexDBError(f"index {self._where} is closed")
            try:
                fairy = self._engine.raw_connection()
            except (psycopg.Error, sa.exc.SQLAlchemyError) as exc:  # the pool raises the former
                raise IndexDBError(f"cannot {doing} the index {self._where}: {exc}") from exc
            try:
                con = fairy.driver_connection
                assert isinstance(con, psycopg.Connection)
                return con.execute(sql, params).fetchone()
            except psycopg.OperationalError as exc:
                fairy.invalidate(exc)
                self._engine.dispose()  # the others are as stale (a server restart)
                if attempt == 2 or not _is_disconnect(exc):
                    raise IndexDBError(f"cannot {doing} the index {self._where}: {exc}") from exc
            except psycopg.Error as exc:
                fairy.invalidate(exc)
                raise IndexDBError(f"cannot {doing} the index {self._where}: {exc}") from exc
            finally:
                fairy.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._closed = True
        self._engine.dispose()


def _is_disconnect(exc: psycopg.OperationalError) -> bool:
    """The connection is gone (rather than, say, a statement cancelled or a lock timeout):
    psycopg marks it closed or broken."""
    return exc.sqlstate is None or exc.sqlstate.startswith("57P") or exc.sqlstate.startswith("08")
