"""Load on the whole node: parallel associations, each sending several studies, into
``dicom-node serve`` (a subprocess) that classifies them and delivers to a real Orthanc.

Issue 13's figure: 8 associations in parallel, each sending 10 studies of 40 slices
512x512, with dcmtk ``storescu`` (``TCP_NODELAY=1``). It checks that every instance is
stored, every study processed and every result delivered exactly once (one attempt per
delivery, Orthanc holding the SR and SC of every study), and reports the node's peak RSS
(``VmHWM``), the disk it used, and the round trip of a C-ECHO (association, echo,
release, from pynetdicom in this process) sampled every ``--echo-every`` seconds during
the load. ``--soak N`` sends N studies instead (the same associations, one study each,
again and again, at most two per association ahead of those processed and delivered, so
the backlog stays level) and reports the RSS slope between the first and the last 100
studies, a least-squares slope over the second half (past the warm-up), and RSS by bins
of ``--bin`` studies split into anonymous and file-backed (``/proc/<pid>/smaps_rollup``;
nothing asked of the node itself): a leak or fragmentation shows in the anonymous part,
and a bounded warm-up as a series that levels off.

Studies are clones of one generated phantom with new Study/Series/SOP Instance UIDs
(pixel data identical: the node does not care, and generating 80 phantoms would cost
more than the load). The checkpoint is random-init (``bench/e2e.py``'s): latency and
memory do not depend on the weights.

Usage::

    .venv/bin/python bench/load.py [--associations 8] [--studies 10] [--slices 40]
        [--size 512] [--input-size 256] [--soak N] [--json F] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from e2e import ENV, STORESCU, Node, Pacs, write_checkpoint  # noqa: E402

HASH_KEY = "bench-key"


@dataclass(frozen=True)
class MemorySample:
    """The node's memory from /proc at one moment, with the studies delivered by then
    (KiB). ``anon_kib`` is ``smaps_rollup``'s Anonymous (the heap, malloc arenas, Python
    objects, tensors); ``file_kib`` is the rest of Rss (mapped libraries, the model file,
    page-cache pages of mapped files): fragmentation and leaks show in the first."""

    t: float
    done: int
    rss_kib: int
    anon_kib: int
    file_kib: int


@dataclass(frozen=True)
class MemoryBin:
    """Means over the samples taken while studies ``first``..``last`` were delivered."""

    first: int
    last: int
    samples: int
    rss_mib: float
    anon_mib: float
    file_mib: float


@dataclass
class LoadResult:
    """What one run measured and checked (sizes in MiB, times in seconds)."""

    associations: int
    studies: int
    slices: int
    size: int
    instances_stored: int = 0
    studies_done: int = 0
    deliveries_sent: int = 0
    delivery_attempts: int = 0
    orthanc_instances: int = 0
    send_s: float = 0.0
    total_s: float = 0.0
    peak_rss_mib: float = 0.0
    disk_mib: dict[str, float] = field(default_factory=dict)
    echo_s: list[float] = field(default_factory=list)
    echo_failures: int = 0
    storescu_failures: int = 0
    rss_by_done: list[tuple[int, float]] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def echo_max_s(self) -> float:
        return max(self.echo_s) if self.echo_s else float("nan")

    @property
    def echo_p50_s(self) -> float:
        return statistics.median(self.echo_s) if self.echo_s else float("nan")

    def exactly_once(self) -> bool:
        """Every study stored, processed, delivered in one attempt, held by Orthanc."""
        n = self.studies
        return (
            self.instances_stored == n * self.slices
            and self.studies_done == n
            and self.deliveries_sent == n
            and self.delivery_attempts == n
            and self.orthanc_instances == 2 * n
            and self.storescu_failures == 0
        )

    def rss_slope(self, window: int = 100) -> tuple[int, float] | None:
        """(window, KiB per study) between the mean RSS while the first ``window``
        studies were done and while the last ``window`` were; None if too few."""
        w = min(window, self.studies // 4)
        if w < 1 or not self.rss_by_done:
            return None
        first = [r for d, r in self.rss_by_done if d <= w]
        last = [r for d, r in self.rss_by_done if d > self.studies - w]
        if not first or not last:
            return None
        span = self.studies - w  # centre of the last window minus centre of the first
        return w, (statistics.mean(last) - statistics.mean(first)) * 1024 / span

    def memory_bins(self, size: int = 50) -> list[MemoryBin]:
        """RSS by bins of ``size`` delivered studies (a sample taken when ``done``
        studies were delivered falls in the bin of study ``done + 1``, the one under way)."""
        groups: dict[int, list[MemorySample]] = {}
        for m in self.memory:
            groups.setdefault(min(m.done, max(0, self.studies - 1)) // size, []).append(m)
        bins = []
        for k in sorted(groups):
            ms = groups[k]
            bins.append(MemoryBin(
                k * size + 1, min((k + 1) * size, self.studies), len(ms),
                statistics.mean(m.rss_kib for m in ms) / 1024,
                statistics.mean(m.anon_kib for m in ms) / 1024,
                statistics.mean(m.file_kib for m in ms) / 1024,
            ))  # fmt: skip
        return bins

    def lsq_slope(self, key: str = "rss_kib", since: float = 0.5) -> float | None:
        """Least-squares KiB per study of ``key`` over the samples taken after
        ``since`` of the studies were delivered (the second half by default: past the
        warm-up); None if too few samples or no spread in studies."""
        pts = [(m.done, getattr(m, key)) for m in self.memory if m.done > since * self.studies]
        if len(pts) < 3:
            return None
        mx = statistics.mean(x for x, _ in pts)
        my = statistics.mean(y for _, y in pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx == 0:
            return None
        return sum((x - mx) * (y - my) for x, y in pts) / sxx

    def memory_report(self, bin_size: int = 50) -> dict[str, object]:
        """Everything about memory for ``--json``: bins, slopes, the raw samples."""
        slope = self.rss_slope()
        return {
            "bin_size": bin_size,
            "bins": [asdict(b) for b in self.memory_bins(bin_size)],
            "slope_first_last_kib_per_study": None if slope is None else slope[1],
            "slope_window": None if slope is None else slope[0],
            "lsq_second_half_kib_per_study": {
                k: self.lsq_slope(k) for k in ("rss_kib", "anon_kib", "file_kib")
            },
            "peak_rss_mib": self.peak_rss_mib,
        }


# -- studies -----------------------------------------------------------------------------


class Cloner:
    """New studies from one template: same pixels, new UIDs (deterministic per number)."""

    def __init__(self, template: list[Path]) -> None:
        import pydicom

        self.datasets = [pydicom.dcmread(p) for p in template]

    def write(self, out: Path, number: int) -> tuple[str, list[Path]]:
        from models.uids import derived_uid

        out.mkdir(parents=True, exist_ok=True)
        study = derived_uid("load", str(number), "study")
        series = derived_uid("load", str(number), "series")
        frame = derived_uid("load", str(number), "frame")
        files = []
        for i, ds in enumerate(self.datasets):
            sop = derived_uid("load", str(number), "sop", str(i))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.AccessionNumber = f"L{number:07d}"
            path = out / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        return study, files


def template_study(folder: Path, slices: int, size: int) -> list[Path]:
    from train.data.phantoms import PhantomSpec, write_study

    spec = PhantomSpec(seed=1313, n_slices=slices, size=size, bleeds=("subdural",))
    return write_study(folder, spec).main.files


# -- the node's config ------------------------------------------------------------------


def write_config(root: Path, checkpoint: Path, pacs: Pacs, associations: int) -> Path:
    import yaml

    cfg = {
        "node": {
            "ae_title": "ICHNODE", "host": "127.0.0.1", "port": 0,
            "max_associations": max(16, associations + 4),  # the senders and the echoes
        },
        "storage": {
            "spool_dir": "spool", "index_db": "index.sqlite", "jobs_db": "jobs.sqlite",
            "results_dir": "results", "min_free_disk_mb": 1,
        },
        "study": {"quiet_seconds": 1.0},
        "inference": {"enabled": True, "checkpoint": str(checkpoint), "device": "cpu"},
        "destinations": [
            {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
             "port": pacs.dicom_port, "send": ["sr", "sc"]},
        ],
        "logging": {"level": "INFO", "hash_key": HASH_KEY},
        "web": {"host": "127.0.0.1", "port": 0},
    }  # fmt: skip
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# -- probes -----------------------------------------------------------------------------


def settled(index_db: Path) -> int:
    """Studies that need nothing more: skipped or failed, or done with no delivery pending
    (so a run whose studies are all skipped ends instead of waiting for deliveries)."""
    db = sqlite3.connect(f"file:{index_db}?mode=ro", uri=True, timeout=30)
    try:
        (n,) = db.execute(
            "SELECT COUNT(*) FROM studies s WHERE s.state IN ('skipped', 'failed') OR "
            "(s.state = 'done' AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE "
            "d.study_uid = s.study_uid AND d.state = 'pending'))"
        ).fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()
    return int(n)


def progress(index_db: Path) -> tuple[int, int, int, int]:
    """(instances, studies done, deliveries sent, attempts of sent deliveries)."""
    if not index_db.exists():
        return 0, 0, 0, 0
    db = sqlite3.connect(f"file:{index_db}?mode=ro", uri=True, timeout=30)
    try:
        (inst,) = db.execute("SELECT COUNT(*) FROM instances").fetchone()
        (done,) = db.execute("SELECT COUNT(*) FROM studies WHERE state = 'done'").fetchone()
        sent, attempts = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(attempts), 0) FROM deliveries WHERE state = 'sent'"
        ).fetchone()
    except sqlite3.OperationalError:  # schema still being created
        return 0, 0, 0, 0
    finally:
        db.close()
    return int(inst), int(done), int(sent), int(attempts)


def echo_round_trip(port: int, timeout: float = 30.0) -> float | None:
    """Seconds for associate + C-ECHO + release; None if it failed."""
    from pynetdicom import AE

    ae = AE(ae_title="ECHOPROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHNODE")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    ok = status is not None and int(status.get("Status", -1)) == 0
    return time.perf_counter() - start if ok else None


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_kib(pid: int) -> tuple[int, int, int]:
    """(Rss, Anonymous, Rss - Anonymous) of ``pid`` in KiB, from ``smaps_rollup`` (one
    read; the kernel sums the mappings)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            fields[key] = int(rest.split()[0])
    rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return rss, anon, rss - anon


