"""The training loop: the paper's recipe, one process or ``torchrun`` DDP.

METHOD.md "Training recipe": weighted BCE with logits (2 for ``any``) over real slices
only; AdamW (lr 1e-3, weight decay 0.01, none on biases, and here also none on
normalisation weights: every 1-D parameter is exempt); warm-up over 3 epochs times a
cosine over all epochs, stepped per optimiser step (:mod:`train.schedule`); 5 studies x
10 contiguous slices per micro-batch; gradient accumulation 2; mixed precision on GPU
with fp32 parameters (BatchNorm included); per-slice augmentation and CutMix. Two
options outside the paper, off by default: a lower learning rate for the LSTM and head
(``optim.sequence_lr_scale``) and deep supervision of the backbone by an auxiliary
per-slice head (``optim.aux_weight``, :class:`DeepSupervised`).

Each epoch ends with validation on whole studies (sharded across ranks), a row in
``metrics.csv``, PNG curves, and atomic writes of ``last.pt`` (the node's checkpoint
format, :func:`models.checkpoint.save_checkpoint`) and ``state.pt`` (optimizer, schedule
step, epoch, scaler, history; plain tensors and numbers, loadable with
``weights_only=True``). ``best.pt`` is the epoch with the lowest validation weighted log
loss. ``resume=True`` continues from ``state.pt`` at the next epoch and optimiser step.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from models.checkpoint import (
    DEFAULT_SLICE_THICKNESS_MM,
    CheckpointMeta,
    atomic_torch_save,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from models.labels import LABELS
from models.network import CNNLSTM, NetworkConfig
from train import distributed as dd
from train.augment import SliceAugment, cutmix
from train.config import FitConfig, save_config
from train.dataset import StudyStore, WindowDataset, to_model_input
from train.inference import amp_dtype, autocast, predict_store
from train.metrics import auc, per_class_log_loss, study_scores, weighted_log_loss
from train.schedule import WarmupCosine

log = logging.getLogger(__name__)

CSV_NAME = "metrics.csv"
#: Slice thickness of what ``fit`` trains on, recorded in every checkpoint so the node
#: averages thinner series into slabs of it (models.slabs): RSNA 2019 is 5 mm axial and
#: the phantoms default to 5 mm; a run on other data passes its own through ``export``.
TRAINING_SLICE_THICKNESS_MM = DEFAULT_SLICE_THICKNESS_MM
STATE_NAME = "state.pt"


class FitError(RuntimeError):
    """The run cannot start or continue (bad data, missing state for --resume)."""


@dataclass
class FitResult:
    """What a run produced (rank 0 paths; every rank gets the parameter digest)."""

    out: Path
    last: Path
    best: Path
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    param_digest: str = ""
    #: The digest of every rank's parameters (buffers excluded), in rank order; DDP
    #: keeps them identical.
    rank_digests: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- pieces


def masked_weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted BCE with logits averaged over real slices only.

    ``sum_slices sum_c w_c BCE / (n_real_slices * sum_c w_c)``: per slice the same
    weighting as the Kaggle metric; padded slices (mask False) contribute nothing.
    """
    per = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    per = per * weights.to(per.dtype)
    m = mask.to(per.dtype).unsqueeze(-1)
    denom = (m.sum() * weights.sum()).clamp(min=1e-8)
    return (per * m).sum() / denom


def param_groups(
    model: nn.Module, weight_decay: float, sequence_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only; biases and norm weights (1-D) exempt.

    ``sequence_lr_scale`` multiplies the learning rate of everything after the backbone
    (LSTM and head; ``lr_scale`` in the group, applied by :class:`WarmupCosine`), so the
    sequence model can move more slowly than a randomly initialised backbone
    (``optim.sequence_lr_scale``). Empty groups are left out; with a scale of 1 the
    groups are the two of earlier runs, in the same order, so their ``state.pt`` resumes.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        sequence = sequence_lr_scale != 1.0 and not name.startswith(
            ("backbone.", "model.backbone.")
        )
        groups.setdefault((sequence, p.ndim <= 1), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if exempt else weight_decay,
            "lr_scale": sequence_lr_scale if sequence else 1.0,
        }
        for (sequence, exempt), params in sorted(groups.items())
    ]


