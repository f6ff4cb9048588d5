"""How long the worklist's reads take on a large index: ``StudySource.listing`` (one
``/api/studies`` poll before paging), the summaries of one page, and ``by_key`` (every
study page and action).

The index is synthetic (rows written with SQL, no spool files: the patient lookups take
their "file gone" path, so header reads are not in these numbers); the point is the
index's aggregate over every instance, which every poll pays. ``--ab-commits`` then
times index commits (what each C-STORE waits for) while a thread polls without pause,
once through ``Index.studies`` (the writer's connection and lock) and once through
``Index.browse`` (the monitoring connection the worklist uses). The first two lines
compare ``Index.studies`` (every study's counts aggregated over its instances, which is
what every poll read until the counts were kept) with ``Index.browse`` (counts kept for
studies that are not receiving, :mod:`dicom_node.store.study_listing`) in the same run.
``--http N`` times the whole ``GET /api/studies`` (first page of 50, bearer token,
JSON) through FastAPI's test client N times and prints the median: the issue's figure
(1,000 studies, median of 20, under 100 ms).

    .venv/bin/python bench/worklist_api.py --studies 3000 --instances 100
    .venv/bin/python bench/worklist_api.py --studies 1000 --instances 100 --http 20
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from dicom_node.config import ApiToken, WebSection
from dicom_node.metrics import NodeMetrics
from dicom_node.store.index import Index, InstanceRow, StudyRow
from dicom_node.web.app import create_app
from dicom_node.web.auth import Authenticator, token_digest
from dicom_node.web.context import WebContext
from dicom_node.web.studies import StudyFilter, StudySource


class _NoActions:
    def reprocess(self, study_uid: str) -> str:
        raise NotImplementedError

    def resend(self, study_uid: str) -> str:
        raise NotImplementedError


def build(path: Path, studies: int, instances: int) -> None:
    Index(path).close()  # the schema
    db = sqlite3.connect(path)
    now = time.time()
    for s in range(studies):
        uid = f"2.25.{s}"
        p = (s % 97) / 97
        findings = json.dumps({"any": {"probability": p, "present": p > 0.8}})
        db.execute(
            "INSERT INTO studies (study_uid, state, generation, first_received, last_received,"
            " state_changed, completed_at, findings, result) VALUES (?, 'done', 1, ?, ?, ?, ?,"
            ' ?, \'{"generation": 1, "thresholds": {"any": 0.8}}\')',
            (uid, now - s, now - s, now - s, now - s, findings),
        )
        db.executemany(
            "INSERT INTO instances VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2',"
            " '1.2.840.10008.1.2.1', 1, 500000, ?, ?, 1)",
            [(f"{uid}.1.{i}", uid, f"{uid}.1", f"x/{uid}/{i}.dcm", now - s)
             for i in range(instances)],
        )  # fmt: skip
    db.commit()
    db.close()


def commits_while_polling(index: Index, poll: Callable[[], list[StudyRow]], n: int) -> str:
    """Median and worst ``Index.record`` latency while ``poll`` runs in a loop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            poll()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    time.sleep(0.2)
    lat = []
    for i in range(n):
        row = InstanceRow(f"9.9.{poll.__name__}.{i}", "9.9", "9.9.1", "1.2.840.10008.5.1.4.1.1.2",
                          "1.2.840.10008.1.2.1", True, 1, f"y/{i}.dcm", time.time())  # fmt: skip
        t0 = time.perf_counter()
        index.record(row)
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)
    stop.set()
    t.join()
    return f"median {statistics.median(lat):.2f} ms, max {max(lat):.1f} ms"


def http_listing(src: StudySource, n: int) -> str:
    """Median and worst of ``n`` ``GET /api/studies`` through the app's test client."""
    token = "bench-token-" + "x" * 32
    web = WebSection(api_tokens=[ApiToken(name="bench", token_sha256=token_digest(token))])
    ctx = WebContext(metrics=NodeMetrics(), readiness=list, auth=Authenticator(web),
                     studies=src)  # fmt: skip
    lat = []
    with TestClient(create_app(ctx)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        first = client.get("/api/studies", headers=headers)  # warm-up, checked
        assert first.status_code == 200, first.text
        total = first.json()["total"]
        for _ in range(n):
            t0 = time.perf_counter()
            resp = client.get("/api/studies", headers=headers)
            lat.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200
    return (f"GET /api/studies ({total} studies, first page) x{n}: "
            f"median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=3000)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ab-commits", type=int, default=0, help="commits timed per variant")
    ap.add_argument("--http", type=int, default=0, help="GET /api/studies timed N times")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.sqlite"
        build(path, args.studies, args.instances)
        index = Index(path)
        src = StudySource(index, Path(tmp), "bench-key", _NoActions())
        last_key = src.key(f"2.25.{args.studies - 1}")
        timed: dict[str, float] = {}
        for name, fn in (
            ("Index.studies (every count aggregated, as polls read before)", index.studies),
            ("Index.browse (counts kept while a study cannot change)", index.browse),
            ("listing (all studies, ordered)", lambda: src.listing(StudyFilter())),
            ("listing + 50 summaries (one poll)",
             lambda: [src.summary(r) for r in src.listing(StudyFilter())[:50]]),
            ("by_key (warm key map)", lambda: src.by_key(last_key)),
        ):  # fmt: skip
            fn()
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                fn()
            ms = (time.perf_counter() - t0) / args.repeat * 1000
            timed[name] = ms
            print(f"{name}: {ms:.2f} ms")
        old, new = (v for k, v in timed.items() if k.startswith("Index."))
        print(
            f"browse / studies: {new / old:.3f} (the first browse, which fills the counts,"
            " is not timed)"
        )
        if args.http:
            print(http_listing(src, args.http))
        if args.ab_commits:
            for poll in (index.studies, index.browse):
                print(f"commits while polling {poll.__name__}: "
                      f"{commits_while_polling(index, poll, args.ab_commits)}")  # fmt: skip
        index.close()


if __name__ == "__main__":
    main()