def du_mib(path: Path) -> float:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(dirpath) / name).stat().st_size
    return total / (1 << 20)


def orthanc_instances(pacs: Pacs) -> int:
    url = f"http://127.0.0.1:{pacs.http_port}/statistics"
    with urllib.request.urlopen(url, timeout=30) as resp:  # loopback Orthanc only
        return int(json.loads(resp.read())["CountInstances"])


class Sampler(threading.Thread):
    """C-ECHO round trips and the node's RSS (with the studies done) while the load runs."""

    def __init__(self, node: Node, index_db: Path, every: float, result: LoadResult) -> None:
        super().__init__(daemon=True)
        self.node, self.index_db, self.every, self.result = node, index_db, every, result
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            rtt = echo_round_trip(self.node.port)
            if rtt is None:
                self.result.echo_failures += 1
            else:
                self.result.echo_s.append(rtt)
            done = progress(self.index_db)[2]
            # The node gone (it crashed, or the run is being torn down): the waiting loop
            # reports that; the sampler must not die of it first.
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                rss, anon, filed = memory_kib(self.node.proc.pid)
                self.result.rss_by_done.append((done, rss / 1024))
                self.result.memory.append(MemorySample(time.monotonic(), done, rss, anon, filed))


# -- the run ----------------------------------------------------------------------------


