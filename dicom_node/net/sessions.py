"""Open associations and the studies they are sending: what holds a study's completion.

Why: a study is complete when nothing of it arrived for ``study.quiet_seconds``; a
modality sending a 400-image series over a slow link, or pausing between series while
it keeps its association open, would have its study completed under its feet (a result
for half a study, then a reopened study and a second result). So while an association
that has stored instances of a study is open *and sending*, the study is held; the
quiet deadline counts from that association's release or abort.

"Sending" is defined by the wire, not by instances: an association is active while it
delivered a PDU less than ``idle_s`` (the quiet period) ago. One PDU is at most our
``node.max_pdu_size`` (256 KiB by default): on a 2 Mbit/s link one arrives about every
second, so a slow link transferring a large instance never looks idle, however long the
instance takes. An association with no PDU for ``idle_s`` (a modality that keeps its
association for reuse and sends nothing) holds nothing: the deadline counts from its
last instance, as without this module. Any PDU counts (C-ECHO too): a peer that keeps
its association alive on purpose is treated as still sending.

Both receive engines report here: the native acceptor stamps :attr:`Session.last_pdu`
for every PDU it reads (a float store, no lock: this is the hot path); pynetdicom's
engine from ``EVT_PDU_RECV``. The net layer knows nothing of completion: the service
gives :class:`Sessions` an ``on_ended`` callback and hands it to the assembler as its
hold (a Protocol there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

log = logging.getLogger(__name__)

#: Called with the studies an association stored and the time it ended (epoch seconds).
EndedCallback = Callable[[Sequence[str], float], None]

#: Release times are kept at least this long (then dropped: the study completed long ago).
KEEP_ENDED_S: Final = 3600.0


class Session:
    """One open association: when its last PDU arrived and which studies it stored."""

    __slots__ = ("last_pdu", "opened", "studies")

    def __init__(self, now: float) -> None:
        self.opened = now
        #: Epoch seconds of the last PDU received; written by the association's reader.
        self.last_pdu = now
        self.studies: set[str] = set()

    def touch(self) -> None:
        self.last_pdu = time.time()


class Sessions:
    """The open associations of one node, keyed by the engine's association object."""

    def __init__(self, on_ended: EndedCallback | None = None) -> None:
        self.on_ended = on_ended
        self._lock = threading.Lock()
        self._open: dict[int, Session] = {}
        self._ended: dict[str, float] = {}  # study UID -> last release/abort that held it

    def open(self, key: object) -> Session:
        session = Session(time.time())
        with self._lock:
            self._open[id(key)] = session
        return session

    def get(self, key: object) -> Session | None:
        with self._lock:
            return self._open.get(id(key))

    def touch(self, key: object) -> None:
        """A PDU arrived on ``key`` (pynetdicom's ``EVT_PDU_RECV``)."""
        session = self.get(key)
        if session is not None:
            session.touch()

    def stored(self, session: Session | None, study_uid: str) -> None:
        """``session`` stored a new instance of ``study_uid``."""
        if session is not None:
            with self._lock:
                session.studies.add(study_uid)

    def end(self, key: object) -> None:
        """The association released, aborted or lost its connection (idempotent)."""
        now = time.time()
        with self._lock:
            session = self._open.pop(id(key), None)
            if session is None:
                return
            studies = sorted(session.studies)
            for uid in studies:
                self._ended[uid] = now
            horizon = now - KEEP_ENDED_S
            for uid in [u for u, t in self._ended.items() if t < horizon]:
                del self._ended[uid]
        if studies and self.on_ended is not None:
            try:
                self.on_ended(studies, now)
            except Exception as exc:  # noqa: BLE001 - start-up reconciliation reschedules
                log.error("assoc.ended_notify_failed", extra={"error": type(exc).__name__})

    def held_until(self, study_uid: str, idle_s: float, now: float) -> float:
        """The earliest time the quiet period of ``study_uid`` may count from.

        The latest of: the last PDU of each open association that stored the study and
        is still active (``now - last_pdu < idle_s``), and the end of the last association
        that held it. 0.0 when nothing holds it.
        """
        with self._lock:
            held = self._ended.get(study_uid, 0.0)
            for session in self._open.values():
                if study_uid in session.studies and now - session.last_pdu < idle_s:
                    held = max(held, session.last_pdu)
        return held

    def active_holds(self, idle_s: float, now: float) -> dict[str, float]:
        """Every study an open, active association holds, with its last PDU's time.

        Receivers sharing one index (docs/scale-out.md) push these studies' deadlines
        ahead (:class:`dicom_node.pipeline.holds.HoldRefresher`): the completion job may
        run in another receiver, which cannot see this process's associations.
        """
        held: dict[str, float] = {}
        with self._lock:
            for session in self._open.values():
                if now - session.last_pdu < idle_s:
                    for uid in session.studies:
                        held[uid] = max(held.get(uid, 0.0), session.last_pdu)
        return held

    def forget(self, study_uid: str) -> None:
        """The study completed: its release time is no longer needed."""
        with self._lock:
            self._ended.pop(study_uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
