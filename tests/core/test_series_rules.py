"""Site include/exclude rules through choose_series, on series written to disk.

Series come from the header corpus (tests/core/series_corpus.py), so the rules act on
what real consoles write; the rule engine is models.series_choice.SeriesRule.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from core.series_corpus import BY_NAME, Entry, write_entry
from pydicom.uid import generate_uid

from models.dicom_io import iter_dicom_files, scan_headers
from models.series_choice import (
    SeriesChoice,
    SeriesRule,
    SeriesRuleError,
    choose_series,
    rule_keywords,
)


def study(tmp_path: Path, *entries: Entry | str) -> dict[str, str]:
    """Write the entries (corpus names or Entry objects) as one study; name -> series UID."""
    uid = generate_uid()
    out = {}
    for e in entries:
        entry = BY_NAME[e] if isinstance(e, str) else e
        out[entry.name] = write_entry(tmp_path, entry, uid)
    return out


def choose(tmp_path: Path, *rules: SeriesRule, extra: bool = True) -> SeriesChoice:
    tags = rule_keywords(rules) if extra else ()
    headers = scan_headers(iter_dicom_files(tmp_path), extra_tags=tags).headers
    return choose_series(headers, rules)


def test_exclude_rule_skips_a_matching_series_with_its_reason(tmp_path: Path) -> None:
    uids = study(tmp_path, "sie_h30s", "sie_h60s")
    rule = SeriesRule(
        "no-h30", "exclude", {"ConvolutionKernel": "^H30s$"}, reason="reader wants bone"
    )
    choice = choose(tmp_path, rule)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["sie_h60s"]
    assert choice.skipped[uids["sie_h30s"]] == "site rule 'no-h30': reader wants bone"
    excluded = choice.summary_of(uids["sie_h30s"])
    assert excluded is not None
    assert excluded.rule == "no-h30"


def test_include_rule_overrides_image_type_and_is_preferred(tmp_path: Path) -> None:
    """A site whose 3D lab re-sends the axial soft series as DERIVED\\SECONDARY."""
    postproc = Entry(
        "lab_axial",
        "SIEMENS",
        "AX 5mm SOFT",
        False,
        image_type=("DERIVED", "SECONDARY", "AXIAL"),
        kernel="H30s",
        series_number=900,
    )
    uids = study(tmp_path, postproc, "sie_j45s_thin")
    assert choose(tmp_path).chosen.series_uid == uids["sie_j45s_thin"]  # type: ignore[union-attr]
    rule = SeriesRule(
        "postproc-axial",
        "include",
        {"SeriesDescription": "^ax 5mm soft$", "ImageType": r"^DERIVED\\SECONDARY\\AXIAL$"},
    )
    choice = choose(tmp_path, rule)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["lab_axial"]
    assert choice.chosen.rule == "postproc-axial"
    assert choice.skipped[uids["sie_j45s_thin"]] == (
        "another series fits better (site rule 'postproc-axial' prefers that one, spacing 0.6 mm)"
    )


def test_include_rule_overrides_contrast_wording(tmp_path: Path) -> None:
    uids = study(tmp_path, "ge_c_plus")
    assert not choose(tmp_path).eligible
    rule = SeriesRule("c-plus-is-plain-here", "include", {"SeriesDescription": r"C\+"})
    choice = choose(tmp_path, rule)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["ge_c_plus"]


def test_include_rule_cannot_make_the_impossible_eligible(tmp_path: Path) -> None:
    uids = study(tmp_path, "hard_9_slices", "ge_dose_report")
    rule = SeriesRule("everything", "include", {"Modality": "."})
    choice = choose(tmp_path, rule)
    assert not choice.eligible
    assert choice.skipped[uids["hard_9_slices"]] == (
        "only 9 slices (< 10); site rule 'everything' matched but cannot include it"
    )
    assert choice.skipped[uids["ge_dose_report"]].startswith("Secondary Capture")
    assert choice.skipped[uids["ge_dose_report"]].endswith("cannot include it")


@pytest.mark.parametrize(
    ("include_priority", "exclude_priority", "chosen"),
    [(10, 5, True), (5, 10, False), (7, 7, False)],
)
def test_priority_decides_between_rules_that_both_match(
    tmp_path: Path, include_priority: int, exclude_priority: int, chosen: bool
) -> None:
    uids = study(tmp_path, "sie_h30s")
    rules = (
        SeriesRule("in", "include", {"Manufacturer": "siemens"}, include_priority),
        SeriesRule("out", "exclude", {"SeriesDescription": "head"}, exclude_priority, "x"),
    )
    choice = choose(tmp_path, *rules)
    assert choice.eligible is chosen
    summary = choice.summary_of(uids["sie_h30s"])
    assert summary is not None
    assert summary.rule == ("in" if chosen else "out")


def test_higher_priority_include_wins_between_two_series(tmp_path: Path) -> None:
    uids = study(tmp_path, "sie_h30s", "sie_h60s")
    rules = (
        SeriesRule("soft", "include", {"ConvolutionKernel": "H30s"}, priority=1),
        SeriesRule("bone", "include", {"ConvolutionKernel": "H60s"}, priority=2),
    )
    choice = choose(tmp_path, *rules)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["sie_h60s"]
    assert choice.skipped[uids["sie_h30s"]].endswith("; site rule 'soft' included it")


def test_rules_match_attributes_read_through_extra_tags(tmp_path: Path) -> None:
    """StationName is not in HEADER_TAGS: scan_headers reads it when a rule asks."""
    er = dataclasses.replace(BY_NAME["ge_5mm_stnd"], attributes={"StationName": "CT-ER-1"})
    uids = study(tmp_path, er, "ge_ct_head_wo")
    rule = SeriesRule("not-er", "exclude", {"StationName": "^CT-ER"}, reason="ER scanner")
    choice = choose(tmp_path, rule)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["ge_ct_head_wo"]
    assert choice.skipped[uids["ge_5mm_stnd"]] == "site rule 'not-er': ER scanner"
    # Scanned without the rule's keywords, the attribute is absent and does not match.
    unread = choose(tmp_path, rule, extra=False)
    assert unread.chosen is not None
    assert unread.chosen.series_uid == uids["ge_5mm_stnd"]


def test_include_rule_overrides_the_body_part_check(tmp_path: Path) -> None:
    orbit = dataclasses.replace(BY_NAME["ge_5mm_stnd"], body_part="ORBIT")
    uids = study(tmp_path, orbit)
    assert choose(tmp_path).reason == "BodyPartExamined ORBIT is not head"
    rule = SeriesRule("orbits", "include", {"BodyPartExamined": "^ORBIT$"})
    choice = choose(tmp_path, rule)
    assert choice.chosen is not None
    assert choice.chosen.series_uid == uids["ge_5mm_stnd"]


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"match": {"SeriesDescrption": "x"}}, "match.SeriesDescrption", "not a DICOM keyword"),
        ({"match": {"ContrastBolusAgentSequence": "x"}}, "match.ContrastBolusAgentSequence",
         "a sequence"),
        ({"match": {"ProtocolName": "("}}, "match.ProtocolName", "invalid regular expression"),
        ({"match": {}}, "match", "at least one"),
        ({"action": "keep"}, "action", "include or exclude"),
        ({"name": " "}, "name", "must not be empty"),
    ],
)  # fmt: skip
def test_rule_errors_name_the_key(kwargs: dict[str, object], key: str, message: str) -> None:
    args: dict[str, object] = {"name": "r", "action": "exclude", "match": {"Modality": "CT"}}
    args.update(kwargs)
    with pytest.raises(SeriesRuleError) as info:
        SeriesRule(**args)  # type: ignore[arg-type]
    assert info.value.key == key
    assert message in str(info.value)
