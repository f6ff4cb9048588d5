"""A spool shared by two receivers on one PostgreSQL index (scale-out): the size that
``storage.max_spool_gb`` is checked against includes what the other receiver stored and
what another process's retention deleted, not just this receiver's own count."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes import wait_for

from dicom_node.store.index import Index
from dicom_node.store.spool import InstanceRef, Spool, SpoolFull

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
KIB = 1024


def _ref(study: str, n: int) -> InstanceRef:
    return InstanceRef(study, f"{study}.1", f"{study}.1.{n}", CT, EXPLICIT_LE)


def test_each_receiver_sees_the_others_stores_and_purges(tmp_path: Path, postgres_url: str) -> None:
    root = tmp_path / "spool"
    indexes = [Index(postgres_url) for _ in range(2)]
    quota_gb = 40 * KIB / 2**30  # 40 KiB
    a, b = (
        Spool(root, idx, min_free_mb=0, max_spool_gb=quota_gb, shared=True, size_refresh_s=0.0)
        for idx in indexes
    )
    for n in range(3):  # 30 KiB through receiver A
        a.put(_ref("1.2.826.0.1.3680043.8.498.1", n), b"\0" * (10 * KIB))
    # B stored nothing itself: it learns of A's stores from the index, on its own thread
    wait_for(lambda: b.size == 30 * KIB, what="B reads A's stores from the index")
    with pytest.raises(SpoolFull, match="max_spool_gb"):
        b.check_space(20 * KIB)
    b.check_space(10 * KIB)
    assert a.purge_study("1.2.826.0.1.3680043.8.498.1") == 30 * KIB  # A's retention
    wait_for(lambda: b.size == 0, what="B reads A's purge from the index")
    b.check_space(40 * KIB)
    for spool in (a, b):
        spool.close()
    for idx in indexes:
        idx.close()


def test_the_count_is_read_again_only_after_the_refresh_interval(
    tmp_path: Path, postgres_url: str
) -> None:
    """Between two reads a receiver goes by its own count (one SUM over the instances per
    interval, not one per C-STORE); a spool that is not shared never reads it again."""
    root = tmp_path / "spool"
    idx_a, idx_b = Index(postgres_url), Index(postgres_url)
    a = Spool(root, idx_a, min_free_mb=0, shared=True, size_refresh_s=0.0)
    b = Spool(root, idx_b, min_free_mb=0, shared=True, size_refresh_s=3600.0)
    alone = Spool(root, idx_b, min_free_mb=0, shared=False)
    a.put(_ref("1.2.826.0.1.3680043.8.498.2", 1), b"\0" * KIB)
    assert a.size == KIB
    assert b.size == 0
    assert alone.size == 0
    assert b._size_thread is None  # no read of the index started
    assert alone._size_thread is None
    b.put(_ref("1.2.826.0.1.3680043.8.498.2", 2), b"\0" * KIB)
    assert b.size == KIB  # its own store counts at once
    for spool in (a, b, alone):
        spool.close()
    idx_a.close()
    idx_b.close()
