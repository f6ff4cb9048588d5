"""Find the four UIDs that place an instance by walking element headers, not parsing values.

Why: the C-STORE path needs SOP Class, SOP Instance, Study and Series Instance UID,
which sit in groups 0008 and 0020, before the pixel data. pydicom's ``read_dataset``
builds an element object for each of the ~100 elements in front of them; per image that
cost more than the rest of the handler's CPU work. Here only tag, VR and length are
read and values are skipped, until the first tag past (0020,000E).

The scan answers only when it is sure. Anything unusual (a truncated element, tags out
of order, an undefined length outside a sequence, explicit-VR ``UN`` of undefined
length, a bad item) returns None and the caller parses with pydicom, which then either
finds the UIDs or explains what is wrong. Values are returned raw (with their padding),
as pydicom's raw elements give them, so the same UID checks apply to both paths.
"""

from __future__ import annotations

import struct
from typing import Final

from pydicom.datadict import dictionary_VR

SOP_CLASS_UID: Final = 0x00080016
SOP_INSTANCE_UID: Final = 0x00080018
STUDY_UID: Final = 0x0020000D
SERIES_UID: Final = 0x0020000E
WANTED: Final = frozenset({SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_UID, SERIES_UID})

_TAG: Final = struct.Struct("<HH")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQ_END: Final = 0xFFFEE0DD
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
#: Nesting beyond this is not a real CT header; give the case to pydicom.
_MAX_DEPTH: Final = 16


class _Unsure(Exception):  # noqa: N818 - control flow inside the scan only
    pass


def scan_uids(data: bytes | memoryview, implicit_vr: bool) -> dict[int, bytes] | None:
    """Raw values of the wanted UIDs present before the first tag past (0020,000E).

    Returns None when the data ends before such a tag or when the scan is unsure;
    a wanted UID that is simply absent is absent from the result.
    """
    view = memoryview(data)
    if implicit_vr and len(view) >= 6 and _looks_explicit(view[4], view[5]):
        return None  # pydicom reads a dataset whose first VR looks explicit as explicit
    found: dict[int, bytes] = {}
    try:
        _, complete = _walk(view, 0, implicit_vr, found, depth=0, stop_at=SERIES_UID)
    except (_Unsure, struct.error):
        return None
    return found if complete else None


def _looks_explicit(a: int, b: int) -> bool:
    return 0x41 <= a <= 0x5A and 0x41 <= b <= 0x5A


def _walk(
    view: memoryview, pos: int, implicit_vr: bool, found: dict[int, bytes] | None,
    depth: int, stop_at: int | None,
) -> tuple[int, bool]:  # fmt: skip
    """Walk elements from ``pos``; return (position, whether the walk ended properly).

    Top level (``stop_at`` set): ends properly at the first tag greater than
    ``stop_at``. Inside an item of undefined length: ends at the item delimiter.
    """
    end = len(view)
    last_tag = -1
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(view, pos)
        tag = (group << 16) | element
        if stop_at is not None and tag > stop_at:
            return pos, True
        if tag == _ITEM_END:
            if stop_at is not None or _U32.unpack_from(view, pos + 4)[0] != 0:
                raise _Unsure
            return pos + 8, True
        if group == 0xFFFE or tag <= last_tag:
            raise _Unsure  # an item or delimiter out of place, or tags out of order
        last_tag = tag
        if implicit_vr:
            length = _U32.unpack_from(view, pos + 4)[0]
            pos += 8
            vr = b""
        else:
            vr = bytes(view[pos + 4 : pos + 6])
            if not (vr.isalpha() and vr.isupper()):
                raise _Unsure
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Unsure
                length = _U32.unpack_from(view, pos + 8)[0]
                pos += 12
            else:
                length = _U16.unpack_from(view, pos + 6)[0]
                pos += 8
        if length == _UNDEFINED:
            if vr not in (b"", b"SQ") or depth >= _MAX_DEPTH:
                raise _Unsure  # explicit UN of undefined length changes encoding inside
            if not vr and not _implicit_sequence(view, pos, tag):
                raise _Unsure  # pydicom reads it as a value up to the first delimiter bytes
            pos = _skip_items(view, pos, implicit_vr, depth + 1)
            continue
        if pos + length > end:
            raise _Unsure
        if found is not None and tag in WANTED:
            found[tag] = bytes(view[pos : pos + length])
        pos += length
    return pos, False


def _skip_items(view: memoryview, pos: int, implicit_vr: bool, depth: int) -> int:
    """Skip a sequence of undefined length; returns the position after its delimiter."""
    end = len(view)
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(view, pos)
        tag = (group << 16) | element
        length = _U32.unpack_from(view, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unsure
        if length == _UNDEFINED:
            pos, ended = _walk(view, pos, implicit_vr, None, depth, stop_at=None)
            if not ended:
                raise _Unsure
        else:
            # Walked, not skipped: pydicom reads an item's elements and goes on from
            # where the last one ends, even past the item's length or at a delimiter.
            item_end = pos + length
            if item_end > end:
                raise _Unsure
            pos, ended = _walk(view[:item_end], pos, implicit_vr, None, depth, stop_at=None)
            if ended or pos != item_end:
                raise _Unsure
    raise _Unsure


def _implicit_sequence(view: memoryview, pos: int, tag: int) -> bool:
    """Whether pydicom reads an implicit-VR element of undefined length as a sequence:
    its dictionary VR is SQ or, for a tag it does not know, an item follows."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return pos + 4 <= len(view) and _TAG.unpack_from(view, pos) == (0xFFFE, 0xE000)
