"""The model core on realistic phantom studies: series choice, order, HU, tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from models.dicom_io import iter_dicom_files, read_series, scan_headers
from models.preprocess import hu_to_model_input
from models.series_choice import choose_series, group_by_study
from train.data.phantoms import PhantomSpec, write_study


def test_multi_series_phantom_picks_main_series_in_order(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=4, n_slices=20, size=128, bleeds=("subdural", "intraventricular"))
    study = write_study(
        tmp_path,
        spec,
        extra_series=("bone_thin", "localizer"),
        shuffle_names=True,
        layout="flat",
        thin_slice_mm=2.5,
    )
    studies = group_by_study(scan_headers(iter_dicom_files(tmp_path)).headers)
    assert list(studies) == [study.study_uid]
    choice = choose_series(studies[study.study_uid])
    assert choice.chosen is not None
    assert choice.chosen.series_uid == study.main.series_uid
    assert len(choice.skipped) == 2
    series = read_series(choice.headers)
    assert series.sop_uids == study.main.sop_uids
    np.testing.assert_array_equal(series.hu, study.volume.hu.astype(np.float32))
    x = hu_to_model_input(series.hu, 64)
    assert x.shape == (20, 3, 64, 64)


def test_compressed_phantoms_read_identically(tmp_path: Path) -> None:
    spec = PhantomSpec(seed=2, n_slices=12, size=64)
    ref = write_study(tmp_path / "ref", spec)
    expected = read_series(scan_headers(ref.main.files).headers).hu
    for ts in (RLELossless, JPEG2000Lossless):
        st = write_study(tmp_path / str(ts), spec, transfer_syntax=ts)
        got = read_series(scan_headers(st.main.files).headers).hu
        np.testing.assert_array_equal(got, expected)


def test_bleed_is_hyperdense_in_the_brain_window(tmp_path: Path) -> None:
    """The windowed input shows a bleed where the labels say so (what the model learns)."""
    spec = PhantomSpec(seed=7, n_slices=24, size=128, bleeds=("intraparenchymal",))
    study = write_study(tmp_path, spec)
    series = read_series(scan_headers(study.main.files).headers)
    labels = study.volume.slice_labels
    mask = study.volume.subtype_mask("intraparenchymal")
    positive = np.flatnonzero(labels[:, 2])
    assert positive.size > 0
    k = int(positive[0])
    brain = ~mask[k] & (series.hu[k] > 15) & (series.hu[k] < 50)
    assert series.hu[k][mask[k]].mean() > series.hu[k][brain].mean() + 15
