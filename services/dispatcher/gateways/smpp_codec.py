"""SMPP 3.4 encoding for Herald's SMPP gateway: PDUs, message text and UDH, receipts, MO text,
and the command_status table. Pure functions and small state machines, no I/O, no asyncio.

Wire layout references are to the SMPP v3.4 specification (Issue 1.2): section 4 for the PDUs,
5.2 for the fields, 5.3 for the optional parameters (TLVs), appendix B for receipt text.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Literal

from shared.sms.encoding import GSM_MULTI, GSM_SINGLE, UCS2_MULTI, UCS2_SINGLE, gsm_septets, split_parts
from shared.statuses import ReceiptStatus

# --------------------------------------------------------------------------------------------
# Command ids (section 5.1.2.1)

GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
ENQUIRE_LINK = 0x00000015
RESP = 0x80000000  # bit set on every response id

BIND_IDS = {"transceiver": BIND_TRANSCEIVER, "transmitter": BIND_TRANSMITTER, "receiver": BIND_RECEIVER}

HEADER = struct.Struct(">IIII")
MAX_PDU = 64 * 1024  # a PDU longer than this is a protocol error (the largest legal one is ~66 KB of payload TLV)
INTERFACE_VERSION = 0x34

# esm_class (5.2.12)
ESM_UDHI = 0x40
ESM_RECEIPT = 0x04  # "SMSC Delivery Receipt" message type
ESM_INTERMEDIATE = 0x20  # "Intermediate Delivery Notification" (some SMSCs send ENROUTE/ACCEPTD this way)
ESM_TYPE_MASK = 0x3C

# data_coding (5.2.19)
DCS_DEFAULT = 0x00  # SMSC default alphabet: GSM 03.38, one septet per octet (unpacked)
DCS_IA5 = 0x01
DCS_BINARY = 0x02
DCS_LATIN1 = 0x03
DCS_BINARY_2 = 0x04
DCS_UCS2 = 0x08

# TLV tags (5.3.2)
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_USER_MESSAGE_REFERENCE = 0x0204
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F
#: Herald's own optional parameter (vendor range 0x1400-0x3FFF): the Herald message id, as a
#: C-Octet-String, sent only when a gateway's ``send_message_id_tlv`` is on. Lets the gateway
#: simulator count "the same message sent twice" exactly. Real carriers ignore unknown vendor
#: TLVs by the spec (5.3.1), but some reject them: keep it off for them.
TLV_HERALD_MESSAGE_ID = 0x1400

#: Octets each known TLV may have (5.3.2): (min, max). Other tags are taken as they come.
TLV_LENGTHS: dict[int, tuple[int, int]] = {
    TLV_NETWORK_ERROR_CODE: (3, 3),
    TLV_MESSAGE_STATE: (1, 1),
    TLV_RECEIPTED_MESSAGE_ID: (1, 65),
    TLV_USER_MESSAGE_REFERENCE: (2, 2),
    TLV_SAR_MSG_REF_NUM: (2, 2),
    TLV_SAR_TOTAL_SEGMENTS: (1, 1),
    TLV_SAR_SEGMENT_SEQNUM: (1, 1),
}


class CodecError(ValueError):
    """A field does not fit the SMPP layout, or a received PDU is malformed."""


# --------------------------------------------------------------------------------------------
# command_status (5.1.3): what each answer means for Herald


@dataclass(frozen=True, slots=True)
class StatusInfo:
    name: str
    retriable: bool
    slow_down: bool = False  # the bind should lower its window / pause
    description: str = ""


#: command_status of a submit_sm_resp -> Refused(code=name, retriable). ``slow_down`` codes halve
#: the bind's window and pause it briefly. Codes not listed (vendor range 0x400-0x4FF) are
#: permanent unless the gateway config names them in ``retriable_statuses``.
COMMAND_STATUS: dict[int, StatusInfo] = {
    0x00: StatusInfo("ESME_ROK", False, description="no error"),
    0x01: StatusInfo("ESME_RINVMSGLEN", False, description="message length invalid: the text will never fit"),
    0x02: StatusInfo("ESME_RINVCMDLEN", False, description="command length invalid: a Herald encoding bug"),
    0x03: StatusInfo("ESME_RINVCMDID", False, description="command id invalid: the SMSC does not do submit_sm"),
    0x04: StatusInfo("ESME_RINVBNDSTS", True, description="wrong bind state (e.g. a receiver bind): another bind may take it"),
    0x05: StatusInfo("ESME_RALYBND", True, description="already bound: transient session confusion"),
    0x06: StatusInfo("ESME_RINVPRTFLG", False, description="invalid priority_flag"),
    0x07: StatusInfo("ESME_RINVREGDLVFLG", False, description="invalid registered_delivery"),
    0x08: StatusInfo("ESME_RSYSERR", True, description="SMSC system error: usually transient"),
    0x0A: StatusInfo("ESME_RINVSRCADR", False, description="invalid source address (sender id not allowed)"),
    0x0B: StatusInfo("ESME_RINVDSTADR", False, description="invalid destination address"),
    0x0C: StatusInfo("ESME_RINVMSGID", False, description="invalid message id"),
    0x0D: StatusInfo("ESME_RBINDFAIL", True, description="bind failed: the session is not usable, reconnect"),
    0x0E: StatusInfo("ESME_RINVPASWD", False, description="invalid password: a configuration error"),
    0x0F: StatusInfo("ESME_RINVSYSID", False, description="invalid system_id: a configuration error"),
    0x14: StatusInfo("ESME_RMSGQFUL", True, True, "message queue full: slow down and retry"),
    0x15: StatusInfo("ESME_RINVSERTYP", False, description="invalid service_type"),
    0x43: StatusInfo("ESME_RINVESMCLASS", False, description="invalid esm_class (UDHI not allowed?)"),
    0x45: StatusInfo("ESME_RSUBMITFAIL", False, description="submit failed (generic refusal, often no credit or route)"),
    0x48: StatusInfo("ESME_RINVSRCTON", False, description="invalid source_addr_ton"),
    0x49: StatusInfo("ESME_RINVSRCNPI", False, description="invalid source_addr_npi"),
    0x50: StatusInfo("ESME_RINVDSTTON", False, description="invalid dest_addr_ton"),
    0x51: StatusInfo("ESME_RINVDSTNPI", False, description="invalid dest_addr_npi"),
    0x53: StatusInfo("ESME_RINVSYSTYP", False, description="invalid system_type"),
    0x58: StatusInfo("ESME_RTHROTTLED", True, True, "throttled: over the carrier's rate, slow down and retry"),
    0x61: StatusInfo("ESME_RINVSCHED", False, description="invalid schedule_delivery_time"),
    0x62: StatusInfo("ESME_RINVEXPIRY", False, description="invalid validity_period"),
    0x63: StatusInfo("ESME_RINVDFTMSGID", False, description="invalid sm_default_msg_id"),
    0x64: StatusInfo("ESME_RX_T_APPN", True, description="temporary application error: retry"),
    0x65: StatusInfo("ESME_RX_P_APPN", False, description="permanent application error"),
    0x66: StatusInfo("ESME_RX_R_APPN", False, description="application rejected the message"),
    0xC0: StatusInfo("ESME_RINVOPTPARSTREAM", False, description="malformed TLVs"),
    0xC1: StatusInfo("ESME_ROPTPARNOTALLWD", False, description="a TLV is not allowed (e.g. message_payload, or Herald's id TLV)"),
    0xC2: StatusInfo("ESME_RINVPARLEN", False, description="invalid TLV length"),
    0xC3: StatusInfo("ESME_RMISSINGOPTPARAM", False, description="a required TLV is missing"),
    0xC4: StatusInfo("ESME_RINVOPTPARAMVAL", False, description="invalid TLV value"),
    0xFE: StatusInfo("ESME_RDELIVERYFAILURE", False, description="delivery failure"),
    0xFF: StatusInfo("ESME_RUNKNOWNERR", True, description="unknown error: retried a bounded number of times"),
}

ESME_ROK = 0x00
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RSYSERR = 0x08
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64
ESME_RX_P_APPN = 0x65


def classify(status: int, extra_retriable: Iterable[int] = ()) -> StatusInfo:
    info = COMMAND_STATUS.get(status)
    if info is None:
        info = StatusInfo(f"smpp_0x{status:08x}", False, description="vendor-specific or unknown status")
    if status in set(extra_retriable) and not info.retriable:
        info = StatusInfo(info.name, True, info.slow_down, info.description + " (retriable by configuration)")
    return info


#: The metric label of every command_status not in :data:`COMMAND_STATUS` (vendor range or
#: garbage): one label, so an SMSC answering with many distinct codes cannot grow a metric
#: without bound. The refusal itself (reason code) still names the exact code.
UNKNOWN_STATUS_LABEL = "vendor_or_unknown"


def metric_label(status: int) -> str:
    info = COMMAND_STATUS.get(status)
    return info.name if info is not None else UNKNOWN_STATUS_LABEL


# --------------------------------------------------------------------------------------------
# PDU framing and fields


@dataclass(frozen=True, slots=True)
class Pdu:
    command_id: int
    status: int
    seq: int
    body: bytes = b""

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESP)


def encode_pdu(command_id: int, seq: int, body: bytes = b"", status: int = 0) -> bytes:
    return HEADER.pack(HEADER.size + len(body), command_id, status, seq) + body


def decode_pdu(data: bytes) -> Pdu:
    if len(data) < HEADER.size:
        raise CodecError("PDU shorter than its header")
    length, command_id, status, seq = HEADER.unpack_from(data)
    if length != len(data):
        raise CodecError(f"command_length {length} but {len(data)} bytes")
    return Pdu(command_id, status, seq, data[HEADER.size :])


def cstring(value: str, max_octets: int, name: str) -> bytes:
    """A C-Octet-String of at most ``max_octets`` octets including the NUL (5.2)."""
    raw = value.encode("latin-1")
    if len(raw) + 1 > max_octets or b"\x00" in raw:
        raise CodecError(f"{name} must be at most {max_octets - 1} octets without NUL")
    return raw + b"\x00"


class Reader:
    """Reads fields of a PDU body in order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def cstring(self, max_octets: int = 256) -> str:
        end = self.data.find(b"\x00", self.pos, self.pos + max_octets)
        if end < 0:
            raise CodecError("C-Octet-String without NUL")
        value = self.data[self.pos : end].decode("latin-1")
        self.pos = end + 1
        return value

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise CodecError("PDU body too short")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def octets(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CodecError("PDU body too short")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def tlvs(self) -> dict[int, bytes]:
        """The optional parameters; a TLV running past the PDU, or a known tag with a length the
        specification does not allow (:data:`TLV_LENGTHS`), is a :class:`CodecError`."""
        out: dict[int, bytes] = {}
        while self.left:
            if self.left < 4:
                raise CodecError("truncated TLV header")
            tag, length = struct.unpack_from(">HH", self.data, self.pos)
            self.pos += 4
            if length > self.left:
                raise CodecError(f"TLV 0x{tag:04x} of {length} octets runs past the PDU")
            allowed = TLV_LENGTHS.get(tag)
            if allowed is not None and not allowed[0] <= length <= allowed[1]:
                raise CodecError(f"TLV 0x{tag:04x} has {length} octets, allowed {allowed[0]}-{allowed[1]}")
            out.setdefault(tag, self.octets(length))
        return out


def encode_tlvs(tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack(">HH", tag, len(value)) + value for tag, value in tlvs)


def bind_body(
    system_id: str, password: str, system_type: str = "", addr_ton: int = 0, addr_npi: int = 0, address_range: str = ""
) -> bytes:
    return (
        cstring(system_id, 16, "system_id")
        + cstring(password, 9, "password")
        + cstring(system_type, 13, "system_type")
        + bytes([INTERFACE_VERSION, addr_ton, addr_npi])
        + cstring(address_range, 41, "address_range")
    )


@dataclass(frozen=True, slots=True)
class BindRequest:
    system_id: str
    password: str
    system_type: str
    interface_version: int
    addr_ton: int
    addr_npi: int
    address_range: str


def decode_bind(body: bytes) -> BindRequest:
    r = Reader(body)
    return BindRequest(r.cstring(16), r.cstring(9), r.cstring(13), r.u8(), r.u8(), r.u8(), r.cstring(41))


def decode_message_id(body: bytes) -> str | None:
    """message_id of a submit_sm_resp (or system_id of a bind_resp); None when the body is empty."""
    if not body:
        return None
    return Reader(body).cstring(65)


@dataclass(frozen=True, slots=True)
class ShortMessage:
    """A submit_sm or deliver_sm (the same layout, 4.4.1 and 4.6.1)."""

    source_addr: str
    destination_addr: str
    short_message: bytes = b""
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    dest_addr_ton: int = 1
    dest_addr_npi: int = 1
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    tlvs: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        if len(self.short_message) > 254:
            raise CodecError("short_message is at most 254 octets; use message_payload")
        return (
            cstring(self.service_type, 6, "service_type")
            + bytes([self.source_addr_ton, self.source_addr_npi])
            + cstring(self.source_addr, 21, "source_addr")
            + bytes([self.dest_addr_ton, self.dest_addr_npi])
            + cstring(self.destination_addr, 21, "destination_addr")
            + bytes([self.esm_class, self.protocol_id, self.priority_flag])
            + cstring(self.schedule_delivery_time, 17, "schedule_delivery_time")
            + cstring(self.validity_period, 17, "validity_period")
            + bytes(
                [
                    self.registered_delivery,
                    self.replace_if_present_flag,
                    self.data_coding,
                    self.sm_default_msg_id,
                    len(self.short_message),
                ]
            )
            + self.short_message
            + encode_tlvs(self.tlvs.items())
        )

    @classmethod
    def decode(cls, body: bytes) -> ShortMessage:
        r = Reader(body)
        service_type = r.cstring(6)
        s_ton, s_npi, source = r.u8(), r.u8(), r.cstring(21)
        d_ton, d_npi, dest = r.u8(), r.u8(), r.cstring(21)
        esm, pid, prio = r.u8(), r.u8(), r.u8()
        sched, validity = r.cstring(17), r.cstring(17)
        reg, replace, dcs, default_id, sm_length = r.u8(), r.u8(), r.u8(), r.u8(), r.u8()
        sm = r.octets(sm_length)
        return cls(
            source, dest, sm, service_type, s_ton, s_npi, d_ton, d_npi, esm, pid, prio, sched, validity,
            reg, replace, dcs, default_id, r.tlvs(),
        )

    @property
    def payload(self) -> bytes:
        """The message octets: short_message, or the message_payload TLV when that is used."""
        return self.short_message or self.tlvs.get(TLV_MESSAGE_PAYLOAD, b"")


# --------------------------------------------------------------------------------------------
# Outgoing text: encoding choice, parts, UDH

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class PartPlan:
    short_message: bytes
    esm_class: int
    data_coding: int
    tlvs: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class MessagePlan:
    encoding: Encoding
    parts: tuple[PartPlan, ...]


def udh_concat(ref: int, total: int, seq: int) -> bytes:
    """The concatenation UDH with an 8-bit reference: 05 00 03 ref total seq (3GPP TS 23.040 9.2.3.24.1)."""
    return bytes([0x05, 0x00, 0x03, ref & 0xFF, total, seq])


def encode_text(text: str, encoding: Encoding) -> bytes:
    # GSM-7 unpacked: one septet per octet; the gsm03.38 codec writes extension characters as
    # ESC (0x1B) + char, so octets == septets. UCS-2 as UTF-16BE (an emoji is a surrogate pair).
    return text.encode("gsm03.38") if encoding == "GSM-7" else text.encode("utf-16-be")


def choose_encoding(text: str, force_ucs2: bool = False) -> tuple[Encoding, list[int]]:
    """The encoding and each character's cost (septets or UTF-16 units)."""
    if not force_ucs2:
        septets = [gsm_septets(c) for c in text]
        if all(septets):
            return "GSM-7", septets
    return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text]


