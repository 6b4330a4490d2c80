"""SMPP 3.4 gateway: binds to a carrier's SMSC, submits with submit_sm, takes receipts and MO
from deliver_sm and hands them to the :class:`EventSink` before acknowledging them.

The session layer (framing, sequence numbers, window, enquire_link, reconnect) is Herald's own,
on asyncio streams; :mod:`smpp_codec` holds the encoding. Why not smpp34's client: its Python
``Client`` answers every deliver_sm inside the Rust core *before* Python sees it, so a receipt
could be acknowledged and then lost in a crash (docs/smpp.md, "Library choice").

One gateway holds ``binds`` connections (a transceiver each, or a transmitter plus a receiver).
Each connection has a reader task that never blocks, a keep-alive task and an adjustable window
of outstanding submit_sm; a supervisor reconnects it with exponential backoff when it drops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Gauge
from pydantic import Field, SecretStr, ValidationError, field_validator

from services.dispatcher.gateways.base import (
    EventSink,
    GatewayBase,
    LookupUnsupported,
    Outcome,
    Refused,
    Submitted,
    Unknown,
)
from services.dispatcher.gateways.smpp_codec import (
    BIND_IDS,
    DELIVER_SM,
    ENQUIRE_LINK,
    ESM_INTERMEDIATE,
    ESM_RECEIPT,
    ESM_TYPE_MASK,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_RMSGQFUL,
    ESME_ROK,
    ESME_RX_P_APPN,
    ESME_RX_T_APPN,
    GENERIC_NACK,
    HEADER,
    MAX_PDU,
    RESP,
    SUBMIT_SM,
    TLV_HERALD_MESSAGE_ID,
    UNBIND,
    CodecError,
    IdConversion,
    Pdu,
    Reassembler,
    ReassemblyFull,
    ShortMessage,
    address,
    bind_body,
    classify,
    concat_of,
    cstring,
    decode_message_id,
    decode_text,
    encode_pdu,
    metric_label,
    parse_receipt,
    plan_message,
    receipt_fingerprint,
)
from services.dispatcher.gateways.validity import smpp_validity_period
from shared.contracts import DeliveryReceipt, InboundMessage, MessageOutbound, utcnow

log = logging.getLogger(__name__)

BINDS = Gauge("herald_smpp_binds", "Bound SMPP sessions", ["gateway", "mode"])
WINDOW = Gauge("herald_smpp_window", "Current window (outstanding submit_sm allowed) summed over binds", ["gateway"])
SUBMIT_SM_TOTAL = Counter("herald_smpp_submit_sm_total", "submit_sm results by command_status name", ["gateway", "status"])
DELIVER_SM_TOTAL = Counter("herald_smpp_deliver_sm_total", "deliver_sm received by kind and answer", ["gateway", "kind", "answer"])
RECONNECTS = Counter("herald_smpp_reconnects_total", "Bind attempts that failed or sessions that dropped", ["gateway", "reason"])

BindMode = Literal["transceiver", "transmitter+receiver"]
ValidityForm = Literal["relative", "absolute", "off"]

QUERY_SM = 0x00000003
ESME_RQUERYFAIL = 0x00000067  # query_sm: no such message
QUERY_SM_TOTAL = Counter("herald_smpp_query_sm_total", "query_sm sent to resolve unknown outcomes, by answer", ["gateway", "answer"])
#: A PDU longer than MAX_PDU but at most this long is read past and answered with a
#: generic_nack (ESME_RINVCMDLEN); a longer command_length means the framing is lost: reconnect.
MAX_SKIPPED_PDU = 1024 * 1024


class SmppConfig(GatewayBase):
    """An SMPP 3.4 carrier. ``concurrency`` of the base is not used: ``binds`` × ``window`` caps
    the submit_sm in flight."""

    kind: Literal["smpp"] = "smpp"
    host: str = Field(description="SMSC host name or address")
    port: int = Field(2775, ge=1, le=65535, description="SMSC port")
    system_id: str = Field(min_length=1, max_length=15, description="Account (system_id) of the bind")
    password: SecretStr = Field(SecretStr(""), description="Bind password, at most 8 characters")
    system_type: str = Field("", max_length=12, description="system_type of the bind, if the carrier wants one")
    bind_mode: BindMode = Field("transceiver", description="One transceiver per bind, or a transmitter and a receiver")
    binds: int = Field(1, ge=1, le=64, description="Connections (or transmitter+receiver pairs) to open")
    window: int = Field(10, ge=1, le=1000, description="Outstanding submit_sm allowed per bind")
    enquire_link_s: float = Field(30.0, gt=0, description="Keep-alive interval; an unanswered enquire_link drops the bind")
    bind_timeout_s: float = Field(10.0, gt=0, description="Connect + bind answer timeout")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay (doubles, with jitter)")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay")
    throttle_pause_s: float = Field(1.0, ge=0, description="Pause of a bind after ESME_RTHROTTLED / ESME_RMSGQFUL")
    source_addr_ton: int | None = Field(None, ge=0, le=6, description="Sender TON; unset: from the sender's shape")
    source_addr_npi: int | None = Field(None, ge=0, le=18, description="Sender NPI; unset: from the sender's shape")
    dest_addr_ton: int = Field(1, ge=0, le=6, description="Destination TON (1: international)")
    dest_addr_npi: int = Field(1, ge=0, le=18, description="Destination NPI (1: E.164)")
    default_sender: str | None = Field(None, max_length=20, description="source_addr when a message has no sender")
    service_type: str = Field("", max_length=5, description="service_type of submit_sm")
    registered_delivery: int = Field(1, ge=0, le=255, description="1: a receipt for every final state")
    use_message_payload: bool = Field(False, description="Long texts in one PDU (message_payload TLV) instead of UDH parts")
    send_message_id_tlv: bool = Field(False, description="Send Herald's message id in TLV 0x1400 (the simulator reads it)")
    registration_tlvs: dict[str, int] = Field(
        default_factory=dict,
        description="Carrier registration ids sent as TLVs (C strings): id name (ten_dlc_brand_id, ten_dlc_campaign_id,"
        " toll_free_verification_id, dlt_entity_id) -> tag, vendor range 0x1401-0x3FFF, as the carrier documents them",
    )
    validity_period: ValidityForm = Field(
        "relative", description="validity_period of a message with validity: relative (time left), absolute (UTC) or off"
    )
    retriable_statuses: list[int] = Field(default_factory=list, description="Extra command_status values to retry (vendor codes)")
    query_sm: bool = Field(
        False,
        description="The carrier answers query_sm for Herald's message id (sent in TLV 0x1400: needs send_message_id_tlv);"
        " ESME_RQUERYFAIL means it never got it. Unset: an unknown outcome stays unknown",
    )
    drain_timeout_s: float = Field(10.0, ge=0, description="On a graceful stop, how long submit_sm in flight may take to be answered")
    multipart_retry_s: float = Field(30.0, ge=0, description="How long parts 2..n are retried once part 1 was accepted")
    receipt_id_conversion: IdConversion = Field("none", description="Convert the id of a receipt text: none, dec_to_hex, hex_to_dec")
    receipt_timezone: str = Field("UTC", description="Time zone of the dates in receipt texts (IANA name)")
    mo_default_charset: str = Field("gsm03.38", description="Python codec of data_coding 0 in MO (gsm03.38, latin-1, ascii)")
    mo_reassembly_timeout_s: float = Field(60.0, gt=0, description="Incomplete concatenated MO is published after this")
    mo_reassembly_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Text of incomplete concatenated MO held in memory, at most (then ESME_RMSGQFUL)"
    )
    inbound_flush_ms: int = Field(50, ge=1, le=5000, description="Receipts/MO are handed to the sink every this many ms")
    inbound_batch: int = Field(200, ge=1, le=10_000, description="... or when this many are waiting")
    inbound_idle_ms: int = Field(5, ge=0, le=5000, description="... or when none came for this long (the SMSC's window is full)")

    @field_validator("registration_tlvs")
    @classmethod
    def _registration_tlvs(cls, value: dict[str, int]) -> dict[str, int]:
        from shared.senders import CARRIER_IDS

        for name, tag in value.items():
            if name not in CARRIER_IDS:
                raise ValueError(f"registration_tlvs: {name!r} is not one of {', '.join(CARRIER_IDS)}")
            if not 0x1401 <= tag <= 0x3FFF:
                raise ValueError(f"registration_tlvs: tag {tag:#06x} of {name} is outside the vendor range 0x1401-0x3FFF")
        return value

    @field_validator("password")
    @classmethod
    def _short_password(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode("latin-1", "replace")) > 8:
            raise ValueError("an SMPP 3.4 password is at most 8 characters")
        return value

    @field_validator("receipt_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @field_validator("mo_default_charset")
    @classmethod
    def _codec(cls, value: str) -> str:
        b"".decode(value)
        return value


class SessionClosed(Exception):
    """The connection is gone (or going); ``reason`` says why."""


class BindRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {classify(status).name}")
        self.status = status


# --------------------------------------------------------------------------------------------
# Window


class Window:
    """Outstanding submit_sm of one bind: at most ``limit``. Throttling answers halve the limit
    and pause the bind; every ``limit`` successes give one slot back (AIMD), up to ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.limit = size
        self.used = 0
        self.paused_until = 0.0
        self._ok = 0
        self._closed = False
        self._cond = asyncio.Condition()

    async def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot; False if none came within ``timeout``. The deadline is kept here, not by
        a ``wait_for`` around the call, which on Python 3.11 can drop a slot taken at the very
        moment it times out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed:
                raise SessionClosed("bind closed")
            now = loop.time()
            left = None if deadline is None else deadline - now
            if left is not None and left <= 0:
                return False
            delay = self.paused_until - now
            if delay > 0:
                await asyncio.sleep(delay if left is None else min(delay, left))
                continue
            async with self._cond:
                if self._closed:
                    raise SessionClosed("bind closed")
                if self.used < self.limit and self.paused_until <= loop.time():
                    self.used += 1
                    return True
                try:
                    await asyncio.wait_for(self._cond.wait(), left)
                except TimeoutError:
                    pass

    async def release(self) -> None:
        async with self._cond:
            self.used -= 1
            self._cond.notify()

    def success(self) -> None:
        if self.limit < self.size:
            self._ok += 1
            if self._ok >= self.limit:
                self._ok = 0
                self.limit += 1

    def slow_down(self, pause_s: float) -> None:
        self.limit = max(1, self.limit // 2)
        self._ok = 0
        self.paused_until = max(self.paused_until, asyncio.get_running_loop().time() + pause_s)

    @property
    def free(self) -> int:
        return self.limit - self.used

    async def close(self) -> None:
        self._closed = True
        async with self._cond:
            self._cond.notify_all()


# --------------------------------------------------------------------------------------------
# One connection


class Session:
    """One bound SMPP connection: request/response correlation by sequence number, a reader
    task that always drains the socket, and enquire_link keep-alive."""

    def __init__(
        self,
        gateway: SmppGateway,
        label: str,
        mode: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.gateway = gateway
        self.label = label
        self.mode = mode  # transceiver | transmitter | receiver
        self.reader = reader
        self.writer = writer
        self.window = Window(gateway.config.window)
        self.pending: dict[int, asyncio.Future[Pdu]] = {}
        self._seq = itertools.count(1)
        self.bound = False
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def can_submit(self) -> bool:
        return self.mode in ("transceiver", "transmitter") and self.bound and not self.closed.is_set()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._read_loop(), name=f"smpp-read-{self.label}"))

    def start_keepalive(self) -> None:
        self._tasks.append(asyncio.create_task(self._keepalive(), name=f"smpp-keepalive-{self.label}"))

    def next_seq(self) -> int:
        seq = next(self._seq)
        if seq > 0x7FFFFFFF:
            self._seq = itertools.count(2)
            seq = 1
        return seq

    def send(self, data: bytes) -> None:
        """Write one whole PDU, or raise :class:`SessionClosed` if nothing can be written."""
        if self.closed.is_set() or self.writer.transport.is_closing():
            raise SessionClosed(self.close_reason or "connection closing")
        self.writer.write(data)

    def send_request(self, command_id: int, body: bytes) -> asyncio.Future[Pdu]:
        """Write a request; the future gets its response. Raises SessionClosed if not written."""
        seq = self.next_seq()
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self.send(encode_pdu(command_id, seq, body))
        self.pending[seq] = future
        future.add_done_callback(lambda _f, s=seq: self.pending.pop(s, None))
        return future

    async def request(self, command_id: int, body: bytes, timeout: float) -> Pdu:
        future = self.send_request(command_id, body)
        return await asyncio.wait_for(future, timeout)

    def respond(self, command_id: int, seq: int, body: bytes = b"", status: int = ESME_ROK) -> bool:
        try:
            self.send(encode_pdu(command_id | RESP, seq, body, status))
            return True
        except SessionClosed:
            return False

    async def _read_loop(self) -> None:
        reason = "connection closed by the SMSC"
        try:
            while True:
                head = await self.reader.readexactly(HEADER.size)
                length, command_id, status, seq = HEADER.unpack(head)
                if not HEADER.size <= length <= MAX_SKIPPED_PDU:
                    raise CodecError(f"invalid command_length {length}")  # framing lost: only a reconnect helps
                if length > MAX_PDU:
                    # Framed but too long to be legal: read past it, answer, keep the bind.
                    left = length - HEADER.size
                    while left:
                        left -= len(await self.reader.readexactly(min(left, 65536)))
                    log.warning("SMPP %s: PDU 0x%08x of %d octets skipped", self.label, command_id, length)
                    if not command_id & RESP:
                        try:
                            self.send(encode_pdu(GENERIC_NACK, seq, b"", ESME_RINVCMDLEN))
                        except SessionClosed:
                            pass
                    continue
                body = await self.reader.readexactly(length - HEADER.size) if length > HEADER.size else b""
                pdu = Pdu(command_id, status, seq, body)
                if pdu.is_response:  # generic_nack included: it carries the request's sequence number
                    future = self.pending.pop(seq, None)
                    if future is not None and not future.done():
                        future.set_result(pdu)
                elif command_id == ENQUIRE_LINK:
                    self.respond(ENQUIRE_LINK, seq)
                elif command_id == DELIVER_SM:
                    # never raises: an undecodable deliver_sm is answered with an error, the bind kept
                    self.gateway._on_deliver_sm(self, pdu)
                elif command_id == UNBIND:
                    self.respond(UNBIND, seq)
                    reason = "the SMSC unbound"
                    break
                else:  # a request this ESME does not serve: generic_nack with the same sequence number
                    try:
                        self.send(encode_pdu(GENERIC_NACK, seq, b"", ESME_RINVCMDID))
                    except SessionClosed:
                        pass
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            reason = "closed by Herald"
            raise
        except (OSError, CodecError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            await self.close(reason)

    async def _keepalive(self) -> None:
        config = self.gateway.config
        while not self.closed.is_set():
            await asyncio.sleep(config.enquire_link_s)
            try:
                await self.request(ENQUIRE_LINK, b"", min(config.timeout_s, config.enquire_link_s))
            except (TimeoutError, SessionClosed):
                await self.close("enquire_link unanswered")
                return

    async def close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for future in list(self.pending.values()):
            if not future.done():
                future.set_exception(SessionClosed(reason))
                future.exception()  # retrieved here: a waiter that timed out must not warn later
        self.pending.clear()
        self.writer.close()
        await self.window.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def unbind(self, timeout: float = 1.0) -> None:
        if self.bound and not self.closed.is_set():
            try:
                await self.request(UNBIND, b"", timeout)
            except (TimeoutError, SessionClosed, OSError):
                pass
        await self.close("closed by Herald")
        for task in self._tasks:
            if task is not asyncio.current_task():
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - cancelled by close(): the session's end is already recorded
                    pass


# --------------------------------------------------------------------------------------------
# Results of one submit_sm


@dataclass(frozen=True, slots=True)
class _Accepted:
    message_id: str


@dataclass(frozen=True, slots=True)
class _Refused:
    status: int
    name: str
    retriable: bool
    text: str


@dataclass(frozen=True, slots=True)
class _NotSent:
    reason: str  # nothing was written: safe to send again


@dataclass(frozen=True, slots=True)
class _Lost:
    reason: str  # written, no answer: the SMSC may have it


_PartResult = _Accepted | _Refused | _NotSent | _Lost


@dataclass(slots=True)
class _Inbound:
    session: Session | None
    seq: int
    receipt: DeliveryReceipt | None = None
    message: InboundMessage | None = None


# --------------------------------------------------------------------------------------------
# The gateway


class SmppGateway:
    """Implements the Gateway protocol over ``binds`` SMPP sessions."""

    def __init__(self, config: SmppConfig, sink: EventSink | None = None) -> None:
        self.name = config.name
        self.config = config
        self.sink = sink
        self._sessions: list[Session] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._inbox: asyncio.Queue[_Inbound] = asyncio.Queue()
        self._ref = random.randrange(256)
        self._reassembler = Reassembler(config.mo_reassembly_timeout_s, max_bytes=config.mo_reassembly_max_bytes)
        self._tz = ZoneInfo(config.receipt_timezone)
        self._closing = False
        self._draining = False
        self._in_flight = 0  # submit_sm written and not answered yet
        self._drained = asyncio.Event()
        self._started = False
        self.stats = {"binds": 0, "reconnects": 0, "throttled": 0}
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the first call instead
        self.start()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bind supervisors and the inbound flusher (idempotent)."""
        if self._started or self._closing:
            return
        self._started = True
        modes = ["transceiver"] if self.config.bind_mode == "transceiver" else ["transmitter", "receiver"]
        for i in range(self.config.binds):
            for mode in modes:
                label = f"{self.name}-{mode[:3]}{i + 1}"
                self._tasks.append(asyncio.create_task(self._supervise(label, mode), name=f"smpp-bind-{label}"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name=f"smpp-inbox-{self.name}"))

    async def wait_bound(self, timeout: float, count: int = 1) -> bool:
        """True once ``count`` sessions that can submit are bound (for start-up and tests)."""
        self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(1 for s in self._sessions if s.can_submit) < count:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await self._wait_change(left)
        return True

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _wait_change(self, timeout: float) -> None:
        """Until a session is bound or lost (or ``timeout``). Call it right after checking, with
        no await in between, so no change can be missed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    async def drain(self, timeout: float) -> bool:
        """Stop taking new submit_sm and wait (up to ``timeout``) until every submit_sm in flight
        has its answer, so a graceful stop leaves no outcome unknown. True when all came."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("SMPP %s: %d submit_sm still unanswered after %.1fs of draining",
                            self.name, self._in_flight, timeout)
                return False
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), left)
            except TimeoutError:
                pass
        return True

    async def close(self) -> None:
        """Let the submit_sm in flight be answered (``drain_timeout_s``), unbind every session,
        then stop the supervisors. Receipts and MO not yet handed to the sink stay unanswered:
        the SMSC sends them again to the next bind."""
        await self.drain(self.config.drain_timeout_s)
        self._closing = True
        sessions = list(self._sessions)  # before the supervisors, whose exit forgets them
        await asyncio.gather(*(s.unbind() for s in sessions), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self._sessions):  # bound while closing
            await session.unbind()
        self._sessions.clear()
        self._set_gauges()

    def _set_gauges(self) -> None:
        for mode in ("transceiver", "transmitter", "receiver"):
            BINDS.labels(self.name, mode).set(sum(1 for s in self._sessions if s.mode == mode and s.bound))
        WINDOW.labels(self.name).set(sum(s.window.limit for s in self._sessions if s.can_submit))

    async def _supervise(self, label: str, mode: str) -> None:
        config = self.config
        delay = config.reconnect_min_s
        while not self._closing:
            started = time.monotonic()
            try:
                session = await self._connect(label, mode)
            except (OSError, TimeoutError, BindRefused, SessionClosed, CodecError) as exc:
                reason = "bind_refused" if isinstance(exc, BindRefused) else "connect_failed"
                RECONNECTS.labels(self.name, reason).inc()
                level = logging.ERROR if isinstance(exc, BindRefused) else logging.WARNING
                log.log(level, "SMPP %s: bind failed (%s: %s); retrying in %.1fs", label, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, config.reconnect_max_s)
                continue
            self._sessions.append(session)
            self.stats["binds"] += 1
            self._set_gauges()
            self._notify()
            log.info("SMPP %s: bound as %s to %s:%d", label, mode, config.host, config.port)
            try:
                await session.closed.wait()
            finally:
                if session in self._sessions:
                    self._sessions.remove(session)
                self._set_gauges()
                self._notify()
            if self._closing:
                return
            self.stats["reconnects"] += 1
            RECONNECTS.labels(self.name, "dropped").inc()
            # A session that lasted a while starts the backoff again; a flapping one keeps growing it.
            if time.monotonic() - started > 30:
                delay = config.reconnect_min_s
            log.warning("SMPP %s: session lost (%s); reconnecting in %.1fs", label, session.close_reason, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, config.reconnect_max_s)

    async def _connect(self, label: str, mode: str) -> Session:
        config = self.config
        reader, writer = await asyncio.wait_for(asyncio.open_connection(config.host, config.port), config.bind_timeout_s)
        session = Session(self, label, mode, reader, writer)
        session.start()
        body = bind_body(config.system_id, config.password.get_secret_value(), config.system_type)
        try:
            resp = await session.request(BIND_IDS[mode], body, config.bind_timeout_s)
        except BaseException:
            await session.close("bind not answered")
            raise
        if resp.status != ESME_ROK or resp.command_id != BIND_IDS[mode] | RESP:
            await session.close("bind refused")
            raise BindRefused(resp.status)
        session.bound = True
        session.start_keepalive()
        return session

    # -- submit ------------------------------------------------------------------------------

    async def lookup(self, message: MessageOutbound) -> str | None:
        """The SMSC's id for ``message`` by query_sm, where the carrier supports a query by
        Herald's message id (``query_sm``); None when it answers ESME_RQUERYFAIL (never got it).
        Raises :class:`LookupUnsupported` otherwise (plain SMPP 3.4 queries by the SMSC's id,
        which is just what a lost submit_sm_resp did not bring)."""
        config = self.config
        if not (config.query_sm and config.send_message_id_tlv):
            raise LookupUnsupported("this SMSC cannot be asked by Herald's reference (query_sm not enabled)")
        self.start()
        session = await self._choose()
        if session is None:
            raise SessionClosed("no bound SMPP session for query_sm")
        source, s_ton, s_npi = address(message.sender or config.default_sender, config.source_addr_ton, config.source_addr_npi)
        body = cstring(str(message.message_id), 65, "message id") + bytes([s_ton, s_npi]) + cstring(source, 21, "source_addr")
        resp = await session.request(QUERY_SM, body, config.timeout_s)
        if resp.command_id == QUERY_SM | RESP and resp.status == ESME_ROK:
            found = decode_message_id(resp.body)
            QUERY_SM_TOTAL.labels(self.name, "found" if found else "empty").inc()
            if not found:
                raise RuntimeError("query_sm_resp without a message_id")
            return found
        if resp.status == ESME_RQUERYFAIL:
            QUERY_SM_TOTAL.labels(self.name, "not_found").inc()
            return None
        QUERY_SM_TOTAL.labels(self.name, "error").inc()
        raise RuntimeError(f"query_sm answered command_status 0x{resp.status:08x}")

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        self.start()
        return list(await asyncio.gather(*(self._submit_message(m) for m in messages)))

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) % 256
        return self._ref

    def _pdus(self, m: MessageOutbound) -> list[bytes]:
        config = self.config
        plan = plan_message(
            m.body, ref=self._next_ref(), use_message_payload=config.use_message_payload, force_ucs2=m.encoding == "UCS-2"
        )
        source, s_ton, s_npi = address(m.sender or config.default_sender, config.source_addr_ton, config.source_addr_npi)
        validity = smpp_validity_period(m.expires_at, utcnow(), config.validity_period)
        extra: dict[int, bytes] = {}
        if config.send_message_id_tlv:
            extra[TLV_HERALD_MESSAGE_ID] = cstring(str(m.message_id), 65, "message id")
        for name, tag in config.registration_tlvs.items():  # docs/senders.md, registrations
            if value := m.carrier_ids.get(name):
                extra[tag] = cstring(value, 65, name)
        return [
            ShortMessage(
                source_addr=source,
                destination_addr=m.to.removeprefix("+"),
                short_message=part.short_message,
                service_type=config.service_type,
                source_addr_ton=s_ton,
                source_addr_npi=s_npi,
                dest_addr_ton=config.dest_addr_ton,
                dest_addr_npi=config.dest_addr_npi,
                esm_class=part.esm_class,
                registered_delivery=config.registered_delivery,
                validity_period=validity,
                data_coding=part.data_coding,
                tlvs={**dict(part.tlvs), **extra},
            ).encode()
            for part in plan.parts
        ]

    async def _choose(self) -> Session | None:
        """The bound session with the most free window; waits up to timeout_s for a bind."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_s
        while True:
            ready = [s for s in self._sessions if s.can_submit]
            if ready:
                now = loop.time()
                return max(ready, key=lambda s: (s.window.paused_until <= now, s.window.free))
            left = deadline - loop.time()
            if left <= 0 or self._closing:
                return None
            await self._wait_change(left)

    async def _submit_pdu(self, body: bytes, continuing: bool = False) -> _PartResult:
        """``continuing``: a later part of a message whose first part went out (sent even while
        draining: the handset needs every part)."""
        if self._draining and not continuing:
            return _NotSent("the gateway is stopping")
        session = await self._choose()
        if session is None:
            return _NotSent("no bound SMPP session")
        try:
            if not await session.window.acquire(self.config.timeout_s):
                return _NotSent("window full for timeout_s")
        except SessionClosed as exc:
            return _NotSent(f"session closed before sending: {exc}")
        try:
            if self._draining and not continuing:
                return _NotSent("the gateway is stopping")
            try:
                future = session.send_request(SUBMIT_SM, body)
            except SessionClosed as exc:
                return _NotSent(f"session closed before sending: {exc}")
            self._in_flight += 1
            try:
                resp = await asyncio.wait_for(future, self.config.timeout_s)
            except TimeoutError:
                SUBMIT_SM_TOTAL.labels(self.name, "timeout").inc()
                return _Lost(f"no submit_sm_resp within {self.config.timeout_s:g}s on {session.label}")
            except SessionClosed as exc:
                SUBMIT_SM_TOTAL.labels(self.name, "connection_lost").inc()
                return _Lost(f"connection lost after submit_sm was written on {session.label}: {exc}")
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._drained.set()
        finally:
            await session.window.release()
        if resp.status == ESME_ROK and resp.command_id == SUBMIT_SM | RESP:
            try:
                message_id = decode_message_id(resp.body)
            except CodecError:
                message_id = None
            SUBMIT_SM_TOTAL.labels(self.name, "ESME_ROK").inc()
            session.window.success()
            if not message_id:
                return _Lost("submit_sm_resp accepted without a message_id: receipts cannot be matched")
            return _Accepted(message_id)
        status = resp.status or ESME_RINVCMDID  # a generic_nack with status 0 is still a refusal
        info = classify(status, self.config.retriable_statuses)
        SUBMIT_SM_TOTAL.labels(self.name, metric_label(status)).inc()
        if info.slow_down:
            self.stats["throttled"] += 1
            session.window.slow_down(self.config.throttle_pause_s)
            log.info("SMPP %s: %s, window now %d", session.label, info.name, session.window.limit)
        return _Refused(status, info.name, info.retriable, info.description)

    @staticmethod
    def _single_outcome(result: _PartResult) -> Outcome:
        if isinstance(result, _Accepted):
            return Submitted(result.message_id, (result.message_id,))
        if isinstance(result, _Refused):
            return Refused(result.name, f"command_status 0x{result.status:08x}: {result.text}", result.retriable)
        if isinstance(result, _NotSent):
            return Refused("not_bound", result.reason, True)
        return Unknown(result.reason)

    async def _submit_message(self, m: MessageOutbound) -> Outcome:
        try:
            pdus = self._pdus(m)
        except (CodecError, UnicodeEncodeError) as exc:
            return Refused("encoding_error", str(exc), False)
        first = await self._submit_pdu(pdus[0])
        if len(pdus) == 1 or not isinstance(first, _Accepted):
            # Nothing of a concatenated message went out unless part 1 was accepted: the whole
            # message can be retried (or reconciled) like a single one.
            return self._single_outcome(first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.multipart_retry_s

        async def rest(body: bytes) -> _PartResult:
            # Part 1 is with the SMSC: the handset needs every other part, with the same UDH
            # reference. A retriable refusal, or a part lost with its connection, is sent again
            # (a duplicate part is dropped by the handset's reassembly; a missing one breaks it).
            attempt = 0
            while True:
                result = await self._submit_pdu(body, continuing=True)
                if isinstance(result, _Accepted) or (isinstance(result, _Refused) and not result.retriable):
                    return result
                if loop.time() >= deadline or self._closing:
                    return result
                attempt += 1
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0, max(0.0, deadline - loop.time())))

        self._in_flight += 1  # a graceful stop waits for the other parts too
        try:
            results = [first, *await asyncio.gather(*(rest(b) for b in pdus[1:]))]
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()
        ids = [r.message_id for r in results if isinstance(r, _Accepted)]
        if len(ids) == len(pdus):
            return Submitted(ids[0], tuple(ids))
        failed = ", ".join(
            f"part {i}: {r.name if isinstance(r, _Refused) else r.reason}"
            for i, r in enumerate(results, start=1)
            if not isinstance(r, _Accepted)
        )
        # Not retried as a whole: that would send the accepted parts twice. Reported as a
        # permanent failure naming the parts that did go out.
        return Refused(
            "partially_submitted",
            f"{len(ids)} of {len(pdus)} parts accepted (ids {', '.join(ids)}); {failed}"[:500],
            False,
        )

    # -- deliver_sm --------------------------------------------------------------------------

    def _on_deliver_sm(self, session: Session, pdu: Pdu) -> None:
        """Called by the reader task: must not block, and never raises (an exception here would
        drop the bind; the SMSC would send the same PDU after the rebind, and again). Answers at
        once only what needs no sink, and any deliver_sm it cannot read with an error."""
        try:
            self._take_deliver_sm(session, pdu)
        except Exception:  # noqa: BLE001 - a PDU no branch below foresaw: answer it, keep the bind
            log.exception("SMPP %s: deliver_sm could not be handled; answered ESME_RX_P_APPN", session.label)
            DELIVER_SM_TOTAL.labels(self.name, "unreadable", "permanent_error").inc()
            session.respond(DELIVER_SM, pdu.seq, b"\x00", ESME_RX_P_APPN)

    def _take_deliver_sm(self, session: Session, pdu: Pdu) -> None:
        try:
            sm = ShortMessage.decode(pdu.body)
        except CodecError as exc:
            log.warning("SMPP %s: malformed deliver_sm: %s", session.label, exc)
            DELIVER_SM_TOTAL.labels(self.name, "malformed", "permanent_error").inc()
            session.respond(DELIVER_SM, pdu.seq, b"\x00", ESME_RX_P_APPN)
            return
        if self._inbox.qsize() >= 50 * self.config.inbound_batch:
            DELIVER_SM_TOTAL.labels(self.name, "any", "queue_full").inc()
            session.respond(DELIVER_SM, pdu.seq, b"\x00", ESME_RMSGQFUL)
            return
        try:
            if sm.esm_class & ESM_TYPE_MASK in (ESM_RECEIPT, ESM_INTERMEDIATE):
                item = self._receipt_item(session, pdu.seq, sm)
            else:
                item = self._mo_item(session, pdu.seq, sm)
        except ReassemblyFull as exc:
            log.warning("SMPP %s: %s; answered ESME_RMSGQFUL", session.label, exc)
            DELIVER_SM_TOTAL.labels(self.name, "mo_part", "queue_full").inc()
            session.respond(DELIVER_SM, pdu.seq, b"\x00", ESME_RMSGQFUL)
            return
        except (CodecError, ValidationError, ValueError) as exc:
            log.warning("SMPP %s: deliver_sm not understood (%s); answered ESME_RX_P_APPN", session.label, exc)
            DELIVER_SM_TOTAL.labels(self.name, "unreadable", "permanent_error").inc()
            session.respond(DELIVER_SM, pdu.seq, b"\x00", ESME_RX_P_APPN)
            return
        if item is not None:
            self._inbox.put_nowait(item)

    def _receipt_item(self, session: Session, seq: int, sm: ShortMessage) -> _Inbound:
        parsed = parse_receipt(sm, id_conversion=self.config.receipt_id_conversion, tz=self._tz)
        if parsed is None:
            raise CodecError("receipt without a message id")
        receipt = DeliveryReceipt(
            gateway=self.name,
            gateway_message_id=parsed.message_id[:128],
            status=parsed.status,
            error_code=parsed.error_code,
            raw_status=parsed.raw_status,
            done_at=parsed.done_at,
            fingerprint=receipt_fingerprint(sm),
        )
        return _Inbound(session, seq, receipt=receipt)

    def _mo_item(self, session: Session, seq: int, sm: ShortMessage) -> _Inbound | None:
        concat, payload = concat_of(sm)
        text = decode_text(payload, sm.data_coding, self.config.mo_default_charset)
        sender, recipient = _number(sm.source_addr, sm.source_addr_ton), _number(sm.destination_addr, sm.dest_addr_ton)
        if concat is not None and concat.total > 1:
            whole = self._reassembler.add(sender, recipient, concat, text, time.monotonic())
            if whole is None:
                # Held in memory and acknowledged now: holding the answer until the last part
                # could stall an SMSC that waits for each deliver_sm_resp (see docs/smpp.md).
                DELIVER_SM_TOTAL.labels(self.name, "mo_part", "ok").inc()
                session.respond(DELIVER_SM, seq, b"\x00")
                return None
            text = whole
        message = InboundMessage(
            gateway=self.name, sender=sender, recipient=recipient, body=text, received_at=utcnow()
        )
        return _Inbound(session, seq, message=message)

    async def _flush_loop(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        next_expiry = loop.time() + 5
        while True:
            try:
                first = await asyncio.wait_for(self._inbox.get(), 5.0)
                batch = [first]
            except TimeoutError:
                batch = []
            if batch:
                # Until the batch is full, the flush interval is over, or nothing came for
                # inbound_idle_ms: an SMSC that waits for its deliver_sm_resp (its window is full)
                # sends nothing more, and holding its answers for the whole interval would cap
                # receipts at window / interval per bind.
                deadline = loop.time() + config.inbound_flush_ms / 1000
                idle = config.inbound_idle_ms / 1000 or None
                while len(batch) < config.inbound_batch:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        batch.append(self._inbox.get_nowait())
                        continue
                    except asyncio.QueueEmpty:
                        pass
                    try:
                        batch.append(await asyncio.wait_for(self._inbox.get(), min(left, idle or left)))
                    except TimeoutError:
                        break
            if loop.time() >= next_expiry:
                next_expiry = loop.time() + 5
                for sender, recipient, text in self._reassembler.expire(time.monotonic()):
                    log.warning("SMPP %s: concatenated MO incomplete after %.0fs, published as it is", self.name, config.mo_reassembly_timeout_s)
                    batch.append(_Inbound(None, 0, message=InboundMessage(
                        gateway=self.name, sender=sender, recipient=recipient, body=text, received_at=utcnow())))
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[_Inbound]) -> None:
        receipts = [i for i in batch if i.receipt is not None]
        messages = [i for i in batch if i.message is not None]
        answers: dict[int, int] = {}
        for kind, items in (("receipt", receipts), ("mo", messages)):
            if not items:
                continue
            status = ESME_ROK
            try:
                if self.sink is None:
                    raise RuntimeError("this gateway has no event sink")
                if kind == "receipt":
                    await self.sink.receipts([i.receipt for i in items])  # type: ignore[misc]
                else:
                    await self.sink.inbound([i.message for i in items])  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - any sink failure: the SMSC must send them again
                log.warning("SMPP %s: sink refused %d %s (%s); answering ESME_RX_T_APPN", self.name, len(items), kind, exc)
                status = ESME_RX_T_APPN
            answer = "ok" if status == ESME_ROK else "temporary_error"
            DELIVER_SM_TOTAL.labels(self.name, kind, answer).inc(len(items))
            for item in items:
                answers[id(item)] = status
        # deliver_sm_resp only now, after the sink returned: at-least-once.
        for item in batch:
            if item.session is not None:
                item.session.respond(DELIVER_SM, item.seq, b"\x00", answers.get(id(item), ESME_ROK))


def _number(value: str, ton: int) -> str:
    """A received address as Herald writes numbers: ``+`` and digits when international."""
    value = value.strip() or "unknown"
    return f"+{value}" if ton == 1 and value.isdigit() else value[:32]


def sessions_of(gateway: SmppGateway) -> Iterable[Session]:
    """The bound sessions (for tests and diagnostics)."""
    return tuple(gateway._sessions)
