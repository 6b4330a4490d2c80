"""Herald's SMPP gateway against the gateway simulator's SMPP face, run as a process: long GSM-7
and UCS-2 texts arrive as the right concatenated parts, receipts come back through the event
sink with the part ids, MO arrives, throttling slows the bind down and is retried, a dropped
connection is re-bound and what was in flight comes back as Unknown. A small fake SMSC in this
file covers what the simulator cannot force: a refused middle part, and the deliver_sm_resp
held until the sink has returned."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

from herald_tools.stack import Ports, Stack, free_port
from services.dispatcher.gateways import build_gateway
from services.dispatcher.gateways import smpp_codec as c
from services.dispatcher.gateways.base import LookupUnsupported, Refused, Submitted, Unknown
from services.dispatcher.gateways.smpp import SmppConfig, SmppGateway, sessions_of
from services.dispatcher.handlers import Job, Sender
from services.dispatcher.settings import DispatcherSettings
from shared.contracts import DeliveryReceipt, InboundMessage, MessageOutbound, utcnow
from shared.sms.encoding import analyse
from shared.statuses import ReceiptStatus

pytestmark = pytest.mark.integration

LONG_GSM = "Herald GSM-7 test: " + "a" * 140 + "€" + "{b}" * 50 + " end"
LONG_UCS2 = "Привет, Herald! 😀 " * 12


@dataclass
class Sim:
    stack: Stack
    smpp_port: int

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports.simulator_control}"

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        r = httpx.post(self.control + path, json=body, timeout=10)
        r.raise_for_status()
        return r

    def get(self, path: str, **params: str) -> dict:
        r = httpx.get(self.control + path, params=params, timeout=10)
        r.raise_for_status()
        return r.json()


def sim_env(smpp_port: int) -> dict[str, str]:
    return {
        "HERALD_SIM_SMPP_PORT": str(smpp_port),
        "HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none",
        "HERALD_SIM_RECEIPT_DELAY_MIN_MS": "20",
        "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "150",
        "HERALD_SIM_SMPP_REDELIVER_MS": "200",
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[Sim]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("smpp-sim"))
    port = free_port()
    stack.start("simulator", extra_env=sim_env(port))
    stack.wait_ready(30)
    yield Sim(stack, port)
    stack.stop()


@pytest.fixture(autouse=True)
def fresh(request) -> Iterator[None]:
    if "sim" in request.fixturenames:
        s = request.getfixturevalue("sim")
        s.post("/control", {"mode": "normal", "outcome_rates": {"delivered": 0.9, "undelivered": 0.07, "failed": 0.03}})
        s.post("/stats/reset")
    yield


class ListSink:
    def __init__(self) -> None:
        self.receipts_got: list[DeliveryReceipt] = []
        self.inbound_got: list[InboundMessage] = []
        self.calls = 0
        self._changed = asyncio.Event()

    async def receipts(self, items: list[DeliveryReceipt]) -> None:
        self.calls += 1
        self.receipts_got.extend(items)
        self._changed.set()

    async def inbound(self, items: list[InboundMessage]) -> None:
        self.inbound_got.extend(items)
        self._changed.set()

    async def wait(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


class FlakySink(ListSink):
    """Fails its first ``failures`` receipt calls, as Kafka being down would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def receipts(self, items: list[DeliveryReceipt]) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.calls += 1
            raise ConnectionError("Kafka unavailable")
        await super().receipts(items)


def config(port: int, **overrides) -> SmppConfig:
    values = dict(
        name="smsc", host="127.0.0.1", port=port, system_id="herald", password=SecretStr("sim-pass"),
        send_message_id_tlv=True, timeout_s=3.0, reconnect_min_s=0.1, reconnect_max_s=0.5, rate_per_s=5000,
    )
    values.update(overrides)
    return SmppConfig(**values)


@asynccontextmanager
async def gateway(port: int, sink=None, *, bound: int = 1, **overrides) -> AsyncIterator[SmppGateway]:
    gw = build_gateway(config(port, **overrides), sink)
    assert isinstance(gw, SmppGateway)
    try:
        assert await gw.wait_bound(10, bound), "no SMPP bind"
        yield gw
    finally:
        await gw.close()


