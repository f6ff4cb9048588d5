"""The ``dicom-node`` command line.

Each command loads the configuration once (file plus ``ICH_*`` environment overrides)
and passes it down; a bad configuration stops with the key's name and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicom_node.config import Settings, load_settings
from dicom_node.errors import NodeError
from models.errors import ModelsError
from models.labels import LABELS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ICH triage DICOM node.")
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="config.yaml (defaults are embedded)")
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except NodeError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def classify(
    path: Annotated[Path, typer.Argument(help="a DICOM file or a folder of studies")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="checkpoint file; default: inference.checkpoint")
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Classify the studies under PATH offline (no network) and print the findings."""
    from dicom_node.classify import classify_path
    from models.predict import Predictor

    settings = _settings(config)
    ckpt = checkpoint or settings.resolve(settings.inference.checkpoint)
    if not path.exists():
        err.print(f"[red]error:[/red] {path} does not exist")
        raise typer.Exit(2)
    try:
        predictor = Predictor.from_path(
            ckpt,
            device=settings.inference.device,
            chunk=settings.inference.slice_chunk,
            amp=settings.inference.amp,
        )
    except ModelsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    results = list(classify_path(path, predictor))
    if as_json:
        sys.stdout.write(json.dumps({"studies": [r.to_json() for r in results]}, indent=2) + "\n")
        return
    out = Console()
    if predictor.meta.demo:
        out.print("[yellow]demo checkpoint trained on synthetic phantoms: not for clinical use[/]")
    for r in results:
        if r.prediction is None:
            out.print(f"study {r.study_uid}: [yellow]skipped[/] ({r.skipped})")
            continue
        table = Table(title=f"study {r.study_uid} - series {r.series_uid} ({r.n_slices} slices)")
        table.add_column("finding")
        table.add_column("probability", justify="right")
        table.add_column("decision")
        for label in LABELS:
            f = r.prediction.findings()[label]
            mark = "[bold red]PRESENT[/]" if f["present"] else "absent"
            table.add_row(label, f"{float(f['probability']):.3f}", mark)
        out.print(table)
    if not results:
        out.print(f"no DICOM studies found under {path}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
