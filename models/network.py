"""The CNN-LSTM network: a 2D backbone per slice, a bidirectional LSTM across slices.

METHOD.md "Model": ImageNet backbone, global average pooled (2048 features for
ResNet-50 / SE-ResNeXt-50), then a 2-layer bidirectional LSTM (hidden 512 per
direction) over the slices of a study in z order, then one linear layer
(2 x hidden -> 6) on every slice. ``lstm=False`` gives the 2D baseline for the ablation:
the same backbone with a linear head per slice and no context between slices.

``residual=True`` is our addition, off in the paper's network: a second linear head on
the backbone features is added to the LSTM head's logits, and the LSTM head starts at
zero, so the network starts as the 2D model and the slice context learns a correction.
On phantoms the plain network let the context replace the per-slice evidence (the
subtypes' co-occurrence) and ranked studies by subtype worse than the 2D baseline.

Studies of different lengths batch together with a padding mask; the LSTM runs on
packed sequences so padding never leaks into the backward direction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.errors import CheckpointError
from models.labels import NUM_CLASSES

#: Backbones from torchvision; anything else is looked up in timm.
TORCHVISION_BACKBONES = {
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "efficientnet_b0",
    "densenet121",
}


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Architecture hyper-parameters; stored in every checkpoint."""

    backbone: str = "resnet50"
    lstm: bool = True
    lstm_hidden: int = 512
    lstm_layers: int = 2
    dropout: float = 0.0
    #: Our addition (off in the paper's network): a per-slice linear head on the
    #: backbone features is added to the LSTM head's logits.
    residual: bool = False
    num_classes: int = NUM_CLASSES

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored in a checkpoint.

        ``residual`` is written only when on, so that a checkpoint of the paper's
        network still loads in a node from before the option existed (which refuses
        settings it does not know).
        """
        data = asdict(self)
        if not self.residual:
            del data["residual"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"unknown network settings in checkpoint: {sorted(unknown)}")
        return cls(**data)


def build_backbone(name: str, pretrained: bool | Path = False) -> tuple[nn.Module, int]:
    """A backbone that maps ``(N, 3, H, W)`` to pooled features ``(N, F)``, and ``F``.

    ``pretrained=True`` fetches ImageNet weights through torchvision's weights API or
    timm (needs internet once); a :class:`~pathlib.Path` loads a local state dict
    instead (classifier weights in it are ignored). ``False`` = random initialisation,
    which is what tests use: nothing is downloaded unless asked.
    """
    local = pretrained if isinstance(pretrained, Path) else None
    if name in TORCHVISION_BACKBONES:
        import torchvision

        weights = "DEFAULT" if pretrained is True else None
        net = torchvision.models.get_model(name, weights=weights)
        if hasattr(net, "fc"):
            width = int(net.fc.in_features)  # type: ignore[arg-type,unused-ignore]
            net.fc = nn.Identity()
        else:
            head = net.classifier
            last = head[-1] if isinstance(head, nn.Sequential) else head
            width = int(last.in_features)  # type: ignore[arg-type,unused-ignore]
            net.classifier = nn.Identity()
    else:
        try:
            import timm
        except ImportError as exc:  # pragma: no cover - timm is a dependency
            raise CheckpointError(f"backbone {name!r} needs timm, which is not installed") from exc
        try:
            net = timm.create_model(name, pretrained=pretrained is True, num_classes=0)
        except RuntimeError as exc:
            raise CheckpointError(f"unknown backbone {name!r}: {exc}") from exc
        width = int(net.num_features)  # type: ignore[arg-type]
    if local is not None:
        state = torch.load(local, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
        missing, _unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise CheckpointError(f"{local.name}: {len(missing)} backbone weights missing")
    return net, width


class CNNLSTM(nn.Module):
    """Per-slice CNN features -> bidirectional LSTM across slices -> 6 logits per slice."""

    def __init__(self, config: NetworkConfig, pretrained: bool | Path = False) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim = build_backbone(config.backbone, pretrained)
        self.lstm: nn.LSTM | None
        if config.lstm:
            self.lstm = nn.LSTM(
                input_size=self.feature_dim,
                hidden_size=config.lstm_hidden,
                num_layers=config.lstm_layers,
                batch_first=True,
                bidirectional=True,
                dropout=config.dropout if config.lstm_layers > 1 else 0.0,
            )
            head_in = 2 * config.lstm_hidden
        else:
            self.lstm = None
            head_in = self.feature_dim
        self.head = nn.Linear(head_in, config.num_classes)
        self.slice_head: nn.Linear | None = None
        if config.lstm and config.residual:
            # the LSTM path starts as a zero correction of the per-slice logits
            self.slice_head = nn.Linear(self.feature_dim, config.num_classes)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def slice_features(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Backbone features of ``(N, 3, H, W)`` slices, ``chunk`` slices at a time."""
        if chunk is None or x.shape[0] <= chunk:
            return self.backbone(x)  # type: ignore[no-any-return]
        parts = torch.split(x, chunk)
        return torch.cat([self.backbone(part) for part in parts], dim=0)

    def sequence_logits(
        self, feats: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Slice features ``(B, S, F)`` (+ mask ``(B, S)``, True = real slice) -> ``(B, S, C)``."""
        if self.lstm is None:
            return self.head(feats)  # type: ignore[no-any-return]
        s = feats.shape[1]
        feats = feats.float()  # the LSTM runs in fp32 even under autocast (stability)
        if mask is None or bool(mask.all()):
            out, _ = self.lstm(feats)
        else:
            lengths = mask.sum(dim=1).clamp(min=1).cpu()
            packed = pack_padded_sequence(feats, lengths, batch_first=True, enforce_sorted=False)
            packed_out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=s)
        logits: torch.Tensor = self.head(out)
        if self.slice_head is not None:
            logits = logits + self.slice_head(feats)
        return logits

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Slices ``(B, S, 3, H, W)`` with optional mask ``(B, S)`` -> logits ``(B, S, C)``.

        Padded slices (mask False) still go through the backbone (fixed shapes train
        faster) but are excluded from the LSTM and must be excluded from the loss.
        """
        b, s = x.shape[:2]
        feats = self.backbone(x.flatten(0, 1)).view(b, s, -1)
        return self.sequence_logits(feats, mask)

    @torch.inference_mode()
    def predict_series(self, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """One whole series ``(S, 3, H, W)`` -> logits ``(S, C)``, in bounded memory.

        The backbone sees ``chunk`` slices at a time, so a 300-slice series needs the
        activations of ``chunk`` slices plus ``S x F`` features, not of all slices.
        """
        feats = self.slice_features(x, chunk)
        return self.sequence_logits(feats.unsqueeze(0)).squeeze(0)


def study_probabilities(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Study probability per class = max over its real slices (METHOD.md "Model").

    ``logits`` ``(B, S, C)`` or ``(S, C)``; padded slices (mask False) are ignored.
    """
    probs = torch.sigmoid(logits.float())
    if mask is not None:
        probs = probs.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
    return probs.amax(dim=-2)