def plan_message(text: str, *, ref: int, use_message_payload: bool = False, force_ucs2: bool = False) -> MessagePlan:
    """How ``text`` goes out: one PDU, or concatenated parts split by :func:`split_parts`
    (153 septets / 67 units a part, never inside an escape or a surrogate pair)."""
    encoding, cost = choose_encoding(text, force_ucs2)
    dcs = DCS_DEFAULT if encoding == "GSM-7" else DCS_UCS2
    single, multi = (GSM_SINGLE, GSM_MULTI) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI)
    parts = split_parts(text, cost, single, multi) or ("",)
    if len(parts) == 1:
        return MessagePlan(encoding, (PartPlan(encode_text(parts[0], encoding), 0, dcs),))
    if use_message_payload:
        return MessagePlan(encoding, (PartPlan(b"", 0, dcs, ((TLV_MESSAGE_PAYLOAD, encode_text(text, encoding)),)),))
    if len(parts) > 255:
        raise CodecError("a message has at most 255 parts")
    total = len(parts)
    return MessagePlan(
        encoding,
        tuple(
            PartPlan(udh_concat(ref, total, i) + encode_text(p, encoding), ESM_UDHI, dcs)
            for i, p in enumerate(parts, start=1)
        ),
    )


def address(number: str | None, ton: int | None, npi: int | None) -> tuple[str, int, int]:
    """An address and its TON/NPI. With ``ton`` None they are chosen from the address's shape:
    ``+`` and digits -> international (1/1); up to 8 digits -> network specific short code (3/0);
    other digits -> unknown (0/1); anything else -> alphanumeric (5/0). The ``+`` is never sent."""
    value = number or ""
    international = value.startswith("+") and value[1:].isdigit()
    if ton is None:
        if international:
            ton, auto_npi = 1, 1
        elif value.isdigit() and len(value) <= 8:
            ton, auto_npi = 3, 0
        elif value.isdigit():
            ton, auto_npi = 0, 1
        else:
            ton, auto_npi = 5, 0
        npi = auto_npi if npi is None else npi
    elif npi is None:
        npi = 1 if ton in (0, 1, 2) else 0
    return (value[1:] if international else value), ton, npi


