"""``python -m train`` commands: fit, evaluate, predict, export, demo-model.

They register on :data:`train.cli.app` when imported (``train.cli.main`` imports this
module). Heavy imports (torch, the network) happen inside the commands so that
``python -m train --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from train.cli import app

log = logging.getLogger(__name__)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        rank = int(os.environ.get("RANK", "0"))
        logging.basicConfig(
            level=logging.INFO if rank == 0 else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@app.command()
def fit(
    config: Annotated[str, typer.Option(help="YAML file or name in train/configs")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. optim.lr=3e-4")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from <out>/state.pt")] = False,
) -> None:
    """Train the CNN-LSTM (one process, or every rank under torchrun)."""
    _setup_logging()
    from train.config import ConfigError, load_config
    from train.fit import FitError
    from train.fit import fit as run_fit

    try:
        cfg = load_config(config, overrides or [])
        result = run_fit(cfg, resume=resume)
    except (ConfigError, FitError) as exc:
        raise _fail(str(exc)) from exc
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(
            json.dumps(
                {
                    "out": str(result.out),
                    "best": str(result.best),
                    "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss,
                    "steps": result.steps,
                    "rank_digests": result.rank_digests,
                }
            )
        )


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint file (.pt)")],
    layout: Annotated[str, typer.Option(help="rsna or cq500")],
    data: Annotated[Path, typer.Option(help="prepared cache or raw download folder")],
    out: Annotated[Path, typer.Option(help="report folder")],
    cache: Annotated[Path | None, typer.Option(help="where to prepare raw data")] = None,
    tta: Annotated[bool, typer.Option(help="average with the horizontal flip")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1")] = "auto",
    target_sensitivity: Annotated[float, typer.Option(help="high-sensitivity point")] = 0.95,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples (CQ500)")] = 2000,
    workers: Annotated[int | None, typer.Option(help="prepare workers")] = None,
    limit: Annotated[int | None, typer.Option(help="first N studies only")] = None,
    split: Annotated[
        Path | None, typer.Option(help="a run's split.json: evaluate its validation studies")
    ] = None,
) -> None:
    """Evaluate a checkpoint on RSNA or CQ500; write report.md, metrics.json, ROC PNGs."""
    _setup_logging()
    from models.errors import ModelsError
    from train.evaluate import EvaluateError
    from train.evaluate import evaluate as run_eval

    if layout not in ("rsna", "cq500"):
        raise _fail("--layout must be rsna or cq500")
    keys = json.loads(split.read_text())["val"] if split is not None else None
    try:
        metrics = run_eval(
            checkpoint,
            layout,  # type: ignore[arg-type]
            data,
            out,
            cache=cache,
            tta=tta,
            device=device,
            target_sensitivity=target_sensitivity,
            n_boot=bootstrap,
            workers=workers,
            limit=limit,
            keys=keys,
        )
    except (EvaluateError, ModelsError, OSError, KeyError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo((Path(out) / "report.md").read_text())
    log.info("evaluate.written", extra={"out": str(out), "studies": metrics["n_studies"]})


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint file (.pt)")],
    data: Annotated[Path, typer.Option(help="stage-2 test: prepared cache or RSNA folder")],
    out: Annotated[Path, typer.Option(help="submission CSV to write")],
    cache: Annotated[Path | None, typer.Option(help="where to prepare raw data")] = None,
    tta: Annotated[bool, typer.Option(help="average with the horizontal flip")] = False,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int | None, typer.Option()] = None,
    limit: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Write a Kaggle submission CSV (ID_<hex>_<subtype>,Label) for RSNA stage-2 test."""
    _setup_logging()
    from models.errors import ModelsError
    from train.evaluate import EvaluateError
    from train.predict import predict_submission

    try:
        path = predict_submission(
            checkpoint, data, out, cache=cache, tta=tta, device=device, workers=workers, limit=limit
        )
    except (EvaluateError, ModelsError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(str(path))


def _validation_set(checkpoint: Path, val_data: Path | None, run_config: Path | None) -> Any:
    """``(store, keys)`` to choose thresholds on: --val-data, or the run's own validation."""
    from train.config import load_config
    from train.fit import open_store, split_keys

    if val_data is not None:
        return open_store(val_data), None
    cfg_path = run_config or checkpoint.parent / "config.yaml"
    if not cfg_path.is_file():
        raise _fail(f"no --val-data and no run config at {cfg_path}")
    cfg = load_config(cfg_path)
    if cfg.data.val_cache is not None:
        return open_store(cfg.data.val_cache), None
    store = open_store(cfg.data.cache)
    _train, val, _desc = split_keys(store, cfg)
    return store, val


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="training checkpoint, e.g. <run>/best.pt")],
    out: Annotated[Path, typer.Option(help="folder for weights-<sha8>.pt, or a .pt path")],
    val_data: Annotated[
        Path | None, typer.Option(help="validation cache (default: the run's validation set)")
    ] = None,
    run_config: Annotated[Path | None, typer.Option(help="default: config.yaml beside it")] = None,
    target_sensitivity: Annotated[float, typer.Option(help="per-class study sensitivity")] = 0.95,
    name: Annotated[str | None, typer.Option()] = None,
    trained_on: Annotated[str | None, typer.Option()] = None,
    tta: Annotated[bool, typer.Option()] = False,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Export the node's checkpoint with thresholds chosen on validation."""
    _setup_logging()
    from models.errors import ModelsError
    from train.export import export as run_export
    from train.export import summary

    try:
        store, keys = _validation_set(checkpoint, val_data, run_config)
        path = run_export(
            checkpoint,
            out,
            store,
            keys,
            target_sensitivity=target_sensitivity,
            name=name,
            trained_on=trained_on,
            provenance={"val_data": str(val_data)} if val_data else None,
            tta=tta,
            device=device,
        )
    except (ModelsError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(summary(path), indent=2))


@app.command("demo-model")
def demo_model(
    out: Annotated[Path, typer.Option(help="checkpoint path to write")] = Path(
        "var/models/demo.pt"
    ),
    train_studies: Annotated[
        int | None, typer.Option(help="training phantoms (default: the demo recipe's)")
    ] = None,
    val_studies: Annotated[
        int | None, typer.Option(help="phantoms that pick the best epoch (default: the recipe's)")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="fit overrides key=value")] = None,
) -> None:
    """Train a small CNN-LSTM on synthetic phantoms (NOT clinical) for the node's demo.

    A fixed number of epochs with deterministic kernels on 2 threads: the same weights on
    every run (on one CPU family and torch build), whatever the machine's load.
    """
    _setup_logging()
    from train.demo_model import build_demo_model
    from train.export import summary

    sizes = {"train_studies": train_studies, "val_studies": val_studies}
    given: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
    path = build_demo_model(out, overrides=overrides or [], seed=seed, **given)
    typer.echo(json.dumps(summary(path), indent=2))
