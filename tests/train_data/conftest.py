"""Phantom RSNA and CQ500 trees, written once per session in the published layouts.

Small on purpose (64 x 64 slices, a dozen slices per study): the readers' logic does not
depend on the matrix size, and the whole data test set must run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from train.data.cache import PreparedCache, prepare
from train.data.synth import TRUTH_JSON, synth_cq500, synth_rsna

SIZE = 64
CACHE_SIZE = 32


@pytest.fixture(scope="session")
def rsna_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """5 train studies (the last one 6 slices), 2 test studies, 2 truncated files,
    one quirk study, 3 images with repeated CSV rows, and stage_1_train.csv."""
    root = tmp_path_factory.mktemp("rsna")
    synth_rsna(
        root,
        5,
        seed=3,
        size=SIZE,
        slices=(12, 14),
        test_studies=2,
        with_stage1=True,
        p_bleed=0.7,
        progress=False,
    )
    return root, json.loads((root / TRUTH_JSON).read_text())


@pytest.fixture(scope="session")
def cq500_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """3 scans: outer folder kept for 0 and 2, missing for 1; scan 2 has a localizer."""
    root = tmp_path_factory.mktemp("cq500")
    synth_cq500(root, 3, seed=5, size=SIZE, slices=(12, 13), thin_mm=2.5, progress=False)
    return root, json.loads((root / TRUTH_JSON).read_text())


@pytest.fixture(scope="session")
def rsna_cache(
    rsna_tree: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> PreparedCache:
    """The RSNA tree prepared with a process pool of two workers (the parallel path)."""
    root, _ = rsna_tree
    out = tmp_path_factory.mktemp("rsna-cache")
    return prepare("rsna", root, out, size=CACHE_SIZE, workers=2, progress=False)
