"""UID checks: a UID from the network becomes a path only after it passed these.

PS3.5 section 9.1: a UID is made of numeric components separated by dots, each
component without a leading zero (except the single digit ``0``), at most 64 characters
in all. Anything else (``..``, ``/``, letters, NUL) is refused before it could name a
file, so a hostile or broken sender cannot write outside the spool.
"""

from __future__ import annotations

import re
from typing import Final

MAX_UID_LENGTH: Final = 64  # PS3.5 9.1: "shall not exceed 64 characters"
_UID_RE: Final = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Some senders break the no-leading-zero rule; such UIDs are still safe as paths, so they
# are accepted (rejecting them would lose images over a cosmetic fault).
_LAX_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):  # noqa: N818 - reads as the condition, like pydicom's names
    """A value that is not a usable DICOM UID (the message never repeats the value)."""


def is_valid_uid(value: object) -> bool:
    """True if ``value`` is a digits-and-dots UID of 1 to 64 characters."""
    return (
        isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and bool(_LAX_RE.match(value))
    )


def is_strict_uid(value: object) -> bool:
    """True if ``value`` also follows the no-leading-zero rule of PS3.5 9.1."""
    return is_valid_uid(value) and bool(_UID_RE.match(str(value)))


def check_uid(value: object, what: str) -> str:
    """Return ``value`` as a clean UID string, or raise :class:`InvalidUID` naming ``what``.

    Trailing NUL or space padding (PS3.5 6.2: UI values are padded to even length with
    NUL) is stripped first, as pydicom may leave it on raw values.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidUID(f"{what} is not ASCII") from exc
    if not isinstance(value, str):
        raise InvalidUID(f"{what} is missing or not text")
    cleaned = value.rstrip("\x00 ")
    if not is_valid_uid(cleaned):
        raise InvalidUID(f"{what} is not a UID (digits and dots, at most 64 characters)")
    return cleaned


def _implementation_class_uid() -> str:
    from models.uids import derived_uid

    return derived_uid("implementation-class", "ich-triage-node")


#: Identifies this software in association negotiation (PS3.7 D.3.3.2) and in the File
#: Meta of the files it writes (PS3.10 7.1): a fixed UID under 2.25, derived from the
#: project's name so that it never changes between builds.
IMPLEMENTATION_CLASS_UID: Final = _implementation_class_uid()
#: Implementation Version Name (SH, at most 16 characters): the package's version.
IMPLEMENTATION_VERSION_NAME: Final = "ICHNODE_010"