def message(body: str, to: str = "+34600000001", sender: str | None = "Herald") -> MessageOutbound:
    info = analyse(body)
    return MessageOutbound(
        message_id=uuid.uuid4(), to=to, country="ES", body=body, sender=sender, type="transactional",
        encoding=info.encoding, segments=info.segments, source="api", accepted_at=utcnow(), released_at=utcnow(),
    )


# -- against the simulator ------------------------------------------------------------------


async def test_long_gsm7_and_ucs2_arrive_as_concatenated_parts(sim: Sim) -> None:
    messages = [message(LONG_GSM), message(LONG_UCS2), message("short one")]
    async with gateway(sim.smpp_port) as gw:
        outcomes = await gw.submit_many(messages)
    for m, outcome, dcs in zip(messages, outcomes, (0x00, 0x08, 0x00), strict=True):
        assert isinstance(outcome, Submitted), outcome
        assert len(outcome.part_ids) == m.segments and outcome.gateway_message_id == outcome.part_ids[0]
        (seen,) = sim.get("/stats/smpp/messages", client_ref=str(m.message_id))["messages"]
        assert seen["body"] == m.body  # every part there, in order, nothing split inside € or 😀
        assert seen["segments"] == m.segments and seen["part_ids"] == list(outcome.part_ids)
        assert seen["data_codings"] == [dcs] * m.segments
        assert seen["to"] == m.to and seen["from"] == "Herald"
    assert messages[0].segments == 3 and messages[1].segments == 4
    counts = sim.get("/stats/client_refs")["client_refs"]
    assert [counts[str(m.message_id)] for m in messages] == [1, 1, 1]
    assert sim.get("/stats")["smpp"]["parts"] == 3 + 4 + 1


async def test_the_validity_left_reaches_the_smsc_in_submit_sm(sim: Sim) -> None:
    """validity_period is the time a message still has at submission, not its original validity;
    a message without validity sends none (the SMSC's default)."""
    otp = message("Your code is 123456").model_copy(
        update={"accepted_at": utcnow() - timedelta(seconds=100), "expires_at": utcnow() + timedelta(seconds=200)}
    )
    long_one = message(LONG_GSM).model_copy(update={"expires_at": utcnow() + timedelta(hours=2, seconds=5)})
    plain = message("no validity")
    async with gateway(sim.smpp_port) as gw:
        outcomes = await gw.submit_many([otp, long_one, plain])
    assert all(isinstance(o, Submitted) for o in outcomes), outcomes
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(otp.message_id))["messages"]
    (sub,) = sim.get("/stats/submissions", client_ref=str(otp.message_id))["messages"]
    assert 185 <= sub["validity_s"] <= 199  # what was left of it, not 300
    assert seen["validity_period"] == f"00000000{sub['validity_s'] // 60:02d}{sub['validity_s'] % 60:02d}000R"  # relative
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(long_one.message_id))["messages"]
    assert seen["validity_period"].startswith("00000002000") and seen["validity_period"].endswith("000R")
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(plain.message_id))["messages"]
    assert seen["validity_period"] == ""
    assert "validity_s" not in sim.get("/stats/submissions", client_ref=str(plain.message_id))["messages"][0]


async def test_absolute_validity_period_when_configured(sim: Sim) -> None:
    m = message("Your code is 654321").model_copy(update={"expires_at": utcnow() + timedelta(seconds=600)})
    async with gateway(sim.smpp_port, validity_period="absolute") as gw:
        (outcome,) = await gw.submit_many([m])
    assert isinstance(outcome, Submitted), outcome
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(m.message_id))["messages"]
    assert seen["validity_period"].endswith("00+") and len(seen["validity_period"]) == 16
    (sub,) = sim.get("/stats/submissions", client_ref=str(m.message_id))["messages"]
    assert 590 <= sub["validity_s"] <= 600


