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
What that holds in memory: 14 MiB for the 10,000 studies of ``bench/worklist_api.py``
(tracemalloc after one poll), filled by the first poll of a worklist and emptied of
studies that retention deleted by the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
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

#: :data:`Counts` as aggregates over a study's instance rows (grouped by study): here
#: and in :meth:`~dicom_node.store.index.Index.studies`, which aggregates every study.
COUNT_COLUMNS: Final = (
    sa.func.count(_I.sop_uid),
    sa.func.coalesce(sa.func.sum(_I.eligible), 0),
    sa.func.count(sa.distinct(_I.series_uid)),
    sa.func.coalesce(sa.func.sum(_I.size), 0),
)


class StudyListing(Generic[RowT]):
    """What the polls keep, per study: its columns, counts, deliveries and the row built
    from them (thread-safe; one poll's work is :meth:`rows`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, _Kept[RowT]] = {}

    def rows(
        self,
        conn: sa.Connection,
        found: Sequence[Sequence[Any]],
        deliveries: Mapping[str, list[Any]],
        build: Callable[[Sequence[Any], Counts, list[Any]], RowT],
        *,
        every_study: bool,
    ) -> list[RowT]:
        """``build(columns, counts, deliveries)`` for each study of ``found`` (its
        columns: ``study_uid, state, reason, generation, first_received, last_received,
        ...``), reusing what the last poll kept where it still holds and aggregating the
        counts on ``conn`` where it does not. ``every_study``: ``found`` is all the index
        holds, so a study kept and not among them is gone (a listing filtered by state
        keeps the others)."""
        with self._lock:
            last = self._kept
        kept: dict[str, _Kept[RowT]] = {}
        out: list[RowT | None] = []
        stale: list[int] = []
        for r in found:
            uid = r[0]
            dl = deliveries.get(uid, [])
            k = last.get(uid)
            if k is None or r[1] == "receiving" or not _same_instances(k[0], r):
                stale.append(len(out))
                out.append(None)
            elif k[0] == r and k[2] == dl:
                kept[uid] = k
                out.append(k[3])
            else:
                row = build(r, k[1], dl)
                kept[uid] = (r, k[1], dl, row)
                out.append(row)
        counts = _aggregate(conn, [found[i][0] for i in stale])
        for i in stale:
            r = found[i]
            c = counts.get(r[0], NONE)
            dl = deliveries.get(r[0], [])
            row = build(r, c, dl)
            out[i] = row
            if r[1] != "receiving":
                kept[r[0]] = (r, c, dl, row)
        with self._lock:
            if not every_study:
                merged = dict(self._kept)
                for r in found:
                    merged.pop(r[0], None)
                kept = merged | kept
            self._kept = kept
        return [row for row in out if row is not None]


#: One study as a poll kept it: columns, counts, deliveries, the row built from them.
_Kept = tuple[Sequence[Any], Counts, list[Any], RowT]


def _same_instances(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Two readings of a study row that is not receiving have the same instances when
    generation, state and first and last receive times agree (see the module docstring)."""
    return bool(a[3] == b[3] and a[1] == b[1] and a[4] == b[4] and a[5] == b[5])


def _aggregate(conn: sa.Connection, study_uids: Iterable[str]) -> dict[str, Counts]:
    uids = list(study_uids)
    out: dict[str, Counts] = {}
    for start in range(0, len(uids), CHUNK):
        chunk = uids[start : start + CHUNK]
        stmt = (
            sa.select(_I.study_uid, *COUNT_COLUMNS)
            .where(_I.study_uid.in_(chunk))
            .group_by(_I.study_uid)
        )
        for uid, n, eligible, series, size in conn.execute(stmt):
            out[uid] = (int(n), int(eligible), int(series), int(size))
    return out
