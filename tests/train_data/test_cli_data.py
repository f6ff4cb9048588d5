"""``python -m train synth | inspect | prepare`` through typer, and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import train.cli_data  # noqa: F401  (registers the data commands on the app)
from train.cli import app
from train.data.cache import PreparedCache

Tree = tuple[Path, dict[str, Any]]


def test_synth_inspect_prepare_cq500(tmp_path: Path) -> None:
    runner = CliRunner()
    data, cache = tmp_path / "cq500", tmp_path / "cache"
    common = ["--no-progress"]
    result = runner.invoke(
        app,
        [
            "synth",
            "--layout",
            "cq500",
            "--out",
            str(data),
            "--studies",
            "2",
            "--seed",
            "9",
            "--size",
            "32",
            "--min-slices",
            "11",
            "--max-slices",
            "11",
            "--thin-mm",
            "2.5",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    args = json.loads((data / "synth-args.json").read_text())
    assert args["args"]["studies"] == 2
    assert args["args"]["layout"] == "cq500"

    result = runner.invoke(
        app, ["inspect", "--layout", "cq500", "--data", str(data), "--json", *common]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["scans_found"] == 2
    assert report["studies"][0]["chosen"]["description"] == "CT 5mm"

    result = runner.invoke(app, ["inspect", "--layout", "cq500", "--data", str(data), *common])
    assert result.exit_code == 0, result.output
    assert "skipped 'CT BONE'" in result.output

    result = runner.invoke(
        app,
        [
            "prepare",
            "--layout",
            "cq500",
            "--data",
            str(data),
            "--out",
            str(cache),
            "--size",
            "16",
            "--workers",
            "1",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(PreparedCache(cache)) == 2
    assert json.loads((cache / "prepare-args.json").read_text())["args"]["size"] == 16

    # Another size into the same cache: refused, and the recorded arguments stay intact.
    result = runner.invoke(
        app,
        [
            "prepare",
            "--layout",
            "cq500",
            "--data",
            str(data),
            "--out",
            str(cache),
            "--size",
            "24",
            *common,
        ],
    )
    assert result.exit_code == 2
    assert json.loads((cache / "prepare-args.json").read_text())["args"]["size"] == 16


def test_inspect_rsna_as_a_process(rsna_tree: Tree, tmp_path: Path) -> None:
    root, truth = rsna_tree
    report_path = tmp_path / "report" / "rsna.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "inspect",
            "--layout",
            "rsna",
            "--data",
            str(root),
            "--no-progress",
            "--workers",
            "1",
            "--out",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "duplicate CSV rows dropped: 18" in proc.stdout
    assert "unreadable files skipped: 1" in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["studies"] == len(truth["train"])
    assert report["studies_shorter_than_10"] == 1
    assert (report_path.parent / "inspect-args.json").is_file()


def test_bad_layout_folder_exits_with_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["inspect", "--layout", "rsna", "--data", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 2
    assert "no RSNA train image folder" in result.output
