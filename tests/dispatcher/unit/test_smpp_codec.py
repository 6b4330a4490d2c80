"""SMPP encoding without I/O: encoding choice, UDH bytes, part boundaries, PDU layout (checked
against smpp34's independent codec), receipt texts as carriers really send them, MO decoding
and reassembly, the command_status table and the bind window."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import smpp34

from services.dispatcher.gateways import smpp_codec as c
from services.dispatcher.gateways.smpp import SmppConfig, Window
from shared.statuses import ReceiptStatus

DOCS = Path(__file__).resolve().parents[3] / "docs" / "smpp.md"


def texts(plan: c.MessagePlan) -> list[bytes]:
    """The text octets of each part, UDH removed."""
    out = []
    for part in plan.parts:
        data = part.short_message
        out.append(data[1 + data[0] :] if part.esm_class & c.ESM_UDHI else data)
    return out


# -- encoding choice and parts --------------------------------------------------------------


def test_plain_text_is_gsm7_unpacked_one_septet_per_octet() -> None:
    plan = c.plan_message("Hello @ £ ü", ref=1)
    assert plan.encoding == "GSM-7"
    (part,) = plan.parts
    assert (part.esm_class, part.data_coding) == (0, 0x00)
    assert part.short_message == b"Hello \x00 \x01 ~"  # '@' is 0x00, '£' 0x01, 'ü' 0x7E in GSM 03.38


def test_extension_characters_are_escape_plus_char() -> None:
    plan = c.plan_message("€{}", ref=1)
    assert plan.parts[0].short_message == b"\x1be\x1b(\x1b)"


def test_emoji_forces_ucs2_utf16be_with_surrogates() -> None:
    plan = c.plan_message("hi 😀", ref=1)
    assert plan.encoding == "UCS-2"
    assert plan.parts[0].data_coding == 0x08
    assert plan.parts[0].short_message == "hi 😀".encode("utf-16-be")
    assert plan.parts[0].short_message.endswith(b"\xd8\x3d\xde\x00")


def test_message_declared_ucs2_stays_ucs2() -> None:
    assert c.plan_message("plain", ref=1, force_ucs2=True).parts[0].data_coding == 0x08


@pytest.mark.parametrize(
    ("text", "parts"),
    [("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3), ("€" * 80, 1), ("€" * 81, 2), ("é" * 70, 1)],
)
def test_gsm7_limits(text: str, parts: int) -> None:
    plan = c.plan_message(text, ref=1)
    assert plan.encoding == "GSM-7" and len(plan.parts) == parts
    for data in texts(plan):
        assert len(data) <= (160 if parts == 1 else 153)


@pytest.mark.parametrize(("text", "parts"), [("ж" * 70, 1), ("ж" * 71, 2), ("ж" * 134, 2), ("ж" * 135, 3)])
def test_ucs2_limits(text: str, parts: int) -> None:
    plan = c.plan_message(text, ref=1)
    assert plan.encoding == "UCS-2" and len(plan.parts) == parts
    for data in texts(plan):
        assert len(data) <= (140 if parts == 1 else 134)


def test_udh_bytes_and_esm_class_of_concatenated_parts() -> None:
    plan = c.plan_message("x" * 200, ref=0xAB)
    assert [p.short_message[:6] for p in plan.parts] == [bytes.fromhex("050003ab0201"), bytes.fromhex("050003ab0202")]
    assert all(p.esm_class == 0x40 and p.data_coding == 0 for p in plan.parts)
    assert b"".join(texts(plan)) == b"x" * 200
    assert c.udh_concat(300, 3, 2) == bytes([5, 0, 3, 300 & 0xFF, 3, 2])


def test_escape_pair_is_never_split_across_parts() -> None:
    plan = c.plan_message("a" * 152 + "€" + "a" * 152, ref=1)
    first, second, third = texts(plan)
    assert len(plan.parts) == 3
    assert first == b"a" * 152  # 152 + the 2-septet '€' would be 154 > 153
    assert second.startswith(b"\x1be") and len(second) == 153
    assert not first.endswith(b"\x1b")
    assert (first + second + third).decode("gsm03.38") == "a" * 152 + "€" + "a" * 152


def test_surrogate_pair_is_never_split_across_parts() -> None:
    text = "a" * 66 + "😀" + "a" * 66
    plan = c.plan_message(text, ref=1)
    assert len(plan.parts) == 3
    decoded = [t.decode("utf-16-be") for t in texts(plan)]  # strict: a lone surrogate would raise
    assert decoded[0] == "a" * 66 and decoded[1].startswith("😀")
    assert "".join(decoded) == text
    assert len(c.plan_message("😀" * 36, ref=1).parts) == 2


def test_message_payload_sends_one_pdu() -> None:
    text = "a" * 400 + "€"
    plan = c.plan_message(text, ref=1, use_message_payload=True)
    (part,) = plan.parts
    assert part.short_message == b"" and part.esm_class == 0
    assert dict(part.tlvs)[c.TLV_MESSAGE_PAYLOAD] == text.encode("gsm03.38")
    # A short text still goes in short_message.
    assert c.plan_message("hi", ref=1, use_message_payload=True).parts[0].short_message == b"hi"


@pytest.mark.parametrize(
    ("value", "ton", "npi", "expected"),
    [
        ("+34600000001", None, None, ("34600000001", 1, 1)),
        ("Herald", None, None, ("Herald", 5, 0)),
        ("12345", None, None, ("12345", 3, 0)),
        ("34600000001", None, None, ("34600000001", 0, 1)),
        ("+34600000001", 0, None, ("34600000001", 0, 1)),
        ("Herald", 5, 9, ("Herald", 5, 9)),
        (None, None, None, ("", 5, 0)),
    ],
)
def test_source_address_ton_npi(value, ton, npi, expected) -> None:
    assert c.address(value, ton, npi) == expected


# -- PDU layout, against smpp34's codec --------------------------------------------------------


def test_submit_sm_is_read_back_by_smpp34() -> None:
    sm = c.ShortMessage(
        source_addr="Herald", destination_addr="34600000001", short_message=c.udh_concat(7, 2, 1) + b"hello",
        source_addr_ton=5, source_addr_npi=0, esm_class=0x40, registered_delivery=1, data_coding=0x08,
        tlvs={c.TLV_HERALD_MESSAGE_ID: b"abc\x00"},
    )
    decoded = smpp34.decode(c.encode_pdu(c.SUBMIT_SM, 42, sm.encode()))
    assert isinstance(decoded, smpp34.SubmitSm)
    assert (decoded.sequence_number, decoded.source_addr, decoded.destination_addr) == (42, "Herald", "34600000001")
    assert (decoded.source_addr_ton, decoded.source_addr_npi, decoded.dest_addr_ton, decoded.dest_addr_npi) == (5, 0, 1, 1)
    assert (decoded.esm_class, decoded.registered_delivery, decoded.data_coding) == (0x40, 1, 0x08)
    assert decoded.short_message == c.udh_concat(7, 2, 1) + b"hello"
    assert [(t.tag, t.value) for t in decoded.tlvs] == [(0x1400, b"abc\x00")]


def test_deliver_sm_from_smpp34_is_decoded() -> None:
    raw = smpp34.DeliverSm(
        "34600000001", "Herald", b"id:x stat:DELIVRD", esm_class=4, source_addr_ton=1, source_addr_npi=1,
        tlvs=[smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, b"x\x00"), smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, b"\x02")],
        sequence_number=9,
    ).encode()
    pdu = c.decode_pdu(raw)
    assert (pdu.command_id, pdu.seq) == (c.DELIVER_SM, 9)
    sm = c.ShortMessage.decode(pdu.body)
    assert (sm.source_addr, sm.source_addr_ton, sm.destination_addr, sm.esm_class) == ("34600000001", 1, "Herald", 4)
    assert sm.short_message == b"id:x stat:DELIVRD"
    assert sm.tlvs == {0x001E: b"x\x00", 0x0427: b"\x02"}


def test_bind_body_bytes() -> None:
    assert c.bind_body("herald", "sim-pass", "", 0, 0, "") == b"herald\x00sim-pass\x00\x00\x34\x00\x00\x00"
    bind = c.decode_bind(c.bind_body("herald", "pw", "VMA"))
    assert (bind.system_id, bind.password, bind.system_type, bind.interface_version) == ("herald", "pw", "VMA", 0x34)


def test_field_limits_are_enforced() -> None:
    with pytest.raises(c.CodecError):
        c.bind_body("herald", "123456789")  # 9 characters: smpp34 panics on this, Herald refuses it
    with pytest.raises(c.CodecError):
        c.ShortMessage("x" * 21, "1").encode()
    with pytest.raises(c.CodecError):
        c.ShortMessage("x", "1", b"a" * 255).encode()
    with pytest.raises(ValueError):
        SmppConfig(name="c", host="h", system_id="x", password="123456789")
    with pytest.raises(c.CodecError):
        c.decode_pdu(c.encode_pdu(c.SUBMIT_SM, 1, b"abc")[:-1])
    with pytest.raises(c.CodecError):
        c.ShortMessage.decode(b"\x00\x01\x01nonul")


def test_submit_sm_resp_message_id() -> None:
    assert c.decode_message_id(b"abc123\x00") == "abc123"
    assert c.decode_message_id(b"") is None


# -- receipts -----------------------------------------------------------------------------


STANDARD = "id:0123456789 sub:001 dlvrd:001 submit date:2511251535 done date:2511251536 stat:DELIVRD err:000 text:Hello world"


def test_standard_receipt_text() -> None:
    r = c.parse_receipt_text(STANDARD)
    assert r == c.ReceiptText("0123456789", "001", "001", "2511251535", "2511251536", "DELIVRD", "000", "Hello world")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # keys in capitals, "Text" capitalised (several SMSCs)
        ("ID:abc SUB:001 DLVRD:001 SUBMIT DATE:2511251535 DONE DATE:2511251536 STAT:UNDELIV ERR:034 Text:x",
         ("abc", "UNDELIV", "034", "2511251536")),
        # underscores and seconds in the dates
        ("id:abc submit_date:251125153501 done_date:251125153612 stat:EXPIRED err:000",
         ("abc", "EXPIRED", "000", "251125153612")),
        # fields missing, no text, extra spaces
        ("id: 77  stat: REJECTD  err: 0x0B", ("77", "REJECTD", "0x0B", None)),
        # fields in another order
        ("stat:DELIVRD id:f00d done date:2511251536", ("f00d", "DELIVRD", None, "2511251536")),
        # "text:" holding what looks like keys is left alone
        ("id:1 stat:DELIVRD err:000 text:id:2 stat:UNDELIV", ("1", "DELIVRD", "000", None)),
    ],
)
def test_receipt_text_variations(text: str, expected: tuple) -> None:
    r = c.parse_receipt_text(text)
    assert r is not None
    assert (r.id, r.stat, r.err, r.done_date) == expected


def test_text_that_is_no_receipt() -> None:
    assert c.parse_receipt_text("Hello, are you there?") is None


@pytest.mark.parametrize(
    ("stat", "status"),
    [
        ("DELIVRD", ReceiptStatus.DELIVERED),
        ("UNDELIV", ReceiptStatus.UNDELIVERED),
        ("REJECTD", ReceiptStatus.REJECTED),
        ("EXPIRED", ReceiptStatus.EXPIRED),
        ("DELETED", ReceiptStatus.DELETED),
        ("UNKNOWN", ReceiptStatus.UNKNOWN),
        ("ACCEPTD", ReceiptStatus.ACCEPTED),
        ("ENROUTE", ReceiptStatus.ENROUTE),
        ("delivered", ReceiptStatus.DELIVERED),
        ("UNDELIVERABLE", ReceiptStatus.UNDELIVERED),
        ("WEIRD", ReceiptStatus.UNKNOWN),
    ],
)
def test_stat_mapping(stat: str, status: ReceiptStatus) -> None:
    sm = c.ShortMessage("34600000001", "Herald", f"id:abc stat:{stat} err:000".encode(), esm_class=4)
    parsed = c.parse_receipt(sm)
    assert parsed is not None and parsed.status is status and parsed.message_id == "abc"


def test_tlvs_win_over_text() -> None:
    sm = c.ShortMessage(
        "34600000001", "Herald", b"id:123 stat:DELIVRD err:000 done date:2511251536", esm_class=4,
        tlvs={c.TLV_RECEIPTED_MESSAGE_ID: b"7b\x00", c.TLV_MESSAGE_STATE: b"\x05"},
    )
    parsed = c.parse_receipt(sm)
    assert parsed == c.ParsedReceipt("7b", ReceiptStatus.UNDELIVERED, "DELIVRD", "000", datetime(2025, 11, 25, 15, 36, tzinfo=UTC))


def test_receipt_from_tlvs_only_with_network_error() -> None:
    sm = c.ShortMessage(
        "34600000001", "Herald", b"", esm_class=4,
        tlvs={c.TLV_RECEIPTED_MESSAGE_ID: b"abc\x00", c.TLV_MESSAGE_STATE: b"\x05", c.TLV_NETWORK_ERROR_CODE: b"\x03\x00\x22"},
    )
    parsed = c.parse_receipt(sm)
    assert parsed is not None
    assert (parsed.message_id, parsed.status, parsed.raw_status, parsed.error_code) == ("abc", ReceiptStatus.UNDELIVERED, "UNDELIV", "3:34")


def test_receipt_without_any_id_is_none() -> None:
    assert c.parse_receipt(c.ShortMessage("1", "2", b"stat:DELIVRD", esm_class=4)) is None


@pytest.mark.parametrize(
    ("conversion", "text_id", "expected"),
    [("dec_to_hex", "255", "ff"), ("hex_to_dec", "ff", "255"), ("none", "255", "255"), ("dec_to_hex", "zz", "zz")],
)
def test_id_conversion_for_carriers_that_mix_hex_and_decimal(conversion, text_id, expected) -> None:
    sm = c.ShortMessage("1", "2", f"id:{text_id} stat:DELIVRD".encode(), esm_class=4)
    parsed = c.parse_receipt(sm, id_conversion=conversion)
    assert parsed is not None and parsed.message_id == expected


def test_done_date_in_the_carriers_zone_becomes_utc() -> None:
    assert c.parse_smpp_date("2511251536") == datetime(2025, 11, 25, 15, 36, tzinfo=UTC)
    assert c.parse_smpp_date("251125153659") == datetime(2025, 11, 25, 15, 36, 59, tzinfo=UTC)
    madrid = c.parse_smpp_date("2507011200", ZoneInfo("Europe/Madrid"))
    assert madrid == datetime(2025, 7, 1, 10, 0, tzinfo=UTC)
    assert c.parse_smpp_date("25113") is None and c.parse_smpp_date("2513991200") is None and c.parse_smpp_date(None) is None


# -- MO -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "dcs", "text"),
    [
        (b"Hi \x00\x1be", 0x00, "Hi @€"),
        ("Привет 😀".encode("utf-16-be"), 0x08, "Привет 😀"),
        ("café".encode("latin-1"), 0x03, "café"),
        (b"plain", 0x01, "plain"),
        (b"\x00\x01", 0x04, "0001"),
        (b"Hi", 0xF1, "Hi"),  # message class 1, GSM-7
        ("ж".encode("utf-16-be"), 0x18, "ж"),  # general group, UCS-2, class meaning
    ],
)
def test_mo_text_by_data_coding(data: bytes, dcs: int, text: str) -> None:
    assert c.decode_text(data, dcs) == text


def test_data_coding_zero_can_be_latin1_for_some_carriers() -> None:
    assert c.decode_text("café".encode("latin-1"), 0, dcs0="latin-1") == "café"


def test_udh_8_and_16_bit_references() -> None:
    assert c.split_udh(bytes.fromhex("0500032a0302") + b"abc") == (c.Concat(0x2A, 3, 2), b"abc")
    assert c.split_udh(bytes.fromhex("060804beef0201") + b"x") == (c.Concat(0xBEEF, 2, 1), b"x")
    # another element (port addressing) before the concatenation one
    assert c.split_udh(bytes.fromhex("0b0504158a00000003070302") + b"y") == (c.Concat(7, 3, 2), b"y")
    with pytest.raises(c.CodecError):
        c.split_udh(b"\x09\x00\x03")


def test_sar_tlvs_count_as_concatenation() -> None:
    sm = c.ShortMessage("1", "2", b"abc", tlvs={c.TLV_SAR_MSG_REF_NUM: b"\x01\x02", c.TLV_SAR_TOTAL_SEGMENTS: b"\x02", c.TLV_SAR_SEGMENT_SEQNUM: b"\x01"})
    assert c.concat_of(sm) == (c.Concat(0x0102, 2, 1), b"abc")


def test_reassembly_out_of_order_with_a_repeated_part() -> None:
    r = c.Reassembler(timeout_s=10)
    assert r.add("+1", "2", c.Concat(5, 3, 3), "C", 0.0) is None
    assert r.add("+1", "2", c.Concat(5, 3, 1), "A", 0.1) is None
    assert r.add("+1", "2", c.Concat(5, 3, 1), "A", 0.2) is None  # redelivered part
    assert r.add("+9", "2", c.Concat(5, 3, 2), "other sender", 0.2) is None
    assert r.add("+1", "2", c.Concat(5, 3, 2), "B", 0.3) == "ABC"
    assert len(r) == 1
    assert r.expire(5.0) == []
    assert r.expire(10.5) == [("+9", "2", "other sender")]


# -- command_status table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "retriable", "slow_down"),
    [
        (0x58, "ESME_RTHROTTLED", True, True),
        (0x14, "ESME_RMSGQFUL", True, True),
        (0x08, "ESME_RSYSERR", True, False),
        (0x0B, "ESME_RINVDSTADR", False, False),
        (0x0A, "ESME_RINVSRCADR", False, False),
        (0x01, "ESME_RINVMSGLEN", False, False),
        (0x45, "ESME_RSUBMITFAIL", False, False),
        (0x401, "smpp_0x00000401", False, False),
    ],
)
def test_status_table(status: int, name: str, retriable: bool, slow_down: bool) -> None:
    info = c.classify(status)
    assert (info.name, info.retriable, info.slow_down) == (name, retriable, slow_down)


def test_vendor_code_can_be_made_retriable() -> None:
    assert c.classify(0x401, [0x401]).retriable
    assert not c.classify(0x0B, [0x401]).retriable


def test_every_status_is_described_and_documented() -> None:
    doc = DOCS.read_text()
    for status, info in c.COMMAND_STATUS.items():
        assert info.description, info.name
        if status:
            row = re.search(rf"^\| `?0x{status:02X}`? \| `{info.name}` \| (yes|no) \|", doc, re.M)
            assert row, f"{info.name} missing from docs/smpp.md"
            assert (row.group(1) == "yes") == info.retriable, info.name


# -- window ---------------------------------------------------------------------------------


async def test_window_caps_halves_on_throttling_and_recovers() -> None:
    w = Window(8)
    for _ in range(8):
        await w.acquire()
    blocked = asyncio.ensure_future(w.acquire())
    await asyncio.sleep(0.01)
    assert not blocked.done()  # the 9th waits
    await w.release()
    await asyncio.wait_for(blocked, 1)
    for _ in range(8):
        await w.release()
    w.slow_down(0.05)
    assert w.limit == 4
    start = asyncio.get_running_loop().time()
    await w.acquire()  # paused first
    assert asyncio.get_running_loop().time() - start >= 0.04
    await w.release()
    w.slow_down(0)
    w.slow_down(0)
    w.slow_down(0)
    assert w.limit == 1  # never below one
    for _ in range(1 + 2 + 3 + 4 + 5 + 6 + 7):
        w.success()
    assert w.limit == 8  # additive increase back to the configured size
    w.success()
    assert w.limit == 8


async def test_window_acquire_times_out_without_taking_a_slot() -> None:
    w = Window(1)
    assert await w.acquire(0.1)
    assert not await w.acquire(0.05)  # full
    assert w.used == 1
    await w.release()
    assert await w.acquire(0.05) and w.used == 1
    w.slow_down(1.0)  # paused longer than the timeout
    await w.release()
    assert not await w.acquire(0.05) and w.used == 0


# -- hostile or buggy SMSCs: malformed deliver_sm ------------------------------------------


def sar(ref: bytes, total: bytes, seq: bytes) -> dict[int, bytes]:
    return {c.TLV_SAR_MSG_REF_NUM: ref, c.TLV_SAR_TOTAL_SEGMENTS: total, c.TLV_SAR_SEGMENT_SEQNUM: seq}


@pytest.mark.parametrize(
    "tlvs",
    [
        sar(b"\x01\x02", b"", b"\x01"),  # empty SAR total: was an IndexError that dropped the bind
        sar(b"\x01\x02", b"\x02", b""),
        sar(b"", b"\x02", b"\x01"),
    ],
)
def test_empty_sar_tlvs_are_a_codec_error(tlvs: dict[int, bytes]) -> None:
    with pytest.raises(c.CodecError):
        c.concat_of(c.ShortMessage("1", "2", b"abc", tlvs=tlvs))


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (c.TLV_SAR_MSG_REF_NUM, b"\x01"),  # 2 octets by the spec
        (c.TLV_SAR_TOTAL_SEGMENTS, b"\x02\x00"),  # 1 octet
        (c.TLV_SAR_SEGMENT_SEQNUM, b""),
        (c.TLV_MESSAGE_STATE, b""),  # 1 octet
        (c.TLV_NETWORK_ERROR_CODE, b"\x03\x00"),  # 3 octets
        (c.TLV_RECEIPTED_MESSAGE_ID, b"x" * 66),  # at most 65
        (c.TLV_USER_MESSAGE_REFERENCE, b"\x01"),  # 2 octets
    ],
)
def test_decode_checks_the_length_of_known_tlvs(tag: int, value: bytes) -> None:
    body = c.ShortMessage("1", "2", b"abc", tlvs={tag: value}).encode()
    with pytest.raises(c.CodecError):
        c.ShortMessage.decode(body)


def test_a_tlv_longer_than_the_pdu_is_a_codec_error() -> None:
    body = c.ShortMessage("1", "2", b"abc").encode() + bytes.fromhex("04240010") + b"short"
    with pytest.raises(c.CodecError):
        c.ShortMessage.decode(body)


@pytest.mark.parametrize(
    "udh",
    [
        "050003070300",  # part 0
        "050003070304",  # part 4 of 3
        "050003070001",  # 0 parts
        "0608040001020003",  # 16-bit reference, part 3 of 2
    ],
)
def test_impossible_part_numbers_are_rejected(udh: str) -> None:
    sm = c.ShortMessage("1", "2", bytes.fromhex(udh) + b"abc", esm_class=c.ESM_UDHI)
    with pytest.raises(c.CodecError):
        c.concat_of(sm)
    with pytest.raises(c.CodecError):
        c.concat_of(c.ShortMessage("1", "2", b"abc", tlvs=sar(b"\x00\x07", b"\x02", b"\x03")))


def test_reassembler_rejects_impossible_parts_too() -> None:
    r = c.Reassembler(timeout_s=10)
    with pytest.raises(c.CodecError):
        r.add("+1", "2", c.Concat(1, 3, 0), "x", 0.0)
    with pytest.raises(c.CodecError):
        r.add("+1", "2", c.Concat(1, 3, 4), "x", 0.0)
    assert len(r) == 0


def test_reassembly_is_bounded_in_bytes() -> None:
    r = c.Reassembler(timeout_s=10, max_bytes=1000)
    assert r.add("+1", "2", c.Concat(1, 3, 1), "a" * 400, 0.0) is None
    assert r.add("+1", "2", c.Concat(2, 3, 1), "b" * 400, 0.0) is None
    assert r.held_bytes == 800
    with pytest.raises(c.ReassemblyFull):
        r.add("+1", "2", c.Concat(3, 3, 1), "c" * 400, 0.0)
    assert r.held_bytes == 800 and len(r) == 2  # nothing of the refused part is kept
    # a repeated part replaces itself: counted once
    assert r.add("+1", "2", c.Concat(1, 3, 1), "a" * 400, 0.1) is None
    assert r.held_bytes == 800
    # completing a message gives its bytes back
    assert r.add("+1", "2", c.Concat(1, 3, 2), "x", 0.2) is None
    assert r.add("+1", "2", c.Concat(1, 3, 3), "y", 0.3) == "a" * 400 + "xy"
    assert r.held_bytes == 400
    assert r.expire(20.0) == [("+1", "2", "b" * 400)]
    assert r.held_bytes == 0


def test_a_part_that_completes_its_message_is_taken_even_at_the_bound() -> None:
    r = c.Reassembler(timeout_s=10, max_bytes=500)
    assert r.add("+1", "2", c.Concat(1, 2, 1), "a" * 300, 0.0) is None
    with pytest.raises(c.ReassemblyFull):
        r.add("+1", "2", c.Concat(2, 2, 1), "b" * 300, 0.0)
    assert r.add("+1", "2", c.Concat(1, 2, 2), "c" * 300, 0.0) == "a" * 300 + "c" * 300
    assert r.held_bytes == 0


def test_unknown_vendor_statuses_share_one_metric_label() -> None:
    assert c.metric_label(0x401) == c.metric_label(0x4FF) == c.metric_label(0x12345678) == "vendor_or_unknown"
    assert c.metric_label(0x58) == "ESME_RTHROTTLED"
    assert c.metric_label(0x401) != c.classify(0x401).name  # the refusal itself still names the code


class _FakeSession:
    label = "fake"

    def __init__(self) -> None:
        self.answers: list[tuple[int, int, int]] = []

    def respond(self, command_id: int, seq: int, body: bytes = b"", status: int = 0) -> bool:
        self.answers.append((command_id, seq, status))
        return True


@pytest.mark.parametrize(
    "body",
    [
        c.ShortMessage("34600000001", "12345", b"abc", tlvs=sar(b"\x00\x07", b"", b"\x01")).encode(),
        c.ShortMessage("34600000001", "12345", bytes.fromhex("050003070300") + b"abc", esm_class=c.ESM_UDHI).encode(),
        c.ShortMessage("34600000001", "12345", b"id:1 stat:DELIVRD", esm_class=c.ESM_RECEIPT,
                       tlvs={c.TLV_MESSAGE_STATE: b""}).encode(),
        b"\x00\x01",  # truncated
    ],
)
def test_a_malformed_deliver_sm_is_answered_with_an_error_and_raises_nothing(body: bytes) -> None:
    from services.dispatcher.gateways.smpp import SmppGateway

    gw = SmppGateway(SmppConfig(name="smsc", host="127.0.0.1", system_id="herald"))  # no loop: not started
    session = _FakeSession()
    gw._on_deliver_sm(session, c.Pdu(c.DELIVER_SM, 0, 7, body))  # type: ignore[arg-type]
    assert session.answers == [(c.DELIVER_SM, 7, c.ESME_RX_P_APPN)]
    assert gw._inbox.qsize() == 0


def test_receipt_fingerprint_tells_two_messages_with_one_reused_id_apart() -> None:
    from shared.contracts import DeliveryReceipt
    from shared.events import receipt_event

    def receipt(handset: str, text: bytes) -> c.ShortMessage:
        return c.ShortMessage(handset, "Herald", text, esm_class=c.ESM_RECEIPT)

    a = receipt("34600000001", b"id:1 submit date:2512051000 done date:2512051000 stat:DELIVRD err:000 text:hello")
    b = receipt("34600000002", b"id:1 submit date:2512051300 done date:2512051300 stat:DELIVRD err:000 text:other")
    assert c.receipt_fingerprint(a) == c.receipt_fingerprint(receipt(a.source_addr, a.short_message))  # resent: same
    assert c.receipt_fingerprint(a) != c.receipt_fingerprint(b)

    def event_id(fingerprint: str | None):
        r = DeliveryReceipt(gateway="smsc", gateway_message_id="1", status=ReceiptStatus.DELIVERED, error_code="000",
                            fingerprint=fingerprint)
        return receipt_event(r).event.event_id

    assert event_id(c.receipt_fingerprint(a)) == event_id(c.receipt_fingerprint(a))
    assert event_id(c.receipt_fingerprint(a)) != event_id(c.receipt_fingerprint(b))
    # a receipt without a fingerprint (HTTP gateways) keeps the id it always had
    from shared.contracts.envelope import derived_event_id

    assert event_id(None) == derived_event_id("smsc", "1", ReceiptStatus.DELIVERED, "000")
