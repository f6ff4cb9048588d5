"""A graceful stop does not wait for an idle association a PACS keeps open for reuse."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
from nodes import NODE_AET, Node, make_study, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage


def test_stop_aborts_idle_association_and_keeps_what_was_stored(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    node = start_node()
    study = make_study(tmp_path / "study", seed=31, n_slices=2)
    ae = AE(ae_title="REUSER")
    ae.add_requested_context(
        CTImageStorage, pydicom.dcmread(study.main.files[0]).file_meta.TransferSyntaxUID
    )
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    for path in study.main.files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0x0000
    # The association stays open and idle, as a PACS keeps one for its next study.
    stopper = threading.Thread(target=node.service.stop, kwargs={"grace_s": 3600.0})
    stopper.start()
    stopper.join(120)  # far below the grace period: stop must not wait it out
    assert not stopper.is_alive(), "stop waited for an idle association"
    wait_for(lambda: assoc.is_aborted or not assoc.is_alive(), 30, "association aborted")
    stored = sorted(p.name for p in (node.root / "spool").rglob("*.dcm"))
    assert stored == sorted(f"{uid}.dcm" for uid in study.main.sop_uids)
