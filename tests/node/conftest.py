"""The receive-path fixtures (phantoms in every transfer syntax, a running node, a real
Orthanc) are shared by the net, store and node tests; they live in ``node_fixtures``.
The classify tests share a random-init checkpoint (no download, no training)."""

from pathlib import Path

import pytest
import torch
from node_fixtures import orthanc_factory, phantom, start_node, ts_variants

from models.checkpoint import CheckpointMeta, save_checkpoint
from models.network import CNNLSTM, NetworkConfig

__all__ = ["checkpoint", "orthanc_factory", "phantom", "start_node", "ts_variants"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init CNN-LSTM checkpoint at 64 px."""
    torch.manual_seed(0)
    cfg = NetworkConfig(backbone="resnet18", lstm_hidden=16)
    path = tmp_path_factory.mktemp("ck") / "random.pt"
    save_checkpoint(path, CNNLSTM(cfg), CheckpointMeta(network=cfg, input_size=64))
    return path
