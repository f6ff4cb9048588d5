"""A C-STORE answer: the DIMSE status and, for a refusal, why (the Error Comment).

Why the reason travels back: a sender's operator sees only "0xC000 Cannot Understand",
and the node's log that says which UID was missing is on another machine. PS3.7 9.3.1.2
lets a C-STORE-RSP carry Error Comment (0000,0902), an LO of at most 64 characters, so
both receive engines put the refusal's reason there. The reasons are the node's own
texts (which element is missing or malformed, which disk limit refused): they never
quote an element's value, so no patient data can reach the sender's log through them.
"""

from __future__ import annotations

from typing import Final, NamedTuple

#: PS3.5 6.2: LO holds at most 64 characters.
MAX_ERROR_COMMENT: Final = 64


class StoreAnswer(NamedTuple):
    """What a C-STORE is answered: ``status``, and ``comment`` ("" for none)."""

    status: int
    comment: str = ""


def error_comment(reason: str) -> str:
    """``reason`` as an Error Comment: LO characters only (printable ASCII without the
    backslash, PS3.5 6.2) and at most 64 of them.

    A longer reason loses its parenthesis first ("X is not a UID (digits and dots, ...)"
    keeps "X is not a UID"), then what follows its first colon, and is cut with "..."
    only if still too long: the head of each of our reasons says what was wrong.
    """
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in reason).strip()
    if len(text) > MAX_ERROR_COMMENT and " (" in text:
        text = text[: text.index(" (")].rstrip()
    if len(text) > MAX_ERROR_COMMENT and ":" in text:
        text = text[: text.index(":")].rstrip()
    if len(text) > MAX_ERROR_COMMENT:
        text = text[: MAX_ERROR_COMMENT - 3].rstrip() + "..."
    return text
