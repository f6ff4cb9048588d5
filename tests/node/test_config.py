"""Typed configuration: file, environment overrides, clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import Destination, DicomwebDestination, load_settings
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


def test_index_db_is_a_path_or_a_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "site" / "node.yaml"
    cfg.parent.mkdir()
    cfg.write_text("storage: {index_db: db/index.sqlite}\n")
    assert load_settings(cfg).index_target() == (tmp_path / "site" / "db" / "index.sqlite")
    cfg.write_text("storage: {index_db: 'sqlite:///db/index.sqlite'}\n")
    assert load_settings(cfg).index_target() == (tmp_path / "site" / "db" / "index.sqlite")
    cfg.write_text("storage: {index_db: 'sqlite:////abs/index.sqlite'}\n")
    assert load_settings(cfg).index_target() == Path("/abs/index.sqlite")
    url = "postgresql+psycopg://node:pw@db.example:5433/ich"
    monkeypatch.setenv("ICH_STORAGE__INDEX_DB", url)  # the environment wins, as for any key
    s = load_settings(cfg)
    assert s.storage.index_db == url
    assert s.index_target() == url
    monkeypatch.delenv("ICH_STORAGE__INDEX_DB")
    assert load_settings(None).index_target() == Path("var/index.sqlite").resolve()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("storage: {index_db: 'mysql://u:p@h/db'}\n", "storage.index_db"),
        ("storage: {index_db: 'sqlite:///'}\n", "storage.index_db"),
        ("storage: {index_db: ''}\n", "storage.index_db"),
        ("node: {port: 99999}\n", "node.port"),
        ("node: {ae_title: 'THIS_AE_TITLE_IS_TOO_LONG'}\n", "node.ae_title"),
        ("node: {prot: 1}\n", "node.prot"),
        ("study: {quiet_seconds: -1}\n", "study.quiet_seconds"),
        ("destinations: [{name: p, ae_title: X, host: h, port: 0}]\n", "destinations[0].port"),
        ("bogus: 1\n", "bogus"),
        ("destinations: [{kind: dicomweb, name: w}]\n", "destinations[0].url"),
        ("destinations: [{kind: dicomweb, name: w, url: 'ftp://x'}]\n", "destinations[0].url"),
        (
            "destinations: [{kind: dicomweb, name: w, url: 'http://x', auth: {username: u}}]\n",
            "destinations[0].auth",
        ),
        (
            "destinations: [{kind: dicomweb, name: w, url: 'http://x', timeout_s: 0}]\n",
            "destinations[0].timeout_s",
        ),
        (
            "destinations: [{kind: dicomweb, name: w, url: 'http://x', port: 4}]\n",
            "destinations[0].port",
        ),
        (
            "destinations: [{kind: dicomweb, name: 'hl7:w', url: 'http://x'}]\n",
            "destinations[0].name",
        ),
        ("destinations: [{kind: stow, name: w, url: 'http://x'}]\n", "destinations[0]: kind"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert key in str(info.value)


def test_destination_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``kind`` is a C-STORE PACS (older configs stay valid); ``kind: dicomweb`` is a
    STOW-RS archive whose secret may come from the environment."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "destinations:\n"
        "  - {name: pacs, ae_title: PACS, host: pacs.local, port: 104}\n"
        "  - {kind: dicomweb, name: cloud, url: 'https://archive.example.org/dicom-web/',\n"
        "     auth: {username: ich, password: from-file}, send: [sr]}\n"
    )
    pacs, cloud = load_settings(cfg).destinations
    assert isinstance(pacs, Destination)
    assert pacs.kind == "dimse"
    assert isinstance(cloud, DicomwebDestination)
    assert cloud.url == "https://archive.example.org/dicom-web"  # no trailing slash
    assert cloud.send == ("sr",)
    assert cloud.auth is not None
    assert cloud.auth.password is not None
    assert cloud.auth.password.get_secret_value() == "from-file"
    assert "from-file" not in repr(cloud)
    assert cloud.max_attempts == 8
    assert cloud.timeout_s == 30.0

    override = '[{"kind": "dicomweb", "name": "cloud", "url": "https://a.example.org/dw",'
    monkeypatch.setenv("ICH_DESTINATIONS", override + ' "auth": {"bearer": "tok"}}]')
    (env,) = load_settings(cfg).destinations
    assert isinstance(env, DicomwebDestination)
    assert env.auth is not None
    assert env.auth.bearer is not None
    assert env.auth.bearer.get_secret_value() == "tok"
    assert env.auth.username is None


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