# --------------------------------------------------------------------------------------------
# Incoming text (MO) and UDH


@dataclass(frozen=True, slots=True)
class Concat:
    ref: int
    total: int
    seq: int


def checked(concat: Concat) -> Concat:
    """``concat`` if its part number can exist (1 <= seq <= total, total >= 1), else CodecError."""
    if concat.total < 1 or not 1 <= concat.seq <= concat.total:
        raise CodecError(f"impossible part {concat.seq} of {concat.total}")
    return concat


def split_udh(data: bytes) -> tuple[Concat | None, bytes]:
    """Strip a User Data Header; return its concatenation element (8- or 16-bit ref) if any."""
    if not data:
        return None, data
    udhl = data[0]
    if udhl + 1 > len(data):
        raise CodecError("UDH longer than the message")
    header, rest = data[1 : 1 + udhl], data[1 + udhl :]
    concat = None
    i = 0
    while i + 2 <= len(header):
        iei, iel = header[i], header[i + 1]
        value = header[i + 2 : i + 2 + iel]
        if iei == 0x00 and iel == 3 and len(value) == 3:
            concat = Concat(value[0], value[1], value[2])
        elif iei == 0x08 and iel == 4 and len(value) == 4:
            concat = Concat((value[0] << 8) | value[1], value[2], value[3])
        i += 2 + iel
    return (checked(concat) if concat is not None else None), rest


