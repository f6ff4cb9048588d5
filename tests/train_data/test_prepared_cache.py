"""The prepared cache: shapes, pixels, labels, resuming and crash leftovers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.dicom_io import read_series, scan_headers
from models.preprocess import DEFAULT_WINDOWS, apply_windows_uint8, hu_to_uint8
from train.data.cache import (
    MANIFEST,
    STUDY_DIR,
    PreparedCache,
    prepare,
    study_stem,
)
from train.data.errors import CacheError
from train.data.scan import lenient_dicom

CACHE_SIZE = 32  # conftest.CACHE_SIZE: the size rsna_cache is prepared at

Tree = tuple[Path, dict[str, Any]]


def test_shapes_dtypes_and_labels(rsna_tree: Tree, rsna_cache: PreparedCache) -> None:
    _, truth = rsna_tree
    cache = PreparedCache(rsna_cache.root)  # reopened from disk
    assert cache.size == CACHE_SIZE
    assert cache.windows == DEFAULT_WINDOWS
    assert len(cache.studies) == len(truth["train"])
    cut = {u["image_id"] for u in truth["unreadable"]}
    by_uid = {e["study_uid"]: e for e in truth["train"]}
    for study in cache.studies:
        images = cache.images(study.key)
        assert isinstance(images, np.memmap)
        assert images.dtype == np.uint8
        assert images.shape == (study.n_slices, 3, CACHE_SIZE, CACHE_SIZE)
        labels = cache.slice_labels(study.key)
        assert labels.shape == (study.n_slices, 6)
        assert labels.dtype == np.uint8
        assert study.has_slice_labels
        assert np.array_equal(study.study_labels, labels.max(axis=0))
        assert len(cache.sop_uids(study.key)) == study.n_slices
        expected = by_uid[study.key]
        keep = [i for i, k in enumerate(expected["image_ids"]) if k not in cut]
        assert cache.image_ids(study.key) == [expected["image_ids"][i] for i in keep]
        assert np.array_equal(labels, np.asarray(expected["slice_labels"])[keep])
        assert np.all(np.diff(cache.positions_mm(study.key)) > 0)  # inferior -> superior
    counts = cache.counts
    assert counts["unreadable_pixels_skipped"] == 1  # the file cut inside its pixel data
    assert counts["source"]["unreadable_skipped"] == 1  # the file cut inside its header
    assert counts["source"]["duplicates_dropped"] == 18
    assert counts["quirk_corrected_slices"] == next(
        e["n_slices"] for e in truth["train"] if e["quirk"]
    )


def test_pixels_match_the_node_preprocessing(rsna_tree: Tree, rsna_cache: PreparedCache) -> None:
    _, truth = rsna_tree
    quirk = next(e for e in truth["train"] if e["quirk"])
    with lenient_dicom():  # Kaggle's "ID_..." UIDs are not valid UIDs
        headers = scan_headers(rsna_cache_paths(rsna_tree, quirk["image_ids"])).headers
        hu = read_series(headers).hu
    got = np.asarray(rsna_cache.images(quirk["study_uid"]))
    assert np.array_equal(got, hu_to_uint8(hu, CACHE_SIZE))
    # At the native size the cache is apply_windows_uint8 up to float rounding at .5.
    diff = hu_to_uint8(hu, hu.shape[-1]).astype(int) - apply_windows_uint8(hu).astype(int)
    assert np.abs(diff).max() <= 1
    assert np.count_nonzero(diff) <= diff.size // 100


def rsna_cache_paths(tree: Tree, image_ids: list[str]) -> list[Path]:
    return [tree[0] / "stage_2_train" / f"{i}.dcm" for i in image_ids]


def test_short_study_is_kept(rsna_tree: Tree, rsna_cache: PreparedCache) -> None:
    _, truth = rsna_tree
    short = next(e for e in truth["train"] if e["short"])
    assert rsna_cache.study(short["study_uid"]).n_slices == 6


def _mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (root / STUDY_DIR).iterdir()}


def test_resume_skips_finished_studies_and_ignores_leftovers(
    rsna_tree: Tree, tmp_path: Path
) -> None:
    root, _ = rsna_tree
    out = tmp_path / "cache"
    first = prepare("rsna", root, out, size=16, workers=1, limit=3, progress=False)
    assert len(first) == 3
    assert first.counts["studies_resumed"] == 0
    before = _mtimes(out)

    again = prepare("rsna", root, out, size=16, workers=1, limit=3, progress=False)
    assert again.counts["studies_resumed"] == 3
    assert _mtimes(out) == before  # nothing rewritten

    # A crash: one study lost its marker after its .npy was written, and tmp files remain.
    victim, other = first.studies[0].key, first.studies[1].key
    (out / STUDY_DIR / f"{study_stem(victim)}.json").unlink()
    (out / STUDY_DIR / f"{study_stem(other)}.npy.tmp-4242").write_bytes(b"half a file")
    (out / STUDY_DIR / f"{study_stem(victim)}.json.tmp-4242").write_bytes(b"{")
    third = prepare("rsna", root, out, size=16, workers=1, limit=5, progress=False)
    assert third.counts["studies_resumed"] == 2
    assert len(third) == 5
    after = _mtimes(out)
    assert not [n for n in after if ".tmp-" in n]
    assert after[f"{study_stem(other)}.npy"] == before[f"{study_stem(other)}.npy"]
    assert after[f"{study_stem(victim)}.npy"] != before[f"{study_stem(victim)}.npy"]
    assert third.images(victim).shape[1:] == (3, 16, 16)


def test_incomplete_or_missing_cache_is_refused(rsna_cache: PreparedCache, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="missing"):
        PreparedCache(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(rsna_cache.root, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["complete"] = False
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="incomplete"):
        PreparedCache(copy)


def test_other_settings_are_not_mixed_into_a_cache(rsna_tree: Tree, tmp_path: Path) -> None:
    root, _ = rsna_tree
    out = tmp_path / "cache"
    prepare("rsna", root, out, size=16, workers=1, limit=1, progress=False)
    with pytest.raises(CacheError, match="size"):
        prepare("rsna", root, out, size=24, workers=1, limit=1, progress=False)


def test_cq500_cache_has_study_labels_only(cq500_tree: Tree, tmp_path: Path) -> None:
    root, truth = cq500_tree
    cache = prepare("cq500", root, tmp_path / "cq", size=16, workers=1, progress=False)
    assert [s.key for s in cache.studies] == [s["name"] for s in truth["scans"]]
    for study, expected in zip(cache.studies, truth["scans"], strict=True):
        assert not study.has_slice_labels
        assert study.study_labels.tolist() == expected["labels"]
        assert study.n_slices == expected["n_slices"]
        assert not cache.slice_labels(study.key).any()
        assert cache.images(study.key).shape == (expected["n_slices"], 3, 16, 16)


def test_patient_ids_never_reach_logs_or_cache(
    rsna_tree: Tree, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, truth = rsna_tree
    with caplog.at_level(logging.DEBUG):
        cache = prepare("rsna", root, tmp_path / "c", size=16, workers=1, progress=False)
    written = "".join(p.read_text() for p in cache.root.rglob("*.json"))
    for entry in truth["train"]:
        assert entry["patient_id"] not in caplog.text
        assert entry["patient_id"] not in written