class DeepSupervised(nn.Module):
    """Training-time wrapper: the network plus a linear per-slice head on the backbone features.

    Our addition, not the paper's (``optim.aux_weight``): the auxiliary head gives the
    backbone the same direct per-slice gradient as the 2D baseline, while the main
    logits still come from the full path (backbone -> LSTM -> head) that the node runs.
    Only the wrapped network is saved in checkpoints; the auxiliary head is dropped,
    unless the network is ``residual``: then the auxiliary loss supervises the network's
    own slice head, which the node keeps (its logits are that head plus the LSTM's).
    """

    def __init__(self, model: CNNLSTM) -> None:
        super().__init__()
        self.model = model
        # a residual network already has a per-slice head on the features: supervise it
        self.aux_head = (
            model.slice_head
            if model.slice_head is not None
            else nn.Linear(model.feature_dim, model.config.num_classes)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, 3, H, W)`` -> main logits and auxiliary logits, both ``(B, S, C)``."""
        b, s = x.shape[:2]
        feats = self.model.backbone(x.flatten(0, 1)).view(b, s, -1)
        return self.model.sequence_logits(feats, mask), self.aux_head(feats)


def git_commit(cwd: Path | None = None) -> str:
    """The repository's HEAD commit (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def open_store(path: Path) -> StudyStore:
    """A prepared cache on disk (``python -m train prepare``)."""
    from train.data.cache import PreparedCache

    return PreparedCache(Path(path))


def split_keys(store: StudyStore, cfg: FitConfig) -> tuple[list[str], list[str], str]:
    """``(train, val, description)``: the run's split of one store (``train.data.splits``).

    A prepared cache gets :func:`~train.data.splits.make_split` (the stage-1 reference
    split when its list is present, else patient-grouped stratified folds); an in-memory
    store gets the folds.
    """
    from train.data.cache import PreparedCache
    from train.data.splits import fold_split, make_split

    d = cfg.data
    if isinstance(store, PreparedCache):
        split = make_split(store, d.split, fold=d.fold, n_folds=d.n_folds, seed=cfg.run.seed)
        desc = split.scheme if split.scheme == "stage1" else f"kfold {d.fold}/{d.n_folds}"
        return list(split.train), list(split.val), desc
    train, val = fold_split(store.studies, n_folds=d.n_folds, fold=d.fold, seed=cfg.run.seed)  # type: ignore[arg-type]
    return train, val, f"kfold {d.fold}/{d.n_folds}"


def build_model(cfg: FitConfig) -> CNNLSTM:
    m = cfg.model
    pretrained: bool | Path = m.pretrained_path if m.pretrained_path is not None else m.pretrained
    net = NetworkConfig(
        backbone=m.backbone,
        lstm=m.lstm,
        lstm_hidden=m.lstm_hidden,
        lstm_layers=m.lstm_layers,
        dropout=m.dropout,
        residual=m.residual,
    )
    try:
        return CNNLSTM(net, pretrained=pretrained)
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        if pretrained is True:
            raise FitError(
                f"cannot fetch ImageNet weights for {m.backbone} ({type(exc).__name__}); "
                "download them once and set model.pretrained_path, or model.pretrained=false"
            ) from exc
        raise


def validation_metrics(
    store: StudyStore, probs: Mapping[str, np.ndarray], keys: Sequence[str]
) -> dict[str, float]:
    """Slice-level weighted log loss (per class too) and slice/study AUCs per class."""
    y = np.concatenate([store.slice_labels(k) for k in keys]).astype(np.float64)
    p = np.concatenate([probs[k] for k in keys]).astype(np.float64)
    out: dict[str, float] = {"val_loss": weighted_log_loss(y, p)}
    for c, lab in enumerate(LABELS):
        out[f"val_loss_{lab}"] = float(per_class_log_loss(y[:, c], p[:, c])[0])
    study_y = np.stack([store.slice_labels(k).max(axis=0) for k in keys])
    study_p = study_scores([probs[k] for k in keys])
    for c, lab in enumerate(LABELS):
        out[f"slice_auc_{lab}"] = auc(y[:, c], p[:, c])
        out[f"study_auc_{lab}"] = auc(study_y[:, c], study_p[:, c])
    return out


def write_history(out: Path, history: Sequence[Mapping[str, float]]) -> None:
    """``metrics.csv`` (one row per epoch) and ``curves.png``, rewritten atomically."""
    if not history:
        return
    cols = list(history[0].keys())
    for row in history[1:]:
        cols.extend(k for k in row if k not in cols)
    tmp = out / f".{CSV_NAME}.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in cols})
    tmp.replace(out / CSV_NAME)
    plot_curves(history, out / "curves.png")


