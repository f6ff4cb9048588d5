"""Thin series averaged into slabs of the thickness the model was trained on.

Why: the models are trained on ~5 mm axial slices (RSNA 2019) and a study that holds
only a thin series (0.625-1.25 mm, common on current scanners when the thick
reconstruction is not sent) would show the network slices eight times noisier and
thinner than any it has seen, and eight times as many of them to the LSTM. Averaging
contiguous slices in HU is what the scanner does when it reconstructs a thick slab
from the same acquisition, so it gives the model what it was trained on.

The rule, on the slice positions along the slice normal (:class:`CTSeries`
``positions_mm``, inferior -> superior):

* the series spacing is the median gap between neighbours; only a series with
  spacing ``< target / SLAB_RATIO`` is averaged (1.5: a 2.5 mm series is averaged in
  pairs, a 3.75 or 4 mm one is left alone, as two of its slices would make a slab
  further from the target than one);
* ``k = round(target / spacing)`` slices make a slab;
* neighbours further apart than ``GAP_FACTOR`` x the spacing have a gap between them
  (missing slices, two stacked ranges): a slab never bridges it; each contiguous run of
  ``n`` slices becomes ``round(n / k)`` slabs (at least one) whose sizes differ by at
  most one slice, so no thin leftover slab is made at the end of a run;
* a slab's HU is the mean of its slices; its position is the centre of its first and
  last slice; it stands for its middle source slice (the lower one of an even count),
  whose SOP Instance UID results cite as the slab's image.

A tilted (gantry-tilt) series needs nothing special: positions are measured along the
slice normal, so the spacing is the true slice spacing, and the slices are stacked as
acquired, so averaging pixel by pixel gives the same sheared slab a thick tilted
reconstruction would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.dicom_io import CTSeries

#: Average only when the series spacing is below target / SLAB_RATIO (see module doc).
SLAB_RATIO = 1.5
#: Neighbours further apart than this many series spacings are not contiguous.
GAP_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class SlabPlan:
    """Which source slices (indices, inferior -> superior) make each slab."""

    groups: tuple[tuple[int, ...], ...]
    spacing_mm: float
    target_mm: float

    @property
    def n_slabs(self) -> int:
        return len(self.groups)

    @property
    def n_slices(self) -> int:
        return sum(len(g) for g in self.groups)

    def representatives(self) -> list[int]:
        """The source slice each slab stands for: its middle one (lower of an even count)."""
        return [g[(len(g) - 1) // 2] for g in self.groups]


@dataclass(frozen=True, slots=True)
class SlabSummary:
    """What the outputs say about the averaging: from what spacing to what thickness."""

    source_spacing_mm: float
    slab_mm: float
    n_slices: int
    n_slabs: int

    def describe(self) -> str:
        """E.g. ``0.625 mm series averaged into 5 mm slabs (256 slices -> 32 slabs)``."""
        return (
            f"{_mm(self.source_spacing_mm)} mm series averaged into {_mm(self.slab_mm)} mm "
            f"slabs ({self.n_slices} slices -> {self.n_slabs} slabs)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source_spacing_mm": round(self.source_spacing_mm, 4),
            "slab_mm": self.slab_mm,
            "n_slices": self.n_slices,
            "n_slabs": self.n_slabs,
            "text": self.describe(),
        }


def _mm(value: float) -> str:
    """Millimetres as a scanner would print them: ``0.625``, ``1.25``, ``5``."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def series_spacing(positions_mm: NDArray[np.float64]) -> float | None:
    """Median gap between neighbouring slices, or None with fewer than two distinct ones."""
    gaps = np.diff(np.asarray(positions_mm, dtype=np.float64))
    gaps = gaps[gaps > 1e-6]
    return float(np.median(gaps)) if gaps.size else None


def plan_slabs(positions_mm: NDArray[np.float64], target_mm: float) -> SlabPlan | None:
    """The slabs for slices at ``positions_mm`` (ascending), or None when none are needed.

    None means: the series is not much thinner than ``target_mm`` (see
    :data:`SLAB_RATIO`), has fewer than two slices, or its spacing cannot be measured.
    """
    if target_mm <= 0:
        raise ValueError(f"slab thickness must be positive, got {target_mm}")
    pos = np.asarray(positions_mm, dtype=np.float64)
    spacing = series_spacing(pos)
    if spacing is None or spacing * SLAB_RATIO >= target_mm:
        return None
    k = max(1, math.floor(target_mm / spacing + 0.5))
    if k < 2:
        return None
    breaks = np.flatnonzero(np.diff(pos) > GAP_FACTOR * spacing) + 1
    groups: list[tuple[int, ...]] = []
    for run in np.split(np.arange(pos.size), breaks):
        n_slabs = max(1, math.floor(run.size / k + 0.5))
        groups.extend(tuple(int(i) for i in part) for part in np.array_split(run, n_slabs))
    return SlabPlan(tuple(groups), spacing, float(target_mm))


def average_slabs(series: CTSeries, plan: SlabPlan) -> CTSeries:
    """``series`` with each slab's slices averaged; slab centres as positions.

    ``sop_uids`` (and ``frame_numbers`` for Enhanced CT) become the slabs' middle source
    slices (:meth:`SlabPlan.representatives`), so a slab index maps back to a source
    instance (and frame) wherever results cite images.
    """
    if plan.n_slices != series.n_slices:
        raise ValueError(f"plan covers {plan.n_slices} slices, series has {series.n_slices}")
    hu = np.empty((plan.n_slabs, *series.hu.shape[1:]), dtype=np.float32)
    for j, group in enumerate(plan.groups):
        np.mean(series.hu[group[0] : group[-1] + 1], axis=0, dtype=np.float32, out=hu[j])
    pos = series.positions_mm
    centres = np.array([(pos[g[0]] + pos[g[-1]]) / 2.0 for g in plan.groups], dtype=np.float64)
    reps = plan.representatives()
    frames = series.frame_numbers
    return replace(
        series,
        sop_uids=[series.sop_uids[i] for i in reps],
        hu=hu,
        positions_mm=centres,
        frame_numbers=None if frames is None else [frames[i] for i in reps],
    )


def to_slabs(series: CTSeries, target_mm: float) -> tuple[CTSeries, SlabSummary | None]:
    """``series`` as slabs of ``target_mm`` when it is thin (module doc), else unchanged."""
    plan = plan_slabs(series.positions_mm, target_mm)
    if plan is None:
        return series, None
    summary = SlabSummary(plan.spacing_mm, plan.target_mm, plan.n_slices, plan.n_slabs)
    return average_slabs(series, plan), summary