async def test_message_payload_sends_a_long_text_in_one_pdu(sim: Sim) -> None:
    m = message(LONG_UCS2)
    async with gateway(sim.smpp_port, use_message_payload=True) as gw:
        (outcome,) = await gw.submit_many([m])
    assert isinstance(outcome, Submitted) and len(outcome.part_ids) == 1
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(m.message_id))["messages"]
    assert seen["body"] == m.body and seen["segments"] == 1


async def test_receipts_reach_the_sink_with_each_parts_id(sim: Sim) -> None:
    sim.post("/control", {"outcome_rates": {"delivered": 0.5, "undelivered": 0.3, "failed": 0.2}})
    sink = ListSink()
    messages = [message(LONG_GSM if i % 3 == 0 else f"message {i}") for i in range(30)]
    async with gateway(sim.smpp_port, sink) as gw:
        outcomes = await gw.submit_many(messages)
        assert all(isinstance(o, Submitted) for o in outcomes)
        parts = {p: o.gateway_message_id for o in outcomes if isinstance(o, Submitted) for p in o.part_ids}
        await sink.wait(lambda: len(sink.receipts_got) >= len(parts))
    got = {r.gateway_message_id: r for r in sink.receipts_got}
    assert set(got) == set(parts) and len(sink.receipts_got) == len(parts)  # one receipt per part, no stranger
    for outcome in outcomes:
        assert isinstance(outcome, Submitted)
        statuses = {got[p].status for p in outcome.part_ids}
        assert len(statuses) == 1  # every part of a message has the message's outcome
    assert {r.status for r in sink.receipts_got} <= {ReceiptStatus.DELIVERED, ReceiptStatus.UNDELIVERED, ReceiptStatus.REJECTED}
    assert len({r.status for r in sink.receipts_got}) > 1
    assert all(r.gateway == "smsc" and r.done_at is not None and r.error_code for r in sink.receipts_got)
    assert sim.get("/stats")["smpp"]["receipts_sent"] == len(parts)


async def test_injected_mo_reaches_the_sink_reassembled(sim: Sim) -> None:
    sink = ListSink()
    long_text = "Réponse longue 😀 " * 10  # UCS-2, 3 parts
    async with gateway(sim.smpp_port, sink):
        assert sim.post("/control/mo", {"from": "+34600000009", "to": "12345", "text": "STOP"}).json()["parts"] == 1
        assert sim.post("/control/mo", {"from": "+34600000008", "to": "+34911000000", "text": long_text}).json()["parts"] == 3
        await sink.wait(lambda: len(sink.inbound_got) >= 2)
        await asyncio.sleep(0.3)
    by_sender = {m.sender: m for m in sink.inbound_got}
    assert len(sink.inbound_got) == 2
    assert (by_sender["+34600000009"].recipient, by_sender["+34600000009"].body) == ("12345", "STOP")
    assert (by_sender["+34600000008"].recipient, by_sender["+34600000008"].body) == ("+34911000000", long_text)


async def test_receipts_refused_by_the_sink_are_redelivered(sim: Sim) -> None:
    sink = FlakySink(failures=2)
    messages = [message(f"redeliver {i}") for i in range(5)]
    async with gateway(sim.smpp_port, sink) as gw:
        outcomes = await gw.submit_many(messages)
        ids = {o.gateway_message_id for o in outcomes if isinstance(o, Submitted)}
        await sink.wait(lambda: {r.gateway_message_id for r in sink.receipts_got} >= ids)
    assert sink.failures == 0
    assert sim.get("/stats")["smpp"]["receipts_retried"] >= 1  # answered ESME_RX_T_APPN, sent again