def plot_curves(history: Sequence[Mapping[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train (weighted BCE)")
    ax1.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation (weighted log loss)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    for lab in ("any", *LABELS[1:]):
        key = f"study_auc_{lab}"
        vals = [r.get(key, float("nan")) for r in history]
        ax2.plot(epochs, vals, "-", label=lab, linewidth=2 if lab == "any" else 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation study AUC")
    ax2.set_ylim(0.4, 1.01)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------------- the loop


@dataclass
class _Data:
    train_store: StudyStore
    train_keys: list[str]
    val_store: StudyStore
    val_keys: list[str]
    provenance: dict[str, str]


def _resolve_data(
    cfg: FitConfig,
    store: StudyStore | None,
    val_store: StudyStore | None,
    train_keys: Sequence[str] | None,
    val_keys: Sequence[str] | None,
) -> _Data:
    prov: dict[str, str] = {}
    if store is None:
        store = open_store(cfg.data.cache)
        prov["train_data"] = str(cfg.data.cache)
    if val_store is None and cfg.data.val_cache is not None:
        val_store = open_store(cfg.data.val_cache)
        prov["val_data"] = str(cfg.data.val_cache)
    if val_store is not None:
        tk = list(train_keys) if train_keys is not None else [s.key for s in store.studies]
        vk = list(val_keys) if val_keys is not None else [s.key for s in val_store.studies]
    elif train_keys is not None and val_keys is not None:
        tk, vk = list(train_keys), list(val_keys)
        val_store = store
    else:
        tk, vk, desc = split_keys(store, cfg)
        val_store = store
        prov["split"] = f"{desc} (seed {cfg.run.seed})"
    if cfg.data.limit_train:
        tk = tk[: cfg.data.limit_train]
    if cfg.data.limit_val:
        vk = vk[: cfg.data.limit_val]
    if not tk or not vk:
        raise FitError(f"need training and validation studies (got {len(tk)} and {len(vk)})")
    if tuple(val_store.windows) != tuple(store.windows):
        raise FitError("training and validation caches use different windows")
    prov["n_train_studies"] = str(len(tk))
    prov["n_val_studies"] = str(len(vk))
    return _Data(store, tk, val_store, vk, prov)


def fit(
    cfg: FitConfig,
    resume: bool = False,
    store: StudyStore | None = None,
    val_store: StudyStore | None = None,
    train_keys: Sequence[str] | None = None,
    val_keys: Sequence[str] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train per ``cfg``; stores/keys may be passed in (demo, tests), else read from cfg.data.

    Under ``torchrun`` every rank calls this; rank 0 writes every file.
    """
    info = dd.init_distributed(cfg.run.device)
    try:
        return _fit(cfg, info, resume, store, val_store, train_keys, val_keys, progress)
    finally:
        dd.shutdown(info)


def _fit(
    cfg: FitConfig,
    info: dd.DistInfo,
    resume: bool,
    store: StudyStore | None,
    val_store: StudyStore | None,
    train_keys: Sequence[str] | None,
    val_keys: Sequence[str] | None,
    progress: bool,
) -> FitResult:
    t_start = time.monotonic()
    out = Path(cfg.run.out)
    dev = info.device
    show = progress and info.is_main
    data = _resolve_data(cfg, store, val_store, train_keys, val_keys)
    size = cfg.data.size or data.train_store.size
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        split = {"train": data.train_keys, "val": data.val_keys, **data.provenance}
        (out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    dd.seed_everything(dd.rank_seed(cfg.run.seed, -1, 0))  # same initial weights on all ranks
    model = build_model(cfg).to(dev)
    # what the optimiser trains: the network, plus the auxiliary head when deep-supervised
    trained: nn.Module = model
    if cfg.optim.aux_weight > 0:
        trained = DeepSupervised(model).to(dev)
    dtype = amp_dtype(cfg.run.amp, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    ds = WindowDataset(data.train_store, data.train_keys, window=cfg.data.window)
    sampler: DistributedSampler[dict[str, Any]] = DistributedSampler(
        ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.run.seed
    )
    bs = cfg.data.studies_per_batch
    # micro-batches per epoch = batches of the loader (drop_last unless fewer studies than
    # a batch); the last optimiser step of an epoch may accumulate fewer micro-batches
    micro_limit = len(sampler) // bs if len(sampler) >= bs else 1
    accum = cfg.optim.accumulation
    if cfg.run.max_steps_per_epoch:
        micro_limit = min(micro_limit, cfg.run.max_steps_per_epoch * accum)
    steps_per_epoch = math.ceil(micro_limit / accum)
    total_steps = steps_per_epoch * cfg.optim.epochs
    warmup = round(steps_per_epoch * cfg.optim.warmup_epochs)

    opt = torch.optim.AdamW(
        param_groups(trained, cfg.optim.weight_decay, cfg.optim.sequence_lr_scale),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
    )
    sched = WarmupCosine(opt, cfg.optim.lr, warmup, total_steps)
    history: list[dict[str, float]] = []
    start_epoch, best_loss, best_epoch = 0, math.inf, -1

    state_path, last_path, best_path = out / STATE_NAME, out / "last.pt", out / "best.pt"
    if resume:
        if not state_path.is_file() or not last_path.is_file():
            raise FitError(f"--resume: {state_path} or {last_path} is missing")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(load_checkpoint(last_path).model.state_dict())
        if isinstance(trained, DeepSupervised):
            if "aux_head" not in state:
                raise FitError(f"--resume: {state_path} has no auxiliary head (optim.aux_weight)")
            trained.aux_head.load_state_dict(state["aux_head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        best_loss, best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        history = [dict(r) for r in state["history"]]
        log.info("fit.resumed", extra={"epoch": start_epoch, "step": sched.step_count})

    ddp: nn.Module = trained
    if info.distributed:
        ddp = DistributedDataParallel(
            trained, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    augment = SliceAugment(cfg.augment) if cfg.augment.enabled else None
    weights = torch.tensor(cfg.optim.loss_weights, dtype=torch.float32, device=dev)
    base_meta = {
        "input_size": size,
        "windows": tuple(data.train_store.windows),
        "name": cfg.run.name,
        "trained_on": cfg.run.trained_on,
        "slice_thickness_mm": TRAINING_SLICE_THICKNESS_MM,
    }
    provenance = {
        **data.provenance,
        "git_commit": git_commit(),
        "config": str(out / "config.yaml"),
        "world_size": str(info.world_size),
    }
    out_of_time = False

    for epoch in range(start_epoch, cfg.optim.epochs):
        dd.seed_everything(dd.rank_seed(cfg.run.seed, epoch, info.rank))
        sampler.set_epoch(epoch)
        loader = DataLoader(
            ds,
            batch_size=bs,
            sampler=sampler,
            num_workers=cfg.data.workers,
            pin_memory=dev.type == "cuda",
            drop_last=len(sampler) >= bs,
        )
        trained.train()
        t_epoch = time.monotonic()
        sum_loss, n_micro, n_slices = 0.0, 0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}", disable=not show)
        it = iter(loader)
        micro = 0
        while micro < micro_limit and not out_of_time:
            group = min(accum, micro_limit - micro)
            lr = sched.apply()
            opt.zero_grad(set_to_none=True)
            stepped = False
            for k in range(group):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                micro += 1
                images = batch["images"].to(dev, non_blocking=True)
                labels = batch["labels"].to(dev, non_blocking=True)
                mask = batch["mask"].to(dev, non_blocking=True)
                x = to_model_input(images, size, augment)
                use_cutmix = augment is not None and cfg.augment.cutmix_alpha > 0
                if use_cutmix and float(torch.rand(())) < cfg.augment.cutmix_p:
                    mixed = cutmix(x, labels, cfg.augment.cutmix_alpha)
                    x, labels = mixed.images, mixed.labels
                sync = not info.distributed or k == group - 1
                ctx = ddp.no_sync() if not sync else nullcontext()  # type: ignore[operator]
                with ctx, autocast(dev, dtype):
                    if isinstance(trained, DeepSupervised):
                        logits, aux_logits = ddp(x, mask)
                        loss = masked_weighted_bce(logits, labels, mask, weights)
                        aux = masked_weighted_bce(aux_logits, labels, mask, weights)
                        total = loss + cfg.optim.aux_weight * aux
                    else:
                        logits = ddp(x, mask)
                        loss = total = masked_weighted_bce(logits, labels, mask, weights)
                # train_loss reports the main path only, comparable across settings
                scaler.scale(total / group).backward()  # type: ignore[no-untyped-call]
                sum_loss += float(loss.detach())
                n_micro += 1
                n_slices += int(mask.sum())
                stepped = True
            if not stepped:
                break
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(trained.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.advance()
            bar.update(1)
            bar.set_postfix(loss=f"{sum_loss / max(n_micro, 1):.4f}", lr=f"{lr:.2e}")
            if cfg.run.max_minutes > 0:
                late = (time.monotonic() - t_start) / 60.0 > cfg.run.max_minutes
                out_of_time = dd.broadcast_flag(info, late)
        bar.close()
        totals = dd.all_reduce_sum(info, [sum_loss, float(n_micro), float(n_slices)])
        train_loss = totals[0] / max(totals[1], 1.0)
        train_time = time.monotonic() - t_epoch

        # validation: each rank predicts its share of whole studies, rank 0 scores
        dd.broadcast_buffers(info, model)
        t_val = time.monotonic()
        mine = data.val_keys[info.rank :: info.world_size]
        probs = predict_store(
            model,
            data.val_store,
            mine,
            dev,
            size,
            dtype,
            tta=cfg.run.tta,
            chunk=cfg.run.eval_chunk,
            progress=show,
            desc="validate",
        )
        gathered = dd.gather_objects(info, probs)
        row: dict[str, float] = {}
        if info.is_main:
            allp: dict[str, np.ndarray] = {}
            for part in gathered:
                allp.update(part)
            row = {
                "epoch": float(epoch + 1),
                "step": float(sched.step_count),
                "lr": sched.lr_at(sched.step_count),
                "train_loss": train_loss,
                **validation_metrics(data.val_store, allp, data.val_keys),
                "train_slices_per_s": totals[2] / max(train_time, 1e-9),
                "train_s": train_time,
                "val_s": time.monotonic() - t_val,
            }
            history.append(row)
            improved = row["val_loss"] < best_loss
            if improved:
                best_loss, best_epoch = row["val_loss"], epoch + 1
            metrics = {k: v for k, v in row.items() if math.isfinite(v)}
            meta = CheckpointMeta(
                network=model.config,
                validation_metrics=metrics,
                provenance={**provenance, "epoch": str(epoch + 1)},
                **base_meta,  # type: ignore[arg-type]
            )
            save_checkpoint(last_path, model, meta)
            if improved:
                shutil.copyfile(last_path, out / ".best.pt.tmp")
                (out / ".best.pt.tmp").replace(best_path)
            state_out: dict[str, Any] = {
                "epoch": epoch + 1,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best_val_loss": best_loss,
                "best_epoch": best_epoch,
                "history": history,
                "rng": {"torch": torch.get_rng_state(), "seed": cfg.run.seed},
            }
            if scaler.is_enabled():
                state_out["scaler"] = scaler.state_dict()
            if isinstance(trained, DeepSupervised):
                state_out["aux_head"] = trained.aux_head.state_dict()
            atomic_torch_save(state_out, state_path)
            write_history(out, history)
            log.info(
                "fit.epoch",
                extra={
                    "epoch": epoch + 1,
                    "train_loss": round(train_loss, 5),
                    "val_loss": round(row["val_loss"], 5),
                    "study_auc_any": round(row["study_auc_any"], 4),
                },
            )
            if show:
                tqdm.write(
                    f"epoch {epoch + 1}: train {train_loss:.4f} val {row['val_loss']:.4f} "
                    f"study AUC(any) {row['study_auc_any']:.4f}"
                )
        dd.barrier(info)
        if out_of_time:
            log.info("fit.time_budget_reached", extra={"epoch": epoch + 1})
            break
        if cfg.run.stop_after_epochs and epoch + 1 - start_epoch >= cfg.run.stop_after_epochs:
            log.info("fit.stopped_for_resume", extra={"epoch": epoch + 1})
            break

    digest = state_digest({n: p.detach() for n, p in model.named_parameters()})
    digests = [str(d) for d in dd.gather_objects(info, digest)]
    return FitResult(
        out=out,
        last=last_path,
        best=best_path,
        best_epoch=best_epoch,
        best_val_loss=best_loss,
        history=history,
        steps=sched.step_count,
        param_digest=digest,
        rank_digests=digests,
    )
