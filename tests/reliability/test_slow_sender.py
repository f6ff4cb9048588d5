"""Study completion under slow senders (issue 13), on both receive engines.

The rule (:mod:`dicom_node.net.sessions`): an association that stored instances of a
study holds its completion while it is open and *sending*, i.e. while a PDU of it arrived
less than ``study.quiet_seconds`` ago; the quiet period then counts from its release or
abort. An association that stays open but sends nothing for ``quiet_seconds`` holds
nothing: the study completes from its last instance.

The slow link is a real pynetdicom SCU whose DUL thread sleeps after every PDU it sends
(``EVT_PDU_SENT`` runs in that thread), against a node that accepts small PDUs, so one
instance takes several quiet periods to arrive while PDUs keep coming.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import NODE_AET, Node, running_nodes, wait_for
from pipeline.support import RecordingPacs, destination, phantom, pipeline_config
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_node.store.index import StudyRow

ENGINES = ("native", "pynetdicom")
#: The quiet period of these tests, and the sender's pause per PDU on the slow link: a
#: PDU every 0.3 s is "sending"; the slow instance takes several quiet periods.
QUIET_S = 2.0
PDU_DELAY_S = 0.3
#: The node's maximum PDU: a 64x64 slice (~9 KB) then travels in about 18 PDUs.
SMALL_PDU = 512


@pytest.fixture
def start_pipeline_node(
    tmp_path: Path, checkpoint: Path, log_capture: io.StringIO
) -> Iterator[Callable[..., Node]]:
    """``start(destinations, **sections)``: a node with inference on, in this process."""

    def make_config(base: Path, destinations: list[dict[str, Any]], **sections: Any) -> Path:
        return Path(pipeline_config(base, checkpoint, destinations, **sections))

    with running_nodes(tmp_path, log_capture, make_config) as start:
        yield start


class SlowScu:
    """A pynetdicom Storage SCU whose link can be slowed to one PDU per ``delay_s``."""

    def __init__(self, port: int, delay_s: float) -> None:
        self.slow = threading.Event()
        self.delay_s = delay_s
        ae = AE(ae_title="SLOWSCU")
        ae.add_requested_context(CTImageStorage)
        ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 120
        self.assoc: Association = ae.associate(
            "127.0.0.1", port, ae_title=NODE_AET,
            evt_handlers=[(evt.EVT_PDU_SENT, self._throttle)],
        )  # fmt: skip
        assert self.assoc.is_established

    def _throttle(self, event: Any) -> None:
        if self.slow.is_set():
            time.sleep(self.delay_s)

    def store(self, path: Path) -> float:
        """C-STORE one file; returns when its Success arrived (monotonic seconds)."""
        status = self.assoc.send_c_store(path)
        assert status is not None
        assert status.Status == 0x0000, status
        return time.monotonic()

    def release(self) -> None:
        self.assoc.release()


def _wait_study(node: Node, uid: str, check: Callable[[StudyRow], bool], what: str) -> StudyRow:
    def probe() -> StudyRow | None:
        s = node.study(uid)
        return s if s is not None and check(s) else None

    return wait_for(probe, 120, what)  # type: ignore[no-any-return]


def _settled(study: StudyRow) -> bool:
    """Processed, and (if done) delivered: nothing more will happen to it."""
    if study.state in ("failed", "skipped"):
        return True
    return study.state == "done" and any(d.state == "sent" for d in study.deliveries)


@pytest.mark.parametrize("engine", ENGINES)
def test_slow_link_pausing_past_quiet_seconds_gives_one_study_one_result(
    tmp_path: Path, start_pipeline_node: Callable[..., Node], pacs: RecordingPacs, engine: str
) -> None:
    node = start_pipeline_node(
        [destination(pacs.port)],
        node={"engine": engine, "max_pdu_size": SMALL_PDU},
        study={"quiet_seconds": QUIET_S},
    )
    study = phantom(tmp_path / "slow", seed=31, n_slices=10)
    files = study.main.files
    scu = SlowScu(node.port, PDU_DELAY_S)
    try:
        done = [scu.store(f) for f in files[:3]]
        scu.slow.set()  # the link slows down: one instance now takes several quiet periods
        done.append(scu.store(files[3]))
        scu.slow.clear()
        done += [scu.store(f) for f in files[4:]]
        gap = done[3] - done[2]
        # The scenario, not the product: between two instances more than quiet_seconds
        # passed while the association kept sending (a loaded machine only widens it).
        assert gap > QUIET_S, f"the slow instance took {gap:.1f} s, not > {QUIET_S} s"
        held = node.study(study.study_uid)
        assert held is not None
        assert held.state == "receiving", held
    finally:
        scu.release()
    row = _wait_study(node, study.study_uid, _settled, "study processed and delivered")
    assert row.state == "done", (row.state, row.reason)
    assert row.generation == 1, "the study was completed under the sender's feet"
    assert row.instances == len(files)
    wait_for(lambda: len(pacs.by_class(SecondaryCaptureImageStorage)) == 1, 60, "SC at PACS")
    assert len(pacs.by_class(Comprehensive3DSRStorage)) == 1
    log = node.log.getvalue()
    assert log.count("event=study.complete ") == 1, "one completion, so one inference"
    assert "by=association" in log  # the hold moved the deadline (the rule was used)


@pytest.mark.parametrize("engine", ENGINES)
def test_association_silent_past_quiet_seconds_does_not_hold_its_study(
    tmp_path: Path, start_node: Callable[..., Node], engine: str
) -> None:
    """A modality that keeps its association open for reuse and sends nothing: the study
    completes from its last instance, while the association is still open."""
    node = start_node(node={"engine": engine}, study={"quiet_seconds": 1})
    study = phantom(tmp_path / "silent", seed=32, n_slices=4)
    scu = SlowScu(node.port, 0.0)
    try:
        for f in study.main.files:
            scu.store(f)
        row = node.wait_state(study.study_uid, "complete", timeout=60)
        assert scu.assoc.is_established, "the association was meant to be still open"
    finally:
        scu.release()
    assert row.instances == len(study.main.files)
    assert row.generation == 1
