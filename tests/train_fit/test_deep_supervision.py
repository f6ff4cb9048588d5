"""Deep supervision (``optim.aux_weight``): training only, checkpoints and resume unaffected."""

from __future__ import annotations

from pathlib import Path

import torch
from train_fit.tiny import TINY_FIT, fit_tiny, tiny_stores

from models.checkpoint import load_checkpoint
from models.network import CNNLSTM, NetworkConfig
from train.fit import DeepSupervised

BASE = [*TINY_FIT, "optim.aux_weight=1.0"]


def test_main_logits_are_the_networks_own() -> None:
    torch.manual_seed(0)
    net = CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=8)).eval()
    wrapped = DeepSupervised(net).eval()
    x = torch.rand(2, 5, 3, 32, 32)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    main, aux = wrapped(x, mask)
    torch.testing.assert_close(main, net(x, mask))
    assert aux.shape == (2, 5, 6)
    # the auxiliary head reads the backbone features, not the LSTM
    feats = net.backbone(x.flatten(0, 1)).view(2, 5, -1)
    torch.testing.assert_close(aux, wrapped.aux_head(feats))


def test_fit_with_aux_head_saves_plain_checkpoint_and_resumes(
    tmp_path: Path, phantom_store
) -> None:
    stores = tiny_stores(phantom_store)
    full = fit_tiny(BASE, tmp_path / "a", stores)
    loaded = load_checkpoint(full.last)
    assert not any("aux" in k for k in loaded.model.state_dict())
    plain = fit_tiny([*BASE, "optim.aux_weight=0"], tmp_path / "p", stores)
    assert plain.param_digest != full.param_digest  # the auxiliary loss does train the backbone

    fit_tiny(BASE, tmp_path / "b", stores, first_epoch_only=True)
    state = torch.load(tmp_path / "b" / "state.pt", map_location="cpu", weights_only=True)
    assert "aux_head" in state
    resumed = fit_tiny(BASE, tmp_path / "b", stores, resume=True)
    assert resumed.param_digest == full.param_digest


def test_residual_network_supervises_its_own_slice_head() -> None:
    """With ``model.residual`` the auxiliary loss trains the slice head the node keeps."""
    net = CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=8, residual=True))
    wrapped = DeepSupervised(net)
    assert wrapped.aux_head is net.slice_head
    names = [n for n, _ in wrapped.named_parameters()]
    assert any(n.startswith("model.slice_head.") for n in names)
    assert not any(n.startswith("aux_head.") for n in names)
