"""``dicom-node user add`` and ``user token``: the entries they print are what the config
accepts, and they log in: the printed hash verifies the password, the printed digest the
token. Run through the real CLI (typer's runner), config parsed by the node's loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.config import WebSection, load_settings
from dicom_node.errors import ConfigError
from dicom_node.web.auth import Authenticator


def _entry(output: str) -> dict[str, str]:
    """The YAML list item the command printed (after its comment lines)."""
    items = yaml.safe_load("\n".join(ln for ln in output.splitlines() if ln.startswith("  ")))
    assert isinstance(items, list)
    (item,) = items
    return dict(item)


def test_user_add_prints_an_entry_that_logs_in(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["user", "add", "dr.verdi", "--password-stdin"], input="night shift 7\n"
    )
    assert result.exit_code == 0, result.output
    assert "night shift 7" not in result.output
    entry = _entry(result.stdout)
    assert entry["name"] == "dr.verdi"
    assert entry["password_hash"].startswith("$argon2id$")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump({"web": {"users": [entry], "session_secret": "k" * 32}}), encoding="utf-8"
    )
    auth = Authenticator(load_settings(cfg).web)
    assert auth.check_password("dr.verdi", "night shift 7")
    assert not auth.check_password("dr.verdi", "night shift 8")
    assert not auth.check_password("dr.rossi", "night shift 7")


def test_user_add_refuses_a_short_password_and_a_bad_name() -> None:
    short = CliRunner().invoke(app, ["user", "add", "a", "--password-stdin"], input="short\n")
    assert short.exit_code == 2
    bad = CliRunner().invoke(
        app, ["user", "add", "dr rossi; rm", "--password-stdin"], input="long enough pw\n"
    )
    assert bad.exit_code == 2


def test_user_token_prints_a_token_and_its_digest() -> None:
    result = CliRunner().invoke(app, ["user", "token", "ris"])
    assert result.exit_code == 0, result.output
    token = result.stdout.split("client): ")[1].split()[0]
    entry = _entry(result.stdout)
    auth = Authenticator(WebSection.model_validate({"api_tokens": [entry]}))
    assert auth.check_token(token) == "ris"
    assert auth.check_token(token + "x") is None


def test_users_need_a_session_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    user = {"name": "dr.verdi", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y"}
    cfg.write_text(yaml.safe_dump({"web": {"users": [user]}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="session_secret"):
        load_settings(cfg)
