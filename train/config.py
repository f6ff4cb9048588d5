"""Typed fit configuration: YAML defaults, ``key=value`` overrides, saved beside the run.

As in timm's ``train.py``: a YAML file gives the defaults, command-line overrides such as
``optim.lr=3e-4`` or ``model.backbone=resnet18`` change single keys, and the resolved
configuration is written to ``<out>/config.yaml`` so every run can be repeated exactly.
Values in overrides are parsed as YAML (``true``, ``1e-3``, ``[0.8, 1.0]``). Unknown keys
are rejected with their dotted name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from train.augment import AugmentConfig

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration file or override is malformed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    backbone: str = "resnet50"
    lstm: bool = True
    lstm_hidden: int = 512
    lstm_layers: int = 2
    dropout: float = 0.0
    #: Our addition, not the paper's: slice logits = a linear head on the backbone
    #: features + the LSTM path's head (zero at the start), so context corrects the
    #: per-slice evidence instead of replacing it. ``false`` = the paper's network.
    residual: bool = False
    #: ImageNet weights through torchvision/timm (needs the internet once).
    pretrained: bool = False
    #: A local backbone state dict instead of a download (takes precedence).
    pretrained_path: Path | None = None


class DataSection(_Section):
    #: Prepared cache of the training studies (``python -m train prepare``).
    cache: Path = Path("var/cache/rsna-train")
    #: Separate validation cache; when unset, ``split`` divides ``cache``.
    val_cache: Path | None = None
    #: ``stage1`` = the reference split (train on stage-1 train, validate on stage-1 test;
    #: needs ``stage_1_train.csv`` in the data folder), ``kfold`` = patient-grouped folds
    #: stratified on "any", ``auto`` = stage1 when possible (``train.data.splits``).
    split: Literal["auto", "stage1", "kfold"] = "auto"
    n_folds: int = 5
    fold: int = 0
    #: Contiguous slices per training window (METHOD.md: 10).
    window: int = 10
    #: Studies per batch per process (METHOD.md: 5).
    studies_per_batch: int = 5
    #: Training size; ``null`` = the cache's size (a smaller size resizes on the fly).
    size: int | None = None
    workers: int = 4
    #: Use at most this many training / validation studies (smoke runs); 0 = all.
    limit_train: int = 0
    limit_val: int = 0


class OptimSection(_Section):
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 30
    warmup_epochs: float = 3.0
    #: Micro-batches per optimiser step (METHOD.md: 2).
    accumulation: int = 2
    #: 0 = no clipping (the published recipe does not clip).
    grad_clip: float = 0.0
    #: Learning-rate factor for the LSTM and head (the backbone gets ``lr``); 1 = the
    #: published recipe (one rate for everything).
    sequence_lr_scale: float = Field(default=1.0, gt=0.0)
    #: Weight of an auxiliary loss from a linear per-slice head on the backbone features
    #: (deep supervision; ``train.fit.DeepSupervised``). With ``model.residual`` that head
    #: is the network's own slice head; otherwise it is training-only (not in the
    #: checkpoint, inference unchanged). 0 = off, the published recipe.
    aux_weight: float = Field(default=0.0, ge=0.0)
    loss_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)


class RunSection(_Section):
    out: Path = Path("var/runs/default")
    seed: int = 42
    #: ``auto`` = CUDA when present (LOCAL_RANK picks the GPU under torchrun), else CPU.
    device: str = "auto"
    #: ``auto`` = bf16 on GPUs that support it, fp16 + GradScaler on older GPUs, off on CPU.
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    #: Cap on optimiser steps per epoch (smoke tests); 0 = a full pass over the studies.
    max_steps_per_epoch: int = 0
    #: Stop after this many epochs in this invocation, to continue with ``--resume``
    #: (time-limited cluster jobs); 0 = run to ``optim.epochs``.
    stop_after_epochs: int = 0
    #: Stop after this many minutes of wall time (demo model); 0 = no limit.
    max_minutes: float = 0.0
    #: Horizontal-flip test-time augmentation during validation.
    tta: bool = False
    #: Slices per backbone call when predicting whole studies.
    eval_chunk: int = 32
    #: Name written into the checkpoint's metadata.
    name: str = "ich-cnn-lstm"
    trained_on: str = "unspecified"


class FitConfig(_Section):
    """Everything ``python -m train fit`` needs; see ``train/configs/*.yaml``."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    run: RunSection = Field(default_factory=RunSection)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "model.lstm=false"]`` -> nested dict of YAML-parsed values."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(path: Path | str) -> Path:
    """A path as given, or a bare name looked up in ``train/configs`` (``phantom_demo``)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {path} not found")


def load_config(path: Path | str | None = None, overrides: Sequence[str] = ()) -> FitConfig:
    """Defaults <- YAML file <- overrides, validated; errors name the offending key."""
    tree: dict[str, Any] = {}
    if path is not None:
        text = resolve_config_path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        tree = loaded
    tree = _merge(tree, parse_overrides(overrides))
    try:
        return FitConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid fit config: {problems}") from exc


def save_config(cfg: FitConfig, out_dir: Path) -> Path:
    """Write the resolved config to ``out_dir/config.yaml`` (atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(cfg.to_yaml())
    tmp.replace(path)
    return path
