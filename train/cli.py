"""``python -m train``: the training command line.

The app object lives here; commands are defined in ``train/cli_data.py`` (synth,
inspect, prepare) and ``train/cli_fit.py`` (fit, evaluate, predict, export, demo-model),
which register themselves on import.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train and evaluate the CNN-LSTM ICH classifier (RSNA 2019, CQ500, phantoms).",
)


def main() -> None:
    """Entry point of ``python -m train``."""
    import importlib

    for module in ("train.cli_data", "train.cli_fit"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    app()
