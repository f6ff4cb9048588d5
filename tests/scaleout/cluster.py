"""Several ``dicom-node serve`` processes around one PostgreSQL index and one spool folder.

A cluster is what docs/scale-out.md deploys, on loopback: receivers (``--role receiver``,
each on its own DICOM port) and workers (``--role worker``), every one a real subprocess
with its own config file, sharing the spool and results folders and the database. The
tests read the shared state straight from PostgreSQL (the index is the product's, the
query is a plain SELECT) and what came back from a real Orthanc.
"""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nodes import NODE_AET, Orthanc, ServeProcess
from pipeline.support import destination, index_rows


@dataclass
class Cluster:
    """Config files and processes of one test's receivers and workers."""

    root: Path
    index_url: str
    checkpoint: Path
    orthanc: Orthanc
    quiet_s: float = 1.5
    lease_s: float = 3.0
    procs: dict[str, ServeProcess] = field(default_factory=dict)

    @property
    def spool(self) -> Path:
        return self.root / "shared" / "spool"

    @property
    def results(self) -> Path:
        return self.root / "shared" / "results"

    def config(self, name: str, role: str) -> Path:
        """``<root>/<name>/config.yaml``: the shared storage, this process's role and name."""
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "node": {
                "ae_title": NODE_AET,
                "host": "127.0.0.1",
                "port": 0,
                "role": role,
                "worker_id": name,
            },
            "storage": {
                "spool_dir": str(self.spool),
                "results_dir": str(self.results),
                "index_db": self.index_url,
                "jobs_db": "jobs.sqlite",  # unused: the timers live in PostgreSQL
                "min_free_disk_mb": 1,
            },
            "study": {"quiet_seconds": self.quiet_s},
            "web": {"enabled": False},
            "inference": {
                "enabled": True,
                "checkpoint": str(self.checkpoint),
                "device": "cpu",
                "amp": False,
                "lease_s": self.lease_s,
            },
            "logging": {"level": "DEBUG", "hash_key": "test-key"},
            "destinations": [destination(self.orthanc.dicom_port, ae_title=self.orthanc.aet)],
        }
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    def start(self, name: str, role: str) -> ServeProcess:
        proc = ServeProcess(self.config(name, role), self.root / name / "serve.log")
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGSTOP at once (the process stops where it is), then SIGKILL: a machine lost."""
        proc = self.procs.pop(name)
        proc.proc.send_signal(signal.SIGSTOP)
        proc.kill()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.proc.poll() is None:
                proc.stop()
        self.procs.clear()

    def rows(self) -> list[dict[str, Any]]:
        """Every study with its state, generation, owner, instance count and deliveries."""
        return index_rows(self.index_url)

    def states(self) -> Counter[str]:
        return Counter(r["state"] for r in self.rows())

    def log_events(self, event: str) -> dict[str, int]:
        """How many lines of ``event`` each process logged."""
        counts: dict[str, int] = {}
        for log in self.root.glob("*/serve.log"):
            text = log.read_text(encoding="utf-8", errors="replace")
            counts[log.parent.name] = sum(
                1 for ln in text.splitlines() if f"event={event} " in ln + " "
            )
        return counts
