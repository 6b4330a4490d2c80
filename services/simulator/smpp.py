"""SMPP 3.4 face of the gateway simulator: an SMSC on ``smpp_port`` (28095; 0 disables it).

* Binds (transceiver, transmitter, receiver) are checked against ``smpp_system_id`` /
  ``smpp_password`` (ESME_RINVSYSID / ESME_RINVPASWD otherwise).
* Every submit_sm is answered with its own id (``smpp-`` + 16 hex). Concatenated parts (UDH
  8- or 16-bit reference, or SAR TLVs) are joined; the whole message is recorded once in the
  simulator's core store (:meth:`Simulator.submit`), so ``/stats`` and ``/stats/client_refs``
  count SMPP messages exactly like HTTP ones. The client reference is Herald's message id from
  TLV 0x1400 when the gateway sends it (``send_message_id_tlv``), else
  ``smpp:`` + sha256(source, destination, text)[:24]: the same text to the same number twice
  counts as a duplicate. A part that arrives twice is counted in ``smpp.duplicate_parts``.
* Receipts: one deliver_sm per accepted part (esm_class 0x04, appendix-B text plus the
  receipted_message_id and message_state TLVs), all parts of a message with the outcome drawn
  for it (``smpp_part_outcomes=independent``: one draw per part), due after the simulator's
  receipt delay. A receipt answered with an error, or unanswered, is sent again after
  ``smpp_redeliver_ms`` as long as the simulator runs (like an SMSC's retry queue).
* ``POST /control/mo`` ``{"from", "to", "text"}`` on the control port queues an MO message
  (GSM-7 or UCS-2, concatenated when long) for a bound receiver; ``GET /stats/smpp/messages
  ?client_ref=`` shows what arrived for a reference (text as joined, part ids, data_coding,
  the first part's ``validity_period`` as sent; its seconds, relative or absolute, are the
  submission's ``validity_s`` in ``GET /stats/submissions?client_ref=``).
  ``/stats`` has the face's counters under ``smpp``.
* Carrier faults for tests: ``POST /control/smpp/restart-ids`` makes submit_sm ids a decimal
  counter restarted at 1 (an SMSC restarting, or wrapping, its ids: receipts then carry ids
  already used); ``POST /control/smpp/malformed`` ``{"kind", "count"}`` queues deliver_sm that
  cannot be read (:data:`MALFORMED`); an error answer is final for them, no answer (a dropped
  bind) sends them again after ``smpp_redeliver_ms``, as a real SMSC would after the rebind.
  ``GET /stats/smpp/outcomes`` gives each client reference's drawn outcomes and ids.
* Failure modes: ``fail`` answers submit_sm with ESME_RTHROTTLED (status 429), ESME_RSYSERR
  (5xx) or ESME_RSUBMITFAIL (other 4xx); ``partial_fail`` the same per submit_sm; ``slow``
  delays each submit_sm_resp; ``refuse`` closes the listener and drops every bind.

The PDUs that carry messages are decoded and encoded with smpp34's codec, an implementation
independent of Herald's own (services/dispatcher/gateways/smpp_codec.py), so the integration
tests check the two against each other. The session layer is written here: smpp34's ``Server``
accepts any password and keeps binds open after ``stop()``, which the failure modes need.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import random
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import smpp34
from aiohttp import web

from shared.logging import mask_phone
from shared.sms.encoding import analyse

from .core import INVALID_DESTINATION_PREFIX, Outcome, Simulator, SubmitRequest
from .settings import SimulatorSettings

log = logging.getLogger("herald.simulator.smpp")

HEADER = struct.Struct(">IIII")
RESP = 0x80000000
GENERIC_NACK = 0x80000000
BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER = 0x01, 0x02, 0x09
QUERY_SM, SUBMIT_SM, DELIVER_SM, UNBIND, ENQUIRE_LINK = 0x03, 0x04, 0x05, 0x06, 0x15
BIND_MODES = {BIND_RECEIVER: "receiver", BIND_TRANSMITTER: "transmitter", BIND_TRANSCEIVER: "transceiver"}

ESME_ROK = 0x00
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RINVDSTADR = 0x0B
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RSUBMITFAIL = 0x45
ESME_RQUERYFAIL = 0x67
ESME_RTHROTTLED = 0x58

TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_STATE = 0x0427
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_SAR_MSG_REF_NUM, TLV_SAR_TOTAL_SEGMENTS, TLV_SAR_SEGMENT_SEQNUM = 0x020C, 0x020E, 0x020F
TLV_HERALD_MESSAGE_ID = 0x1400

#: receipt ``stat``, message_state and ``err`` for each outcome
RECEIPT_STATE: dict[Outcome, tuple[str, int, str]] = {
    Outcome.DELIVERED: ("DELIVRD", 2, "000"),
    Outcome.UNDELIVERED: ("UNDELIV", 5, "001"),
    Outcome.FAILED: ("REJECTD", 8, "002"),
}

MAX_PDU = 64 * 1024
DELIVER_TIMEOUT_S = 10.0


def _raw_deliver(sm: bytes, tlvs: bytes = b"", esm: int = 0) -> bytes:
    """A deliver_sm body written by hand (smpp34 will not encode broken ones): MO from
    34600000009 to 12345, data_coding 0."""
    return (
        b"\x00" + bytes([1, 1]) + b"34600000009\x00" + bytes([0, 0]) + b"12345\x00"
        + bytes([esm, 0, 0]) + b"\x00\x00" + bytes([0, 0, 0, 0, len(sm)]) + sm + tlvs
    )


#: deliver_sm bodies a hostile or buggy SMSC sends, by name (POST /control/smpp/malformed).
MALFORMED: dict[str, bytes] = {
    # SAR TLVs with an empty sar_total_segments (must be 1 octet)
    "empty_sar": _raw_deliver(b"part", struct.pack(">HH2sHHHHB", TLV_SAR_MSG_REF_NUM, 2, b"\x00\x07",
                                                   TLV_SAR_TOTAL_SEGMENTS, 0, TLV_SAR_SEGMENT_SEQNUM, 1, 1)),
    # a TLV whose length runs past the end of the PDU
    "tlv_overrun": _raw_deliver(b"hello", struct.pack(">HH", TLV_MESSAGE_PAYLOAD, 200) + b"short"),
    # a concatenation UDH naming part 4 of 3
    "impossible_part": _raw_deliver(bytes.fromhex("050003070304") + b"text", esm=0x40),
    # a receipt whose message_state TLV is empty
    "empty_message_state": _raw_deliver(b"id:1 stat:DELIVRD", struct.pack(">HH", TLV_MESSAGE_STATE, 0), esm=0x04),
    # the body stops in the middle of the addresses
    "truncated": b"\x00\x01\x0134600",
}


def validity_seconds(value: str, at: float) -> int | None:
    """Seconds a submit_sm's validity_period gives (SMPP 3.4 7.1.1), None when empty or unreadable.

    Relative ``YYMMDDhhmmss000R`` (a year 365 days, a month 30) or absolute ``YYMMDDhhmmsstnnp``
    (``nn`` quarter hours ahead of (+) or behind (-) UTC), counted from ``at`` (unix seconds).
    """
    if len(value) != 16 or not value[:15].isdigit():
        return None
    yy, mo, dd, hh, mi, ss = (int(value[i:i + 2]) for i in range(0, 12, 2))
    if value[15] == "R":
        return ((yy * 365 + mo * 30 + dd) * 24 + hh) * 3600 + mi * 60 + ss
    if value[15] not in "+-":
        return None
    try:
        local = datetime(2000 + yy, mo, dd, hh, mi, ss, int(value[12]) * 100_000, tzinfo=UTC).timestamp()
    except ValueError:
        return None
    offset = 900 * int(value[13:15])
    return max(0, int(local - offset if value[15] == "+" else local + offset) - int(at))


def smpp_status(http_status: int) -> int:
    """The submit_sm_resp status a failure mode answers with, from its HTTP status."""
    if http_status == 429:
        return ESME_RTHROTTLED
    if http_status >= 500:
        return ESME_RSYSERR
    return ESME_RSUBMITFAIL


def pdu(command_id: int, seq: int, body: bytes = b"", status: int = 0) -> bytes:
    return HEADER.pack(HEADER.size + len(body), command_id, status, seq) + body


def _cstrings(body: bytes, count: int) -> tuple[list[str], int]:
    out, pos = [], 0
    for _ in range(count):
        end = body.index(b"\x00", pos)
        out.append(body[pos:end].decode("latin-1"))
        pos = end + 1
    return out, pos


def split_udh(data: bytes) -> tuple[tuple[int, int, int] | None, bytes]:
    """(reference, total, sequence) of a concatenation UDH, and the text octets after the UDH."""
    udhl = data[0] if data else 0
    header, rest = data[1 : 1 + udhl], data[1 + udhl :]
    i, concat = 0, None
    while i + 2 <= len(header):
        iei, iel = header[i], header[i + 1]
        v = header[i + 2 : i + 2 + iel]
        if iei == 0x00 and iel == 3:
            concat = (v[0], v[1], v[2])
        elif iei == 0x08 and iel == 4:
            concat = ((v[0] << 8) | v[1], v[2], v[3])
        i += 2 + iel
    return concat, rest


def decode_text(data: bytes, data_coding: int) -> str:
    if data_coding == 0x08:
        return data.decode("utf-16-be", errors="replace")
    if data_coding in (0x00, 0x01):
        return data.decode("gsm03.38", errors="replace")
    return data.decode("latin-1")


# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Assembly:
    source: str
    destination: str
    client_ref: str | None
    total: int
    first_at: float
    parts: dict[int, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    data_codings: list[int] = field(default_factory=list)
    validity_period: str = ""  # as the first part that arrived gave it
    vendor_tlvs: dict[str, str] = field(default_factory=dict)  # tags 0x1401-0x3FFF of the first part, "0x1401": text


@dataclass(order=True, slots=True)
class _Out:
    """A deliver_sm waiting to go out (a receipt or an MO part)."""

    due: float
    seq: int
    generation: int = field(compare=False)
    kind: str = field(compare=False)  # receipt | mo
    make: Callable[[], bytes] = field(compare=False)  # the deliver_sm body
    outcome: Outcome | None = field(compare=False, default=None)
    attempts: int = field(compare=False, default=0)


class ServerSession:
    def __init__(self, face: SmppFace, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        self.face = face
        self.reader = reader
        self.writer = writer
        self.number = number
        self.mode: str | None = None
        self.system_id = ""
        self.pending: dict[int, asyncio.Future[int]] = {}
        self._seq = itertools.count(1)
        self.closed = False

    @property
    def can_receive(self) -> bool:
        return self.mode in ("transceiver", "receiver") and not self.closed

    @property
    def can_transmit(self) -> bool:
        return self.mode in ("transceiver", "transmitter")

    def write(self, data: bytes) -> bool:
        if self.closed or self.writer.transport.is_closing():
            return False
        self.writer.write(data)
        return True

    async def deliver(self, body: bytes) -> int:
        """Send a deliver_sm; its deliver_sm_resp command_status. Raises on timeout or close."""
        seq = next(self._seq)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[seq] = future
        try:
            if not self.write(pdu(DELIVER_SM, seq, body)):
                raise ConnectionError("session closed")
            return await asyncio.wait_for(future, DELIVER_TIMEOUT_S)
        finally:
            self.pending.pop(seq, None)

    async def run(self) -> None:
        face = self.face
        try:
            while True:
                head = await self.reader.readexactly(HEADER.size)
                length, command_id, status, seq = HEADER.unpack(head)
                if not HEADER.size <= length <= MAX_PDU:
                    self.write(pdu(GENERIC_NACK, seq, status=ESME_RINVCMDLEN))
                    break
                body = await self.reader.readexactly(length - HEADER.size)
                if command_id & RESP:
                    future = self.pending.pop(seq, None)
                    if future is not None and not future.done():
                        future.set_result(status)
                elif command_id in BIND_MODES:
                    self._bind(command_id, seq, body)
                elif command_id == ENQUIRE_LINK:
                    self.write(pdu(ENQUIRE_LINK | RESP, seq))
                elif command_id == UNBIND:
                    self.write(pdu(UNBIND | RESP, seq))
                    break
                elif command_id == QUERY_SM:
                    if not self.can_transmit:
                        self.write(pdu(QUERY_SM | RESP, seq, status=ESME_RINVBNDSTS))
                    else:
                        face.on_query(self, seq, body)
                elif command_id == SUBMIT_SM:
                    if not self.can_transmit:
                        self.write(pdu(SUBMIT_SM | RESP, seq, status=ESME_RINVBNDSTS))
                    else:
                        face.on_submit(self, seq, head + body)
                else:
                    self.write(pdu(GENERIC_NACK, seq, status=ESME_RINVCMDID))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    def _bind(self, command_id: int, seq: int, body: bytes) -> None:
        face = self.face
        resp_id = command_id | RESP
        if self.mode is not None:
            self.write(pdu(resp_id, seq, status=ESME_RALYBND))
            return
        try:
            (system_id, password, _system_type), _ = _cstrings(body, 3)
        except ValueError:
            self.write(pdu(resp_id, seq, status=ESME_RINVCMDLEN))
            return
        if system_id != face.settings.smpp_system_id:
            face.counters["binds_refused"] += 1
            self.write(pdu(resp_id, seq, status=ESME_RINVSYSID))
            return
        if password != face.settings.smpp_password.get_secret_value():
            face.counters["binds_refused"] += 1
            self.write(pdu(resp_id, seq, status=ESME_RINVPASWD))
            return
        self.mode = BIND_MODES[command_id]
        self.system_id = system_id
        face.counters["binds"] += 1
        self.write(pdu(resp_id, seq, b"herald-sim\x00"))
        log.info("SMPP bind #%d as %s (%s)", self.number, self.mode, system_id)
        face.wake()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("session closed"))
                future.exception()
        self.pending.clear()
        self.face.sessions.pop(self.number, None)

    def abort(self) -> None:
        """Drop the connection without an unbind (refuse mode: like a network failure)."""
        self.writer.transport.abort()
        self.close()


class SmppFace:
    def __init__(
        self,
        sim: Simulator,
        settings: SimulatorSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sim = sim
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random(settings.seed)
        self.port = settings.smpp_port
        self.sessions: dict[int, ServerSession] = {}
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._assemblies: dict[tuple[str, str, str | None, int, int], _Assembly] = {}
        self._out: list[_Out] = []
        self._out_seq = itertools.count()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.smpp_deliver_window)
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._rr = itertools.count()
        self._generation = sim.generation
        self.counters = self._zero()
        #: client_ref -> what arrived for it (for tests: GET /stats/smpp/messages?client_ref=)
        self.messages: dict[str, list[dict[str, Any]]] = {}
        #: Herald's message id (TLV 0x1400) -> ids of the parts accepted for it (query_sm)
        self.part_ids_by_ref: dict[str, list[str]] = {}
        #: submit_sm ids: None: random (``smpp-`` + 16 hex); a counter after /control/smpp/restart-ids
        self._ids: itertools.count[int] | None = None
        #: command_status of each answered malformed deliver_sm (hex) -> how many
        self.malformed_answers: dict[str, int] = {}
        sim.extra_stats["smpp"] = self.stats

    @staticmethod
    def _zero() -> dict[str, int]:
        return {
            "binds": 0,
            "binds_refused": 0,
            "submit_sm": 0,
            "submit_sm_refused": 0,
            "parts": 0,
            "duplicate_parts": 0,
            "messages": 0,
            "incomplete_messages": 0,
            "receipts_sent": 0,
            "receipts_retried": 0,
            "mo_sent": 0,
            "mo_retried": 0,
            "query_sm": 0,
            "submit_sm_unanswered": 0,
            "id_restarts": 0,
            "malformed_sent": 0,
            "malformed_answered": 0,
            "malformed_retried": 0,
        }

    # -- listener ----------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        await self.resume()
        self._task = asyncio.create_task(self._deliver_loop(), name="herald-sim-smpp-deliver")

    async def resume(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.settings.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMPP face listening on %s:%d", self.settings.host, self.port)

    async def pause(self) -> None:
        """Refuse mode: close the listener and drop every bind."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        dropped = list(self.sessions.values())
        for session in dropped:
            session.abort()
        await server.wait_closed()
        log.warning("refuse mode: SMPP port %d closed (%d binds dropped)", self.port, len(dropped))

    async def stop(self) -> None:
        await self.pause()
        for task in [self._task, *self._sends]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._sends] if t is not None), return_exceptions=True)
        self.sim.extra_stats.pop("smpp", None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(self._numbers)
        session = ServerSession(self, reader, writer, number)
        self.sessions[number] = session
        await session.run()

    def wake(self) -> None:
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        self._check_generation()
        return {
            **self.counters,
            "listening": self.listening,
            "bound": {m: sum(1 for s in self.sessions.values() if s.mode == m) for m in BIND_MODES.values()},
            "incomplete_pending": len(self._assemblies),
            "deliver_pending": len(self._out),
            "malformed_answers": dict(self.malformed_answers),
        }

    def _check_generation(self) -> None:
        """After a stats reset, forget assemblies, queued deliver_sm and counters."""
        if self._generation != self.sim.generation:
            self._generation = self.sim.generation
            self._assemblies.clear()
            self._out.clear()
            self.counters = self._zero()
            self.messages = {}
            self.part_ids_by_ref = {}
            self.malformed_answers = {}

    # -- submit_sm ---------------------------------------------------------------------------

    def on_submit(self, session: ServerSession, seq: int, raw: bytes) -> None:
        self._check_generation()
        self.counters["submit_sm"] += 1
        gate = self.sim.gate()
        if gate.reject is not None:
            self._refuse(session, seq, gate.reject.code, smpp_status(gate.reject.status))
        elif gate.delay_s:
            asyncio.get_running_loop().call_later(gate.delay_s, self._answer_submit, session, seq, raw)
        elif gate.after_accept is not None:
            # fail_after_accept: taken, but the submit_sm_resp is lost (the ESME cannot tell)
            self._answer_submit(session, seq, raw, answer=False)
        else:
            self._answer_submit(session, seq, raw)

    def on_query(self, session: ServerSession, seq: int, body: bytes) -> None:
        """query_sm by Herald's message id (the reference of TLV 0x1400) or by this SMSC's id:
        the first part's id with message_state ENROUTE, or ESME_RQUERYFAIL when nothing of
        the message arrived."""
        self._check_generation()
        self.counters["query_sm"] += 1
        try:
            (message_id,), _ = _cstrings(body, 1)
        except ValueError:
            session.write(pdu(QUERY_SM | RESP, seq, status=ESME_RINVCMDLEN))
            return
        ids = self.part_ids_by_ref.get(message_id)
        if ids:
            found = ids[0]
        elif message_id.startswith("smpp-") and any(message_id in v for v in self.part_ids_by_ref.values()):
            found = message_id
        else:
            session.write(pdu(QUERY_SM | RESP, seq, status=ESME_RQUERYFAIL))
            return
        # message_id, final_date (empty: not final), message_state 1 (ENROUTE), error_code 0
        session.write(pdu(QUERY_SM | RESP, seq, found.encode() + b"\x00" + b"\x00" + bytes([1, 0])))

    def _refuse(self, session: ServerSession, seq: int, code: str, status: int) -> None:
        self.sim.count_rejection(code)
        self.counters["submit_sm_refused"] += 1
        session.write(pdu(SUBMIT_SM | RESP, seq, status=status))

    def _answer_submit(self, session: ServerSession, seq: int, raw: bytes, answer: bool = True) -> None:
        if session.closed:
            return  # like a real SMSC that lost the connection: the ESME never learns the outcome
        try:
            sm = smpp34.decode(raw)
        except BaseException as exc:  # SmppError, or a PanicException (a BaseException) from the Rust core
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._refuse(session, seq, "invalid_pdu", ESME_RINVCMDLEN)
            return
        failure = self.sim.roll_partial_failure()
        if failure is not None:
            self._refuse(session, seq, failure.code, smpp_status(failure.status))
            return
        destination = sm.destination_addr
        if not destination or ("+" + destination).startswith(INVALID_DESTINATION_PREFIX):
            self._refuse(session, seq, "invalid_destination", ESME_RINVDSTADR)
            return
        tlvs = {t.tag: t.value for t in sm.tlvs}
        data = sm.short_message or tlvs.get(TLV_MESSAGE_PAYLOAD, b"")
        concat = None
        if sm.esm_class & 0x40:
            concat, data = split_udh(data)
        elif TLV_SAR_MSG_REF_NUM in tlvs and TLV_SAR_TOTAL_SEGMENTS in tlvs and TLV_SAR_SEGMENT_SEQNUM in tlvs:
            concat = (
                int.from_bytes(tlvs[TLV_SAR_MSG_REF_NUM], "big"),
                tlvs[TLV_SAR_TOTAL_SEGMENTS][0],
                tlvs[TLV_SAR_SEGMENT_SEQNUM][0],
            )
        text = decode_text(data, sm.data_coding)
        ref = tlvs[TLV_HERALD_MESSAGE_ID].rstrip(b"\x00").decode("utf-8", "replace") if TLV_HERALD_MESSAGE_ID in tlvs else None
        part_id = self.next_id()
        if answer:
            session.write(pdu(SUBMIT_SM | RESP, seq, part_id.encode() + b"\x00"))
        else:
            self.counters["submit_sm_unanswered"] += 1
        if ref is not None:
            self.part_ids_by_ref.setdefault(ref, []).append(part_id)
        self.counters["parts"] += 1
        now = self.clock()
        total, number = (concat[1], concat[2]) if concat and concat[1] > 1 else (1, 1)
        key = (sm.source_addr, destination, ref, concat[0] if concat else -1, total)
        asm = self._assemblies.get(key)
        if asm is None:
            asm = self._assemblies[key] = _Assembly(
                sm.source_addr, destination, ref, total, now, validity_period=sm.validity_period or "",
                vendor_tlvs={f"{tag:#06x}": value.rstrip(b"\x00").decode("utf-8", "replace")
                             for tag, value in tlvs.items() if 0x1401 <= tag <= 0x3FFF})
        if number in asm.parts:
            self.counters["duplicate_parts"] += 1
        asm.parts.setdefault(number, text)
        asm.ids.append(part_id)
        asm.data_codings.append(sm.data_coding)
        if all(i in asm.parts for i in range(1, total + 1)):
            del self._assemblies[key]
            self._record(asm, now)

    def next_id(self) -> str:
        return "smpp-" + uuid.uuid4().hex[:16] if self._ids is None else str(next(self._ids))

    def restart_ids(self) -> None:
        """From now on submit_sm ids are 1, 2, 3, ...: ids handed out before come back."""
        self._check_generation()
        self._ids = itertools.count(1)
        self.counters["id_restarts"] += 1
        log.warning("SMPP message ids restart at 1")

    def inject_malformed(self, kind: str, count: int) -> None:
        self._check_generation()
        body = MALFORMED[kind]
        now = self.clock()
        for _ in range(count):
            self._push(_Out(now, next(self._out_seq), self.sim.generation, "malformed", lambda: body))

    def _record(self, asm: _Assembly, now: float, complete: bool = True) -> None:
        body = "".join(asm.parts[i] for i in sorted(asm.parts))
        ref = asm.client_ref or "smpp:" + hashlib.sha256(f"{asm.source}\x00{asm.destination}\x00{body}".encode()).hexdigest()[:24]
        to = "+" + asm.destination if asm.destination.isdigit() else asm.destination
        sub = self.sim.submit(
            SubmitRequest(to=to, body=body, client_ref=ref, sender=asm.source or None, segments=asm.total,
                          validity_s=validity_seconds(asm.validity_period, asm.first_at)),
            now,
            schedule_receipt=False,
        )
        self.counters["messages"] += 1
        self.messages.setdefault(ref, []).append(
            {"id": sub.id, "to": to, "from": asm.source, "body": body, "segments": asm.total, "part_ids": list(asm.ids),
             "data_codings": asm.data_codings, "complete": complete, "validity_period": asm.validity_period,
             "vendor_tlvs": asm.vendor_tlvs}
        )
        if not complete:
            self.counters["incomplete_messages"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("SMPP message %s to %s: %d parts, client_ref %s", sub.id, mask_phone(to), len(asm.ids), ref)
        submitted = datetime.fromtimestamp(now, UTC)
        done = datetime.fromtimestamp(sub.due_at, UTC)
        independent = self.settings.smpp_part_outcomes == "independent"
        outcomes = self.messages[ref][-1]["outcomes"] = []
        for i, part_id in enumerate(asm.ids):
            outcome = self.sim.rates.choose(self.rng) if independent and i else sub.outcome
            outcomes.append(outcome.value)
            make = _receipt_maker(part_id, outcome, asm.source, asm.destination, submitted, done, body, asm.total)
            self._push(_Out(sub.due_at, next(self._out_seq), self.sim.generation, "receipt", make, outcome))
        sub.done = True

    # -- deliver_sm out ----------------------------------------------------------------------

    def _push(self, item: _Out) -> None:
        new_head = not self._out or item < self._out[0]
        heapq.heappush(self._out, item)
        if new_head:
            self._wake.set()

    def inject_mo(self, sender: str, recipient: str, text: str) -> int:
        """Queue an MO message for a bound receiver; returns the number of parts."""
        self._check_generation()
        info = analyse(text)
        dcs = 0x00 if info.encoding == "GSM-7" else 0x08
        codec = "gsm03.38" if dcs == 0 else "utf-16-be"
        parts = info.parts or ("",)
        ref = self.rng.randrange(256)
        s_ton = 1 if sender.startswith("+") else 0
        d_ton = 1 if recipient.startswith("+") else 0
        now = self.clock()
        for i, part in enumerate(parts, start=1):
            data = part.encode(codec)
            esm = 0
            if len(parts) > 1:
                data = bytes([5, 0, 3, ref, len(parts), i]) + data
                esm = 0x40

            def make(data: bytes = data, esm: int = esm) -> bytes:
                return _deliver_body(sender.lstrip("+"), recipient.lstrip("+"), data, esm, dcs, s_ton, d_ton)

            self._push(_Out(now, next(self._out_seq), self.sim.generation, "mo", make))
        return len(parts)

    def _receiver(self) -> ServerSession | None:
        receivers = [s for s in self.sessions.values() if s.can_receive]
        return receivers[next(self._rr) % len(receivers)] if receivers else None

    async def _deliver_loop(self) -> None:
        while True:
            self._wake.clear()
            self._check_generation()
            now = self.clock()
            self._expire_assemblies(now)
            if not self._out:
                await self._sleep(1.0)
                continue
            head = self._out[0]
            if head.due > now:
                await self._sleep(min(head.due - now, 1.0))
                continue
            session = self._receiver()
            if session is None:
                await self._sleep(0.2)  # woken by the next bind
                continue
            await self._slots.acquire()
            if not self._out or self._out[0] is not head:
                self._slots.release()
                continue
            heapq.heappop(self._out)
            task = asyncio.create_task(self._send(session, head))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _sleep(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    def _expire_assemblies(self, now: float) -> None:
        limit = self.settings.smpp_assembly_timeout_ms / 1000
        for key, asm in list(self._assemblies.items()):
            if now - asm.first_at >= limit:
                del self._assemblies[key]
                self._record(asm, now, complete=False)

    async def _send(self, session: ServerSession, item: _Out) -> None:
        try:
            try:
                status = await session.deliver(item.make())
            except (TimeoutError, ConnectionError, OSError):
                status = None
            if item.generation != self.sim.generation:
                return
            if item.kind == "malformed":
                if status is not None:  # any answer is final: an error is what Herald should say
                    self.counters["malformed_answered"] += 1
                    key = f"0x{status:08x}"
                    self.malformed_answers[key] = self.malformed_answers.get(key, 0) + 1
                    return
                self.counters["malformed_retried"] += 1  # no answer (the bind dropped): again, like an SMSC
                item.due = self.clock() + self.settings.smpp_redeliver_ms / 1000
                item.seq = next(self._out_seq)
                self._push(item)
                return
            if status == ESME_ROK:
                if item.kind == "receipt":
                    self.counters["receipts_sent"] += 1
                    if item.outcome is not None:
                        self.sim.c.sent_by_outcome[item.outcome.value] += 1
                else:
                    self.counters["mo_sent"] += 1
                return
            self.counters["receipts_retried" if item.kind == "receipt" else "mo_retried"] += 1
            item.attempts += 1
            item.due = self.clock() + self.settings.smpp_redeliver_ms / 1000
            item.seq = next(self._out_seq)
            self._push(item)
        finally:
            self._slots.release()


def _deliver_body(source: str, destination: str, data: bytes, esm: int, dcs: int, s_ton: int, d_ton: int,
                  tlvs: list[smpp34.Tlv] | None = None) -> bytes:
    encoded = smpp34.DeliverSm(
        source, destination, data, esm_class=esm, data_coding=dcs, source_addr_ton=s_ton, source_addr_npi=1 if s_ton == 1 else 0,
        dest_addr_ton=d_ton, dest_addr_npi=1 if d_ton == 1 else 0, tlvs=tlvs or [],
    ).encode()
    return encoded[HEADER.size :]


def _receipt_maker(part_id: str, outcome: Outcome, source: str, destination: str, submitted: datetime,
                   done: datetime, body: str, parts: int) -> Callable[[], bytes]:
    stat, state, err = RECEIPT_STATE[outcome]

    def make() -> bytes:
        text = (
            f"id:{part_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:{submitted:%y%m%d%H%M} done date:{done:%y%m%d%H%M} stat:{stat} err:{err} "
            f"text:{body[:20]}"
        )
        # The receipt goes from the handset (the message's destination) to the sender.
        tlvs = [smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, part_id.encode() + b"\x00"), smpp34.Tlv(TLV_MESSAGE_STATE, bytes([state]))]
        raw = text.encode("gsm03.38", errors="replace")
        return _deliver_body(destination, source, raw[:254], 0x04, 0x00, 1 if destination.isdigit() else 0, 5 if not source.isdigit() else 1, tlvs)

    return make


# --------------------------------------------------------------------------------------------
# Control routes


def register_smpp_routes(app: web.Application, face: SmppFace) -> None:
    """``POST /control/mo`` on the control app."""

    async def post_mo(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"code": "invalid_request", "message": "not JSON"}}, status=400)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body.get(k) for k in ("from", "to", "text")) \
                or len(body["from"].lstrip("+")) > 20 or len(body["to"].lstrip("+")) > 20:
            return web.json_response(
                {"error": {"code": "invalid_request", "message": 'needs {"from", "to", "text"} strings (addresses up to 20 characters)'}}, status=400
            )
        parts = face.inject_mo(body["from"], body["to"], body["text"])
        receivers = sum(1 for s in face.sessions.values() if s.can_receive)
        return web.json_response({"queued": True, "parts": parts, "receivers": receivers}, status=202)

    async def get_messages(request: web.Request) -> web.Response:
        face._check_generation()
        ref = request.query.get("client_ref")
        if not ref:
            return web.json_response({"error": {"code": "invalid_request", "message": "client_ref is required"}}, status=400)
        return web.json_response({"messages": face.messages.get(ref, [])})

    async def post_restart_ids(request: web.Request) -> web.Response:
        face.restart_ids()
        return web.json_response({"ids": "counter", "next": 1})

    async def post_malformed(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        count = body.get("count", 1) if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("kind") not in MALFORMED or type(count) is not int or not 1 <= count <= 1000:
            return web.json_response(
                {"error": {"code": "invalid_request", "message": f'needs {{"kind": one of {sorted(MALFORMED)}, "count": 1-1000}}'}},
                status=400,
            )
        face.inject_malformed(body["kind"], count)
        return web.json_response({"queued": count}, status=202)

    async def get_outcomes(request: web.Request) -> web.Response:
        face._check_generation()
        return web.json_response({
            "messages": {ref: [{"ids": m["part_ids"], "outcomes": m.get("outcomes", [])} for m in ms]
                         for ref, ms in face.messages.items()}
        })

    app.router.add_post("/control/mo", post_mo)
    app.router.add_post("/control/smpp/restart-ids", post_restart_ids)
    app.router.add_post("/control/smpp/malformed", post_malformed)
    app.router.add_get("/stats/smpp/messages", get_messages)
    app.router.add_get("/stats/smpp/outcomes", get_outcomes)
