"""dicom_node.net.dimse on its own: our hand-written command-set reader and writer must agree
with pydicom and pynetdicom byte for byte, refuse malformed input, and frame responses
within the peer's Maximum Length Received."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.net import dimse
from dicom_node.net.dimse import Command, ProtocolError

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.12345"


def _encode_command(ds: Dataset) -> bytes:
    """A command set as it travels: implicit VR little endian (PS3.7 6.3.1)."""
    raw = encode(ds, True, True)
    assert raw is not None
    return raw


def _store_rq_bytes(message_id: int = 7, instance: str = SOP_INSTANCE) -> bytes:
    """A C-STORE-RQ command set built by pynetdicom, with the optional move elements."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = instance
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = BytesIO(b"\x00\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _encode_command(message.command_set)


def _command(**elements: object) -> bytes:
    """A hand-built command set (group length included) for the malformed cases."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = _encode_command(ds)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _decode(raw: bytes) -> Dataset:
    return read_dataset(BytesIO(raw), True, True)


def test_parse_command_reads_pynetdicom_c_store_rq() -> None:
    request = dimse.parse_command(_store_rq_bytes(message_id=513))
    assert request.command_field == dimse.C_STORE_RQ
    assert request.message_id == 513
    assert request.has_dataset
    assert request.sop_class == CTImageStorage
    assert request.sop_instance == SOP_INSTANCE


def test_parse_command_reads_pynetdicom_c_echo_rq() -> None:
    primitive = C_ECHO()
    primitive.MessageID = 65535
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    request = dimse.parse_command(_encode_command(message.command_set))
    assert request.command_field == dimse.C_ECHO_RQ
    assert request.message_id == 65535
    assert not request.has_dataset
    assert request.sop_class == Verification
    assert request.sop_instance is None


@pytest.mark.parametrize(
    ("field", "status", "expected_field"),
    [
        (dimse.C_STORE_RQ, 0x0000, 0x8001),
        (dimse.C_STORE_RQ, 0xA700, 0x8001),
        (dimse.C_ECHO_RQ, 0x0000, 0x8030),
        (0x0020, dimse.UNRECOGNIZED_OPERATION, 0x8020),  # C-FIND-RQ
    ],
)
def test_encode_response_decodes_with_pydicom(field: int, status: int, expected_field: int) -> None:
    # An odd-length UID with a trailing pad, as a peer may send it: padded back to even.
    request = Command(
        command_field=field,
        message_id=4242,
        has_dataset=field == dimse.C_STORE_RQ,
        sop_class_uid=CTImageStorage.encode() + b"\x00",
        sop_instance_uid=(SOP_INSTANCE + "1").encode(),
    )
    raw = dimse.encode_response(request, status)
    ds = _decode(raw)
    assert ds.CommandField == expected_field
    assert ds.MessageIDBeingRespondedTo == 4242
    assert ds.Status == status
    assert ds.CommandDataSetType == dimse.NO_DATASET
    assert ds.AffectedSOPClassUID == CTImageStorage
    # Group length element: tag 4 + length 4 + value 4 bytes, then exactly the rest.
    assert ds.CommandGroupLength == len(raw) - 12
    assert len(raw) % 2 == 0
    if field == dimse.C_STORE_RQ:
        assert ds.AffectedSOPInstanceUID == SOP_INSTANCE + "1"
    else:
        assert "AffectedSOPInstanceUID" not in ds


def test_encode_response_round_trips_through_parse_command_fields() -> None:
    request = dimse.parse_command(_store_rq_bytes(message_id=9))
    ds = _decode(dimse.encode_response(request, 0))
    assert (ds.MessageIDBeingRespondedTo, ds.AffectedSOPInstanceUID) == (9, SOP_INSTANCE)


_GOOD = _command(
    AffectedSOPClassUID=CTImageStorage, CommandField=1, MessageID=1, CommandDataSetType=1
)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param(_GOOD[:-1], "longer than its command set", id="truncated-element-value"),
        pytest.param(_GOOD[:-3], "truncated", id="truncated-element-header"),
        pytest.param(
            _GOOD + struct.pack("<HHI", 0x0000, 0x0900, 200) + b"\x00\x00",
            "longer than its command set",
            id="element-longer-than-set",
        ),
        pytest.param(
            _GOOD + struct.pack("<HHI", 0x0008, 0x0018, 2) + b"1\x00",
            "outside group 0000",
            id="not-group-0000",
        ),
        pytest.param(
            _command(AffectedSOPClassUID=CTImageStorage, MessageID=1, CommandDataSetType=1),
            r"\(0000,0100\) missing",
            id="no-command-field",
        ),
        pytest.param(
            _command(CommandField=1, CommandDataSetType=1),
            r"\(0000,0110\) missing",
            id="no-message-id",
        ),
        pytest.param(
            _command(CommandField=1, MessageID=1), r"\(0000,0800\) missing", id="no-dataset-type"
        ),
        pytest.param(
            _command(
                CommandField=0x8001,
                MessageIDBeingRespondedTo=1,
                CommandDataSetType=0x0101,
                Status=0,
            ),
            "a response",
            id="a-response",
        ),
        pytest.param(b"", r"\(0000,0100\) missing", id="empty"),
    ],
)
def test_malformed_command_sets_raise_protocol_error(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as info:
        dimse.parse_command(raw)
    assert info.value.reason == 6  # invalid PDU parameter value


def test_command_field_of_wrong_length_is_refused() -> None:
    raw = _GOOD + struct.pack("<HHI", 0x0000, 0x0100, 4) + b"\x01\x00\x00\x00"
    with pytest.raises(ProtocolError):
        dimse.parse_command(raw)


@pytest.mark.parametrize("peer_max", [7, 16, 64, 101])
def test_command_pdus_split_to_the_peer_maximum(peer_max: int) -> None:
    command = dimse.encode_response(dimse.parse_command(_store_rq_bytes()), 0)
    pdus = dimse.command_pdus(5, command, peer_max)
    assert len(pdus) == -(-len(command) // (peer_max - 6))
    payload = b""
    for i, pdu in enumerate(pdus):
        pdu_type, length = struct.unpack(">BxI", pdu[:6])
        assert pdu_type == 0x04
        assert length == len(pdu) - 6 <= peer_max
        item_length, context_id, control = struct.unpack(">IBB", pdu[6:12])
        assert item_length == length - 4  # one PDV per PDU
        assert context_id == 5
        assert control == (0x03 if i == len(pdus) - 1 else 0x01)
        payload += pdu[12:]
    assert payload == command


def test_command_pdus_without_a_limit_is_one_pdu() -> None:
    command = dimse.encode_response(dimse.parse_command(_store_rq_bytes()), 0)
    (pdu,) = dimse.command_pdus(1, command, 0)
    assert pdu[12:] == command
    assert pdu[11] == 0x03


def test_abort_and_release_pdus() -> None:
    assert dimse.abort_pdu(2, 6) == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])
    assert dimse.abort_pdu(0, 6) == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    assert dimse.release_rp() == bytes([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0])
