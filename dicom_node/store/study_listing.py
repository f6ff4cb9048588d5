"""What the worklist's polls keep between them: per-study instance counts, aggregated
only where they can have changed, and the study rows built from unchanged columns.

A worklist poll lists every study with its instance, eligible-instance and series counts
and its size. Aggregating them over every instance row on every poll cost 0.8 s of one
core at 10,000 studies of 300 images (BENCHMARKS.md, Worklist reads), every 4 s per open
worklist. But a study's instances change only while it is ``receiving``: an instance for
a study in any other state reopens it (``receiving`` again, ``generation`` + 1), and a
deleted study's row goes with its instances. So the counts of a study in any other state
are kept here under a key of what its row says (generation, state, first and last
receive times) and aggregated again only when that key changes, when it is
``receiving``, or when it was not seen before. The key holds across processes sharing a
PostgreSQL index: another receiver's reopen changes the generation, a study deleted and
received again has a new first receive time.

Building the rows (JSON of the findings and of the series choice, one object per study
and delivery) then took three quarters of a poll at 10,000 studies; a row whose columns,
counts and deliveries read exactly as in the last poll is the same row, so it is reused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa

from dicom_node.store.index_schema import instances

#: (instances, eligible instances, series, bytes) of one study.
Counts = tuple[int, int, int, int]
NONE: Final[Counts] = (0, 0, 0, 0)
#: Studies per aggregate statement (an ``IN`` list the databases plan well).
CHUNK: Final = 500

_I = instances.c
RowT = TypeVar("RowT")


def _key(row: Sequence[Any]) -> tuple[Any, ...]:
    """(generation, state, first_received, last_received) of a study row as
    :meth:`StudyListing.counts` takes it."""
    return (row[3], row[1], row[4], row[5])


class StudyListing(Generic[RowT]):
    """The counts (:meth:`counts`) and the rows (:meth:`rows`) kept between polls;
    thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[tuple[Any, ...], Counts]] = {}
        self._built: dict[str, tuple[tuple[Any, ...], RowT]] = {}

    def rows(
        self,
        raw: Sequence[tuple[Any, ...]],
        build: Callable[[tuple[Any, ...]], RowT],
        *,
        every_study: bool,
    ) -> list[RowT]:
        """``build(r)`` for each of ``raw`` (the study's columns, counts and deliveries,
        ``r[0]`` its UID), or the row built from an equal ``r`` in the last poll
        (``every_study`` as for :meth:`counts`)."""
        with self._lock:
            last = self._built
        out: list[RowT] = []
        built: dict[str, tuple[tuple[Any, ...], RowT]] = {}
        for r in raw:
            got = last.get(r[0])
            row = got[1] if got is not None and got[0] == r else build(r)
            built[r[0]] = (r, row)
            out.append(row)
        with self._lock:
            self._built = built if every_study else {**self._built, **built}
        return out

    def counts(
        self, conn: sa.Connection, rows: Sequence[Sequence[Any]], *, every_study: bool
    ) -> dict[str, Counts]:
        """Counts for each of ``rows`` (``study_uid, state, reason, generation,
        first_received, last_received, ...``), read on ``conn`` where not kept.
        ``every_study``: ``rows`` are all the index holds, so a study kept here and not
        among them is gone (a listing filtered by state keeps the others)."""
        with self._lock:
            kept = dict(self._kept)
        found: dict[str, Counts] = {}
        stale: list[str] = []
        for row in rows:
            got = kept.get(row[0])
            if got is not None and got[0] == _key(row) and row[1] != "receiving":
                found[row[0]] = got[1]
            else:
                stale.append(row[0])
        fresh = dict.fromkeys(stale, NONE) | _aggregate(conn, stale)
        found.update(fresh)
        listed = {row[0]: (_key(row), found[row[0]]) for row in rows if row[1] != "receiving"}
        with self._lock:
            if every_study:
                self._kept = listed
            else:
                for row in rows:
                    self._kept.pop(row[0], None)
                self._kept.update(listed)
        return found


def _aggregate(conn: sa.Connection, study_uids: Iterable[str]) -> dict[str, Counts]:
    uids = list(study_uids)
    out: dict[str, Counts] = {}
    for start in range(0, len(uids), CHUNK):
        chunk = uids[start : start + CHUNK]
        stmt = (
            sa.select(
                _I.study_uid,
                sa.func.count(_I.sop_uid),
                sa.func.coalesce(sa.func.sum(_I.eligible), 0),
                sa.func.count(sa.distinct(_I.series_uid)),
                sa.func.coalesce(sa.func.sum(_I.size), 0),
            )
            .where(_I.study_uid.in_(chunk))
            .group_by(_I.study_uid)
        )
        for uid, n, eligible, series, size in conn.execute(stmt):
            out[uid] = (int(n), int(eligible), int(series), int(size))
    return out
