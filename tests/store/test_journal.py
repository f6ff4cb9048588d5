"""The write-ahead journal: group commit, crash replay, torn records, recycled segments.

Crashes are real: a child process appends and commits records, then ``os._exit``s
without any shutdown code (no checkpoint). The parent then deletes or damages spool
files as a power cut would have left them (their pages never flushed) and replays.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from dicom_node.store.journal import ALIGN, KEEP_FREE, Journal, recover, write_file

REPO = Path(__file__).resolve().parents[2]


def _rel(i: int) -> str:
    return f"1.2.3/1.2.3.4/1.2.3.4.{i}.dcm"


def _payload(i: int, n: int = 10_000) -> bytes:
    return bytes([i % 251]) * 128 + os.urandom(n)


def _crash_after_commits(spool: Path, payloads: dict[int, bytes], segment: int = 1 << 20) -> None:
    """In a child process: append, write the file, commit each payload; then die."""
    data = spool.parent / "payloads"
    data.mkdir(exist_ok=True)
    for i, blob in payloads.items():
        (data / str(i)).write_bytes(blob)
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from dicom_node.store.journal import Journal, write_file
        spool = Path({str(spool)!r})
        j = Journal(spool / ".journal", spool, segment_bytes={segment}, idle_checkpoint_s=3600)
        for i in {sorted(payloads)!r}:
            blob = (Path({str(data)!r}) / str(i)).read_bytes()
            rel = f"1.2.3/1.2.3.4/1.2.3.4.{{i}}.dcm"
            target = spool / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            t = j.append(rel, [blob[:100], blob[100:]])
            j.commit(t)
            write_file(target, [blob])
            j.release(t, target)
        os._exit(0)  # no checkpoint, no close: a crash
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_one_flush_covers_every_record_written_before_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    j = Journal(spool / ".journal", spool, segment_bytes=1 << 20, idle_checkpoint_s=3600)
    try:
        tickets = [j.append(_rel(i), [_payload(i)]) for i in range(3)]
        for t in tickets:
            j.commit(t)
            j.release(t)
        assert (j.stats.records, j.stats.flushes) == (3, 1)
        later = j.append(_rel(9), [_payload(9)])  # written after that flush: needs its own
        j.commit(later)
        j.release(later)
        assert j.stats.flushes == 2
    finally:
        j.close()


def test_concurrent_stores_share_one_flush(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    j = Journal(spool / ".journal", spool, segment_bytes=1 << 20, idle_checkpoint_s=3600)
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def store(i: int) -> None:
        try:
            t = j.append(_rel(i), [_payload(i)])
            barrier.wait(timeout=30)  # every record written before anyone commits
            j.commit(t)
            j.release(t)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    j.close()
    assert not errors
    assert (j.stats.records, j.stats.flushes) == (n, 1)


def test_crash_replays_acknowledged_instances_lost_from_the_page_cache(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    payloads = {i: _payload(i, 50_000 + i) for i in range(6)}
    _crash_after_commits(spool, payloads)
    (spool / _rel(0)).unlink()  # never reached the disk
    (spool / _rel(1)).unlink()
    with (spool / _rel(2)).open("r+b") as fh:  # reached it in part
        fh.truncate(3000)
    (spool / _rel(3)).write_bytes(bytes(len(payloads[3])))  # size right, blocks zero

    got = recover(spool / ".journal", spool)

    assert (got.records, got.rewritten, got.skipped) == (6, 4, 0)
    # the active segment, plus the spare when the checkpointer thread had made it before
    # the crash (it does so in the background: either is a legitimate state to recover)
    assert got.segments in (1, 2)
    for i, blob in payloads.items():
        assert (spool / _rel(i)).read_bytes() == blob
    assert not list((spool / ".journal").glob("seg-*.wal"))  # all marked free
    again = recover(spool / ".journal", spool)
    assert again.records == 0  # nothing replays twice


def test_torn_record_does_not_hide_the_intact_ones_after_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    payloads = {i: _payload(i, 20_000) for i in range(3)}
    _crash_after_commits(spool, payloads)
    (seg,) = [p for p in (spool / ".journal").glob("seg-*.wal") if b"ICHJ" in p.read_bytes()]
    raw = bytearray(seg.read_bytes())
    second = raw.index(_rel(1).encode())
    raw[second + 500 : second + 900] = bytes(400)  # a torn write inside record 1's payload
    seg.write_bytes(bytes(raw))
    for i in payloads:
        (spool / _rel(i)).unlink()

    got = recover(spool / ".journal", spool)

    assert (got.records, got.rewritten) == (2, 2)
    assert (spool / _rel(0)).read_bytes() == payloads[0]
    assert not (spool / _rel(1)).exists()  # never acknowledged: its flush never finished
    assert (spool / _rel(2)).read_bytes() == payloads[2]


def test_a_recycled_segment_never_resurrects_checkpointed_records(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    old = _payload(1)
    j = Journal(spool / ".journal", spool, segment_bytes=1 << 20, idle_checkpoint_s=3600)
    target = spool / _rel(1)
    target.parent.mkdir(parents=True)
    t = j.append(_rel(1), [old])
    j.commit(t)
    write_file(target, [old])
    j.release(t, target)
    j.close()  # checkpointed: its segments are free for reuse
    target.unlink()  # later purged by retention
    assert {p.name[:5] for p in (spool / ".journal").iterdir()} == {"free-"}

    new = {2: _payload(2)}
    _crash_after_commits(spool, new)  # reuses the free segments, old bytes still in them
    (spool / _rel(2)).unlink()

    got = recover(spool / ".journal", spool)

    assert (got.records, got.rewritten) == (1, 1)
    assert (spool / _rel(2)).read_bytes() == new[2]
    assert not target.exists()


def test_records_never_straddle_segments(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    seg_bytes = 16 * ALIGN  # five records of three pages each fit in one; 11 need three
    j = Journal(spool / ".journal", spool, segment_bytes=seg_bytes, idle_checkpoint_s=3600)
    blobs = {i: _payload(i, 2 * ALIGN) for i in range(11)}
    for i, blob in blobs.items():
        target = spool / _rel(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        t = j.append(_rel(i), [blob])
        j.commit(t)
        write_file(target, [blob])
        j.release(t, target)
    j.close()
    assert j.stats.checkpoints == 3
    for i, blob in blobs.items():
        assert (spool / _rel(i)).read_bytes() == blob
    assert not list((spool / ".journal").glob("seg-*.wal"))
    assert len(list((spool / ".journal").glob("free-*.wal"))) == KEEP_FREE


def test_spool_routes_large_instances_around_the_journal(tmp_path: Path) -> None:
    from dicom_node.store.index import Index
    from dicom_node.store.spool import InstanceRef, Spool

    ct = "1.2.840.10008.5.1.4.1.1.2"
    index = Index(tmp_path / "i.sqlite")
    spool = Spool(tmp_path / "spool", index, min_free_mb=0, journal_segment_mb=1)
    assert spool.journal is not None
    small = InstanceRef("1.2.3", "1.2.3.4", "1.2.3.4.1", ct, "1.2.840.10008.1.2.1")
    large = InstanceRef("1.2.3", "1.2.3.4", "1.2.3.4.2", ct, "1.2.840.10008.1.2.1")
    try:
        spool.put(small, b"s" * 1000, header=b"H")
        spool.put(large, b"L" * (300 << 10), header=b"H")  # > a quarter segment: fsync'd alone
        assert spool.journal.stats.records == 1
        assert (spool.root / small.relpath()).read_bytes() == b"H" + b"s" * 1000
        assert (spool.root / large.relpath()).read_bytes() == b"H" + b"L" * (300 << 10)
        assert {r.sop_uid for r in index.instances("1.2.3")} == {"1.2.3.4.1", "1.2.3.4.2"}
    finally:
        spool.close()
        index.close()
    assert not list((tmp_path / "spool" / ".journal").glob("seg-*.wal"))  # clean stop
    plain = Spool(tmp_path / "spool2", Index(tmp_path / "j.sqlite"), min_free_mb=0,
                  journal_segment_mb=None)  # fmt: skip
    assert plain.journal is None
    plain.put(small, b"x", header=b"H")
    assert (plain.root / small.relpath()).read_bytes() == b"Hx"
    plain.index.close()
