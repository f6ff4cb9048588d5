"""Scale-out figures (issue 14): the index on SQLite against PostgreSQL, two receivers on
one PostgreSQL, and how fast N workers claim and finish queued studies.

1. **Ingest, SQLite vs PostgreSQL**: one receiver (receive-only node, as in
   ``bench/ingest.py``), the same files over one and over four associations, once with
   the embedded SQLite index and once on PostgreSQL (a throwaway server of Debian's
   package, started here like the tests do, ``tests/pg.py``). Runs interleave; the ratio
   PostgreSQL/SQLite is printed run by run and as the ratio of medians.
2. **Two receivers on one PostgreSQL**, four associations each (eight storescu processes
   at once, half the files each): aggregate images/s against one receiver taking all the
   files over four associations, in the same run.
   With ``--only pinned`` the same, receiver *i* and its senders on CPU *i* only
   (``taskset``): receivers on cores of their own, the nearest a 2-core machine comes to
   a receiver per machine. Both print the PostgreSQL server's CPU per image (``/proc``).
3. **Claim throughput**: ``--studies`` queued studies in a PostgreSQL index, then N worker
   processes (N = 1, 2, 4) each claim the oldest queued study
   (:meth:`~dicom_node.store.index.Index.claim_next`, ``FOR UPDATE SKIP LOCKED``) and
   finish it at once (``save_result`` guarded by the owner: a no-op predictor) until the
   queue is empty: studies/s for each N; SQLite (one file, the same code) beside it.

Every figure is a ratio or a rate measured on this machine in one run; the cores a
machine has bound what more processes can add (``os.cpu_count()`` is printed).

Usage::

    .venv/bin/python bench/scaleout.py [--n 500] [--repeat 3] [--studies 400]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the throwaway PostgreSQL server of the tests
sys.path.insert(2, str(REPO / "bench"))

from ingest import OurNode, make_data, ratio, run, send  # noqa: E402
from pg import PostgresServer, running_postgres  # noqa: E402


class PgNode(OurNode):
    """The receive-only node with its index (and timers) on PostgreSQL: a fresh database
    at every start (each run starts empty, as the SQLite node does), or ``url`` and a
    ``spool`` folder shared with other receivers."""

    def __init__(
        self, server: PostgresServer, name: str, *, url: str = "", spool: Path | None = None
    ) -> None:
        super().__init__(name=name)
        self.server, self.url, self.spool = server, url, spool

    def start(self, work: Path) -> int:
        # later keys of a YAML flow mapping win over the bench's defaults (ingest.OurNode)
        self.storage = f"index_db: '{self.url or self.server.database('ingest')}'"
        if self.spool is not None:
            self.storage += f", spool_dir: '{self.spool}'"
        return super().start(work)


def ingest(files: list[Path], server: PostgresServer, repeat: int) -> dict[str, list[float]]:
    """``ingest.run`` on the SQLite and the PostgreSQL node, alternating which goes first."""
    sqlite_node = OurNode(name="node, SQLite index")
    pg_node = PgNode(server, "node, PostgreSQL index")
    return run([sqlite_node, pg_node], files, repeat, rotate=True, durable_floor=False)


def server_cpu_s(server: PostgresServer) -> float:
    """CPU seconds (user + system) the server's processes have used so far: the postmaster
    and its children (backends, writers), from ``/proc``. Backends of the receivers' pools
    live as long as the receivers, so two readings taken while they run measure what
    happened between them."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid, ppid = int(stat.parent.name), int(fields[1])
        if postmaster in (pid, ppid):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def two_receivers(
    files: list[Path], server: PostgresServer, repeat: int, *, pin: bool = False
) -> dict[str, list[float]]:
    """One receiver with 4 associations vs two receivers with 4 each, on one database.

    ``pin``: receiver *i* and its four storescu run on CPU *i* only (``taskset``), so the
    two receivers do not share a core and the one receiver has a core to itself: the
    nearest this machine comes to a receiver per machine. PostgreSQL runs on any CPU."""
    rates: dict[str, list[float]] = {}
    for rep in range(repeat):
        for layout in ("one", "two") if rep % 2 == 0 else ("two", "one"):
            url = server.database("pair")
            with tempfile.TemporaryDirectory(dir=REPO / "var", prefix="bench-scale-") as d:
                spool = Path(d) / "shared-spool"
                nodes = [
                    PgNode(server, f"receiver {i}", url=url, spool=spool)
                    for i in range(1 if layout == "one" else 2)
                ]
                cpus = [str(i) if pin else "" for i in range(len(nodes))]
                for node, cpu in zip(nodes, cpus, strict=True):
                    node.cpus = cpu
                ports = []
                for i, node in enumerate(nodes):
                    work = Path(d) / f"r{i}"
                    work.mkdir()
                    ports.append(node.start(work))
                shares = [files[i :: len(nodes)] for i in range(len(nodes))]
                elapsed: list[float] = [0.0] * len(nodes)

                def push(
                    i: int, port: int, shares: list[list[Path]] = shares,
                    elapsed: list[float] = elapsed, cpus: list[str] = cpus,
                ) -> None:  # fmt: skip
                    elapsed[i] = send(port, "ICHNODE", shares[i], 4, cpus=cpus[i])

                t0, cpu0 = time.perf_counter(), server_cpu_s(server)
                threads = [threading.Thread(target=push, args=(i, p)) for i, p in enumerate(ports)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                dt, server_s = time.perf_counter() - t0, server_cpu_s(server) - cpu0
                got = sum(1 for _ in spool.rglob("*.dcm"))
                for node in nodes:
                    node.stop()
            if got != len(files):
                raise RuntimeError(f"{layout} receiver(s) stored {got} of {len(files)}")
            rate = len(files) / dt
            rates.setdefault(layout, []).append(rate)
            rates.setdefault(f"{layout} server ms/image", []).append(server_s / len(files) * 1e3)
            where = ", one CPU each" if pin else ""
            print(f"run {rep + 1} {layout} receiver(s) x4 each{where}: {rate:7.1f} images/s, "
                  f"PostgreSQL {server_s / dt:.2f} CPUs busy", file=sys.stderr)  # fmt: skip
    return rates


# -- claim throughput -------------------------------------------------------------------


def _claimer(target: str, worker: str, lease_s: float, ready: Any, go: Any, out: Any) -> None:
    """One worker process: open the index, wait for the start signal, then claim and finish
    studies until the queue is empty; reports (worker, studies finished, finish time)."""
    from dicom_node.store.index import Index

    index = Index(target)
    done = 0
    ready.put(worker)
    go.wait()
    try:
        while (study := index.claim_next(worker, lease_s)) is not None:
            if index.save_result(study.study_uid, study.generation, "{}", "{}", owner=worker):
                done += 1
    finally:
        index.close()
    out.put((worker, done, time.time()))


def _queue_studies(target: str, n: int) -> None:
    from dicom_node.store.index import Index, InstanceRow

    index = Index(target)
    try:
        now = time.time()
        for i in range(n):
            uid = f"1.2.826.0.1.3680043.10.1{i:06d}"
            index.record(InstanceRow(f"{uid}.1", uid, f"{uid}.2", "1.2.840.10008.5.1.4.1.1.2",
                                     "1.2.840.10008.1.2.1", True, 1, f"{uid}/x.dcm",
                                     now + i * 1e-3))  # fmt: skip
            index.set_state(uid, "queued")
    finally:
        index.close()


def claims(server: PostgresServer, studies: int, repeat: int) -> dict[str, list[float]]:
    ctx = mp.get_context("spawn")
    rates: dict[str, list[float]] = {}
    for rep in range(repeat):
        for backend in ("postgresql", "sqlite"):
            for n in (1, 2, 4):
                with tempfile.TemporaryDirectory(dir=REPO / "var", prefix="bench-claim-") as d:
                    target = (
                        server.database("claims") if backend == "postgresql"
                        else str(Path(d) / "index.sqlite")
                    )  # fmt: skip
                    _queue_studies(target, studies)
                    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
                    procs = [
                        ctx.Process(target=_claimer, args=(target, f"w{i}", 60.0, ready, go, out))
                        for i in range(n)
                    ]
                    for p in procs:
                        p.start()
                    for _ in procs:  # every worker imported and connected: start together
                        ready.get(timeout=600)
                    t0 = time.time()
                    go.set()
                    results = [out.get(timeout=600) for _ in procs]
                    for p in procs:
                        p.join()
                done = sum(r[1] for r in results)
                if done != studies:
                    raise RuntimeError(f"{backend} x{n}: {done} of {studies} finished")
                dt = max(r[2] for r in results) - t0  # from the start signal to the last one
                rate = studies / dt
                rates.setdefault(f"{backend}|{n}", []).append(rate)
                per = sorted(r[1] for r in results)
                print(f"run {rep + 1} {backend:10s} {n} worker(s): {rate:7.1f} studies/s "
                      f"(each finished {per})", file=sys.stderr)  # fmt: skip
    return rates


def _med(r: list[float]) -> float:
    return statistics.median(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="CT instances per ingest run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--studies", type=int, default=400, help="queued studies per claim run")
    ap.add_argument("--data", type=Path, default=REPO / "var" / "bench" / "ingest-data")
    ap.add_argument(
        "--only", choices=["ingest", "pair", "pinned", "claims"], action="append",
        help="pinned: the pair with each receiver and its senders on a CPU of their own",
    )  # fmt: skip
    args = ap.parse_args()
    parts = args.only or ["ingest", "pair", "pinned", "claims"]
    (REPO / "var").mkdir(exist_ok=True)
    cmd = "python bench/scaleout.py " + " ".join(sys.argv[1:])
    out: dict[str, object] = {"command": cmd, "cpus": os.cpu_count()}
    with running_postgres() as server:
        if {"ingest", "pair", "pinned"} & set(parts):
            files = make_data(args.data, args.n)
        if "ingest" in parts:
            r = ingest(files, server, args.repeat)
            out["ingest"] = r
            for p in (1, 4):
                pg, lite = r[f"node, PostgreSQL index|{p}"], r[f"node, SQLite index|{p}"]
                pg_lite, pairs = ratio(pg, lite)
                print(f"- ingest x{p}: SQLite {_med(lite):.0f} images/s, PostgreSQL "
                      f"{_med(pg):.0f} images/s, PostgreSQL/SQLite {pg_lite:.3f} "
                      f"(run by run {pairs})")  # fmt: skip
        for part in ("pair", "pinned"):
            if part not in parts:
                continue
            r = two_receivers(files, server, args.repeat, pin=part == "pinned")
            out[part] = r
            one, two = _med(r["one"]), _med(r["two"])
            where = " (each receiver and its senders on one CPU)" if part == "pinned" else ""
            runs = f"runs one {[round(x) for x in r['one']]}, two {[round(x) for x in r['two']]}"
            runs += "; PostgreSQL CPU ms per image: one {:.2f}, two {:.2f}".format(
                _med(r["one server ms/image"]), _med(r["two server ms/image"])
            )
            print(f"- one receiver x4: {one:.0f} images/s; two receivers x4 each: {two:.0f} "
                  f"images/s; two/one {two / one:.3f}{where} ({runs})")  # fmt: skip
        if "claims" in parts:
            r = claims(server, args.studies, args.repeat)
            out["claims"] = r
            for backend in ("postgresql", "sqlite"):
                base = _med(r[f"{backend}|1"])
                row = ", ".join(
                    f"{n} worker{'s' if n > 1 else ''} {_med(r[f'{backend}|{n}']):.0f}/s "
                    f"({_med(r[f'{backend}|{n}']) / base:.2f}x)"
                    for n in (1, 2, 4)
                )
                print(f"- claims, {backend}: {row}")
    print(json.dumps(out))
    print(f"Command: `{cmd}` on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