#: data_coding values SMPP itself defines (5.2.19) -> Python codec; None: the SMSC default alphabet.
SMPP_DCS: dict[int, str | None] = {
    DCS_DEFAULT: None,
    DCS_IA5: "ascii",
    DCS_BINARY: "binary",
    DCS_LATIN1: "latin-1",
    DCS_BINARY_2: "binary",
    0x05: "shift_jis",
    0x06: "iso8859-5",
    0x07: "iso8859-8",
    DCS_UCS2: "utf-16-be",
    0x0A: "iso2022_jp",
    0x0E: "euc_kr",
}


def decode_text(data: bytes, data_coding: int, dcs0: str = "gsm03.38") -> str:
    """Text of a received message by its data_coding: SMPP's own values, then the 3GPP TS 23.038
    general (0x10-0x1F) and message-class (0xF0) groups. ``dcs0`` is the codec of data_coding 0
    (the "SMSC default alphabet": GSM 03.38 for most carriers, latin-1 or ASCII for some)."""
    if data_coding in SMPP_DCS:
        codec = SMPP_DCS[data_coding] or dcs0
    elif 0x10 <= data_coding <= 0x1F:
        codec = ("gsm03.38", "binary", "utf-16-be", "binary")[(data_coding >> 2) & 0x03]
    elif data_coding & 0xF0 == 0xF0:
        codec = "binary" if data_coding & 0x04 else "gsm03.38"
    else:
        codec = "latin-1"
    if codec == "binary":
        return data.hex()
    return data.decode(codec, errors="replace")


