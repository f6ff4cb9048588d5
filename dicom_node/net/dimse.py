"""DIMSE command sets and PDU framing for the native acceptor (PS3.7 Annex E, PS3.8 9.3).

A command set is a short list of group-0000 elements in implicit VR little endian
(PS3.7 6.3.1); the acceptor needs to read C-STORE-RQ and C-ECHO-RQ and to write their
responses. Decoding a command with pydicom and building a response through pynetdicom's
primitives costs more per image than everything else the acceptor does, so this module
reads and writes those few elements directly, and rejects anything malformed with
:class:`ProtocolError` instead of guessing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from dicom_node.errors import NodeError

# Command Field values (PS3.7 E.1-1)
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
C_CANCEL_RQ: Final = 0x0FFF
#: Command Data Set Type: "no data set" (any other value means one follows).
NO_DATASET: Final = 0x0101
#: Status: the requested operation is not supported by this SCP (PS3.7 C.4.2).
UNRECOGNIZED_OPERATION: Final = 0x0211
#: Status: refused, SOP class not supported (PS3.7 C.5.1), e.g. on another class's context.
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122

#: A command set larger than this is not a C-STORE or C-ECHO request; refuse it.
MAX_COMMAND_BYTES: Final = 64 * 1024

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ: Final = 0x01
A_ASSOCIATE_AC: Final = 0x02
A_ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
A_RELEASE_RQ: Final = 0x05
A_RELEASE_RP: Final = 0x06
A_ABORT: Final = 0x07

PDU_HEADER: Final = struct.Struct(">BxI")  # type, reserved, length
PDV_HEADER: Final = struct.Struct(">IBB")  # item length, context ID, message control header
_ELEMENT: Final = struct.Struct("<HHI")  # group, element, value length (implicit VR)
_US: Final = struct.Struct("<H")
_UL: Final = struct.Struct("<I")

_AFFECTED_SOP_CLASS: Final = 0x00000002
_COMMAND_FIELD: Final = 0x00000100
_MESSAGE_ID: Final = 0x00000110
_MESSAGE_ID_RESPONDED: Final = 0x00000120
_DATASET_TYPE: Final = 0x00000800
_STATUS: Final = 0x00000900
_ERROR_COMMENT: Final = 0x00000902
_AFFECTED_SOP_INSTANCE: Final = 0x00001000


class ProtocolError(NodeError):
    """The peer broke the DICOM Upper Layer or DIMSE protocol: the association is aborted.

    ``reason`` is the A-P-ABORT provider reason (PS3.8 9.3.8): 0 not specified,
    1 unrecognised PDU, 2 unexpected PDU, 4 unrecognised and 5 unexpected PDU
    parameter, 6 invalid PDU parameter value.
    """

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Command:
    """The fields of a request that the acceptor acts on (UIDs without their padding)."""

    command_field: int
    message_id: int
    has_dataset: bool
    sop_class_uid: bytes
    sop_instance_uid: bytes

    @property
    def sop_class(self) -> str | None:
        """Affected SOP Class UID as text (None if absent); checked later, never trusted."""
        return _text(self.sop_class_uid)

    @property
    def sop_instance(self) -> str | None:
        """Affected SOP Instance UID as text (None if absent)."""
        return _text(self.sop_instance_uid)


def _text(raw: bytes) -> str | None:
    # Undecodable bytes become U+FFFD, which the UID check then refuses.
    return raw.decode("ascii", errors="replace").rstrip("\x00 ") or None


def _elements(data: bytes | bytearray) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < _ELEMENT.size:
            raise ProtocolError("truncated command element", 6)
        group, elem, length = _ELEMENT.unpack_from(view, pos)
        pos += _ELEMENT.size
        if group != 0x0000:
            raise ProtocolError("command set element outside group 0000", 6)
        if length > end - pos:
            raise ProtocolError("command element longer than its command set", 6)
        yield (group << 16) | elem, view[pos : pos + length]
        pos += length


def parse_command(data: bytes | bytearray) -> Command:
    """Decode a request command set; raise :class:`ProtocolError` if it is malformed."""
    fields: dict[int, memoryview] = dict(_elements(data))

    def us(tag: int) -> int:
        value = fields.get(tag)
        if value is None or len(value) != 2:
            raise ProtocolError(f"command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) missing", 6)
        return int(_US.unpack(value)[0])

    field = us(_COMMAND_FIELD)
    if field & 0x8000:
        raise ProtocolError("a response where a request was expected", 6)
    message_id = us(_MESSAGE_ID) if field != C_CANCEL_RQ else 0
    has_dataset = us(_DATASET_TYPE) != NO_DATASET
    return Command(
        command_field=field,
        message_id=message_id,
        has_dataset=has_dataset,
        sop_class_uid=bytes(fields.get(_AFFECTED_SOP_CLASS, b"")),
        sop_instance_uid=bytes(fields.get(_AFFECTED_SOP_INSTANCE, b"")),
    )


def _element(tag: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    if len(value) % 2:
        value += pad
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: bytes) -> bytes:
    return value.rstrip(b"\x00 ")


def encode_response(request: Command, status: int, error_comment: str = "") -> bytes:
    """The response command set to ``request`` (C-STORE-RSP, C-ECHO-RSP, or a generic
    failure response carrying the request's command field with the response bit).

    ``error_comment``, when given, is Error Comment (0000,0902, PS3.7 9.3.1.2): an LO
    that the caller has already fitted (:func:`dicom_node.net.store_answer.error_comment`);
    it is space-padded to even length as LO is (PS3.5 6.2).
    """
    body = [_element(_AFFECTED_SOP_CLASS, _uid(request.sop_class_uid))]
    body.append(_element(_COMMAND_FIELD, _US.pack(request.command_field | 0x8000)))
    body.append(_element(_MESSAGE_ID_RESPONDED, _US.pack(request.message_id)))
    body.append(_element(_DATASET_TYPE, _US.pack(NO_DATASET)))
    body.append(_element(_STATUS, _US.pack(status)))
    if error_comment:
        body.append(_element(_ERROR_COMMENT, error_comment.encode("ascii", "replace"), b" "))
    if request.command_field == C_STORE_RQ:
        body.append(_element(_AFFECTED_SOP_INSTANCE, _uid(request.sop_instance_uid)))
    payload = b"".join(body)
    return _element(0x00000000, _UL.pack(len(payload))) + payload


def command_pdus(context_id: int, command: bytes, peer_max_pdu: int) -> list[bytes]:
    """``command`` as P-DATA-TF PDUs of one PDV each, split to the peer's maximum length.

    ``peer_max_pdu`` is the peer's Maximum Length Received (0: no limit); it bounds the
    PDU's variable field, of which each PDV takes 6 bytes of header.
    """
    room = len(command) if peer_max_pdu == 0 else max(1, peer_max_pdu - PDV_HEADER.size)
    pdus = []
    for start in range(0, len(command), room):
        chunk = command[start : start + room]
        last = start + room >= len(command)
        pdv = PDV_HEADER.pack(len(chunk) + 2, context_id, 0x03 if last else 0x01) + chunk
        pdus.append(PDU_HEADER.pack(P_DATA_TF, len(pdv)) + pdv)
    return pdus


def release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7): a 4-byte reserved field."""
    return PDU_HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


def abort_pdu(source: int, reason: int) -> bytes:
    """A-ABORT (PS3.8 9.3.8): source 0 = service user, 2 = service provider (A-P-ABORT)."""
    return PDU_HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason if source == 2 else 0))
