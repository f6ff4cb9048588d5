"""End-to-end latency of the node: last instance acknowledged -> SR and SC stored in PACS.

For each (backbone, input size) a random-init checkpoint is written (latency does not
depend on the weights; no download, no training), a node is started as a subprocess
(``dicom-node serve``, ``quiet_seconds`` 1) with a real Orthanc as its destination
(dcmtk ``storescp`` when Orthanc is not installed), and phantom head CT studies of
``--slices`` 512x512 slices are sent with dcmtk ``storescu`` (``TCP_NODELAY=1``).

Latency comes from the node's own clocks, not from polling: the index's
``studies.last_received`` (the last instance was committed just before its C-STORE
response) and ``deliveries.updated`` (written right after the PACS acknowledged the
last object), minus the quiet period. Stages are those the node records per study
(``studies.result`` ``timings_s``: select, read_preprocess, inference, build) and per
delivery (``send_s`` of the ``delivery.attempt`` log line); ``other`` is what is left:
the completion timer, queue hand-offs, index writes, job scheduling.

Run 1 of each node is cold (first inference and first SR/SC in the process), run 2 is
warm. Then one study of ``--rss-slices`` slices is processed and the node's peak RSS
(``VmHWM`` of /proc/<pid>/status) is read.

Usage::

    .venv/bin/python bench/e2e.py [--configs resnet18:256,resnet50:256,resnet50:512]
        [--slices 40] [--rss-slices 60] [--runs 2] [--device cpu|cuda] [--json F] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the node as a subprocess, polling, free ports

from nodes import ORTHANC, STORESCU, ServeProcess, terminate, wait_for  # noqa: E402
from nodes import PEER_ENV as ENV  # noqa: E402
from peers import free_port  # noqa: E402

STORESCP = "/usr/bin/storescp"
QUIET_S = 1.0
HASH_KEY = "bench-key"
STAGES = ("select", "read_preprocess", "inference", "build", "send")


# -- the PACS --------------------------------------------------------------------------


class Pacs:
    """Orthanc (preferred) or dcmtk storescp on free loopback ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dicom_port = free_port()
        self.http_port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        if Path(ORTHANC).exists():
            self.kind, self.aet = "Orthanc 1.10", "ORTHANC"
            config = {
                "Name": "bench",
                "StorageDirectory": str(root / "db"),
                "IndexDirectory": str(root / "db"),
                "HttpPort": self.http_port,
                "DicomPort": self.dicom_port,
                "DicomAet": self.aet,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": [],
            }
            (root / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
            argv = [ORTHANC, f"--logfile={root / 'orthanc.log'}", str(root / "orthanc.json")]
        else:
            self.kind, self.aet = "dcmtk storescp", "STORESCP"
            (root / "in").mkdir(exist_ok=True)
            argv = [STORESCP, "-aet", self.aet, "-od", str(root / "in"), str(self.dicom_port)]
        self.proc = subprocess.Popen(
            argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._listening, 30, f"{self.kind} to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.dicom_port)) != 0:
                return False
        if self.kind.startswith("Orthanc"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system", timeout=2)
            except (urllib.error.URLError, ConnectionError):
                return False
        return True

    def holds(self, sop_uid: str) -> bool:
        """Whether the PACS stored the instance ``sop_uid``."""
        if not self.kind.startswith("Orthanc"):
            return any(p.name.endswith(sop_uid) for p in (self.root / "in").iterdir())
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/lookup", data=sop_uid.encode()
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return any(r.get("Type") == "Instance" for r in json.loads(resp.read()))

    def stop(self) -> None:
        terminate(self.proc)


# -- the node --------------------------------------------------------------------------


def write_checkpoint(path: Path, backbone: str, size: int) -> None:
    from models.checkpoint import CheckpointMeta, save_checkpoint
    from models.network import CNNLSTM, NetworkConfig

    cfg = NetworkConfig(backbone=backbone)  # the paper's LSTM: 2 x bidirectional 512
    save_checkpoint(
        path, CNNLSTM(cfg), CheckpointMeta(network=cfg, input_size=size, trained_on="random-init")
    )


def write_config(root: Path, checkpoint: Path, pacs: Pacs, device: str = "cpu") -> Path:
    import yaml

    cfg = {
        "node": {"ae_title": "ICHNODE", "host": "127.0.0.1", "port": 0},
        "storage": {
            "spool_dir": "spool",
            "index_db": "index.sqlite",
            "jobs_db": "jobs.sqlite",
            "results_dir": "results",
            "min_free_disk_mb": 1,
        },
        "study": {"quiet_seconds": QUIET_S},
        "inference": {"enabled": True, "checkpoint": str(checkpoint), "device": device},
        "destinations": [
            {
                "name": "pacs",
                "ae_title": pacs.aet,
                "host": "127.0.0.1",
                "port": pacs.dicom_port,
                "send": ["sr", "sc"],
            }
        ],
        "logging": {"level": "INFO", "hash_key": HASH_KEY},
        "web": {"host": "127.0.0.1", "port": 0},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class Node(ServeProcess):
    """``dicom-node serve`` of this checkout (run from the repository root), ready once it
    listens; :meth:`status_kb` reads its memory from /proc."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(config, log, cwd=REPO)

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)


def study_row(index_db: Path, uid: str) -> dict[str, Any] | None:
    if not index_db.exists():
        return None
    db = sqlite3.connect(f"file:{index_db}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute(
            "SELECT s.state, s.last_received, s.completed_at, s.result, d.state, d.updated, "
            "d.attempts FROM studies s LEFT JOIN deliveries d ON d.study_uid = s.study_uid "
            "WHERE s.study_uid = ?",
            (uid,),
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    if row is None:
        return None
    keys = ("state", "last_received", "completed_at", "result", "delivery", "updated", "attempts")
    return dict(zip(keys, row, strict=True))


def log_fields(log: Path, event: str, study_key: str) -> dict[str, str]:
    """key=value fields of the last ``event`` line about ``study_key`` in the node's log."""
    found: dict[str, str] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if f"event={event} " in line and f"study={study_key}" in line:
            found = dict(p.split("=", 1) for p in line.split() if "=" in p)
    return found


def run_study(node: Node, root: Path, pacs: Pacs, files: list[Path], uid: str) -> dict[str, Any]:
    """Send one study, wait for its delivery, return latency and stages (seconds)."""
    proc = subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", "ICHNODE", "127.0.0.1", str(node.port)]
        + [str(f) for f in files],
        env=ENV,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stderr.decode()[-500:]}")
    index_db = root / "index.sqlite"
    row = wait_for(
        lambda: (
            (r := study_row(index_db, uid)) is not None
            and (r["delivery"] in ("sent", "failed") or r["state"] in ("failed", "skipped"))
            and r
        ),
        600,
        "the study's results delivered",
    )
    if row["delivery"] != "sent":
        raise RuntimeError(f"study ended {row['state']}, delivery {row['delivery']}")
    result = json.loads(row["result"])
    key = hmac.new(HASH_KEY.encode(), uid.encode(), hashlib.sha256).hexdigest()[:12]
    attempt = log_fields(node.log, "delivery.attempt", key)
    stages = {k: float(result["timings_s"][k]) for k in STAGES[:-1]}
    stages["send"] = float(attempt["send_s"])
    e2e = float(row["updated"]) - float(row["last_received"]) - QUIET_S
    completion_delay = float(row["completed_at"]) - float(row["last_received"]) - QUIET_S
    assert pacs.holds(result["uids"]["sr_instance"]), "the PACS does not hold the SR"
    return {
        "e2e_s": e2e,
        **{f"{k}_s": v for k, v in stages.items()},
        "completion_delay_s": completion_delay,
        "other_s": e2e - sum(stages.values()),
        "non_inference_s": e2e - stages["inference"],
        "attempts": int(row["attempts"]),
    }


def make_studies(folder: Path, slices: int, rss_slices: int, runs: int) -> list[Any]:
    from train.data.phantoms import PhantomSpec, write_study

    studies = [
        write_study(
            folder / f"run{i}",
            PhantomSpec(seed=900 + i, n_slices=slices, size=512, bleeds=("subdural",)),
        )
        for i in range(runs)
    ]
    studies.append(
        write_study(folder / "rss", PhantomSpec(seed=990, n_slices=rss_slices, size=512))
    )
    return studies


def network_alone(backbone: str, size: int, slices: int, device: str) -> float:
    """Seconds of the bare network on ``slices`` random slices (``bench/network.py``'s
    child: fresh process, one warm-up, best of two passes), measured in this run so that
    the node's inference stage has a reference taken under the same machine load."""
    cmd = [sys.executable, str(REPO / "bench" / "network.py"), "--child", backbone, str(size)]
    cmd += ["--slices", str(slices), "--repeat", "2", "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def bench_config(
    backbone: str, size: int, work: Path, pacs: Pacs, studies: list[Any], runs: int, device: str
) -> dict[str, Any]:
    root = work / f"{backbone}-{size}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ckpt = root / "model.pt"
    write_checkpoint(ckpt, backbone, size)
    node = Node(write_config(root, ckpt, pacs, device), root / "node.log")
    try:
        idle_rss_mb = node.status_kb("VmRSS") / 1024
        out: dict[str, Any] = {"backbone": backbone, "size": size, "runs": []}
        out["network_alone_s"] = network_alone(backbone, size, len(studies[0].main.files), device)
        print(f"{backbone}/{size} network alone: {out['network_alone_s']:.2f} s", flush=True)
        for i in range(runs):
            s = studies[i]
            res = run_study(node, root, pacs, s.main.files, s.study_uid)
            res["run"] = "cold" if i == 0 else "warm"
            out["runs"].append(res)
            print(f"{backbone}/{size} run {i + 1}: " + json.dumps(_rounded(res)), flush=True)
        big = studies[-1]
        res = run_study(node, root, pacs, big.main.files, big.study_uid)
        out["rss"] = {
            "slices": len(big.main.files),
            "idle_rss_mb": idle_rss_mb,
            "peak_rss_mb": node.status_kb("VmHWM") / 1024,
            "e2e_s": res["e2e_s"],
        }
        print(f"{backbone}/{size} rss: " + json.dumps(_rounded(out["rss"])), flush=True)
    finally:
        node.stop()
    return out


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def markdown(results: list[dict[str, Any]], slices: int) -> str:
    head = (
        f"| model | run | e2e - quiet (s) | select | read+preprocess | inference | build SR+SC "
        f"| send | other | all but inference | network alone | peak RSS, "
        f"{results[0]['rss']['slices']} slices |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in results:
        for run in r["runs"]:
            lines.append(
                f"| {r['backbone']}/{r['size']} | {run['run']} | {run['e2e_s']:.2f} "
                f"| {run['select_s']:.3f} | {run['read_preprocess_s']:.2f} "
                f"| {run['inference_s']:.2f} | {run['build_s']:.2f} | {run['send_s']:.3f} "
                f"| {run['other_s']:.2f} | **{run['non_inference_s']:.2f}** "
                f"| {r['network_alone_s']:.2f} | {r['rss']['peak_rss_mb']:.0f} MB |"
            )
    return head + "\n".join(lines) + f"\n\n({slices}-slice 512x512 studies)\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="resnet18:256,resnet50:256,resnet50:512")
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--rss-slices", type=int, default=60)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="inference.device of the node (cuda: AMP)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--markdown", action="store_true", help="print a table for BENCHMARKS.md")
    args = ap.parse_args()
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="ich-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}", flush=True)
    studies = make_studies(work / "studies", args.slices, args.rss_slices, args.runs)
    pacs = Pacs(work / "pacs")
    print(f"PACS: {pacs.kind}", flush=True)
    try:
        results = [
            bench_config(b, s, work, pacs, studies, args.runs, args.device) for b, s in configs
        ]
    finally:
        pacs.stop()
    meta = {
        "pacs": pacs.kind,
        "cpus": os.cpu_count(),
        "slices": args.slices,
        "device": args.device,
        "quiet_s": QUIET_S,
        "weights": "random init (latency does not depend on them)",
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if args.markdown:
        print(markdown(results, args.slices))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