async def test_malformed_deliver_sm_is_answered_with_an_error_and_the_bind_kept(sim: Sim) -> None:
    """A hostile or buggy SMSC: deliver_sm that cannot be read (an empty SAR TLV, a TLV running
    past the PDU, part 4 of 3, an empty message_state, a truncated body) are each answered with
    ESME_RX_P_APPN on the same bind, while submissions and their receipts go on."""
    from services.simulator.smpp import MALFORMED

    sink = ListSink()
    messages = [message(f"hostile smsc {i}") for i in range(40)]
    async with gateway(sim.smpp_port, sink) as gw:
        (session,) = sessions_of(gw)
        for kind in MALFORMED:
            sim.post("/control/smpp/malformed", {"kind": kind, "count": 2})
        outcomes = await gw.submit_many(messages)
        want = 2 * len(MALFORMED)
        async with asyncio.timeout(15):
            while sim.get("/stats")["smpp"]["malformed_answered"] < want:  # noqa: ASYNC110 - polls the simulator, not an in-process flag
                await asyncio.sleep(0.1)
        ids = {o.gateway_message_id for o in outcomes if isinstance(o, Submitted)}
        await sink.wait(lambda: {r.gateway_message_id for r in sink.receipts_got} >= ids)
        stats = sim.get("/stats")["smpp"]
        assert stats["malformed_answers"] == {f"0x{c.ESME_RX_P_APPN:08x}": want}
        assert stats["malformed_retried"] == 0 and stats["binds"] == 1
        assert gw.stats["reconnects"] == 0 and sessions_of(gw) == (session,)
    assert all(isinstance(o, Submitted) for o in outcomes), outcomes
    assert len(ids) == len(messages) and not sink.inbound_got


async def test_transmitter_and_receiver_binds(sim: Sim) -> None:
    sink = ListSink()
    async with gateway(sim.smpp_port, sink, bound=2, bind_mode="transmitter+receiver", binds=2) as gw:
        bound = sim.get("/stats")["smpp"]["bound"]
        assert bound == {"transmitter": 2, "receiver": 2, "transceiver": 0}
        outcomes = await gw.submit_many([message(f"pair {i}") for i in range(10)])
        ids = {o.gateway_message_id for o in outcomes if isinstance(o, Submitted)}
        assert len(ids) == 10
        await sink.wait(lambda: {r.gateway_message_id for r in sink.receipts_got} >= ids)


async def test_wrong_password_is_not_bound(sim: Sim) -> None:
    gw = SmppGateway(config(sim.smpp_port, password=SecretStr("nope"), timeout_s=0.5))
    try:
        assert not await gw.wait_bound(1.0)
        (outcome,) = await gw.submit_many([message("hi")])
        assert isinstance(outcome, Refused) and outcome.retriable and outcome.code == "not_bound"
    finally:
        await gw.close()
    assert sim.get("/stats")["smpp"]["binds_refused"] >= 1
    with pytest.raises(LookupUnsupported):
        await gw.lookup(message("hi"))


async def test_throttling_halves_the_window_and_the_sender_retries(sim: Sim) -> None:
    async with gateway(sim.smpp_port, window=8, throttle_pause_s=0.2) as gw:
        sim.post("/control", {"mode": "fail", "status": 429})
        (outcome,) = await gw.submit_many([message("throttled")])
        assert outcome == Refused("ESME_RTHROTTLED", outcome.message, True)
        (session,) = sessions_of(gw)
        assert session.window.limit == 4  # halved, and paused for throttle_pause_s

        # Half of the submit_sm throttled: the dispatcher's Sender retries them all through.
        sim.post("/control", {"mode": "partial_fail", "status": 429, "fail_rate": 0.5})
        settings = DispatcherSettings(
            gateways=[gw.config], instance_id="test", retry_base_s=0.05, retry_cap_s=0.2, retry_max_attempts=30, retry_budget_s=60
        )
        messages = [message(f"retry me {i}") for i in range(40)]
        finished, unknown = await Sender({"smsc": gw}, settings).send([Job("acme", "t", m) for m in messages])
    assert unknown == [] and [f.state for _, f in finished] == ["submitted"] * 40
    stats = sim.get("/stats")
    assert stats["rejected"]["throttled"] >= 5 and gw.stats["throttled"] == stats["rejected"]["throttled"]
    counts = sim.get("/stats/client_refs")["client_refs"]
    assert [counts[str(m.message_id)] for m in messages] == [1] * 40  # retried, never sent twice


