"""Checkpoint format: weights plus everything needed to use them correctly.

One file carries the network settings, input size, windows, label order, per-class
decision thresholds, training data and validation metrics, provenance, and a DICOM UID
identifying this exact model (it becomes the Device UID of our DICOM results, IHE AI
Results). It holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint can never execute code.
Writes go to a temporary file that is fsynced and renamed, so a crash never leaves a
half-written checkpoint where the node would load it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models import __version__ as CODE_VERSION
from models.errors import CheckpointError
from models.labels import LABELS
from models.network import CNNLSTM, NetworkConfig
from models.preprocess import DEFAULT_WINDOWS, Window
from models.uids import derived_uid

FORMAT = "ich-cnn-lstm"
FORMAT_VERSION = 1
#: Slice thickness of the training data when a checkpoint does not say: RSNA 2019 (every
#: checkpoint made before the field existed) is 5 mm axial, and so are the phantoms.
DEFAULT_SLICE_THICKNESS_MM = 5.0


@dataclass(frozen=True)
class CheckpointMeta:
    """Metadata stored beside the weights. All fields are JSON-compatible values.

    ``slice_thickness_mm`` is the slice thickness of the training data: inference
    averages a much thinner series into slabs of it (:mod:`models.slabs`). Checkpoints
    written before the field existed load with :data:`DEFAULT_SLICE_THICKNESS_MM` (5 mm),
    which is what all of them were trained on (RSNA 2019 and the phantoms).
    """

    network: NetworkConfig
    input_size: int = 512
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    labels: tuple[str, ...] = LABELS
    thresholds: tuple[float, ...] = (0.5,) * len(LABELS)
    name: str = "ich-cnn-lstm"
    trained_on: str = "untrained"
    validation_metrics: Mapping[str, float] = field(default_factory=dict)
    provenance: Mapping[str, str] = field(default_factory=dict)
    demo: bool = False
    model_uid: str = ""
    code_version: str = CODE_VERSION
    created: str = ""
    slice_thickness_mm: float = DEFAULT_SLICE_THICKNESS_MM

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "network": self.network.to_dict(),
            "input_size": self.input_size,
            "windows": [[w.name, w.level, w.width] for w in self.windows],
            "labels": list(self.labels),
            "thresholds": [float(t) for t in self.thresholds],
            "name": self.name,
            "trained_on": self.trained_on,
            "validation_metrics": {str(k): float(v) for k, v in self.validation_metrics.items()},
            "provenance": {str(k): str(v) for k, v in self.provenance.items()},
            "demo": self.demo,
            "model_uid": self.model_uid,
            "code_version": self.code_version,
            "created": self.created,
            "slice_thickness_mm": float(self.slice_thickness_mm),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointMeta:
        """Validate stored metadata against this code; raise ``CheckpointError`` if unfit."""
        if data.get("format") != FORMAT:
            raise CheckpointError(f"not an {FORMAT} checkpoint (format={data.get('format')!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {version} is not supported by this code "
                f"(expects {FORMAT_VERSION})"
            )
        labels = tuple(data.get("labels", ()))
        if labels != LABELS:
            raise CheckpointError(f"checkpoint labels {list(labels)} differ from {list(LABELS)}")
        thresholds = tuple(float(t) for t in data.get("thresholds", ()))
        if len(thresholds) != len(LABELS) or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise CheckpointError("checkpoint thresholds must be 6 probabilities in [0, 1]")
        try:
            windows = tuple(Window(str(n), float(lv), float(wd)) for n, lv, wd in data["windows"])
            network = NetworkConfig.from_dict(dict(data["network"]))
            size = int(data["input_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata is incomplete: {exc}") from exc
        if len(windows) != 3 or any(w.width <= 0 for w in windows):
            raise CheckpointError("checkpoint must define 3 windows with positive width")
        if not 32 <= size <= 2048:
            raise CheckpointError(f"checkpoint input size {size} is out of range")
        if network.num_classes != len(LABELS):
            raise CheckpointError(f"checkpoint has {network.num_classes} outputs, expected 6")
        try:
            thickness = float(data.get("slice_thickness_mm", DEFAULT_SLICE_THICKNESS_MM))
        except (TypeError, ValueError) as exc:
            raise CheckpointError("checkpoint slice_thickness_mm is not a number") from exc
        if not 0.1 <= thickness <= 20.0:
            raise CheckpointError(f"checkpoint slice thickness {thickness} mm is out of range")
        return cls(
            network=network,
            input_size=size,
            windows=windows,
            labels=labels,
            thresholds=thresholds,
            name=str(data.get("name", "")),
            trained_on=str(data.get("trained_on", "")),
            validation_metrics=dict(data.get("validation_metrics", {})),
            provenance=dict(data.get("provenance", {})),
            demo=bool(data.get("demo", False)),
            model_uid=str(data.get("model_uid", "")),
            code_version=str(data.get("code_version", "")),
            created=str(data.get("created", "")),
            slice_thickness_mm=thickness,
        )


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read from disk: validated metadata, the model, and the file's hash."""

    meta: CheckpointMeta
    model: CNNLSTM
    sha256: str


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over parameter names and bytes: the identity of the weights themselves."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: Path, model: CNNLSTM, meta: CheckpointMeta) -> CheckpointMeta:
    """Write ``model`` and ``meta`` atomically; return the meta as stored (UID filled in).

    The model UID is derived from the weights' digest (a 2.25 UUID-derived DICOM UID),
    so the same weights always get the same Device UID, and different weights never do.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = state_digest(state)
    uid = derived_uid("model", digest, meta.name)
    stamped = CheckpointMeta(
        **{
            **meta.__dict__,
            "model_uid": uid,
            "created": meta.created or datetime.now(UTC).isoformat(timespec="seconds"),
            "network": model.config,
        }
    )
    atomic_torch_save({"meta": stamped.to_dict(), "state_dict": state}, Path(path))
    return stamped


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename.

    A reader (the node at start-up, ``--resume``) sees the old file or the new one,
    never a half-written one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta(path: Path) -> CheckpointMeta:
    """Only the validated metadata (still reads the whole file: torch has no partial load)."""
    return _read(path)[0]


def _read(path: Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(
            f"checkpoint {path.name} cannot be read: {type(exc).__name__}"
        ) from exc
    if not isinstance(payload, dict) or "meta" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path.name} lacks 'meta' and 'state_dict'")
    return CheckpointMeta.from_dict(payload["meta"]), payload["state_dict"]


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Load, validate and build the model in eval mode on ``device``."""
    meta, state = _read(path)
    model = CNNLSTM(meta.network, pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {Path(path).name} weights do not fit backbone {meta.network.backbone!r}"
        ) from exc
    model.eval().to(device)
    return LoadedCheckpoint(meta=meta, model=model, sha256=file_sha256(path))
