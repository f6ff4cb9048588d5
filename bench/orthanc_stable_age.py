"""Anchor for RELIABILITY.md: does Orthanc's ``StableAge`` wait for an open association?

Starts the Debian Orthanc (``/usr/sbin/Orthanc``) on free loopback ports with
``StableAge`` 2 s, stores two phantom slices over one pynetdicom association, then keeps
that association open and *sending* (a C-ECHO every 0.5 s) for 3 x StableAge, reading
the study's ``IsStable`` over REST meanwhile. Prints one JSON line: whether Orthanc
declared the study stable while the association was still open and sending, and after
how many seconds from the last instance.

    PYTHONPATH=$PWD:$PWD/tests .venv/bin/python bench/orthanc_stable_age.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from nodes import ORTHANC, PEER_ENV, make_study, terminate
from peers import free_port
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

STABLE_AGE_S = 2
HOLD_S = 3 * STABLE_AGE_S


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="orthanc-stable-"))
    http, dicom = free_port(), free_port()
    config = {
        "Name": "stable-age-anchor", "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"), "HttpPort": http, "DicomPort": dicom,
        "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StableAge": STABLE_AGE_S, "DicomScpTimeout": 60, "Plugins": [],
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen(
        [ORTHANC, f"--logfile={root / 'orthanc.log'}", str(root / "orthanc.json")],
        env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(http, "/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        study = make_study(root / "phantom", seed=7, n_slices=2)
        ae = AE(ae_title="ANCHOR")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", dicom, ae_title="ORTHANC")
        assert assoc.is_established
        for f in study.main.files:
            assert assoc.send_c_store(f).Status == 0
        last = time.monotonic()
        stable_after: float | None = None
        while time.monotonic() - last < HOLD_S:
            assert assoc.send_c_echo().Status == 0  # the association is open and sending
            (sid,) = _get(http, "/studies")
            if stable_after is None and _get(http, f"/studies/{sid}")["IsStable"]:
                stable_after = round(time.monotonic() - last, 2)
            time.sleep(0.5)
        still_open = assoc.is_established
        assoc.release()
        version = _get(http, "/system")["Version"]
        sys.stdout.write(json.dumps({
            "orthanc": version, "stable_age_s": STABLE_AGE_S, "held_open_and_echoing_s": HOLD_S,
            "association_open_throughout": still_open,
            "stable_while_association_open": stable_after is not None,
            "stable_after_last_instance_s": stable_after,
        }) + "\n")  # fmt: skip
        return 0
    finally:
        terminate(proc)


if __name__ == "__main__":
    sys.exit(main())
