"""The wording tables of models.series_wording: one case (at least) per row, by row name.

Each case names the row it exercises; the coverage tests below fail when a row is added
without a case, so a row can never sit untested.
"""

from __future__ import annotations

import pytest

from models.series_wording import (
    CONTRAST_RULES,
    IMAGE_RULES,
    Contrast,
    ImageKind,
    contrast_wording,
    explain,
    image_wording,
)

C, N, U = Contrast.CONTRAST, Contrast.NON_CONTRAST, Contrast.UNKNOWN

#: (text as scanners and sites write it, verdict, the row that must match or None)
CONTRAST_CASES: list[tuple[str, Contrast, str | None]] = [
    # mixed: both phases named, the text says nothing about this series
    ("HEAD W/WO", U, "w/wo"),
    ("CT HEAD W & W/O CONTRAST", U, "w/wo"),
    ("HEAD WITH AND WITHOUT CONTRAST", U, "with and without"),
    ("BRAIN PRE/POST", U, "pre and post"),
    ("HEAD C-/C+", U, "c-/c+"),
    ("CCT nativ + KM", U, "nativ und km"),
    # neutral: look like contrast words, are not
    ("POST FOSSA 2.5mm", U, "posterior fossa"),
    ("HEAD POST OP", U, "post-operative"),
    ("HEAD PRE-OP 5mm", U, "pre-operative"),
    ("HEAD 0.5 FC26 AIDR 3D Enhanced", U, "aidr 3d enhanced"),
    ("Brain Edge Enhanced", U, "edge enhanced"),
    ("HEAD 5mm H30s (enhanced conversion)", U, "enhanced conversion"),
    ("POST PROCESSED AXIAL", U, "post-processed"),
    # negative: no contrast (the failure modes of the substring rule first)
    ("HEAD WITHOUT CONTRAST", N, "without"),
    ("HEAD W/O", N, "w/o"),
    ("HEAD W/O CONTRAST 5mm", N, "w/o"),
    ("CT HEAD WO", N, "wo"),
    ("HEAD NO IV CONTRAST", N, "no contrast"),
    ("NON-CON HEAD", N, "non-contrast"),
    ("NONCONTRAST HEAD 5mm", N, "non-contrast"),
    ("UNENHANCED HEAD", N, "unenhanced"),
    ("HEAD NON", N, "non"),
    ("CT PRE CONTRAST 5MM STD", N, "pre-contrast"),
    ("CT PRE CONTRAST THIN", N, "pre-contrast"),
    ("HEAD PRE 5mm", N, "pre"),
    ("CT PLAIN THIN", N, "plain"),
    ("CT Thin Plain", N, "plain"),
    ("CCT nativ 5.0 H31s", N, "native"),
    ("Kopf ohne KM", N, "ohne km"),
    ("TC CRANEO SIN CONTRASTE", N, "sin contraste"),
    ("TC ENCEFALO SENZA MDC", N, "senza mdc"),
    ("TDM CEREBRALE SANS INJECTION", N, "sans injection"),
    ("NCCT HEAD", N, "ncct"),
    ("HEAD C- 5mm", N, "c-"),
    ("HEAD WO POST FOSSA", N, "wo"),
    # positive: contrast
    ("HEAD WITH IV CONTRAST", C, "with"),
    ("HEAD W/ CONTRAST", C, "w/"),
    ("CT HEAD W", C, "w"),
    ("HEAD C+ 5mm", C, "c+"),
    ("CT HEAD +C", C, "c+"),
    ("HEAD POST 5mm", C, "post"),
    ("POSTCONTRAST AXIAL", C, "post"),
    ("CTA HEAD 0.625", C, "cta"),
    ("CT ANGIO COW", C, "cta"),
    ("CT VENOGRAM", C, "venogram"),
    ("HEAD ARTERIAL PHASE", C, "phase"),
    ("Cerebral Perfusion 5.0", C, "perfusion"),
    ("SmartPrep", C, "bolus"),
    ("HEAD CE 5mm", C, "ce"),
    ("CONTRAST ENHANCED HEAD", C, "enhanced"),
    ("Kopf mit KM", C, "km"),
    ("CCT KM 5.0 H31s", C, "km"),
    ("TC CRANIO CON MDC", C, "mdc"),
    ("TC CRANEO CON CONTRASTE", C, "con contraste"),
    ("TDM CEREBRALE AVEC INJECTION", C, "injection"),
    ("CT HEAD CONTRAST", C, "contrast"),
    # nothing said; words that only contain a row's letters
    ("CT 5mm", U, None),
    ("Head 5.0 H30s", U, None),
    ("Head 5.0 B_SOFT_B", U, None),
    ("AiCE HEAD 5.0", U, None),
    ("C-SPINE", U, None),
    ("", U, None),
    # both kinds of words in one text: unknown, attributes decide
    ("CTA PRE CONTRAST", U, "cta"),
]

