"""Ingest throughput: images/s received over loopback by our node, dcmtk storescp, Orthanc.

The same sender for all (dcmtk ``/usr/bin/storescu`` with ``TCP_NODELAY=1``), 500 CT
instances of 512x512 (five phantom studies of 100 slices, uncompressed, ~0.5 MB each),
over one association and over four in parallel. Each receiver starts fresh (empty
storage) for every run; runs interleave receivers so that drift in machine load hits all
of them alike (``--rotate``: each round also starts at the next receiver, so that none is
always first); the median of ``--repeat`` runs is reported, with min and max.

What each receiver promises before answering Success:

- our node: file fsynced and renamed (folder fsynced), index row committed (durable);
  with ``--ab-journal`` also a second node whose write-ahead journal is on (record
  flushed, file written, index row committed);
- Orthanc 1.10 (defaults): file written with its storage area's sync, SQLite index;
- dcmtk storescp: file written, no fsync (a floor, not a peer in durability);
- bare pynetdicom (``bench/bare_pynetdicom_scp.py``): the bytes written to a file, no
  fsync, no index: what the library our node is built on costs by itself.

Peak RSS of our node (``VmHWM`` of the serve process) is read after the runs.

``--ab-tls`` adds the node on its DICOM TLS port only (mutual TLS: a client certificate
is required) and dcmtk storescp with ``+tls`` (likewise), the sender being
``storescu +tls``; certificates are made for the run (``tests/reliability/tls_support``).
It prints each TLS receiver's ratio to its plain self in the same run.

``--ab-scrape`` adds the node with ``/metrics`` scraped every second while it receives
(a Prometheus at a 1 s interval, far more often than the usual 15-60 s) and an open
worklist page's poll of ``/api/studies`` every 4 s, and the node with its web server off,
and prints the ratio of each to the plain node (web server on, not scraped).

Usage::

    .venv/bin/python bench/ingest.py [--n 500] [--repeat 3] [--only node ...]
        [--ab-repo ../old-checkout] [--ab-journal] [--ab-scrape] [--ab-tls] [--rotate]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the test PKI maker, for --ab-tls

from reliability.tls_support import Pki, make_pki, tls_args  # noqa: E402

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_data(folder: Path, n: int) -> list[Path]:
    """``n`` CT instances of 512x512 from phantom studies of 100 slices (cached)."""
    from train.data.phantoms import PhantomSpec, write_study

    files = sorted(folder.rglob("*.dcm"))
    if len(files) >= n:
        return files[:n]
    shutil.rmtree(folder, ignore_errors=True)
    out: list[Path] = []
    seed = 0
    while len(out) < n:
        k = min(100, n - len(out))
        study = write_study(folder / f"s{seed}", PhantomSpec(seed=1000 + seed, n_slices=k))
        out.extend(study.main.files)
        seed += 1
    return sorted(out)


def wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def pinned(argv: list[str], cpus: str) -> list[str]:
    """``argv`` run on the CPUs ``cpus`` only (``taskset -c``; every thread it starts
    inherits them), or as it is when ``cpus`` is empty."""
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def send(
    port: int, aec: str, files: list[Path], parallel: int, extra: tuple[str, ...] = (),
    cpus: str = "",
) -> float:  # fmt: skip
    """Wall seconds for ``parallel`` storescu processes to send ``files`` between them
    (``extra``: more storescu options, e.g. its TLS ones; ``cpus``: see :func:`pinned`)."""
    chunks = [files[i::parallel] for i in range(parallel)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            pinned(
                [STORESCU, "-aet", "BENCH", "-aec", aec, *extra, "127.0.0.1", str(port)]
                + [str(f) for f in c],
                cpus,
            ),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for c in chunks
    ]
    errs = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t0
    for p, e in zip(procs, errs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {e.decode()[-500:]}")
    return dt


class Receiver:
    name = ""
    aec = ""
    #: storescu options this receiver needs (TLS: key, certificate, CA).
    sender_args: tuple[str, ...] = ()

    def start(self, work: Path) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError


class ProcessReceiver(Receiver):
    """A receiver that is one child process: spawned, ready once its DICOM port accepts
    connections, stopped with SIGTERM."""

    #: seconds :meth:`stop` waits for the process to exit
    stop_timeout = 30.0
    #: CPUs the process may run on (``taskset -c`` list, e.g. ``"0"``); empty: any
    cpus = ""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], port: int, **popen: Any) -> int:
        """Start ``argv`` (peers' environment, output discarded unless ``popen`` says
        otherwise) and return ``port`` once it is open."""
        options = {"env": ENV, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.proc = subprocess.Popen(pinned(argv, self.cpus), **(options | popen))
        wait_port(port)
        return port

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=self.stop_timeout)


#: The API token the bench's node accepts (the worklist poll below uses it).
BENCH_TOKEN = "bench-" + "t" * 40
#: How often an open worklist page polls ``/api/studies`` (dicom_node.web.pages.POLL_MS).
WORKLIST_POLL_S = 4.0


class OurNode(ProcessReceiver):
    name, aec = "dicom-node (durable)", "ICHNODE"
    stop_timeout = 60.0

    def __init__(
        self, worker: bool = False, *, repo: Path = REPO, storage: str = "", node: str = "",
        name: str = "", web: bool = True, scrape_s: float = 0.0, tls: Pki | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.peak_rss_kb: list[int] = []
        self.work = Path()
        self.worker = worker
        self.repo = repo  # another checkout (git worktree) for an A/B against older code
        self.storage = storage  # extra `storage:` keys, e.g. "journal_segment_mb: 0"
        self.node = node  # extra `node:` keys, e.g. "engine: pynetdicom"
        self.web = web  # the HTTP server (/healthz, /readyz, /metrics) on a free port
        self.scrape_s = scrape_s  # > 0: GET /metrics every scrape_s seconds while running
        self.scrapes: list[int] = []  # scrapes per run
        self._scraper: threading.Thread | None = None
        self._stop_scraping = threading.Event()
        self.tls = tls  # DICOM TLS only, client certificate required
        if tls is not None:
            self.sender_args = tuple(tls_args(tls.ca, tls.client))
        if name:
            self.name = name

    def start(self, work: Path) -> int:
        self.work = work
        port, web_port = free_port(), free_port()
        cfg = work / "config.yaml"
        node = self.node
        if self.tls is not None:
            t = self.tls
            node = (
                f"tls: {{enabled: true, port: {port}, disable_plain: true,"
                f" cert_file: '{t.server.cert}', key_file: '{t.server.key}',"
                f" ca_file: '{t.ca}', require_client_cert: true}}" + (", " + node if node else "")
            )
        cfg.write_text(
            f"web: {{enabled: {'true' if self.web else 'false'}, host: 127.0.0.1,"
            f" port: {web_port}, api_tokens: [{{name: bench,"
            f" token_sha256: {hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()}}}]}}\n"
            f"node: {{ae_title: ICHNODE, host: 127.0.0.1, port: {port}, max_associations: 16"
            f"{', ' + node if node else ''}}}\n"
            "storage: {spool_dir: spool, index_db: index.sqlite, jobs_db: jobs.sqlite,"
            f" min_free_disk_mb: 100{', ' + self.storage if self.storage else ''}}}\n"
            + "study: {quiet_seconds: 30}\nlogging: {level: WARNING}\n"
            f"inference: {{enabled: {'true' if self.worker else 'false'}}}\n"
        )
        self.spawn(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(cfg)], port,
            env=None, cwd=self.repo, stderr=(work / "node.log").open("wb"),
        )  # fmt: skip
        if self.web:  # fully started: the web server's start-up is not in the timed window
            wait_port(web_port)
        if self.scrape_s > 0:
            self._stop_scraping.clear()
            self._scraper = threading.Thread(target=self._scrape, args=(web_port,))
            self._scraper.start()
        return port

    def _scrape(self, web_port: int) -> None:
        """``/metrics`` every ``scrape_s``, and the worklist's own poll of ``/api/studies``
        every ``WORKLIST_POLL_S`` (what an open worklist page asks, with a token)."""
        n = 0
        url = f"http://127.0.0.1:{web_port}/metrics"
        studies = urllib.request.Request(
            f"http://127.0.0.1:{web_port}/api/studies",
            headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
        )
        next_poll = 0.0
        while True:
            with urllib.request.urlopen(url, timeout=10) as r:
                if b"dicom_node_instances_received_total" not in r.read():
                    raise RuntimeError("no instance counter in /metrics")
            if time.monotonic() >= next_poll:
                with urllib.request.urlopen(studies, timeout=10) as r:
                    json.loads(r.read())
                next_poll = time.monotonic() + WORKLIST_POLL_S
            n += 1
            if self._stop_scraping.wait(self.scrape_s):
                break
        self.scrapes.append(n)

    def stop(self) -> None:
        assert self.proc is not None
        if self._scraper is not None:
            self._stop_scraping.set()
            self._scraper.join()
            self._scraper = None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kb.append(int(line.split()[1]))
        super().stop()

    def count(self) -> int:
        return sum(1 for _ in (self.work / "spool").rglob("*.dcm"))


class FolderReceiver(ProcessReceiver):
    """A receiver process that writes each instance as a file into ``<work>/out``."""

    def __init__(self) -> None:
        super().__init__()
        self.work = Path()

    def command(self, port: int, out: Path) -> list[str]:
        raise NotImplementedError

    def start(self, work: Path) -> int:
        self.work = work
        (work / "out").mkdir()
        port = free_port()
        return self.spawn(self.command(port, work / "out"), port)

    def count(self) -> int:
        return sum(1 for _ in (self.work / "out").iterdir())


class StoreSCP(FolderReceiver):
    name, aec = "dcmtk storescp", "STORESCP"

    def __init__(self, tls: Pki | None = None, name: str = "") -> None:
        super().__init__()
        self.tls = tls  # +tls with a client certificate required (-rc), like the node's
        if tls is not None:
            self.sender_args = tuple(tls_args(tls.ca, tls.client))
        if name:
            self.name = name

    def command(self, port: int, out: Path) -> list[str]:
        t = self.tls
        opts = ["+tls", str(t.server.key), str(t.server.cert), "+cf", str(t.ca), "-rc"] if t else []
        return [STORESCP, "-aet", "STORESCP", "-od", str(out), *opts, str(port)]


class OrthancPeer(ProcessReceiver):
    name, aec = "Orthanc 1.10", "ORTHANC"
    stop_timeout = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.http = 0

    def start(self, work: Path) -> int:
        port, self.http = free_port(), free_port()
        cfg = {
            "Name": "bench", "StorageDirectory": str(work / "db"),
            "IndexDirectory": str(work / "db"), "HttpPort": self.http, "DicomPort": port,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [],
        }  # fmt: skip
        (work / "orthanc.json").write_text(json.dumps(cfg))
        argv = [ORTHANC, f"--logfile={work / 'orthanc.log'}", str(work / "orthanc.json")]
        return self.spawn(argv, port)

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/statistics", timeout=10) as r:
            return int(json.load(r)["CountInstances"])


class BarePynetdicom(FolderReceiver):
    name, aec = "bare pynetdicom", "BARE"

    def command(self, port: int, out: Path) -> list[str]:
        return [sys.executable, str(REPO / "bench" / "bare_pynetdicom_scp.py"), str(port), str(out)]


def durable_write_ms(files: list[Path]) -> float:
    """Milliseconds per instance for the durable write alone, on the disk under ``var/``.

    What the issue's durability asks of every receiver before Success, with nothing else:
    write a temporary file, fsync it, rename it into a study/series folder, fsync the
    folder. No network, no parsing, no index. With storescp's whole per-image time it
    estimates what storescp would reach if it kept that promise (see :func:`report`): the
    ceiling the durability requirement puts on a one-association ratio to storescp.
    """
    from dicom_node.store.journal import write_file  # the node's own durable write

    blobs = [f.read_bytes() for f in files]
    with tempfile.TemporaryDirectory(dir=REPO / "var", prefix="bench-floor-") as d:
        folder = Path(d) / "1.2.3" / "1.2.3.4"
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        for i, blob in enumerate(blobs):
            write_file(folder / f"{i}.dcm", (blob,), durable=True)
        return (time.perf_counter() - t0) / len(blobs) * 1e3


def run(
    receivers: list[Receiver],
    files: list[Path],
    repeat: int,
    *,
    rotate: bool = False,
    durable_floor: bool = True,
) -> dict[str, list[float]]:
    """Images/s of each receiver over 1 and 4 associations, ``repeat`` rounds: a dict
    ``"<name>|<associations>"`` -> one rate per round (``"durable write ms"``: the floor of
    :func:`durable_write_ms` at the start of each round, unless ``durable_floor`` is off).

    ``rotate``: round ``r`` starts at receiver ``r mod len(receivers)`` (with two, they
    alternate) so that no receiver always runs first; otherwise the order is the list's.
    """
    rates: dict[str, list[float]] = {}
    width = max(len(rx.name) for rx in receivers)
    for rep in range(repeat):
        if durable_floor:
            ms = durable_write_ms(files)
            rates.setdefault("durable write ms", []).append(ms)
            print(f"run {rep + 1} durable write alone: {ms:.3f} ms/image", file=sys.stderr)
        first = rep % len(receivers) if rotate else 0
        order = receivers[first:] + receivers[:first]
        for parallel in (1, 4):
            for rx in order:
                with tempfile.TemporaryDirectory(dir=REPO / "var", prefix="bench-ingest-") as d:
                    port = rx.start(Path(d))
                    try:
                        dt = send(port, rx.aec, files, parallel, rx.sender_args)
                        got = rx.count()
                    finally:
                        rx.stop()
                if got != len(files):
                    raise RuntimeError(f"{rx.name} stored {got} of {len(files)}")
                rate = len(files) / dt
                rates.setdefault(f"{rx.name}|{parallel}", []).append(rate)
                print(f"run {rep + 1} {rx.name:{width}s} x{parallel}: {rate:7.1f} images/s",
                      file=sys.stderr)  # fmt: skip
    return rates


def ratio(a: list[float], b: list[float]) -> tuple[float, list[float]]:
    """``a`` against ``b`` (rates of the same rounds): the ratio of their medians and the
    ratio round by round (3 decimals)."""
    pairs = [round(x / y, 3) for x, y in zip(a, b, strict=True)]
    return statistics.median(a) / statistics.median(b), pairs


def report(rates: dict[str, list[float]], node: OurNode, n: int, cmd: str) -> str:
    def med(key: str) -> float:
        return statistics.median(rates[key])

    lines = [
        f"Command: `{cmd}`  ",
        f"{n} CT instances 512x512 (explicit VR LE, ~0.5 MB each), sender `/usr/bin/storescu`"
        " (TCP_NODELAY=1), loopback; median of runs (min-max).",
        "",
        "| receiver | 1 association | 4 associations |",
        "|---|---|---|",
    ]
    for name in (OurNode.name, StoreSCP.name, OrthancPeer.name, BarePynetdicom.name):
        cells = []
        for p in (1, 4):
            r = rates[f"{name}|{p}"]
            cells.append(f"{med(f'{name}|{p}'):.0f} images/s ({min(r):.0f}-{max(r):.0f})")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines.append("")
    for p in (1, 4):
        ours = med(f"{OurNode.name}|{p}")
        lines.append(
            f"- {p} association{'s' if p > 1 else ''}: node / Orthanc = "
            f"{ours / med(f'{OrthancPeer.name}|{p}'):.2f}x, node / storescp = "
            f"{ours / med(f'{StoreSCP.name}|{p}'):.2f}x, node / bare pynetdicom = "
            f"{ours / med(f'{BarePynetdicom.name}|{p}'):.2f}x"
        )
    write_ms = med("durable write ms")
    scp_ms = 1e3 / med(f"{StoreSCP.name}|1")
    floor = 1e3 / (scp_ms + write_ms)
    lines.append(
        f"- durable write alone (tmp file, fsync, rename, folder fsync; no network): "
        f"{write_ms:.2f} ms/image. storescp's {scp_ms:.2f} ms per image plus that (storescp "
        f"if it kept the promise): {floor:.0f} images/s = "
        f"{floor / med(f'{StoreSCP.name}|1'):.2f}x storescp; node / that = "
        f"{med(f'{OurNode.name}|1') / floor:.2f}x"
    )
    if node.peak_rss_kb:
        what = "with its inference worker" if node.worker else "receive-only"
        lines.append(
            f"- node peak RSS while receiving ({what}): {max(node.peak_rss_kb) / 1024:.0f} MiB"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, default=REPO / "var" / "bench" / "ingest-data")
    ap.add_argument(
        "--only", choices=["node", "storescp", "orthanc", "pynetdicom"], action="append"
    )
    ap.add_argument(
        "--with-worker", action="store_true", help="node with its inference worker started"
    )
    ap.add_argument(
        "--ab-repo", type=Path, action="append", default=[],
        help="also run a node from this checkout (e.g. a git worktree of an older commit)",
    )  # fmt: skip
    switches = {
        "--ab-journal": "also run the node with its write-ahead journal"
        " (storage.journal_segment_mb: 64)",
        "--ab-engine": "also run the node on pynetdicom's server (node.engine: pynetdicom)",
        "--ab-tls": "also run the node and storescp over DICOM TLS (mutual, storescu +tls)",
        "--ab-scrape": "also run the node scraped every second (/metrics) and with its web"
        " server off",
        "--rotate": "start each round at the next receiver (default: the same order every round)",
    }
    for flag, text in switches.items():
        ap.add_argument(flag, action="store_true", help=text)
    args = ap.parse_args()
    (REPO / "var").mkdir(exist_ok=True)
    files = make_data(args.data, args.n)
    node = OurNode(worker=args.with_worker)
    receivers: list[Receiver] = [node, StoreSCP(), OrthancPeer(), BarePynetdicom()]
    if args.only:
        keep: dict[str, type[Receiver]] = {
            "node": OurNode, "storescp": StoreSCP, "orthanc": OrthancPeer,
            "pynetdicom": BarePynetdicom,
        }  # fmt: skip
        receivers = [r for r in receivers if any(isinstance(r, keep[o]) for o in args.only)]
    extra: list[Receiver] = [OurNode(repo=r.resolve(), name=f"node from {r}") for r in args.ab_repo]
    if args.ab_journal:
        extra.append(OurNode(storage="journal_segment_mb: 64", name="node, journal on"))
    if args.ab_engine:
        extra.append(OurNode(node="engine: pynetdicom", name="node, pynetdicom engine"))
    tls_pairs: list[tuple[Receiver, str]] = []  # (TLS receiver, name of its plain self)
    if args.ab_tls:
        pki = make_pki(REPO / "var" / "bench" / "tls-pki")
        tls_node = OurNode(tls=pki, name="node, DICOM TLS")
        extra.append(tls_node)
        tls_pairs.append((tls_node, OurNode.name))
        if any(isinstance(r, StoreSCP) for r in receivers):
            tls_scp = StoreSCP(tls=pki, name="dcmtk storescp, TLS")
            extra.append(tls_scp)
            tls_pairs.append((tls_scp, StoreSCP.name))
    scraped = OurNode(scrape_s=1.0, name="node, /metrics scraped every 1 s")
    if args.ab_scrape:
        extra += [scraped, OurNode(web=False, name="node, web server off")]
    rates = run(receivers + extra, files, args.repeat, rotate=args.rotate)
    if len(receivers) == 4:
        print(report(rates, node, len(files), "python bench/ingest.py " + " ".join(sys.argv[1:])))
    else:
        for key, r in rates.items():
            print(key, f"{statistics.median(r):.1f}")
        if node.peak_rss_kb:
            print("node peak RSS MiB", max(node.peak_rss_kb) / 1024)
    if extra:
        print()
        for key, r in sorted(rates.items(), key=lambda kv: kv[0].split("|")[-1]):
            if key.split("|")[0] in {x.name for x in extra} | {OurNode.name}:
                runs = [round(x) for x in r]
                print(f"- {key}: median {statistics.median(r):.0f} images/s {runs}")
    for rx, plain in tls_pairs:
        if f"{plain}|1" not in rates:
            continue
        for p in (1, 4):
            r, pairs = ratio(rates[f"{rx.name}|{p}"], rates[f"{plain}|{p}"])
            print(f"- x{p}: {rx.name} / {plain} = {r:.3f} (run by run {pairs})")
    if args.ab_scrape:
        print(f"- scrapes per run while receiving: {scraped.scrapes}")
        for p in (1, 4):
            for rx in extra[-2:]:
                r, pairs = ratio(rates[f"{rx.name}|{p}"], rates[f"{OurNode.name}|{p}"])
                print(f"- x{p}: {rx.name} / node = {r:.3f} (run by run {pairs})")


if __name__ == "__main__":
    main()