async def test_dropped_binds_reconnect_and_in_flight_submissions_are_unknown(sim: Sim) -> None:
    async with gateway(sim.smpp_port, timeout_s=8.0) as gw:
        sim.post("/control", {"mode": "slow", "delay_ms": 3000})
        pending = asyncio.ensure_future(gw.submit_many([message(f"in flight {i}") for i in range(3)]))
        await asyncio.sleep(0.5)  # written, waiting for their submit_sm_resp
        sim.post("/control", {"mode": "refuse"})  # listener closed, binds dropped
        outcomes = await asyncio.wait_for(pending, 5)
        assert all(isinstance(o, Unknown) for o in outcomes), outcomes
        assert sim.get("/stats")["smpp"]["bound"]["transceiver"] == 0
        sim.post("/control", {"mode": "normal"})
        assert await gw.wait_bound(5)
        (outcome,) = await gw.submit_many([message("after the drop")])
        assert isinstance(outcome, Submitted)
        assert gw.stats["reconnects"] >= 1 and gw.stats["binds"] >= 2


async def test_killed_smsc_in_flight_unknown_then_rebinds_to_a_new_one(tmp_path) -> None:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path)
    port = free_port()
    first = stack.start("simulator", extra_env=sim_env(port))
    stack.wait_ready(30)
    try:
        s = Sim(stack, port)
        async with gateway(port, timeout_s=8.0) as gw:
            s.post("/control", {"mode": "slow", "delay_ms": 5000})
            pending = asyncio.ensure_future(gw.submit_many([message("lost with the SMSC")]))
            await asyncio.sleep(0.5)
            stack.kill_process(first)
            stack.processes.remove(first)
            (outcome,) = await asyncio.wait_for(pending, 5)
            assert isinstance(outcome, Unknown)
            (refused,) = await gw.submit_many([message("nobody there")])
            assert isinstance(refused, Refused) and refused.retriable  # nothing written: safe to retry
            stack.start("simulator", port=stack.ports.simulator, extra_env=sim_env(port))
            stack.wait_ready(30)
            assert await gw.wait_bound(10)
            (outcome,) = await gw.submit_many([message("new SMSC")])
            assert isinstance(outcome, Submitted)
    finally:
        stack.stop()


# -- against a fake SMSC that answers as told -----------------------------------------------


class FakeSmsc:
    """Binds anything; answers submit_sm with ``answer(sm, n)`` -> command_status (0: accepted)."""

    def __init__(self, answer: Callable[[c.ShortMessage, int], int]) -> None:
        self.answer = answer
        self.submits: list[c.ShortMessage] = []
        self.responses: asyncio.Queue[c.Pdu] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        if self.writer is not None:
            self.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while True:
                head = await reader.readexactly(16)
                length, command_id, status, seq = c.HEADER.unpack(head)
                body = await reader.readexactly(length - 16)
                if command_id & c.RESP:
                    await self.responses.put(c.Pdu(command_id, status, seq, body))
                elif command_id in (c.BIND_TRANSCEIVER, c.BIND_TRANSMITTER, c.BIND_RECEIVER):
                    writer.write(c.encode_pdu(command_id | c.RESP, seq, b"fake\x00"))
                elif command_id == c.SUBMIT_SM:
                    sm = c.ShortMessage.decode(body)
                    self.submits.append(sm)
                    st = self.answer(sm, len(self.submits))
                    mid = f"id{len(self.submits)}".encode() + b"\x00" if st == 0 else b""
                    writer.write(c.encode_pdu(c.SUBMIT_SM | c.RESP, seq, mid, st))
                elif command_id in (c.ENQUIRE_LINK, c.UNBIND):
                    writer.write(c.encode_pdu(command_id | c.RESP, seq))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def deliver(self, sm: c.ShortMessage, seq: int) -> None:
        assert self.writer is not None
        self.writer.write(c.encode_pdu(c.DELIVER_SM, seq, sm.encode()))


def part_number(sm: c.ShortMessage) -> int:
    concat, _ = c.split_udh(sm.short_message)
    return concat.seq if concat else 1


