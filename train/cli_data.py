"""``python -m train synth | inspect | prepare``: the data commands.

They register on the shared ``train.cli.app`` when imported (``train/cli.py`` imports this
module at start-up). Each command that writes a folder saves its resolved arguments there
(``<command>-args.json``) so that a data set or cache says how it was made.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from models import __version__ as CODE_VERSION
from train.cli import app
from train.data.errors import DataError


class LayoutName(StrEnum):
    """The two published layouts the readers understand."""

    rsna = "rsna"
    cq500 = "cq500"


class SubsetName(StrEnum):
    """RSNA subsets: ``stage_2_train`` (labelled) or ``stage_2_test``."""

    train = "train"
    test = "test"


def write_args(folder: Path, command: str, args: dict[str, Any]) -> Path:
    """Save the resolved arguments of ``command`` as ``<folder>/<command>-args.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-args.json"
    data = {
        "command": command,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
        "argv": sys.argv[1:],
        "code_version": CODE_VERSION,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@app.command()
def synth(
    layout: Annotated[LayoutName, typer.Option(help="Which published layout to imitate.")],
    out: Annotated[Path, typer.Option(help="Folder to write the data set into.")],
    studies: Annotated[int, typer.Option(min=1, help="Train studies (RSNA) or scans (CQ500).")],
    seed: Annotated[int, typer.Option(min=0, help="Data set seed: same seed, same files.")] = 0,
    size: Annotated[int, typer.Option(min=16, max=2048, help="Matrix size of slices.")] = 512,
    min_slices: Annotated[int, typer.Option(min=1, help="Fewest slices per study.")] = 20,
    max_slices: Annotated[int, typer.Option(min=1, help="Most slices per study.")] = 40,
    p_bleed: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of positives.")] = 0.5,
    test_studies: Annotated[int, typer.Option(min=0, help="RSNA: stage_2_test studies.")] = 2,
    stage1: Annotated[
        bool, typer.Option(help="RSNA: also write stage_1_train.csv (reference split).")
    ] = False,
    thin_mm: Annotated[float, typer.Option(help="CQ500: spacing of the thin series (mm).")] = 1.25,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Write a phantom data set laid out exactly like the RSNA 2019 or CQ500 download."""
    from train.data.synth import synth_cq500, synth_rsna

    if max_slices < min_slices:
        raise typer.BadParameter("--max-slices must be >= --min-slices")
    args = {k: v for k, v in locals().items() if k not in ("synth_cq500", "synth_rsna")}
    args["layout"] = str(layout)
    write_args(out, "synth", args)
    try:
        if layout is LayoutName.rsna:
            truth = synth_rsna(
                out,
                studies,
                seed,
                size,
                slices=(min_slices, max_slices),
                test_studies=test_studies,
                p_bleed=p_bleed,
                with_stage1=stage1,
                progress=progress,
            )
            typer.echo(
                f"wrote {len(truth['train'])} train and {len(truth['test'])} test studies "
                f"({sum(e['n_slices'] for e in truth['train'])} train slices) to {out}"
            )
        else:
            truth = synth_cq500(
                out,
                studies,
                seed,
                size,
                slices=(max(10, min_slices), max(10, max_slices)),
                thin_mm=thin_mm,
                p_bleed=p_bleed,
                progress=progress,
            )
            typer.echo(f"wrote {len(truth['scans'])} CQ500 scans to {out}")
    except (ValueError, DataError) as exc:
        raise _fail(exc) from exc


def _print_rsna(summary: dict[str, Any]) -> None:
    s = summary
    typer.echo(f"RSNA {s['image_dir']}")
    typer.echo(
        f"  files {s['files']}  studies {s['studies']}  slices {s['slices']}  "
        f"patients {s['patients']}"
    )
    per = s["slices_per_study"]
    typer.echo(f"  slices per study: min {per['min']}  median {per['median']:g}  max {per['max']}")
    short = [k for k in s if k.startswith("studies_shorter_than_")]
    for k in short:
        typer.echo(f"  {k.replace('_', ' ')}: {s[k]}")
    typer.echo("  positives    slices  studies")
    for name, n in s["positive_slices"].items():
        typer.echo(f"    {name:<18} {n:>6} {s['positive_studies'][name]:>8}")
    typer.echo(f"  duplicate CSV rows dropped: {s['duplicates_dropped']}")
    typer.echo(f"  unreadable files skipped: {s['unreadable_skipped']}")
    typer.echo(f"  files without labels skipped: {s['unlabelled_files_skipped']}")
    typer.echo(f"  label rows without a file: {s['labels_without_file']}")
    typer.echo(f"  slices at a duplicate position dropped: {s['duplicate_positions_dropped']}")
    typer.echo(f"  studies skipped: {s['studies_skipped']} {s['studies_skipped_reasons'] or ''}")


def _print_cq500(summary: dict[str, Any]) -> None:
    s = summary
    typer.echo(f"CQ500 {s['root']}")
    typer.echo(
        f"  scans found {s['scans_found']}  in reads.csv {s['scans_in_reads_csv']}  "
        f"eligible {s['scans_eligible']}  evaluable {s['scans_evaluable']}  "
        f"slices (chosen series) {s['slices_chosen']}"
    )
    typer.echo("  positive scans (2 of 3 readers):")
    for name, n in s["positive_scans"].items():
        typer.echo(f"    {name:<18} {n:>6}")
    typer.echo(f"  not eligible: {s['not_eligible'] or 0}")
    typer.echo(f"  scans without reads: {len(s['scans_without_reads'])}")
    typer.echo(f"  reads without scan: {len(s['reads_without_scan'])}")
    typer.echo(f"  archives not unpacked: {len(s['archives_not_unpacked'])}")
    typer.echo(f"  unreadable files skipped: {s['unreadable_skipped']}")
    for st in s.get("studies", []):
        chosen = st["chosen"]
        if chosen is None:
            typer.echo(f"  {st['name']}: no series chosen ({st['reason']})")
        else:
            typer.echo(
                f"  {st['name']}: '{chosen['description']}' ({chosen['slices']} slices, "
                f"{chosen['spacing_mm']} mm, kernel {chosen['kernel'] or '?'})"
            )
        for desc, why in st["skipped"].items():
            typer.echo(f"      skipped '{desc}': {why}")


@app.command()
def inspect(
    layout: Annotated[LayoutName, typer.Option(help="rsna or cq500.")],
    data: Annotated[Path, typer.Option(help="The data set's root folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    subset: Annotated[SubsetName, typer.Option(help="RSNA: train or test.")] = SubsetName.train,
    workers: Annotated[int, typer.Option(help="Processes for the header scan (0: all).")] = 0,
    window: Annotated[
        int, typer.Option(min=1, help="Training window, to count short studies.")
    ] = 10,
    out: Annotated[
        Path | None, typer.Option(help="Also write the report (and args) to this JSON file.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """What the reader sees: studies, slices, positives, what was dropped and why."""
    from train.data import cq500, rsna
    from train.data.scan import resolve_workers

    n_workers = resolve_workers(workers)
    try:
        if layout is LayoutName.rsna:
            summary = rsna.load(data, subset.value, workers=n_workers, progress=progress).summary(
                window
            )
            summary["subset"] = subset.value
        else:
            summary = cq500.find_studies(data, workers=n_workers, progress=progress).summary()
    except DataError as exc:
        raise _fail(exc) from exc
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
        write_args(
            out.parent,
            "inspect",
            {
                "layout": str(layout),
                "data": data,
                "subset": subset.value,
                "workers": n_workers,
                "window": window,
                "out": out,
            },
        )
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
    elif layout is LayoutName.rsna:
        _print_rsna(summary)
    else:
        _print_cq500(summary)


@app.command()
def prepare(
    layout: Annotated[LayoutName, typer.Option(help="rsna or cq500.")],
    data: Annotated[Path, typer.Option(help="The data set's root folder.")],
    out: Annotated[Path, typer.Option(help="Cache folder (resumed when it exists).")],
    size: Annotated[int, typer.Option(min=16, help="Slice size in the cache (512 native).")] = 256,
    workers: Annotated[int, typer.Option(help="Worker processes (0: all CPU cores).")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N studies.")] = None,
    subset: Annotated[SubsetName, typer.Option(help="RSNA: train or test.")] = SubsetName.train,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Decode DICOM once into windowed uint8 slices that training memory-maps."""
    from train.data.cache import check_compatible
    from train.data.cache import prepare as run_prepare
    from train.data.scan import resolve_workers

    n_workers = resolve_workers(workers)
    try:
        check_compatible(out, layout.value, subset.value, data, size)
    except DataError as exc:
        raise _fail(exc) from exc
    write_args(
        out,
        "prepare",
        {
            "layout": str(layout),
            "data": data.resolve(),
            "out": out.resolve(),
            "size": size,
            "workers": n_workers,
            "limit": limit,
            "subset": subset.value,
        },
    )
    try:
        cache = run_prepare(
            layout.value,
            data,
            out,
            size=size,
            workers=n_workers,
            limit=limit,
            subset=subset.value,
            progress=progress,
        )
    except (DataError, ValueError) as exc:
        raise _fail(exc) from exc
    counts = cache.counts
    typer.echo(
        f"cache {out}: {len(cache)} studies, {counts.get('slices', 0)} slices at {size}px "
        f"({counts.get('studies_resumed', 0)} resumed, {counts.get('studies_failed', 0)} failed, "
        f"{counts.get('unreadable_pixels_skipped', 0)} slices unreadable, "
        f"{counts.get('quirk_corrected_slices', 0)} quirk-corrected)"
    )