def concat_of(sm: ShortMessage) -> tuple[Concat | None, bytes]:
    """Concatenation info (UDH or SAR TLVs) and the payload without UDH."""
    data = sm.payload
    if sm.esm_class & ESM_UDHI:
        return split_udh(data)
    t = sm.tlvs
    if TLV_SAR_MSG_REF_NUM in t and TLV_SAR_TOTAL_SEGMENTS in t and TLV_SAR_SEGMENT_SEQNUM in t:
        ref, total, seq = t[TLV_SAR_MSG_REF_NUM], t[TLV_SAR_TOTAL_SEGMENTS], t[TLV_SAR_SEGMENT_SEQNUM]
        # A ShortMessage built by decode() has these checked already; one built otherwise may not.
        if (len(ref), len(total), len(seq)) != (2, 1, 1):
            raise CodecError("SAR TLVs of the wrong length")
        return checked(Concat(int.from_bytes(ref, "big"), total[0], seq[0])), data
    return None, data


@dataclass(slots=True)
class _Assembly:
    total: int
    first_at: float
    parts: dict[int, str] = field(default_factory=dict)
    size: int = 0  # bytes held (UTF-8 of the parts' text)


class ReassemblyFull(CodecError):
    """Holding this part would exceed the reassembly's byte bound: answer a temporary error
    (the SMSC sends it again later) and keep nothing of it."""


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class Reassembler:
    """Joins concatenated MO parts by (source, destination, reference, total). Bounded: at most
    ``max_pending`` incomplete messages and ``max_bytes`` of text held over all of them."""

    def __init__(self, timeout_s: float = 60.0, max_pending: int = 10_000, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._pending: dict[tuple[str, str, int, int], _Assembly] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, source: str, dest: str, concat: Concat, text: str, now: float) -> str | None:
        """The whole text once every part has arrived, else None. A repeated part replaces itself.
        CodecError for a part number that cannot exist, :class:`ReassemblyFull` past the bounds."""
        checked(concat)
        if concat.total <= 1:
            return text
        key = (source, dest, concat.ref, concat.total)
        asm = self._pending.get(key)
        size = _size(text)
        grows = size - (_size(asm.parts[concat.seq]) if asm is not None and concat.seq in asm.parts else 0)
        # a part that completes its message frees memory: never refused
        completes = asm is not None and all(i in asm.parts or i == concat.seq for i in range(1, asm.total + 1))
        if not completes and self.held_bytes + grows > self.max_bytes:
            raise ReassemblyFull(f"concatenated MO held in memory would exceed {self.max_bytes} bytes")
        if asm is None:
            if len(self._pending) >= self.max_pending:
                raise ReassemblyFull("too many incomplete concatenated messages")
            asm = self._pending[key] = _Assembly(concat.total, now)
        asm.parts[concat.seq] = text
        asm.size += grows
        self.held_bytes += grows
        if len(asm.parts) >= asm.total and all(i in asm.parts for i in range(1, asm.total + 1)):
            self._drop(key)
            return "".join(asm.parts[i] for i in range(1, asm.total + 1))
        return None

    def _drop(self, key: tuple[str, str, int, int]) -> _Assembly:
        asm = self._pending.pop(key)
        self.held_bytes -= asm.size
        return asm

    def expire(self, now: float) -> list[tuple[str, str, str]]:
        """(source, destination, text of the parts that came) of assemblies older than the timeout."""
        out = []
        for key, asm in list(self._pending.items()):
            if now - asm.first_at >= self.timeout_s:
                self._drop(key)
                out.append((key[0], key[1], "".join(asm.parts[i] for i in sorted(asm.parts))))
        return out


