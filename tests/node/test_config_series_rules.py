"""``series_choice.rules``: validated at start-up, errors name the key of the bad part."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicom_node.config import load_settings
from dicom_node.errors import ConfigError
from models.series_choice import SeriesRule

REPO = Path(__file__).resolve().parents[2]

GOOD = """
series_choice:
  rules:
    - name: no-navigation
      action: exclude
      match: {ProtocolName: "STEALTH", StationName: "^CT-OR"}
      reason: navigation scans
    - name: lab-axial
      action: include
      match: {SeriesDescription: "^AX 5mm SOFT$"}
      priority: 10
"""


def test_rules_load_into_series_rules(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, GOOD))
    rules = settings.series_choice.series_rules()
    assert rules == (
        SeriesRule(
            "no-navigation",
            "exclude",
            {"ProtocolName": "STEALTH", "StationName": "^CT-OR"},
            0,
            "navigation scans",
        ),
        SeriesRule("lab-axial", "include", {"SeriesDescription": "^AX 5mm SOFT$"}, 10, ""),
    )
    assert rules[0].keywords == ("ProtocolName", "StationName")


def _write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return cfg


def _rule(name: str, action: str, match: str) -> str:
    return f"    - {{name: {name}, action: {action}, match: {match}}}\n"


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        (
            _rule("a", "exclude", "{Modality: CT}")
            + _rule("b", "exclude", "{SeriesDescrption: HEAD}"),
            "series_choice.rules[1].match.SeriesDescrption: not a DICOM keyword",
        ),
        (
            _rule("a", "include", "{ProtocolName: '(HEAD'}"),
            "series_choice.rules[0].match.ProtocolName: invalid regular expression",
        ),
        (
            _rule("a", "include", "{ContrastBolusAgentSequence: x}"),
            "series_choice.rules[0].match.ContrastBolusAgentSequence: a sequence",
        ),
        (_rule("a", "keep", "{Modality: CT}"), "series_choice.rules[0].action: Input should be"),
        (_rule("a", "include", "{}"), "series_choice.rules[0].match: "),
        (
            _rule("a", "include", "{Modality: CT}") + _rule("a", "exclude", "{Modality: MR}"),
            "series_choice.rules: rule names must be unique (repeated: a)",
        ),
        ("    - {name: a, action: include, match: {Modality: CT}, colour: red}\n",
         "series_choice.rules[0].colour: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_rules_name_the_key(tmp_path: Path, rules: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "series_choice:\n  rules:\n" + rules))
    assert error in str(info.value)


def test_rules_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ICH_SERIES_CHOICE__RULES",
        '[{"name": "x", "action": "exclude", "match": {"StationName": "^CT2$"}}]',
    )
    (rule,) = load_settings(None).series_choice.series_rules()
    assert rule.name == "x"
    assert rule.match == {"StationName": "^CT2$"}


def test_the_commented_example_in_config_yaml_is_valid(tmp_path: Path) -> None:
    """Uncommenting the shipped example must give a config that loads."""
    text = (REPO / "config.yaml").read_text(encoding="utf-8")
    block = re.search(r"^  # rules:\n((?:  #   .*\n)+)", text, re.MULTILINE)
    assert block is not None
    example = "  rules:\n" + re.sub(r"^  #", "  ", block.group(1), flags=re.MULTILINE)
    settings = load_settings(_write(tmp_path, "series_choice:\n" + example))
    names = [r.name for r in settings.series_choice.series_rules()]
    assert names == ["stealth-navigation", "postproc-axial"]
