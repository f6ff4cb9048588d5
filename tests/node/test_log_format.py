"""``logging.format: json``: one JSON object per line with the key=value format's fields,
chosen in config.yaml (or ``ICH_LOGGING__FORMAT``) and honoured by the CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import load_settings
from dicom_node.errors import ConfigError
from dicom_node.logs import setup_logging


def _emit(fmt: str) -> str:
    buf = io.StringIO()
    handler = setup_logging("INFO", stream=buf, fmt=fmt)  # type: ignore[arg-type]
    log = logging.getLogger("test.logformat")
    try:
        log.info(
            "store.ok",
            extra={"study": "3f2a9c01be77", "instances": 12, "mb": 1.5, "path": Path("a b")},
        )
        try:
            raise ValueError("DOE^JANE 19700101")
        except ValueError:
            log.exception("store.failed", extra={"study": "3f2a9c01be77"})
    finally:
        logging.getLogger().removeHandler(handler)
    return buf.getvalue()


def test_json_lines_carry_the_fields_and_only_the_exception_type() -> None:
    lines = _emit("json").splitlines()
    assert len(lines) == 2
    ok, failed = (json.loads(line) for line in lines)
    assert ok["event"] == "store.ok"
    assert ok["level"] == "INFO"
    assert ok["logger"] == "test.logformat"
    assert ok["ts"].endswith("Z")
    assert ok["instances"] == 12  # numbers stay numbers
    assert ok["mb"] == 1.5
    assert ok["path"] == "a b"  # anything else as its text
    assert failed["exc_type"] == "ValueError"
    assert "DOE" not in lines[1]
    assert "Traceback" not in lines[1]


def test_text_stays_key_value() -> None:
    out = _emit("text")
    assert out.startswith("ts=")
    assert "event=store.ok" in out
    assert "instances=12" in out
    assert "{" not in out


def test_config_accepts_text_and_json_only(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("logging:\n  format: json\n")
    assert load_settings(cfg).logging.format == "json"
    assert load_settings(None).logging.format == "text"
    cfg.write_text("logging:\n  format: xml\n")
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_settings(cfg)


def test_cli_logs_json_when_configured(tmp_path: Path) -> None:
    """A real ``dicom-node reindex`` over a spool holding one unreadable file."""
    bad = tmp_path / "var" / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not DICOM")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("inference:\n  enabled: false\n")
    env = {**os.environ, "ICH_LOGGING__FORMAT": "json"}
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "reindex", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["spool.unreadable"]
    assert events[0]["path"] == "1.2.3.4.5.dcm"
