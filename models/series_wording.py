"""What a series description or protocol name *says*, read as words, not substrings.

Descriptions are free text typed by vendors' protocol authors and technologists, so the
same fact comes in many spellings: "HEAD W/O", "CT HEAD WO", "HEAD WITHOUT CONTRAST",
"PRE CONTRAST", "Kopf nativ", "NCCT" all mean *no* contrast, yet each contains a word a
naive ``\\bCONTRAST\\b`` search takes for contrast. Two tables here turn text into a
verdict; :mod:`models.series_choice` consults them only where DICOM attributes (ImageType,
the ContrastBolus* attributes) are silent, because attributes are written by the scanner
and text by people.

How a table is read: the text is upper-cased and each row is tried in table order. A row
matches only whole words (letters and digits on neither side, so "3D" inside "AIDR3D" or
"CE" inside "AICE" is not a match; "_" separates words as United Imaging's "B_SOFT_B"
does). What a row matched is blanked out before the next row is tried, so a negation
row ("WITHOUT CONTRAST") consumes the contrast word it negates, and a neutral row
("POST FOSSA", "AIDR 3D Enhanced") consumes words that only look meaningful. Hence the
order: mixed, neutral, negative, positive.

Contrast verdict: both W/ and W/O in one text ("HEAD W/WO", "WITH AND WITHOUT") names a
study with both phases, so it says nothing about this series: unknown, and the series'
attributes (or nothing) decide. Otherwise negative words alone -> non-contrast, positive
words alone -> contrast, both or neither -> unknown.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_LEFT = r"(?<![A-Z0-9])"
_RIGHT = r"(?![A-Z0-9])"
#: an optional "IV " between a negation and its contrast word ("NO IV CONTRAST")
_IV = r"(?:I\.?V\.? ?)?"
#: the contrast word a negation or a "W/" may carry with it
_CON = r"(?:CONTRAST|CONTR|CONT|CON|C)"


class Contrast(enum.Enum):
    """What text says about contrast agent in this series."""

    CONTRAST = "contrast"
    NON_CONTRAST = "non-contrast"
    UNKNOWN = "unknown"


class ImageKind(enum.Enum):
    """What text says the images are, when it says they are not plain axial slices."""

    LOCALIZER = "localizer/scout"
    PAGE = "dose report or protocol page"
    PROJECTION = "projection (MIP/MinIP)"
    RENDERING = "3D rendering"
    REFORMAT = "reformatted series"


@dataclass(frozen=True)
class WordRule:
    """One row of a wording table: a pattern of whole words and what it means."""

    name: str  # unique within its table; tests name the row they exercise
    pattern: str  # regex over upper-cased text with single spaces
    meaning: str  # Contrast value, ImageKind name, "mixed" or "neutral"
    why: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(f"{_LEFT}(?:{self.pattern}){_RIGHT}"))


@dataclass(frozen=True)
class WordMatch:
    """A row that matched, and the words it matched (as written, upper-cased)."""

    rule: WordRule
    text: str


#: Contrast wording, tried in this order (see the module docstring).
CONTRAST_RULES: tuple[WordRule, ...] = (
    # -- mixed: the study has both phases; says nothing about one series
    WordRule("w/wo", rf"(?:W ?(?:/|&|\+|AND) ?W ?/? ?O|W ?/? ?O ?(?:/|&|\+|AND) ?W)"
             rf"(?: ?{_IV}{_CON})?", "mixed", "with and without (GE 'HEAD W/WO')"),
    WordRule("with and without", rf"WITH(?:OUT)? ?(?:AND|&|/|\+) ?WITH(?:OUT)?(?: {_IV}{_CON})?",
             "mixed", "WITH AND WITHOUT CONTRAST"),
    WordRule("pre and post", rf"PRE ?(?:AND|&|/|\+) ?POST(?: {_IV}{_CON})?", "mixed",
             "PRE/POST CONTRAST"),
    WordRule("c-/c+", r"C ?- ?/ ?C ?\+", "mixed", "C-/C+"),
    WordRule("nativ und km", r"NATIVE? ?(?:UND|/|\+) ?(?:MIT )?KM", "mixed", "nativ + KM"),
    # -- neutral: words that only look like contrast wording
    WordRule("posterior fossa", r"POST(?:ERIOR)?\.? ?FOSSA|P ?FOSSA", "neutral",
             "posterior fossa slices, not post-contrast"),
    WordRule("post-operative", r"POST ?-? ?OP(?:ERATIVE)?|POSTOP", "neutral", "post-operative"),
    WordRule("pre-operative", r"PRE ?-? ?OP(?:ERATIVE)?|PREOP", "neutral", "pre-operative"),
    WordRule("aidr 3d enhanced", r"AIDR ?3D(?: ENHANCED| ENH| E?STD| STR| MILD| WEAK)?",
             "neutral", "Canon's iterative reconstruction, not contrast enhancement"),
    WordRule("edge enhanced", r"EDGE ?-? ?ENHANC(?:ED|EMENT|ING)?", "neutral",
             "a reconstruction filter"),
    WordRule("enhanced conversion", r"ENHANCED CONVERSION", "neutral",
             "highdicom's suffix for a Legacy Converted Enhanced CT, an object format"),
    WordRule("post-processed", r"POST ?-? ?PROCESS(?:ED|ING)?", "neutral", "post-processing"),
    # -- negative: no contrast
    WordRule("without", rf"WITHOUT(?: {_IV}{_CON})?", "non-contrast", "WITHOUT (CONTRAST)"),
    WordRule("w/o", rf"W ?/ ?O(?: ?{_IV}{_CON})?", "non-contrast", "W/O (CONTRAST)"),
    WordRule("wo", rf"WO(?: {_IV}{_CON})?", "non-contrast", "CT HEAD WO"),
    WordRule("no contrast", rf"NO {_IV}(?:CONTRAST|CON|KM|INJECTION)", "non-contrast",
             "NO (IV) CONTRAST"),
    WordRule("non-contrast", rf"NON ?-? ?{_IV}(?:CONTRAST|CONTR|CONT|CON)|NONCONTRAST|NONCON",
             "non-contrast", "NON-CON, NONCONTRAST, NON CONTRAST"),
    WordRule("unenhanced", r"UN ?-? ?ENHANCED|NON ?-? ?ENHANCED", "non-contrast",
             "UNENHANCED, NON-ENHANCED"),
    WordRule("non", r"NON", "non-contrast", "NON alone (GE 'HEAD NON')"),
    WordRule("pre-contrast", rf"PRE ?-? ?{_IV}{_CON}|PRECON(?:TRAST)?", "non-contrast",
             "PRE CONTRAST (CQ500 'CT PRE CONTRAST 5MM STD')"),
    WordRule("pre", r"PRE", "non-contrast", "PRE alone: the pre-contrast phase"),
    WordRule("plain", r"PLAIN", "non-contrast", "CQ500 'CT PLAIN THIN'"),
    WordRule("native", r"NATIVE?", "non-contrast", "German/Romance 'nativ'"),
    WordRule("ohne km", r"OHNE (?:I\.?V\.? )?(?:KM|KONTRAST(?:MITTEL)?)", "non-contrast",
             "German 'ohne KM'"),
    WordRule("sin contraste", r"SIN (?:CONTRASTE|CONTRASTO|CTE|CONTR)", "non-contrast",
             "Spanish"),
    WordRule("senza mdc", r"SENZA (?:MDC|M\.D\.C\.|CONTRASTO)", "non-contrast", "Italian"),
    WordRule("sans injection", r"SANS (?:INJECTION|INJ|IV|CONTRASTE|PRODUIT DE CONTRASTE)",
             "non-contrast", "French"),
    WordRule("ncct", r"NCCT|NCHCT|NECT|NC ?CT", "non-contrast", "non-contrast CT acronyms"),
    WordRule("c-", r"C ?-", "non-contrast", "C- (the C+ convention)"),
    # -- positive: contrast
    WordRule("with", rf"WITH(?: {_IV}{_CON})?", "contrast", "WITH (CONTRAST)"),
    WordRule("w/", rf"W ?/(?: ?{_IV}{_CON})?", "contrast", "W/, W/ CONTRAST, W/C"),
    WordRule("w", rf"W(?: {_IV}{_CON})?", "contrast", "W alone (GE 'HEAD W')"),
    WordRule("c+", r"C ?\+|\+ ?C", "contrast", "C+, +C"),
    WordRule("post", rf"POST ?-? ?(?:{_IV}{_CON}|KM|INJ\w*)?|POSTCONTRAST", "contrast",
             "POST, POST CONTRAST"),
    WordRule("cta", r"CTA|CT ?-? ?ANGIO\w*|ANGIO\w*", "contrast", "CT angiography"),
    WordRule("venogram", r"CTV|VENOGRA\w*|CT ?VENO\w*", "contrast", "CT venography"),
    WordRule("phase", r"ARTERIAL|VENOUS|PORTAL|DELAYED", "contrast", "a contrast phase"),
    WordRule("perfusion", r"PERFUSION|PERF|CTP|VPCT|NEURO ?PBV", "contrast", "CT perfusion"),
    WordRule("bolus", r"SMART ?PREP|SURE ?START|(?:CARE ?)?BOLUS(?: ?TRACK\w*| ?PRO)?"
             r"|TEST ?BOLUS", "contrast", "bolus tracking / monitoring scans"),
    WordRule("ce", r"CE|CECT|CE ?-? ?CT", "contrast", "contrast-enhanced CT"),
    WordRule("enhanced", r"(?:CONTRAST ?-? ?)?ENHANCED", "contrast", "ENHANCED"),
    WordRule("km", r"(?:MIT |I\.?V\.? ?)?KM|KONTRAST(?:MITTEL)?", "contrast",
             "German Kontrastmittel (KM) without 'ohne'"),
    WordRule("mdc", r"(?:CON )?MDC", "contrast", "Italian mezzo di contrasto"),
    WordRule("con contraste", r"CON (?:CONTRASTE|CONTRASTO|CTE)", "contrast", "Spanish/Italian"),
    WordRule("injection", r"AVEC (?:INJECTION|INJ|CONTRASTE)|INJ|INJECTION|INJECTED|INJECTE",
             "contrast", "French 'avec injection', INJ"),
    WordRule("contrast", r"CONTRAST|CONTRASTE|CONTRASTO|IV ?CONTRAST", "contrast",
             "CONTRAST alone"),
)  # fmt: skip

#: Image-kind wording, tried in this order; used only when ImageType does not settle it.
IMAGE_RULES: tuple[WordRule, ...] = (
    # -- neutral: reconstruction names that contain a word from below
    WordRule("aidr 3d", r"AIDR ?3D", "neutral", "Canon's iterative reconstruction"),
    WordRule("karl 3d", r"KARL ?3D", "neutral", "United Imaging's iterative reconstruction"),
    # -- localizers
    WordRule("scout", r"SCOUT\w*", "LOCALIZER", "GE, United Imaging"),
    WordRule("topogram", r"TOPO(?:GRAM)?", "LOCALIZER", "Siemens"),
    WordRule("surview", r"SURVIEW", "LOCALIZER", "Philips"),
    WordRule("scanogram", r"SCANOGRAM", "LOCALIZER", "Canon/Toshiba"),
    WordRule("localizer", r"LOCALI[SZ]ER|LOCATOR|PILOT", "LOCALIZER", "generic"),
    # -- pages: reports and screens, not slices of a head
    WordRule("dose report", r"DOSE ?(?:REPORT|INFO|SUMMARY|SR|SHEET)|RADIATION DOSE",
             "PAGE", "dose reports"),
    WordRule("patient protocol", r"PATIENT ?PROTOCOL|EXAM ?SUMMARY", "PAGE",
             "Siemens 'Patient Protocol'"),
    WordRule("screen save", r"SCREEN ?(?:SAVE|CAPTURE|SHOT)", "PAGE", "screen captures"),
    # -- projections and renderings
    WordRule("minip", r"MIN ?-? ?IP", "PROJECTION", "minimum intensity projection"),
    WordRule("mip", r"MIP|MAX ?-? ?IP", "PROJECTION", "maximum intensity projection"),
    WordRule("3d", r"3D", "RENDERING", "3D renderings"),
    WordRule("vr", r"VRT?|VOLUME ?-? ?RENDER\w*|SSD", "RENDERING", "volume rendering"),
    # -- reformats
    WordRule("mpr", r"MPR|CPR|CURVED", "REFORMAT", "multiplanar reformat"),
    WordRule("reformat", r"REFORMAT\w*", "REFORMAT", "REFORMAT, REFORMATTED"),
    WordRule("coronal", r"COR|CORO|CORONAL", "REFORMAT", "coronal"),
    WordRule("sagittal", r"SAG|SAGIT|SAGITTAL", "REFORMAT", "sagittal"),
    WordRule("oblique", r"OBL|OBLIQUE", "REFORMAT", "oblique"),
)  # fmt: skip


def _normal(text: str) -> str:
    return " ".join(text.upper().split())


def explain(text: str, rules: Sequence[WordRule]) -> list[WordMatch]:
    """Every row of ``rules`` that matches ``text``, in table order (see module docstring)."""
    rest = _normal(text)
    found: list[WordMatch] = []
    for rule in rules:
        hits = list(rule.regex.finditer(rest))
        if not hits:
            continue
        found.extend(WordMatch(rule, m.group(0)) for m in hits)
        rest = rule.regex.sub(lambda m: " " * len(m.group(0)), rest)
    return found


@dataclass(frozen=True)
class ContrastWording:
    """The verdict on one text, with the words that decided it."""

    verdict: Contrast
    matches: tuple[WordMatch, ...] = ()

    @property
    def evidence(self) -> str:
        """The words that decided the verdict, for a reason string."""
        want = {Contrast.CONTRAST: "contrast", Contrast.NON_CONTRAST: "non-contrast"}
        meaning = want.get(self.verdict)
        return ", ".join(m.text for m in self.matches if m.rule.meaning == meaning)


def contrast_wording(text: str) -> ContrastWording:
    """Contrast, non-contrast or unknown, as ``text`` words it."""
    matches = tuple(explain(text, CONTRAST_RULES))
    meanings = {m.rule.meaning for m in matches}
    if "mixed" in meanings:
        return ContrastWording(Contrast.UNKNOWN, matches)
    pos, neg = "contrast" in meanings, "non-contrast" in meanings
    if pos and not neg:
        return ContrastWording(Contrast.CONTRAST, matches)
    if neg and not pos:
        return ContrastWording(Contrast.NON_CONTRAST, matches)
    return ContrastWording(Contrast.UNKNOWN, matches)


def image_wording(text: str) -> tuple[ImageKind, str] | None:
    """What kind of non-axial image ``text`` names, with the words, or None."""
    for m in explain(text, IMAGE_RULES):
        if m.rule.meaning != "neutral":
            return ImageKind[m.rule.meaning], m.text
    return None
