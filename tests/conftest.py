"""Shared fixtures. Area-specific fixtures live beside their tests."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run on 2 CPU cores shared with peers (dcmtk, Orthanc); oversubscribing threads
# makes them slower, not faster.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
