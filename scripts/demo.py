"""``make demo``: the whole loop a hospital would see, on one machine, with phantoms.

1. a checkpoint: ``inference.checkpoint`` of the embedded defaults (``var/models/demo.pt``);
   when missing, a small CNN-LSTM is trained on synthetic phantoms (``python -m train
   demo-model``; its metadata says it is a phantom-trained demo, NOT for clinical use);
2. a PACS: a real Orthanc when installed (else a pynetdicom Storage SCP stands in);
3. the node: ``dicom-node serve`` on its embedded defaults, with environment overrides
   only for what a demo needs (free ports, a 5 s quiet period, state under var/demo);
4. two phantom head CTs, one with bleeds and one without, uploaded to the PACS and sent
   by the PACS to the node (C-STORE), exactly as a routing rule would;
5. waits until the Structured Report and the Secondary Capture are back in the PACS, in
   the patient's own study, and prints the findings read from the SR that arrived;
6. stops everything it started.

This script sits outside both packages: it may use the node and the phantom generator.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, suppress
from functools import partial
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicom_node.config import load_settings  # noqa: E402
from dicom_node.web.auth import hash_password  # noqa: E402
from models.checkpoint import CheckpointMeta, read_meta  # noqa: E402
from models.errors import CheckpointError  # noqa: E402
from models.labels import LABELS  # noqa: E402
from train.data.phantoms import PhantomSpec, write_study  # noqa: E402
from train.demo_model import default_recipe_id  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
SHORT = {
    "any": "ICH",
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
}
PRESENT = "52101004"
# The findings table is 9 columns wide: wider than the 80 columns rich assumes when the
# output is not a terminal (make, CI logs), where cells would wrap onto two lines.
console = Console(width=None if sys.stdout.isatty() else 110)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - probing the node's default bind
        except OSError:
            return False
    return True


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def ensure_checkpoint(path: Path) -> None:
    """Train the demo model unless ``path`` holds one of today's recipe (or a real model)."""
    try:
        meta = read_meta(path)
    except CheckpointError:
        why = "no checkpoint yet"
    else:
        recipe = meta.provenance.get("recipe")
        if not meta.demo or recipe == default_recipe_id():
            console.print(f"checkpoint: {path} ({meta.name}, {meta.trained_on})")
            return
        why = f"the cached demo model is of another recipe ({recipe})"
    console.rule(f"{why}: training a small demo model on phantoms (a few minutes)")
    subprocess.run(
        [sys.executable, "-m", "train", "demo-model", "--out", str(path)], cwd=REPO, check=True
    )