@asynccontextmanager
async def fake(answer: Callable[[c.ShortMessage, int], int]) -> AsyncIterator[FakeSmsc]:
    smsc = FakeSmsc(answer)
    await smsc.start()
    try:
        yield smsc
    finally:
        await smsc.stop()


async def test_part_one_refused_sends_nothing_more() -> None:
    async with fake(lambda sm, n: 0x0B) as smsc, gateway(smsc.port) as gw:
        (outcome,) = await gw.submit_many([message(LONG_GSM)])
    assert isinstance(outcome, Refused) and (outcome.code, outcome.retriable) == ("ESME_RINVDSTADR", False)
    assert len(smsc.submits) == 1


async def test_a_refused_middle_part_fails_the_message_without_resending_the_others() -> None:
    async with fake(lambda sm, n: 0x0B if part_number(sm) == 2 else 0) as smsc, gateway(smsc.port) as gw:
        (outcome,) = await gw.submit_many([message(LONG_GSM)])
    assert isinstance(outcome, Refused) and (outcome.code, outcome.retriable) == ("partially_submitted", False)
    assert "2 of 3 parts accepted" in outcome.message and "ESME_RINVDSTADR" in outcome.message
    assert sorted(part_number(sm) for sm in smsc.submits) == [1, 2, 3]  # nothing sent twice


async def test_a_throttled_part_is_sent_again_with_the_same_reference() -> None:
    throttled: list[int] = []

    def answer(sm: c.ShortMessage, n: int) -> int:
        if part_number(sm) == 3 and not throttled:
            throttled.append(n)
            return 0x58
        return 0

    async with fake(answer) as smsc, gateway(smsc.port, throttle_pause_s=0.05) as gw:
        (outcome,) = await gw.submit_many([message(LONG_GSM)])
    assert isinstance(outcome, Submitted) and len(outcome.part_ids) == 3 and throttled
    headers = {sm.short_message[:6] for sm in smsc.submits if part_number(sm) == 3}
    assert len(headers) == 1 and len(smsc.submits) == 4  # part 3 twice, same UDH (reference, total, number)


async def test_deliver_sm_resp_waits_for_the_sink() -> None:
    release = asyncio.Event()

    class SlowSink(ListSink):
        async def receipts(self, items: list[DeliveryReceipt]) -> None:
            await release.wait()
            await super().receipts(items)

    sink = SlowSink()
    receipt = c.ShortMessage("34600000001", "Herald", b"id:abc sub:001 dlvrd:001 stat:DELIVRD err:000", esm_class=4)
    async with fake(lambda sm, n: 0) as smsc, gateway(smsc.port, sink) as gw:
        smsc.deliver(receipt, 77)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(smsc.responses.get(), 0.5)  # not acknowledged while the sink works
        release.set()
        resp = await asyncio.wait_for(smsc.responses.get(), 2)
        assert (resp.command_id, resp.seq, resp.status) == (c.DELIVER_SM | c.RESP, 77, 0)
        assert [r.gateway_message_id for r in sink.receipts_got] == ["abc"]
        assert gw.stats["binds"] == 1


async def test_sink_failure_answers_a_temporary_error() -> None:
    sink = FlakySink(failures=1)
    receipt = c.ShortMessage("34600000001", "Herald", b"id:abc stat:DELIVRD", esm_class=4)
    async with fake(lambda sm, n: 0) as smsc, gateway(smsc.port, sink):
        smsc.deliver(receipt, 5)
        first = await asyncio.wait_for(smsc.responses.get(), 2)
        smsc.deliver(receipt, 6)  # the SMSC tries again
        second = await asyncio.wait_for(smsc.responses.get(), 2)
    assert (first.seq, first.status) == (5, c.ESME_RX_T_APPN)
    assert (second.seq, second.status) == (6, 0)
    assert [r.gateway_message_id for r in sink.receipts_got] == ["abc"]