# --------------------------------------------------------------------------------------------
# Delivery receipts (appendix B, plus what carriers really send)

#: ``stat:`` values -> ReceiptStatus. The spec's 7-letter forms first, then spellings seen in the wild.
STAT: dict[str, ReceiptStatus] = {
    "DELIVRD": ReceiptStatus.DELIVERED,
    "DELIVERED": ReceiptStatus.DELIVERED,
    "UNDELIV": ReceiptStatus.UNDELIVERED,
    "UNDELIVERABLE": ReceiptStatus.UNDELIVERED,
    "UNDELIVERED": ReceiptStatus.UNDELIVERED,
    "REJECTD": ReceiptStatus.REJECTED,
    "REJECTED": ReceiptStatus.REJECTED,
    "EXPIRED": ReceiptStatus.EXPIRED,
    "DELETED": ReceiptStatus.DELETED,
    "UNKNOWN": ReceiptStatus.UNKNOWN,
    "ACCEPTD": ReceiptStatus.ACCEPTED,
    "ACCEPTED": ReceiptStatus.ACCEPTED,
    "ENROUTE": ReceiptStatus.ENROUTE,
    "FAILED": ReceiptStatus.FAILED,
}

#: message_state TLV (5.3.2.35) -> ReceiptStatus
MESSAGE_STATE: dict[int, ReceiptStatus] = {
    1: ReceiptStatus.ENROUTE,
    2: ReceiptStatus.DELIVERED,
    3: ReceiptStatus.EXPIRED,
    4: ReceiptStatus.DELETED,
    5: ReceiptStatus.UNDELIVERED,
    6: ReceiptStatus.ACCEPTED,
    7: ReceiptStatus.UNKNOWN,
    8: ReceiptStatus.REJECTED,
}
STATE_STAT = {2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD", 1: "ENROUTE"}

_KEY = re.compile(r"(?i)(?:^|(?<=\s))(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:\s*")


@dataclass(frozen=True, slots=True)
class ReceiptText:
    id: str | None = None
    sub: str | None = None
    dlvrd: str | None = None
    submit_date: str | None = None
    done_date: str | None = None
    stat: str | None = None
    err: str | None = None
    text: str | None = None


def parse_receipt_text(text: str) -> ReceiptText | None:
    """``id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`` in any case, with
    ``submit_date``/``submitdate`` spellings, fields missing or reordered. None without id or stat."""
    keys = list(_KEY.finditer(text))
    values: dict[str, str] = {}
    for i, m in enumerate(keys):
        name = re.sub(r"[ _]", "", m.group(1).lower())
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        value = text[m.end() : end]
        values.setdefault(name, value if name == "text" else value.strip())
    if "id" not in values and "stat" not in values:
        return None
    return ReceiptText(
        id=values.get("id") or None,
        sub=values.get("sub"),
        dlvrd=values.get("dlvrd"),
        submit_date=values.get("submitdate"),
        done_date=values.get("donedate"),
        stat=values.get("stat"),
        err=values.get("err"),
        text=values.get("text"),
    )


def parse_smpp_date(value: str | None, tz: tzinfo = UTC) -> datetime | None:
    """``YYMMDDhhmm`` or ``YYMMDDhhmmss`` (some carriers add seconds) in ``tz``, as UTC."""
    if not value:
        return None
    digits = value.strip()
    if not digits.isdigit() or len(digits) not in (10, 12):
        return None
    try:
        local = datetime.strptime(digits, "%y%m%d%H%M%S" if len(digits) == 12 else "%y%m%d%H%M").replace(tzinfo=tz)
    except ValueError:
        return None
    return local.astimezone(UTC)


IdConversion = Literal["none", "dec_to_hex", "hex_to_dec"]


def convert_id(value: str, conversion: IdConversion) -> str:
    """Carriers that give a hex id in submit_sm_resp and the decimal one in the receipt text (or
    the reverse) — the id mismatch behind Jasmin's ``DLRMapNotFound`` — are matched by converting."""
    try:
        if conversion == "dec_to_hex" and value.isdigit():
            return format(int(value), "x")
        if conversion == "hex_to_dec":
            return str(int(value, 16))
    except ValueError:
        pass
    return value


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    message_id: str
    status: ReceiptStatus
    raw_status: str
    error_code: str | None
    done_at: datetime | None


def parse_receipt(sm: ShortMessage, *, id_conversion: IdConversion = "none", tz: tzinfo = UTC) -> ParsedReceipt | None:
    """A deliver_sm with the receipt flag -> id, status, error and time. The receipted_message_id
    and message_state TLVs win over the text (they are not truncated and need no parsing)."""
    text_fields = parse_receipt_text(decode_text(sm.payload, sm.data_coding)) or ReceiptText()
    tlv_id = sm.tlvs.get(TLV_RECEIPTED_MESSAGE_ID)
    message_id = tlv_id.rstrip(b"\x00").decode("latin-1").strip() if tlv_id else None
    if not message_id and text_fields.id:
        message_id = convert_id(text_fields.id, id_conversion)
    if not message_id:
        return None
    state = sm.tlvs.get(TLV_MESSAGE_STATE)
    raw = (text_fields.stat or "").strip().upper()
    if state and state[0] in MESSAGE_STATE:
        status = MESSAGE_STATE[state[0]]
        raw = raw or STATE_STAT[state[0]]
    else:
        status = STAT.get(raw, ReceiptStatus.UNKNOWN)
    err = (text_fields.err or "").strip() or None
    if err is None and TLV_NETWORK_ERROR_CODE in sm.tlvs and len(sm.tlvs[TLV_NETWORK_ERROR_CODE]) == 3:
        net = sm.tlvs[TLV_NETWORK_ERROR_CODE]
        err = f"{net[0]}:{int.from_bytes(net[1:], 'big')}"
    return ParsedReceipt(message_id, status, raw[:64] or "UNKNOWN", err[:32] if err else None, parse_smpp_date(text_fields.done_date, tz))


def receipt_fingerprint(sm: ShortMessage) -> str:
    """A receipt's identity beyond its message id: its addresses (the handset) and text (submit
    and done dates, the message's first characters). An SMSC that resends a receipt resends the
    same; receipts for two messages that got the same id (a restarted or wrapped counter) differ."""
    raw = b"\x00".join((sm.source_addr.encode("latin-1"), sm.destination_addr.encode("latin-1"), sm.payload))
    return hashlib.sha256(raw).hexdigest()[:32]
