"""Typed configuration: file, environment overrides, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import load_settings
from dicom_node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_and_matches_embedded_defaults() -> None:
    shipped = load_settings(REPO / "config.yaml")
    embedded = load_settings(None)
    assert shipped.model_dump(exclude={"base_dir"}) == embedded.model_dump(exclude={"base_dir"})
    assert shipped.node.ae_title == "ICHNODE"
    assert shipped.node.port == 11112
    assert shipped.study.quiet_seconds == 30
    assert shipped.destinations[0].ae_title == "ORTHANC"


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "site" / "node.yaml"
    cfg.parent.mkdir()
    cfg.write_text("storage: {spool_dir: spool}\n")
    s = load_settings(cfg)
    assert s.resolve(s.storage.spool_dir) == (tmp_path / "site" / "spool").resolve()
    assert s.resolve(Path("/abs/x")) == Path("/abs/x")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("node: {port: 104}\n")
    monkeypatch.setenv("ICH_NODE__PORT", "4242")
    monkeypatch.setenv("ICH_STUDY__QUIET_SECONDS", "2.5")
    s = load_settings(cfg)
    assert s.node.port == 4242
    assert s.study.quiet_seconds == 2.5


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("node: {port: 99999}\n", "node.port"),
        ("node: {ae_title: 'THIS_AE_TITLE_IS_TOO_LONG'}\n", "node.ae_title"),
        ("node: {prot: 1}\n", "node.prot"),
        ("study: {quiet_seconds: -1}\n", "study.quiet_seconds"),
        ("destinations: [{name: p, ae_title: X, host: h, port: 0}]\n", "destinations[0].port"),
        ("bogus: 1\n", "bogus"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert key in str(info.value)


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICH_NODE__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"node\.port"):
        load_settings(None)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)