class OrthancPacs:
    """A real Orthanc on free ports with the node as modality ``ichnode``."""

    def __init__(self, root: Path, node_port: int, node_aet: str) -> None:
        self.root = root
        self.http = free_port()
        self.dicom = free_port()
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "DEMO-PACS",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"ichnode": [node_aet, "127.0.0.1", node_port]},
            "Plugins": [],
        }
        (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
        self.proc = subprocess.Popen(
            [ORTHANC, f"--logfile={root / 'orthanc.log'}", str(root / "orthanc.json")],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("Orthanc", self._ready, 30)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"demo: Orthanc exited ({self.root / 'orthanc.log'})")
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", body, method=method)
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback only
            data = resp.read()
        try:
            return json.loads(data)
        except ValueError:
            return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def stop(self) -> None:
        """Terminate Orthanc (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)


def start_node(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dicom-node")), "serve"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    port = int(env["ICH_NODE__PORT"])

    def listening() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the node exited, see {log_path}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for("the node to listen", listening, 120)
    return proc


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the node finishes what it holds and shuts down cleanly."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def sr_findings(ds: pydicom.Dataset) -> dict[str, tuple[float, bool]]:
    """Probability and Present/Absent per finding, read from our TID 1500 SR."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = sr.content.get_image_measurement_groups()  # type: ignore[attr-defined]
    out: dict[str, tuple[float, bool]] = {}
    for label, group in zip(LABELS, groups, strict=True):
        (meas,) = group.get_measurements()
        (qual,) = group.get_qualitative_evaluations()
        out[label] = (float(meas.value), qual.value.value == PRESENT)
    return out


def auc_cell(meta: CheckpointMeta, label: str) -> str:
    """The checkpoint's study-level AUC for one finding on its held-out set, if recorded."""
    value = meta.validation_metrics.get(f"study_auc_{label}")
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    work = REPO / "var" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = load_settings(None)
    checkpoint = REPO / settings.inference.checkpoint
    ensure_checkpoint(checkpoint)
    if not Path(ORTHANC).exists():
        raise SystemExit("demo: Orthanc is not installed; run `make debs` (apt-get orthanc)")

    node_port = settings.node.port if port_free(settings.node.port) else free_port()
    web_port = settings.web.port if port_free(settings.web.port) else free_port()
    pw = secrets.token_urlsafe(9)
    with ExitStack() as stack:
        pacs = OrthancPacs(work / "orthanc", node_port, settings.node.ae_title)
        stack.callback(pacs.stop)
        env = {
            **os.environ,
            "ICH_NODE__PORT": str(node_port),
            "ICH_WEB__PORT": str(web_port),
            "ICH_STUDY__QUIET_SECONDS": "5",
            "ICH_STORAGE__SPOOL_DIR": str(work / "node" / "spool"),
            "ICH_STORAGE__INDEX_DB": str(work / "node" / "index.sqlite"),
            "ICH_STORAGE__JOBS_DB": str(work / "node" / "jobs.sqlite"),
            "ICH_STORAGE__RESULTS_DIR": str(work / "node" / "results"),
            "ICH_STORAGE__MIN_FREE_DISK_MB": "64",
            "ICH_INFERENCE__CHECKPOINT": str(checkpoint),
            "ICH_DESTINATIONS": json.dumps(
                [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom}]
            ),
            "TCP_NODELAY": "1",
            # The worklist page with one demo login; a fresh password and cookie secret
            # each run (both printed or thrown away with var/demo).
            "ICH_WEB__USERS": json.dumps([{"name": "demo", "password_hash": hash_password(pw)}]),
            "ICH_WEB__SESSION_SECRET": secrets.token_urlsafe(32),
        }
        console.print(
            f"PACS: Orthanc AE ORTHANC, DICOM port {pacs.dicom}, web http://127.0.0.1:{pacs.http}"
        )
        node = start_node(env, work / "node.log")
        stack.callback(stop_node, node)
        # Stop the PACS before the node: an association the PACS keeps open would hold
        # the node's graceful shutdown for its whole grace period.
        stack.callback(pacs.stop)
        console.print(
            f"node: {settings.node.ae_title} on port {node_port} (log {work / 'node.log'}), "
            f"metrics http://{settings.web.host}:{web_port}/metrics"
        )
        console.print(
            f"worklist: http://{settings.web.host}:{web_port}/ (login demo / {pw}; "
            "DEMO_KEEP=1 make demo keeps it running)"
        )

        cases = [
            # A subdural bleed: the subtype the demo model separates best on held-out
            # phantoms (AUC 1.00; EDH 0.99, IVH 0.99, IPH 0.97, SAH 0.96, printed under the
            # table). With two subtypes in one phantom it confuses them more often.
            ("bleed", PhantomSpec(seed=11, n_slices=32, bleeds=("subdural",))),
            ("normal", PhantomSpec(seed=12, n_slices=32)),
        ]
        studies = []
        for name, spec in cases:
            written = write_study(work / "studies" / name, spec, extra_series=("localizer",))
            ids = {
                pacs.request("POST", "/instances", p.read_bytes())["ParentStudy"]
                for p in written.files
            }
            (orthanc_id,) = ids
            truth = [SHORT[LABELS[i]] for i in range(1, 6) if written.volume.study_labels[i]]
            studies.append((name, written, orthanc_id, truth))
            console.print(f"uploaded {name} study to the PACS: {len(written.files)} images")
        t0 = time.monotonic()
        for _, _, orthanc_id, _ in studies:
            pacs.request("POST", "/modalities/ichnode/store", orthanc_id.encode())
        console.print("the PACS sent both studies to the node; waiting for results ...")

        def results(orthanc_id: str) -> dict[str, str] | None:
            found: dict[str, str] = {}
            for series in pacs.get(f"/studies/{orthanc_id}/series"):
                modality = series["MainDicomTags"].get("Modality")
                if modality in ("SR", "OT") and series["Instances"]:
                    found[modality] = series["Instances"][0]
            return found if len(found) == 2 else None

        table = Table(title="findings, read from the SR that arrived in the PACS")
        table.add_column("study")
        table.add_column("phantom truth")
        for label in LABELS:
            table.add_column(SHORT[label], justify="right")
        disagreements: list[str] = []
        for name, written, orthanc_id, truth in studies:
            found = wait_for(f"results of the {name} study", partial(results, orthanc_id), 600)
            raw = pacs.request("GET", f"/instances/{found['SR']}/file")
            sr = pydicom.dcmread(io.BytesIO(raw))
            assert sr.StudyInstanceUID == written.study_uid
            findings = sr_findings(sr)
            cells = [
                (f"[bold red]{p:.2f} YES[/]" if present else f"{p:.2f} no")
                for p, present in findings.values()
            ]
            disagreements += [
                f"{name}: {SHORT[label]} {'called' if present else 'missed'}"
                for i, (label, (_, present)) in enumerate(findings.items())
                if present != bool(written.volume.study_labels[i])
            ]
            table.add_row(name, ", ".join(truth) or "no bleed", *cells)
            console.print(
                f"{name}: SR and Secondary Capture stored in the PACS, in the patient's own "
                f"study: http://127.0.0.1:{pacs.http}/app/explorer.html#study?uuid={orthanc_id}"
            )
        meta = read_meta(checkpoint)
        table.add_section()
        table.add_row(
            "[dim]held-out AUC",
            f"[dim]{int(meta.validation_metrics.get('val_studies', 0))} phantoms",
            *(f"[dim]{auc_cell(meta, label)}" for label in LABELS),
        )
        console.print(table)
        target = meta.validation_metrics.get("target_sensitivity")
        console.print(
            "ICH any hemorrhage, EDH epidural, IPH intraparenchymal, "
            "IVH intraventricular, SAH subarachnoid, SDH subdural; YES = present "
            "at the checkpoint's threshold"
            + (f" (set for {target:.0%} sensitivity on the held-out phantoms)" if target else "")
            + "; held-out AUC: how well the model separates each finding"
        )
        if disagreements:
            console.print(f"[yellow]differs from the phantom truth: {'; '.join(disagreements)}")
        else:
            console.print("every finding agrees with the phantom truth")
        console.print(
            f"results back in the PACS {time.monotonic() - t0:.1f} s after sending "
            "(including the 5 s quiet period that decides a study is complete)"
        )
        if meta.demo:
            console.print("[yellow]demo model trained on synthetic phantoms: NOT for clinical use")
        if os.environ.get("DEMO_KEEP"):
            console.print("DEMO_KEEP set: press Ctrl-C to stop the PACS and the node")
            with suppress(KeyboardInterrupt):
                signal.pause()
    console.print("stopped the node and the PACS")


if __name__ == "__main__":
    main()
