"""The load bench (bench/load.py) at a small size: the same code, so the bench cannot rot.

4 associations in parallel, each sending 3 studies of 10 slices 64x64 with dcmtk storescu,
into ``dicom-node serve`` delivering to a real Orthanc: every instance stored, every study
processed and delivered exactly once (one attempt each, the SR and SC of each in Orthanc),
and C-ECHO answered all through the load. No timing is asserted (the machine is shared):
the round trips are in BENCHMARKS.md from the full-size bench.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


@pytest.fixture(scope="module")
def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_parallel_associations_all_stored_processed_delivered_once(
    tmp_path: Path, load: ModuleType
) -> None:
    r = load.run_load(
        tmp_path, associations=4, studies=3, slices=10, size=64, input_size=64,
        echo_every=0.2, timeout_s=600, log=lambda _: None,
    )  # fmt: skip
    n = 4 * 3
    assert r.storescu_failures == 0
    assert r.instances_stored == n * 10
    assert r.studies_done == n
    assert r.deliveries_sent == n
    assert r.delivery_attempts == n  # once each: no retry, no second send
    assert r.orthanc_instances == 2 * n  # an SR and an SC per study
    assert r.exactly_once()
    assert r.echo_failures == 0
    assert r.echo_s, "no C-ECHO was sampled during the load"
    assert r.peak_rss_mib > 0
    assert r.disk_mib["spool"] > 0


def test_soak_reports_an_rss_slope(tmp_path: Path, load: ModuleType) -> None:
    r = load.run_load(
        tmp_path, associations=2, slices=10, size=64, input_size=64, soak=8,
        echo_every=0.2, timeout_s=600, log=lambda _: None,
    )  # fmt: skip
    assert r.exactly_once()
    assert r.echo_failures == 0
    slope = r.rss_slope()
    assert slope is not None
    assert slope[0] == 2  # the window shrinks to a quarter of a short run
