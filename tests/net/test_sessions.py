"""``Sessions``: which open associations hold a study's completion, and until when.

Pure bookkeeping (no sockets): the end-to-end behaviour on both engines is in
tests/reliability/test_slow_sender.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dicom_node.net.sessions import Sessions

QUIET = 30.0


def test_an_open_sending_association_holds_its_studies_only() -> None:
    sessions = Sessions()
    key = object()
    session = sessions.open(key)
    sessions.stored(session, "1.2.3")
    now = time.time()
    assert sessions.held_until("1.2.3", QUIET, now) == session.last_pdu
    assert sessions.held_until("9.9.9", QUIET, now) == 0.0  # another study: not held


def test_an_idle_open_association_holds_nothing() -> None:
    sessions = Sessions()
    session = sessions.open(object())
    sessions.stored(session, "1.2.3")
    later = session.last_pdu + QUIET + 0.001
    assert sessions.held_until("1.2.3", QUIET, later) == 0.0
    session.touch()  # a PDU arrives again: sending again
    assert sessions.held_until("1.2.3", QUIET, session.last_pdu + 1) == session.last_pdu


def test_end_reports_the_studies_once_and_the_hold_counts_from_it() -> None:
    ended: list[tuple[Sequence[str], float]] = []
    sessions = Sessions(lambda studies, at: ended.append((studies, at)))
    key = object()
    session = sessions.open(key)
    sessions.stored(session, "1.2.3")
    sessions.stored(session, "4.5.6")
    sessions.end(key)
    sessions.end(key)  # pynetdicom reports both EVT_RELEASED and EVT_CONN_CLOSE
    assert len(ended) == 1
    studies, at = ended[0]
    assert list(studies) == ["1.2.3", "4.5.6"]
    assert len(sessions) == 0
    assert sessions.held_until("1.2.3", QUIET, at + 1) == at
    sessions.forget("1.2.3")  # completed
    assert sessions.held_until("1.2.3", QUIET, at + 1) == 0.0


def test_an_association_that_stored_nothing_reports_nothing() -> None:
    ended: list[Sequence[str]] = []
    sessions = Sessions(lambda studies, at: ended.append(studies))
    key = object()
    sessions.open(key)
    sessions.touch(key)
    sessions.end(key)
    assert ended == []


def test_a_failing_callback_does_not_escape() -> None:
    def boom(studies: Sequence[str], at: float) -> None:
        raise RuntimeError("scheduler gone")

    sessions = Sessions(boom)
    key = object()
    sessions.stored(sessions.open(key), "1.2.3")
    sessions.end(key)  # logged, not raised: the association's thread must end cleanly
