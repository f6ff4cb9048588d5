"""A thin phantom series, averaged into slabs by the node's code, is what a scanner's own
5 mm reconstruction of the same head shows the model.

Why not compare with the phantom's 5 mm series: a phantom slice is the head sampled at
one height, at any thickness (``train.data.phantoms`` renders no partial volume), while
a real 5 mm slice (and a slab) averages 5 mm of anatomy. So the reference here is the
same head rendered every 0.3125 mm without noise and averaged over each slab's extent:
a 5 mm reconstruction at twice the sampling of the 0.625 mm series, without its CT
noise. The comparison is made twice: on the model's inputs (windows), and on the
findings of a model (a seeded random-init checkpoint: it has no opinion on bleeds, but
its outputs move with its inputs, so slabs that equal the reconstruction give equal
probabilities and misaligned ones do not). What a trained model does with such inputs,
and with the phantom's own 5 mm series, is measured with the demo model in
BENCHMARKS.md ("Thin series in slabs": every call equal to the reconstruction's).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from pipeline.support import make_checkpoint

from models.dicom_io import CTSeries, read_series, scan_headers
from models.predict import Predictor
from models.preprocess import apply_windows
from models.slabs import SlabPlan, average_slabs, plan_slabs
from train.data.phantoms import PhantomSpec, make_volume, write_study

N_THICK = 24  # a 5 mm head of 24 slices: 115 mm from skull base to vertex
#: Mean absolute difference of the three windows' [0, 1] values allowed between the
#: node's slabs and the reference. Measured 0.004 (sampling and the thin series' noise);
#: without averaging (each slab's middle slice) it is 0.022, one slab off 0.036.
TOLERANCE = 0.01


def _reference(spec: PhantomSpec, thin: CTSeries, plan: SlabPlan) -> NDArray[np.float32]:
    """The head at 0.3125 mm without noise, averaged over each slab's extent."""
    fine = make_volume(
        replace(spec, n_slices=16 * (N_THICK - 1) + 1, slice_thickness_mm=0.3125, noise_hu=0.0)
    )
    z, hu = fine.z_positions, fine.hu.astype(np.float32)
    half = thin.positions_mm[1] - thin.positions_mm[0]
    out = []
    for g in plan.groups:
        lo, hi = thin.positions_mm[g[0]] - half / 2, thin.positions_mm[g[-1]] + half / 2
        out.append(hu[(z >= lo - 1e-6) & (z < hi - 1e-6)].mean(axis=0))
    return np.stack(out)


def _error(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.abs(apply_windows(a) - apply_windows(b)).mean())


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    torch.manual_seed(2020)
    path = tmp_path_factory.mktemp("slab-model") / "random.pt"
    make_checkpoint(path)
    return Predictor.from_path(path, device="cpu")


def _study_probs(predictor: Predictor, like: CTSeries, hu: NDArray[np.float32]) -> NDArray:
    """The study probabilities the model gives ``hu`` read as the slices of ``like``."""
    seen = replace(like, hu=np.ascontiguousarray(hu, dtype=np.float32))
    with torch.no_grad():
        logits = predictor.predict(predictor.pre_process(seen))
    return predictor.post_process(seen, logits).study_probs


@pytest.mark.parametrize(
    ("seed", "bleeds"), [(12, ()), (11, ("subdural",)), (16, ("intraventricular", "epidural"))]
)
def test_slabs_of_a_thin_series_match_a_thick_reconstruction(
    tmp_path: Path, predictor: Predictor, seed: int, bleeds: tuple[str, ...]
) -> None:
    spec = PhantomSpec(
        seed=seed,
        n_slices=8 * (N_THICK - 1) + 1,
        size=64,
        slice_thickness_mm=0.625,
        bleeds=bleeds,
    )
    thin = read_series(scan_headers(write_study(tmp_path, spec).main.files).headers)
    plan = plan_slabs(thin.positions_mm, 5.0)
    assert plan is not None
    assert plan.n_slabs == N_THICK - 1  # 185 slices: 23 slabs of 8 (one of 9)
    slabs = average_slabs(thin, plan)
    reference = _reference(spec, thin, plan)

    error = _error(slabs.hu, reference)
    assert error < TOLERANCE
    # what the comparison would see if the averaging or its alignment were wrong
    middles = thin.hu[plan.representatives()]
    assert _error(middles, reference) > 3 * error
    assert _error(slabs.hu[1:], reference[:-1]) > 5 * error
    assert _error(slabs.hu[::-1], reference) > 10 * error

    # The findings: the node's own path (Predictor.model_series slabs the thin series)
    # against the reconstruction, and the wrong inputs against it.
    seen, summary = predictor.model_series(thin)
    assert summary is not None
    assert seen.hu.shape == slabs.hu.shape
    with torch.no_grad():
        node = predictor.post_process(seen, predictor.predict(predictor.pre_process(seen)))
    expected = _study_probs(predictor, slabs, reference)
    gap = float(np.abs(node.study_probs - expected).max())
    assert gap < 0.0015, (node.study_probs, expected)  # measured 0.0004-0.0007
    # measured 2.8x to 9x the gap: middle slices, slabs one off, slabs reversed
    for wrong in (middles, np.roll(slabs.hu, 1, axis=0), slabs.hu[::-1]):
        assert float(np.abs(_study_probs(predictor, slabs, wrong) - expected).max()) > 2 * gap
