"""The CNN-LSTM on tiny CPU tensors: shapes, masks, chunking, 2D baseline."""

from __future__ import annotations

import pytest
import torch

from models.errors import CheckpointError
from models.network import CNNLSTM, NetworkConfig, build_backbone, study_probabilities

SIZE = 32


@pytest.fixture(scope="module")
def net() -> CNNLSTM:
    torch.manual_seed(0)
    return CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=32)).eval()


@pytest.mark.parametrize("n_slices", [1, 9, 300])
def test_whole_series_any_length(net: CNNLSTM, n_slices: int) -> None:
    x = torch.randn(n_slices, 3, SIZE, SIZE)
    logits = net.predict_series(x, chunk=64)
    assert logits.shape == (n_slices, 6)
    assert torch.isfinite(logits).all()


def test_chunking_does_not_change_results(net: CNNLSTM) -> None:
    x = torch.randn(20, 3, SIZE, SIZE)
    a = net.predict_series(x, chunk=3)
    b = net.predict_series(x, chunk=100)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_padding_never_leaks_into_real_slices(net: CNNLSTM) -> None:
    """Studies of 1, 9 and 10 slices in one batch; padded content must not matter."""
    lengths = [1, 9, 10]
    x = torch.randn(3, 10, 3, SIZE, SIZE)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    with torch.no_grad():
        batched = net(x, mask)
        noisy = x.clone()
        noisy[~mask] = torch.randn_like(noisy[~mask]) * 10
        batched_noisy = net(noisy, mask)
        for i, n in enumerate(lengths):
            alone = net.predict_series(x[i, :n])
            torch.testing.assert_close(batched[i, :n], alone, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(batched_noisy[i, :n], alone, rtol=1e-4, atol=1e-4)


def test_lstm_sees_neighbouring_slices(net: CNNLSTM) -> None:
    x = torch.randn(6, 3, SIZE, SIZE)
    base = net.predict_series(x)
    changed = x.clone()
    changed[5] = torch.randn(3, SIZE, SIZE)
    # Slice 0's output depends on slice 5 only through the LSTM.
    assert not torch.allclose(base[0], net.predict_series(changed)[0])


def test_2d_baseline_has_no_context() -> None:
    net2d = CNNLSTM(NetworkConfig(backbone="resnet18", lstm=False)).eval()
    assert net2d.lstm is None
    x = torch.randn(6, 3, SIZE, SIZE)
    base = net2d.predict_series(x)
    changed = x.clone()
    changed[5] = torch.randn(3, SIZE, SIZE)
    torch.testing.assert_close(base[0], net2d.predict_series(changed)[0])


def test_study_probability_is_max_over_real_slices() -> None:
    logits = torch.tensor([[[0.0] * 6, [2.0] * 6, [5.0] * 6]])
    mask = torch.tensor([[True, True, False]])
    probs = study_probabilities(logits, mask)
    torch.testing.assert_close(probs, torch.sigmoid(torch.full((1, 6), 2.0)))
    assert study_probabilities(logits[0]).shape == (6,)


def test_training_step_backpropagates_through_cnn_and_lstm() -> None:
    net = CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=16)).train()
    x = torch.randn(2, 4, 3, SIZE, SIZE)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    loss = net(x, mask)[mask].sum()
    loss.backward()
    assert net.backbone.conv1.weight.grad is not None  # type: ignore[union-attr]
    assert net.lstm is not None
    assert net.lstm.weight_ih_l0.grad is not None


@pytest.mark.parametrize(("name", "width"), [("resnet50", 2048), ("seresnext50_32x4d", 2048)])
def test_paper_backbones_give_2048_features(name: str, width: int) -> None:
    backbone, dim = build_backbone(name)
    assert dim == width
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 64, 64)).shape == (1, width)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match="unknown backbone"):
        build_backbone("no_such_net_v9")


def test_channels_last_gives_same_result(net: CNNLSTM) -> None:
    x = torch.randn(4, 3, SIZE, SIZE)
    ref = net.predict_series(x)
    net_cl = CNNLSTM(net.config)
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.eval().to(memory_format=torch.channels_last)
    out = net_cl.predict_series(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_residual_network_starts_as_its_per_slice_head() -> None:
    """``residual``: logits = slice head(features) + LSTM head, the LSTM part zero at first."""
    torch.manual_seed(0)
    net = CNNLSTM(NetworkConfig(backbone="resnet18", lstm_hidden=8, residual=True)).eval()
    assert net.slice_head is not None
    x = torch.randn(6, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = net.backbone(x)
        torch.testing.assert_close(net.predict_series(x), net.slice_head(feats))
        # once the LSTM head has weights, slice 0 sees slice 5 again
        torch.nn.init.normal_(net.head.weight)
        changed = x.clone()
        changed[5] = torch.randn(3, SIZE, SIZE)
        assert not torch.allclose(net.predict_series(x)[0], net.predict_series(changed)[0])
        corrected = net.predict_series(x)
        lstm_out, _ = net.lstm(feats.unsqueeze(0))  # type: ignore[misc]
        expected = net.slice_head(feats) + net.head(lstm_out.squeeze(0))
        torch.testing.assert_close(corrected, expected, rtol=1e-4, atol=1e-4)


def test_paper_network_has_no_slice_head(net: CNNLSTM) -> None:
    assert net.slice_head is None
    assert not NetworkConfig().residual
    # 2D networks ignore the flag: there is no LSTM to correct them
    assert CNNLSTM(NetworkConfig(backbone="resnet18", lstm=False, residual=True)).slice_head is None