IMAGE_CASES: list[tuple[str, ImageKind | None, str | None]] = [
    ("HEAD 5.0 FC26 AIDR 3D", None, "aidr 3d"),
    ("Head 5.0 B_SOFT_B KARL 3D", None, "karl 3d"),
    ("Scout", ImageKind.LOCALIZER, "scout"),
    ("Topogram  0.6  T20s", ImageKind.LOCALIZER, "topogram"),
    ("Surview", ImageKind.LOCALIZER, "surview"),
    ("Scanogram", ImageKind.LOCALIZER, "scanogram"),
    ("LOCALIZER", ImageKind.LOCALIZER, "localizer"),
    ("Dose Report", ImageKind.PAGE, "dose report"),
    ("Patient Protocol", ImageKind.PAGE, "patient protocol"),
    ("Screen Save", ImageKind.PAGE, "screen save"),
    ("AX MinIP 10mm", ImageKind.PROJECTION, "minip"),
    ("AX MIP 10mm", ImageKind.PROJECTION, "mip"),
    ("3D HEAD", ImageKind.RENDERING, "3d"),
    ("VRT bone", ImageKind.RENDERING, "vr"),
    ("MPR 3mm", ImageKind.REFORMAT, "mpr"),
    ("Reformatted 2mm", ImageKind.REFORMAT, "reformat"),
    ("COR 2.5mm", ImageKind.REFORMAT, "coronal"),
    ("SAG 2.5mm", ImageKind.REFORMAT, "sagittal"),
    ("OBL 3mm", ImageKind.REFORMAT, "oblique"),
    ("HEAD 5.0 FC21 AIDR3D", None, "aidr 3d"),
    ("HEAD3D 1.0", None, None),  # "3D" inside another word
    ("Brain Core 5mm", None, None),
    ("Head 5.0 H30s", None, None),
]


def _case_id(case: tuple[str, object, str | None]) -> str:
    return f"{case[2] or '-'}:{case[0] or '<empty>'}"


@pytest.mark.parametrize(
    ("text", "verdict", "row"), CONTRAST_CASES, ids=map(_case_id, CONTRAST_CASES)
)
def test_contrast_wording(text: str, verdict: Contrast, row: str | None) -> None:
    wording = contrast_wording(text)
    assert wording.verdict is verdict
    names = {m.rule.name for m in wording.matches}
    if row is None:
        assert names == set()
    else:
        assert row in names


@pytest.mark.parametrize(("text", "kind", "row"), IMAGE_CASES, ids=map(_case_id, IMAGE_CASES))
def test_image_wording(text: str, kind: ImageKind | None, row: str | None) -> None:
    found = image_wording(text)
    assert (found[0] if found else None) is kind
    names = {m.rule.name for m in explain(text, IMAGE_RULES)}
    if row is None:
        assert names == set()
    else:
        assert row in names


@pytest.mark.parametrize(
    ("rules", "cases"), [(CONTRAST_RULES, CONTRAST_CASES), (IMAGE_RULES, IMAGE_CASES)]
)
def test_every_row_has_a_case_and_names_are_unique(rules, cases) -> None:  # type: ignore[no-untyped-def]
    names = [r.name for r in rules]
    assert len(names) == len(set(names))
    assert set(names) == {row for _, _, row in cases if row is not None}


def test_a_negation_consumes_the_word_it_negates() -> None:
    (match,) = explain("HEAD WITHOUT CONTRAST", CONTRAST_RULES)
    assert match.rule.name == "without"
    assert match.text == "WITHOUT CONTRAST"
    assert contrast_wording("HEAD C+ 5mm").evidence == "C+"
