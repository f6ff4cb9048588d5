"""Slab averaging of thin series (models.slabs): grouping, gaps, tilt, thick series alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from ctfactory import ct_dataset
from pydicom.uid import generate_uid

from models.dicom_io import CTSeries, read_series, scan_headers
from models.slabs import SLAB_RATIO, SlabSummary, average_slabs, plan_slabs, to_slabs


def _series(positions: np.ndarray, size: int = 4) -> CTSeries:
    """A series whose slice ``i`` holds the value ``i`` everywhere (means are checkable)."""
    n = len(positions)
    hu = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, size, size)).copy()
    return CTSeries(
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uids=[f"1.2.3.4.{i}" for i in range(n)],
        hu=hu,
        positions_mm=np.asarray(positions, dtype=np.float64),
        pixel_spacing=(0.5, 0.5),
        duplicates_dropped=0,
        quirk_corrected=0,
    )


def test_thin_series_becomes_slabs_of_the_target_thickness() -> None:
    pos = 12.5 + 0.625 * np.arange(64)
    plan = plan_slabs(pos, 5.0)
    assert plan is not None
    assert plan.n_slabs == 8
    assert all(len(g) == 8 for g in plan.groups)
    assert [g[0] for g in plan.groups] == list(range(0, 64, 8))
    assert plan.spacing_mm == pytest.approx(0.625)
    seen = average_slabs(_series(pos), plan)
    assert seen.n_slices == 8
    # slice i holds i: slab j averages 8j .. 8j+7
    assert seen.hu[:, 0, 0].tolist() == pytest.approx([8 * j + 3.5 for j in range(8)])
    # positions are slab centres, increasing by the slab thickness
    assert np.diff(seen.positions_mm) == pytest.approx([5.0] * 7)
    assert seen.positions_mm[0] == pytest.approx(12.5 + 0.625 * 3.5)
    # each slab is named by its middle source slice (the lower of an even count)
    assert seen.sop_uids == [f"1.2.3.4.{8 * j + 3}" for j in range(8)]
    assert seen.series_uid == "1.2.3.4"


def test_uneven_count_spreads_the_remainder_instead_of_a_thin_last_slab() -> None:
    pos = 0.625 * np.arange(57)  # 7 slabs of 8 and one slice over
    plan = plan_slabs(pos, 5.0)
    assert plan is not None
    sizes = [len(g) for g in plan.groups]
    assert sum(sizes) == 57
    assert plan.n_slabs == 7
    assert max(sizes) - min(sizes) <= 1
    flat = [i for g in plan.groups for i in g]
    assert flat == list(range(57)), "every slice once, in order"
    pos = 0.625 * np.arange(61)  # 7.6 slabs' worth: 8 slabs of 7-8 slices
    plan = plan_slabs(pos, 5.0)
    assert plan is not None
    assert plan.n_slabs == 8
    assert {len(g) for g in plan.groups} <= {7, 8}


def test_slabs_never_bridge_a_gap() -> None:
    # 24 slices, then 10 mm missing, then 20 slices: a gap between run 1 and run 2
    pos = np.concatenate([0.625 * np.arange(24), 0.625 * 23 + 10.0 + 0.625 * np.arange(20)])
    plan = plan_slabs(pos, 5.0)
    assert plan is not None
    for g in plan.groups:
        assert not (min(g) < 24 <= max(g)), f"slab {g} spans the gap"
    assert sum(1 for g in plan.groups if max(g) < 24) == 3
    assert sum(1 for g in plan.groups if min(g) >= 24) == 3  # 20 slices: 2.5 rounds up to 3
    seen = average_slabs(_series(pos), plan)
    # the slab centres keep the gap
    assert np.diff(seen.positions_mm).max() > 10.0


def test_a_few_missing_slices_in_a_thin_run_split_it() -> None:
    pos = np.delete(0.625 * np.arange(40), [20, 21])  # two slices lost in transfer
    plan = plan_slabs(pos, 5.0)
    assert plan is not None
    for g in plan.groups:
        assert np.all(np.diff(pos[list(g)]) < 1.0), "no slab holds the 1.875 mm hole"


@pytest.mark.parametrize("spacing", [5.0, 4.0, 3.75, 3.34, 6.0, 10.0])
def test_series_not_much_thinner_than_the_target_are_unchanged(spacing: float) -> None:
    series = _series(spacing * np.arange(30))
    assert plan_slabs(series.positions_mm, 5.0) is None
    same, summary = to_slabs(series, 5.0)
    assert same is series
    assert summary is None


def test_threshold_is_documented_ratio() -> None:
    just_thin = 5.0 / SLAB_RATIO - 0.01
    plan = plan_slabs(just_thin * np.arange(30), 5.0)
    assert plan is not None
    assert {len(g) for g in plan.groups} == {2}  # pairs: 2 x 3.32 mm
    pos = 2.5 * np.arange(30)
    plan = plan_slabs(pos, 5.0)
    assert plan is not None
    assert plan.n_slabs == 15


def test_single_slice_and_unmeasurable_spacing_are_left_alone() -> None:
    assert plan_slabs(np.array([3.0]), 5.0) is None
    assert plan_slabs(np.array([3.0, 3.0]), 5.0) is None
    with pytest.raises(ValueError):
        plan_slabs(np.arange(10.0), 0.0)


def test_summary_text_says_what_was_done() -> None:
    _, summary = to_slabs(_series(0.625 * np.arange(256)), 5.0)
    assert summary == SlabSummary(0.625, 5.0, 256, 32)
    assert summary.describe() == "0.625 mm series averaged into 5 mm slabs (256 slices -> 32 slabs)"
    assert summary.to_json()["n_slabs"] == 32


def test_tilted_series_uses_the_spacing_along_the_slice_normal(tmp_path: Path) -> None:
    """A 25 degree gantry tilt: slices 0.69 mm apart on the table are 0.625 mm apart along
    the normal; the slabs must follow the normal (8 slices), not the table (7)."""
    tilt = math.radians(25.0)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), math.sin(tilt))
    dz = 0.625 / math.cos(tilt)
    study, series_uid = generate_uid(), generate_uid()
    n = 32
    rng = np.random.default_rng(0)
    for k in range(n):
        ds = ct_dataset(
            rng.normal(40.0, 5.0, (8, 8)),
            study_uid=study,
            series_uid=series_uid,
            position=(0.0, 0.0, k * dz),
            orientation=orientation,
            instance=n - k,  # reversed numbering: order comes from positions
            thickness=0.625,
        )
        ds.save_as(tmp_path / f"{k:03d}.dcm", enforce_file_format=True)
    series = read_series(scan_headers(sorted(tmp_path.iterdir())).headers)
    assert np.diff(series.positions_mm) == pytest.approx([0.625] * (n - 1))
    seen, summary = to_slabs(series, 5.0)
    assert summary is not None
    assert summary.source_spacing_mm == pytest.approx(0.625)
    assert summary.n_slabs == 4
    assert seen.hu[0] == pytest.approx(series.hu[:8].mean(axis=0), abs=1e-4)
    assert np.diff(seen.positions_mm) == pytest.approx([5.0] * 3)