async def test_an_over_long_pdu_is_skipped_with_a_generic_nack_and_the_bind_kept() -> None:
    sink = ListSink()
    receipt = c.ShortMessage("34600000001", "Herald", b"id:xyz stat:DELIVRD", esm_class=4)
    async with fake(lambda sm, n: 0) as smsc, gateway(smsc.port, sink) as gw:
        assert smsc.writer is not None
        smsc.writer.write(c.encode_pdu(c.DELIVER_SM, 9, b"\x00" * (c.MAX_PDU + 100)))  # framed, too long to be legal
        nack = await asyncio.wait_for(smsc.responses.get(), 5)
        assert (nack.command_id, nack.seq, nack.status) == (c.GENERIC_NACK, 9, 0x02)  # ESME_RINVCMDLEN
        smsc.deliver(receipt, 10)  # the next PDU is read as usual, on the same bind
        resp = await asyncio.wait_for(smsc.responses.get(), 5)
        assert (resp.command_id, resp.seq, resp.status) == (c.DELIVER_SM | c.RESP, 10, 0)
        assert gw.stats["binds"] == 1 and gw.stats["reconnects"] == 0
    assert [r.gateway_message_id for r in sink.receipts_got] == ["xyz"]


async def test_mo_parts_past_the_reassembly_bound_are_answered_queue_full() -> None:
    sink = ListSink()

    def part(ref: int, seq: int) -> c.ShortMessage:
        return c.ShortMessage("34600000001", "12345", c.udh_concat(ref, 2, seq) + b"x" * 150, esm_class=c.ESM_UDHI)

    async with fake(lambda sm, n: 0) as smsc, gateway(smsc.port, sink, mo_reassembly_max_bytes=1024) as gw:
        answers = []
        for ref in range(8):  # 8 first parts of 150 octets: the 7th would pass 1,024 bytes
            smsc.deliver(part(ref, 1), 100 + ref)
            answers.append((await asyncio.wait_for(smsc.responses.get(), 5)).status)
        assert answers == [0] * 6 + [c.ESME_RMSGQFUL] * 2
        smsc.deliver(part(0, 2), 200)  # completing a message frees its bytes
        assert (await asyncio.wait_for(smsc.responses.get(), 5)).status == 0
        await sink.wait(lambda: len(sink.inbound_got) == 1)
        smsc.deliver(part(6, 1), 201)  # the SMSC sends a refused part again later: now it fits
        assert (await asyncio.wait_for(smsc.responses.get(), 5)).status == 0
        assert gw.stats["reconnects"] == 0
    assert sink.inbound_got[0].body == "x" * 300


async def test_registration_ids_go_in_the_configured_tlvs(sim: Sim) -> None:
    """A message's carrier registration ids (docs/senders.md) reach the SMSC in the TLVs the
    gateway's registration_tlvs name, on every part; ids the gateway names no tag for stay out."""
    dlt = message("Your OTP is 1234", to="+919812345678", sender="AcmeIN").model_copy(
        update={"country": "IN", "carrier_ids": {"dlt_entity_id": "1101000000001"}})
    ten_dlc = message(LONG_GSM, to="+12025550143", sender="+12015550123").model_copy(
        update={"country": "US", "carrier_ids": {"ten_dlc_brand_id": "BRAND1", "ten_dlc_campaign_id": "CAMP1"}})
    plain = message("no registration")
    tlvs = {"dlt_entity_id": 0x1401, "ten_dlc_campaign_id": 0x1402}  # no tag for the brand id
    async with gateway(sim.smpp_port, registration_tlvs=tlvs) as gw:
        outcomes = await gw.submit_many([dlt, ten_dlc, plain])
    assert all(isinstance(o, Submitted) for o in outcomes), outcomes
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(dlt.message_id))["messages"]
    assert (seen["from"], seen["vendor_tlvs"]) == ("AcmeIN", {"0x1401": "1101000000001"})
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(ten_dlc.message_id))["messages"]
    assert seen["vendor_tlvs"] == {"0x1402": "CAMP1"} and seen["segments"] > 1
    (seen,) = sim.get("/stats/smpp/messages", client_ref=str(plain.message_id))["messages"]
    assert seen["vendor_tlvs"] == {}
