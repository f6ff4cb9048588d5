"""What series choice decided for each series of a study, in the form every output shows.

:func:`models.series_choice.choose_series` knows why each series was or was not read;
the user needs that to trust (or fix) a result: "skipped: no eligible axial CT series"
alone does not say that the only axial series was a bone kernel or a contrast phase.
The index stores these per study (``dicom-node studies``), ``classify`` prints them, and
the SR and Secondary Capture carry them. It lives in ``store`` because the index
persists it and every layer that shows it (results, pipeline, classify, cli) sits above.

Series descriptions are what the scanner wrote (``HEAD 5mm H30s``); they are shown to
users and written into results, never logged (logs carry UIDs and counts).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.series_choice import SeriesChoice


@dataclass(frozen=True, slots=True)
class SeriesOutcome:
    """One series of a study: what it is, and whether it was read or why not."""

    series_uid: str
    description: str
    instances: int
    chosen: bool
    reason: str | None  # None for the chosen series

    @property
    def label(self) -> str:
        """The description as shown, or a placeholder when the scanner wrote none."""
        return self.description.strip() or "(no description)"

    def to_json(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "description": self.description,
            "instances": self.instances,
            "chosen": self.chosen,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeriesOutcome:
        reason = data.get("reason")
        return cls(
            series_uid=str(data["series_uid"]),
            description=str(data.get("description") or ""),
            instances=int(data.get("instances") or 0),
            chosen=bool(data.get("chosen", False)),
            reason=None if reason is None else str(reason),
        )


def outcomes_of(choice: SeriesChoice) -> tuple[SeriesOutcome, ...]:
    """Every series of ``choice``'s study, in first-seen order, the chosen one marked."""
    chosen_uid = choice.chosen.series_uid if choice.chosen is not None else None
    return tuple(
        SeriesOutcome(
            series_uid=s.series_uid,
            description=s.description,
            instances=s.n_instances,
            chosen=s.series_uid == chosen_uid,
            reason=None if s.series_uid == chosen_uid else (s.reason or "not chosen"),
        )
        for s in choice.series
    )


def chosen_of(outcomes: Iterable[SeriesOutcome]) -> SeriesOutcome | None:
    return next((o for o in outcomes if o.chosen), None)


def dumps(outcomes: Sequence[SeriesOutcome]) -> str:
    """JSON text for the index column."""
    return json.dumps([o.to_json() for o in outcomes])


def loads(text: str | None) -> tuple[SeriesOutcome, ...]:
    """The index column back; empty for studies processed before it existed."""
    if not text:
        return ()
    return tuple(SeriesOutcome.from_json(item) for item in json.loads(text))


def images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def skipped_summary(outcomes: Sequence[SeriesOutcome]) -> str:
    """``skipped: 3 (localizer/scout, another series fits better (bone kernel) x2)``.

    Equal reasons are counted, most frequent first, so 30 series of two kinds read as
    two entries; an empty string when every series was read.
    """
    others = [o for o in outcomes if not o.chosen]
    if not others:
        return ""
    counts = Counter(o.reason or "not chosen" for o in others)
    parts = [r if n == 1 else f"{r} x{n}" for r, n in counts.most_common()]
    return f"skipped: {len(others)} ({', '.join(parts)})"


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: max(0, limit - 3)].rstrip() + "..."