def storescu(port: int, files: list[Path]) -> bool:
    proc = subprocess.run(
        [STORESCU, "-aet", "LOADSCU", "-aec", "ICHNODE", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=ENV, capture_output=True, check=False,
    )  # fmt: skip
    return proc.returncode == 0


def run_load(
    work: Path,
    *,
    associations: int = 8,
    studies: int = 10,
    slices: int = 40,
    size: int = 512,
    input_size: int = 256,
    soak: int | None = None,
    echo_every: float = 0.5,
    timeout_s: float = 7200,
    log: Callable[[str], None] = print,
) -> LoadResult:
    """Run the load in ``work`` (which it fills) and return what it measured.

    Without ``soak``, each association sends ``studies`` studies (prepared before the
    timer starts). With ``soak=N``, N studies in all: each association sends one study at
    a time, cloned just before and deleted after, paced to a level backlog.
    """
    if slices < 10:
        raise ValueError("slices must be >= 10: the series choice skips shorter series")
    total = soak if soak is not None else associations * studies
    result = LoadResult(associations, total, slices, size)
    log(f"template: {slices} slices {size}x{size}")
    cloner = Cloner(template_study(work / "template", slices, size))
    checkpoint = work / "model.pt"
    write_checkpoint(checkpoint, "resnet18", input_size)
    prepared: list[list[list[Path]]] = []
    if soak is None:
        log(f"cloning {total} studies")
        for a in range(associations):
            mine = []
            for s in range(studies):
                n = a * studies + s
                mine.append(cloner.write(work / "send" / f"{n:05d}", n)[1])
            prepared.append(mine)
    pacs = Pacs(work / "orthanc")
    if not pacs.kind.startswith("Orthanc"):
        raise RuntimeError("the load bench needs a real Orthanc (/usr/sbin/Orthanc)")
    root = work / "node"
    root.mkdir()
    node = Node(write_config(root, checkpoint, pacs, associations), root / "node.log")
    index_db = root / "index.sqlite"
    sampler = Sampler(node, index_db, echo_every, result)
    failures: list[int] = []
    counter = iter(range(total))
    lock = threading.Lock()
    clone_lock = threading.Lock()

    def sender(a: int) -> None:
        if soak is None:
            files = [f for study in prepared[a] for f in study]  # one association
            if not storescu(node.port, files):
                failures.append(a)
            return
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            # A steady state, not a queue that grows: at most two studies per association
            # ahead of the ones settled, so RSS is compared at equal backlog.
            while n - settled(index_db) >= 2 * associations and node.proc.poll() is None:
                time.sleep(0.2)
            with clone_lock:  # the template datasets are shared
                _, files = cloner.write(work / "send" / f"{n:06d}", n)
            if not storescu(node.port, files):
                failures.append(n)
            for f in files:
                f.unlink()
            files[0].parent.rmdir()

    try:
        start = time.monotonic()
        sampler.start()
        threads = [threading.Thread(target=sender, args=(a,)) for a in range(associations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.send_s = time.monotonic() - start
        log(f"sent in {result.send_s:.1f} s; waiting for processing and delivery")
        deadline = time.monotonic() + timeout_s
        while True:
            if settled(index_db) >= total or time.monotonic() > deadline:
                break
            if node.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {node.proc.returncode}")
            time.sleep(0.5)
        result.total_s = time.monotonic() - start
        sampler.stop.set()
        sampler.join(timeout=60)
        time.sleep(1.0)  # a duplicate delivery, were one under way, would land by now
        (result.instances_stored, result.studies_done, result.deliveries_sent,
         result.delivery_attempts) = progress(index_db)  # fmt: skip
        result.storescu_failures = len(failures)
        result.orthanc_instances = orthanc_instances(pacs)
        result.peak_rss_mib = rss_mib(node.proc.pid, "VmHWM")
        result.disk_mib = {
            "spool": du_mib(root / "spool"),
            "results": du_mib(root / "results"),
            "index+jobs": sum(
                p.stat().st_size for p in root.glob("*.sqlite*") if p.is_file()
            ) / (1 << 20),
            "orthanc": du_mib(work / "orthanc" / "db"),
        }  # fmt: skip
        result.loadavg = os.getloadavg()
    finally:
        sampler.stop.set()
        node.stop()
        pacs.stop()
    return result


def markdown(r: LoadResult, command: str, bin_size: int = 50) -> str:
    slope = r.rss_slope()
    lines = [
        f"Command: `{command}`; load average at the end {r.loadavg[0]:.2f} / "
        f"{r.loadavg[1]:.2f} / {r.loadavg[2]:.2f} (1/5/15 min).",
        "",
        "| | value |",
        "|---|---|",
        f"| associations x studies x slices | {r.associations} x "
        f"{r.studies // max(1, r.associations)} x {r.slices} ({r.size}x{r.size}) |",
        f"| instances stored / expected | {r.instances_stored} / {r.studies * r.slices} |",
        f"| studies done / deliveries sent / attempts | {r.studies_done} / "
        f"{r.deliveries_sent} / {r.delivery_attempts} |",
        f"| Orthanc instances (SR + SC per study) | {r.orthanc_instances} |",
        f"| all exactly once | {'yes' if r.exactly_once() else '**no**'} |",
        f"| send time / until all delivered | {r.send_s:.1f} s / {r.total_s:.1f} s |",
        f"| node peak RSS (VmHWM) | {r.peak_rss_mib:.0f} MiB |",
        "| disk: " + ", ".join(r.disk_mib) + " | "
        + ", ".join(f"{v:.1f}" for v in r.disk_mib.values()) + " MiB |",
        f"| C-ECHO round trip during load: n / median / max | {len(r.echo_s)} / "
        f"{r.echo_p50_s * 1000:.0f} ms / {r.echo_max_s * 1000:.0f} ms "
        f"({r.echo_failures} failed) |",
    ]  # fmt: skip
    if slope is not None:
        lines.append(f"| RSS slope, first vs last {slope[0]} studies | {slope[1]:+.1f} KiB/study |")
    lsq = {k: r.lsq_slope(k) for k in ("rss_kib", "anon_kib", "file_kib")}
    if lsq["rss_kib"] is not None:
        lines.append(
            "| least-squares slope over the second half: RSS / anonymous / file-backed | "
            + " / ".join(f"{v:+.1f}" if v is not None else "-" for v in lsq.values())
            + " KiB/study |"
        )
    bins = r.memory_bins(bin_size)
    if r.memory and len(bins) > 1:
        lines += [
            "",
            "| studies delivered | samples | RSS MiB | anonymous MiB | file-backed MiB |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {b.first}-{b.last} | {b.samples} | {b.rss_mib:.1f} | {b.anon_mib:.1f} | "
            f"{b.file_mib:.1f} |"
            for b in bins
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--studies", type=int, default=10, help="per association")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--input-size", type=int, default=256, help="the model's input")
    parser.add_argument("--soak", type=int, default=None, help="N studies in all")
    parser.add_argument("--echo-every", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--bin", type=int, default=50, help="studies per RSS bin")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--timeout", type=float, default=7200, help="hang guard, seconds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ich-load-"))
    print(f"work folder: {work}", flush=True)
    try:
        result = run_load(
            work, associations=args.associations, studies=args.studies, slices=args.slices,
            size=args.size, input_size=args.input_size, soak=args.soak,
            echo_every=args.echo_every, timeout_s=args.timeout,
        )  # fmt: skip
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    command = ".venv/bin/python bench/load.py " + " ".join(sys.argv[1:])
    if args.json:
        data = asdict(result) | {
            "exactly_once": result.exactly_once(),
            "memory_report": result.memory_report(args.bin),
        }
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")
    print(
        markdown(result, command, args.bin) if args.markdown else json.dumps(asdict(result))[:2000]
    )
    if not result.exactly_once():
        sys.exit(1)


if __name__ == "__main__":
    main()
