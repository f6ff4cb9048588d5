"""The anchor of the bad-input table: what dcmtk storescp and Orthanc answer to the same
malformed C-STOREs our node gets in tests/reliability/test_bad_input.py.

Each generated kind's raw datasets (those the test sends with pynetdicom's SCU, bytes as
they are) go to a fresh dcmtk ``storescp`` and a fresh Orthanc on loopback; the table
gives each receiver's C-STORE status and whether it kept a file. Well-formed kinds are
left out: both peers store any parseable object without reading it (they do not classify),
so the comparison is about the receive path only.

Usage::

    .venv/bin/python bench/bad_input_anchor.py [--out /tmp/bad_input_anchor.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from nodes import PEER_ENV, running_orthanc, terminate, wait_for  # noqa: E402
from peers import free_port  # noqa: E402
from reliability.bad_input_support import build_corpus, send_raw, status_text  # noqa: E402

STORESCP = "/usr/bin/storescp"


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _orthanc_instances(orthanc: object) -> int:
    return len(orthanc.request("GET", "/instances"))  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, help="write the markdown table here too")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bad-input-anchor-"))
    kinds = [k for k in build_corpus(work / "corpus") if k.wire and not k.from_pydicom]
    rows: list[str] = []
    port = free_port()
    out_dir = work / "storescp"
    out_dir.mkdir()
    scp = subprocess.Popen(
        [STORESCP, "-od", str(out_dir), "-aet", "ICHNODE", str(port)],
        env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: subprocess.run(
            ["/usr/bin/echoscu", "127.0.0.1", str(port)], capture_output=True, check=False
        ).returncode == 0, 30, "storescp")  # fmt: skip
        with running_orthanc(work / "orthanc") as orthanc:
            for kind in kinds:
                dcmtk, orth = [], []
                for item in kind.wire:
                    before = _files(out_dir)
                    status = send_raw(port, item, work)
                    kept = _files(out_dir) - before
                    dcmtk.append(f"{status_text(status)}{', file kept' if kept else ''}")
                    before = _orthanc_instances(orthanc)
                    status = send_raw(orthanc.dicom_port, item, work)
                    kept = _orthanc_instances(orthanc) - before
                    orth.append(f"{status_text(status)}{', stored' if kept else ''}")
                    if scp.poll() is not None:
                        raise SystemExit(f"storescp exited after {kind.name}")
                rows.append(
                    f"| {kind.name} | {'; '.join(dict.fromkeys(dcmtk))} "
                    f"| {'; '.join(dict.fromkeys(orth))} |"
                )
            version = json.dumps(orthanc.request("GET", "/system").get("Version"))
    finally:
        terminate(scp)
    dcmtk_version = subprocess.run(
        [STORESCP, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    table = "\n".join(
        [
            f"Receivers: {dcmtk_version.strip()} (defaults, `-od DIR`); Orthanc {version} "
            f"(defaults). {time.strftime('%Y-%m-%d')}.",
            "",
            "| kind | dcmtk storescp | Orthanc |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
