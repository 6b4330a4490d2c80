"""HTTP providers for real: the Twilio adapter against the simulator's Twilio face (a process),
its signed status callbacks reaching ingest served by uvicorn on a real port and landing on the
receipts topic, the reconciler's lookup by listing, and the generic webhook adapter against a
small aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr, ValidationError

from herald_tools.stack import Ports, Stack, free_port
from services.dispatcher.gateways import build_gateway
from services.dispatcher.gateways.base import LookupUnsupported, Refused, Submitted, Unknown
from services.dispatcher.gateways.twilio import LookupPending, TwilioConfig, TwilioGateway
from services.dispatcher.gateways.webhook import WebhookConfig, WebhookGateway
from services.dispatcher.handlers import OutboundHandler, Reconciler, Sender
from services.dispatcher.repository import ClaimRepository
from services.dispatcher.settings import DispatcherSettings
from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from shared.contracts import DeliveryReceiptEvent, MessageOutbound, MessageOutboundEvent, derived_event_id, utcnow
from shared.kafka import Incoming, Outgoing, Publisher, make_producer
from shared.providers.twilio import compute_signature
from shared.signatures import SignatureError, verify
from shared.statuses import ReceiptStatus, Status
from shared.topics import RECEIPTS
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

ACCOUNT = "AC" + "7" * 32
TOKEN = "twilio-test-token"
FROM = "+15005550006"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("sim"))
    stack.start("simulator", extra_env={
        "HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none",
        "HERALD_SIM_TWILIO_ACCOUNT_SID": ACCOUNT,
        "HERALD_SIM_TWILIO_AUTH_TOKEN": TOKEN,
        "HERALD_SIM_RECEIPT_DELAY_MIN_MS": "20",
        "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "80",
    })
    stack.wait_ready(30)
    yield stack
    stack.stop()


def control(sim: Stack, body: dict[str, Any]) -> None:
    httpx.post(f"http://127.0.0.1:{sim.ports.simulator_control}/control", json=body).raise_for_status()


def twilio_stats(sim: Stack) -> dict[str, Any]:
    """The Twilio face's counters, in the simulator's /stats."""
    r = httpx.get(f"http://127.0.0.1:{sim.ports.simulator_control}/stats")
    r.raise_for_status()
    return r.json()["twilio"]


def client_refs(sim: Stack) -> dict[str, int]:
    """Submissions per client_ref in the simulator's core store (every face)."""
    r = httpx.get(f"http://127.0.0.1:{sim.ports.simulator_control}/stats/client_refs")
    r.raise_for_status()
    return r.json()["client_refs"]


@pytest.fixture(scope="module")
async def ingest(env, pool) -> AsyncIterator[str]:
    """ingest's whole app (create_app), served by uvicorn on a free loopback port; its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = IngestSettings(
        public_url=base,
        twilio_auth_tokens={"tw": SecretStr(TOKEN), "tw-wrong": SecretStr("not-the-account-token")},
    )
    producer = make_producer(settings, "test-ingest-twilio")
    await producer.start()
    repository = IngestRepository(pool)

    app = create_app(settings, pool, Acceptor(repository, settings), Publisher(producer, env.prefix, "ingest"), repository)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    yield base
    server.should_exit = True
    await task
    await producer.stop()


def twilio(sim: Stack, *, name: str = "tw", callback: str | None = None, **overrides: Any) -> TwilioGateway:
    config = TwilioConfig(name=name, account_sid=ACCOUNT, auth_token=SecretStr(overrides.pop("token", TOKEN)),
                          base_url=sim.url("simulator"), from_number=FROM, status_callback_url=callback,
                          timeout_s=overrides.pop("timeout_s", 5.0), **overrides)
    gateway = build_gateway(config)
    assert isinstance(gateway, TwilioGateway)
    return gateway


def message(to: str | None = None, body: str | None = None, released_ago_s: float = 0.0) -> MessageOutbound:
    now = utcnow()
    return MessageOutbound(
        message_id=uuid.uuid4(), to=to or f"+3460{uuid.uuid4().int % 10**7:07d}", country="ES",
        body=body or f"Your code is {uuid.uuid4().int % 10**6:06d}", type="transactional", encoding="GSM-7",
        segments=1, source="api", accepted_at=now - timedelta(seconds=released_ago_s),
        released_at=now - timedelta(seconds=released_ago_s),
    )


async def wait_until(predicate, timeout_s: float = 10.0, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every_s)


# --- Twilio: submissions -------------------------------------------------------------------------


async def test_each_message_is_one_twilio_message(sim: Stack) -> None:
    gateway = twilio(sim, concurrency=4)
    messages = [message() for _ in range(40)]
    try:
        outcomes = await gateway.submit_many(messages)
    finally:
        await gateway.close()
    assert all(isinstance(o, Submitted) and o.gateway_message_id.startswith("SM") for o in outcomes), outcomes
    assert len({o.gateway_message_id for o in outcomes}) == 40  # type: ignore[union-attr]
    refs = client_refs(sim)
    # Without a StatusCallback the simulator identifies a message by To + Body.
    assert all(refs.get(r, 0) == 0 for r in (str(m.message_id) for m in messages))
    assert sum(1 for r in refs if r.startswith("to+body:")) >= 40
    listed = httpx.get(f"{sim.url('simulator')}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
                       params={"To": messages[0].to}, auth=(ACCOUNT, TOKEN)).json()["messages"]
    assert [(m["sid"], m["body"], m["from"]) for m in listed] == [(outcomes[0].gateway_message_id, messages[0].body, FROM)]  # type: ignore[union-attr]


def submissions(sim: Stack, client_ref: str) -> list[dict[str, Any]]:
    """What the simulator recorded for one client_ref (every face), with the validity it got."""
    r = httpx.get(f"http://127.0.0.1:{sim.ports.simulator_control}/stats/submissions", params={"client_ref": client_ref})
    r.raise_for_status()
    return r.json()["messages"]


async def test_validity_period_is_the_time_left_clamped_to_twilios_range(sim: Stack) -> None:
    """ValidityPeriod: what is left of the message's validity at submission (not the original),
    at most 36,000 s; a message without validity sends none (Twilio's default)."""
    gateway = twilio(sim)  # no StatusCallback: the simulator names each message by To + Body
    now = utcnow()
    otp = message().model_copy(update={"accepted_at": now - timedelta(seconds=100),
                                       "expires_at": now + timedelta(seconds=200)})
    far = message().model_copy(update={"expires_at": now + timedelta(hours=20)})
    plain = message()
    try:
        outcomes = await gateway.submit_many([otp, far, plain])
    finally:
        await gateway.close()
    assert all(isinstance(o, Submitted) for o in outcomes), outcomes

    def ref(m: MessageOutbound) -> str:
        return "to+body:" + hashlib.sha256(f"{m.to}\n{m.body}".encode()).hexdigest()[:32]

    (got,) = submissions(sim, ref(otp))
    assert 185 <= got["validity_s"] <= 199, got
    (got,) = submissions(sim, ref(far))
    assert got["validity_s"] == 36_000, got
    (got,) = submissions(sim, ref(plain))
    assert "validity_s" not in got, got


async def outcome_in_mode(sim: Stack, mode: dict[str, Any], **gateway: Any) -> Any:
    """The outcome of one message sent to the simulator's Twilio face while it behaves as ``mode``."""
    sender = twilio(sim, **gateway)
    control(sim, mode)
    try:
        (outcome,) = await sender.submit_many([message()])
    finally:
        control(sim, {"mode": "normal"})
        await sender.close()
    return outcome


@pytest.mark.parametrize(
    ("mode", "code", "retriable"),
    [
        ({"mode": "fail", "status": 503}, "20503", True),  # the simulator's 503 carries Retry-After
        ({"mode": "fail", "status": 429}, "20429", True),
        ({"mode": "fail", "status": 400}, "20400", False),
        ({"mode": "refuse"}, "connection_error", True),
    ],
)
async def test_failure_modes_become_refusals(sim: Stack, mode: dict[str, Any], code: str, retriable: bool) -> None:
    outcome = await outcome_in_mode(sim, mode)
    assert isinstance(outcome, Refused), outcome
    assert (outcome.code, outcome.retriable) == (code, retriable)


@pytest.mark.parametrize(
    "mode",
    [{"mode": "fail", "status": 500}, {"mode": "fail", "status": 502}, {"mode": "fail", "status": 504},
     {"mode": "fail_after_accept", "status": 504}],
)
async def test_server_errors_after_sending_are_unknown(sim: Stack, mode: dict[str, Any]) -> None:
    """Twilio may have created the message before the error: looked up, never resent blindly."""
    outcome = await outcome_in_mode(sim, mode)
    assert isinstance(outcome, Unknown), outcome


async def test_permanent_refusals(sim: Stack) -> None:
    gateway = twilio(sim)
    wrong = twilio(sim, token="wrong-token")
    try:
        (unreachable,) = await gateway.submit_many([message(to="+99912345678")])
        (unauthorized,) = await wrong.submit_many([message()])
    finally:
        await gateway.close()
        await wrong.close()
    assert isinstance(unreachable, Refused) and (unreachable.code, unreachable.retriable) == ("21614", False)
    assert isinstance(unauthorized, Refused) and (unauthorized.code, unauthorized.retriable) == ("20003", False)


async def test_answer_too_late_is_unknown(sim: Stack) -> None:
    outcome = await outcome_in_mode(sim, {"mode": "slow", "delay_ms": 800}, timeout_s=0.3)
    assert isinstance(outcome, Unknown), outcome


async def test_credentials_stay_out_of_reprs_and_logs(sim: Stack, caplog) -> None:
    gateway = twilio(sim)
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    try:
        await gateway.submit_many([message()])
        with pytest.raises(LookupPending):
            await gateway.lookup(message())
    finally:
        await gateway.close()
    assert TOKEN not in repr(gateway) and TOKEN not in repr(gateway.config) and TOKEN not in str(gateway.config)
    assert caplog.records, "expected httpx/httpcore debug records"
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert TOKEN not in text and basic not in text


# --- Twilio: lookup (what the reconciler asks) ---------------------------------------------------


async def test_lookup_is_positive_only(sim: Stack) -> None:
    control(sim, {"receipt_delay_ms": [1000, 1000]})
    sender = twilio(sim)
    try:
        sent = message()
        (outcome,) = await sender.submit_many([sent])
    finally:
        control(sim, {"receipt_delay_ms": [20, 80]})
        await sender.close()
    assert isinstance(outcome, Submitted)
    fresh = twilio(sim)  # another instance: it does not know the sid
    try:
        with pytest.raises(LookupPending):  # queued at Twilio: no date_sent, not listed yet
            await fresh.lookup(sent)
        await asyncio.sleep(1.3)
        assert await fresh.lookup(sent) == outcome.gateway_message_id
        never = message()  # Twilio never got it: asked again later, never "not received"
        with pytest.raises(LookupPending):
            await fresh.lookup(never)
        short = twilio(sim, lookup_horizon_s=1.0)
        with pytest.raises(LookupUnsupported):  # ... until the horizon after release
            await short.lookup(message(released_ago_s=5))
        await short.close()
    finally:
        await fresh.close()


async def test_lookup_refuses_to_guess_between_identical_messages(sim: Stack) -> None:
    to, body = message().to, "Your parcel is on its way"
    first, second, third = message(to, body), message(to, body), message(to, body)
    gateway = twilio(sim)
    try:
        (a,) = await gateway.submit_many([first])
        assert isinstance(a, Submitted)
        await asyncio.sleep(0.3)  # sent
        # This instance knows the only listed sid belongs to `first`: `second` is not listed.
        with pytest.raises(LookupPending):
            await gateway.lookup(second)
        assert await gateway.lookup(first) == a.gateway_message_id
        (b,) = await gateway.submit_many([second])
        await asyncio.sleep(0.3)
    finally:
        await gateway.close()
    fresh = twilio(sim)
    try:
        with pytest.raises(LookupUnsupported, match="cannot tell which"):
            await fresh.lookup(third)
    finally:
        await fresh.close()


async def test_lost_answer_is_looked_up_not_resent(pool, sim: Stack) -> None:
    config = TwilioConfig(name="tw", account_sid=ACCOUNT, auth_token=SecretStr(TOKEN), base_url=sim.url("simulator"),
                          from_number=FROM, status_callback_url="http://127.0.0.1:9/never", timeout_s=0.5, rate_per_s=5000)
    settings = DispatcherSettings(gateways=[config], instance_id="test", retry_base_s=0.05, retry_cap_s=0.2)
    gateways = {"tw": build_gateway(settings.gateways[0])}
    claims = ClaimRepository(pool)
    batch = [Incoming(None, MessageOutboundEvent(tenant="acme", payload=message()), None) for _ in range(3)]  # type: ignore[arg-type]
    ids = [i.event.payload.message_id for i in batch]
    control(sim, {"mode": "slow", "delay_ms": 1500})  # Twilio gets them but answers too late
    try:
        out = await OutboundHandler(claims, Sender(gateways, settings), settings)(batch)
    finally:
        control(sim, {"mode": "normal"})
    assert out == []
    await wait_until(lambda: all(client_refs(sim).get(str(i)) == 1 for i in ids))
    await asyncio.sleep(0.3)  # sent, so listed
    await pool.execute("UPDATE dispatch_claims SET lease_until = now() - interval '1 second' WHERE message_id = ANY($1::uuid[])", ids)
    publisher = ListPublisher()
    await Reconciler(claims, Sender(gateways, settings), publisher, settings).reconcile_once()  # type: ignore[arg-type]
    await gateways["tw"].close()
    refs = client_refs(sim)
    assert [refs.get(str(i)) for i in ids] == [1, 1, 1]  # identified by ?ref=<message id>: none sent twice
    statuses = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert set(statuses) == set(ids)
    assert all(s.status is Status.SUBMITTED and s.gateway_message_id.startswith("SM") for s in statuses.values())


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    async def publish(self, items: list[Outgoing]) -> None:
        self.items.extend(items)


# --- Twilio: status callbacks into ingest --------------------------------------------------------


async def test_status_callbacks_land_on_the_receipts_topic(env, sim: Stack, ingest: str) -> None:
    gateway = twilio(sim, callback=f"{ingest}/v1/callbacks/twilio/tw/status")
    expected: dict[str, tuple[MessageOutbound, str]] = {}
    stats_url = f"http://127.0.0.1:{sim.ports.simulator_control}/stats"
    sent_before = httpx.get(stats_url).json()["sent_by_outcome"]
    try:
        for outcome in ("delivered", "undelivered", "failed"):
            control(sim, {"outcome_rates": {o: float(o == outcome) for o in ("delivered", "undelivered", "failed")}})
            messages = [message() for _ in range(3)]
            for m, result in zip(messages, await gateway.submit_many(messages), strict=True):
                assert isinstance(result, Submitted), result
                expected[result.gateway_message_id] = (m, outcome)
    finally:
        control(sim, {"outcome_rates": {"delivered": 0.9, "undelivered": 0.07, "failed": 0.03}})
        await gateway.close()
    finals = {"delivered": ReceiptStatus.DELIVERED, "undelivered": ReceiptStatus.UNDELIVERED, "failed": ReceiptStatus.FAILED}

    def receipts(records: list[Any]) -> dict[str, list[DeliveryReceiptEvent]]:
        out: dict[str, list[DeliveryReceiptEvent]] = {}
        for r in records:
            if r.key is not None and r.key.decode() in expected:
                out.setdefault(r.key.decode(), []).append(DeliveryReceiptEvent.model_validate_json(r.value))
        return out

    def complete(records: list[Any]) -> bool:
        got = receipts(records)
        return all(any(e.payload.status is finals[o] for e in got.get(sid, [])) for sid, (_, o) in expected.items())

    records = await read_topic(env.bootstrap, RECEIPTS.name(env.prefix), complete, timeout_s=30)
    for sid, events in receipts(records).items():
        m, outcome = expected[sid]
        by_status = {e.payload.status: e for e in events}
        want = {ReceiptStatus.FAILED} if outcome == "failed" else {ReceiptStatus.ENROUTE, finals[outcome]}
        assert set(by_status) == want, (outcome, [e.payload for e in events])
        for e in events:
            r = e.payload
            assert (r.gateway, r.gateway_message_id, r.client_ref) == ("tw", sid, str(m.message_id))
            assert e.event_id == derived_event_id("tw", sid, r.status, r.error_code)
        final = by_status[finals[outcome]].payload
        assert final.raw_status == outcome
        assert final.error_code == {"delivered": None, "undelivered": "30003", "failed": "30008"}[outcome]
        assert (final.done_at is not None) == (outcome != "failed")
    callbacks = twilio_stats(sim)["callbacks"]
    assert (callbacks["refused"], callbacks["abandoned"]) == (0, 0)

    def sent_delta() -> dict[str, int]:
        now = httpx.get(stats_url).json()["sent_by_outcome"]
        return {k: now[k] - sent_before[k] for k in now}

    # Acknowledged final callbacks count as sent receipts, as the simulator's HTTP receipts do.
    await wait_until(lambda: sent_delta() == {"delivered": 3, "undelivered": 3, "failed": 3}, timeout_s=5)
    # Recorded in the simulator's core store like /v1/sms submissions, under Herald's id.
    for sid, (m, outcome) in expected.items():
        found = httpx.get(f"{sim.url('simulator')}/v1/sms", params={"client_ref": str(m.message_id)},
                          headers={"Authorization": "Bearer sim-token"}).json()["messages"]
        assert [(f["id"], f["status"]) for f in found] == [(sid, outcome)]


async def test_a_stats_reset_forgets_twilio_messages_too(sim: Stack) -> None:
    gateway = twilio(sim)
    m = message()
    try:
        (outcome,) = await gateway.submit_many([m])
    finally:
        await gateway.close()
    assert isinstance(outcome, Submitted)
    listing = f"{sim.url('simulator')}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert len(httpx.get(listing, params={"To": m.to}, auth=(ACCOUNT, TOKEN)).json()["messages"]) == 1
    stats = httpx.post(f"http://127.0.0.1:{sim.ports.simulator_control}/stats/reset").json()
    assert stats["submissions"] == 0 and stats["twilio"]["messages"] == 0
    assert httpx.get(listing, params={"To": m.to}, auth=(ACCOUNT, TOKEN)).json()["messages"] == []


async def test_wrongly_signed_callbacks_are_refused(env, sim: Stack, ingest: str) -> None:
    path = "/v1/callbacks/twilio/tw/status"
    params = [("MessageSid", "SM" + "c" * 32), ("MessageStatus", "delivered")]
    async with httpx.AsyncClient(base_url=ingest) as client:
        good = compute_signature(TOKEN, ingest + path, params)
        r = await client.post(path + "?ref=x", data=dict(params), headers={"X-Twilio-Signature": good})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_invalid")  # signed without the query
        r = await client.post(path, data=dict(params), headers={"X-Twilio-Signature": good})
        assert r.status_code == 204  # the same, as signed
        r = await client.post(path, data=dict(params))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_missing")
        # An unknown gateway is answered as a wrong signature: the answer names no gateway.
        r = await client.post("/v1/callbacks/twilio/nope/status", data=dict(params), headers={"X-Twilio-Signature": good})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "signature_invalid")
    # The simulator signs with the account token; ingest holds another one for "tw-wrong".
    before = twilio_stats(sim)["callbacks"]["refused"]
    gateway = twilio(sim, name="tw-wrong", callback=f"{ingest}/v1/callbacks/twilio/tw-wrong/status")
    try:
        (outcome,) = await gateway.submit_many([message()])
    finally:
        await gateway.close()
    assert isinstance(outcome, Submitted)
    await wait_until(lambda: twilio_stats(sim)["callbacks"]["refused"] >= before + 1, timeout_s=10)


# --- Twilio: answers the simulator cannot produce (mock transport) -------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"code": 21611, "message": "queue full", "status": 400}, Refused("21611", "queue full", True)),
        (400, {"code": 30001, "message": "Queue overflow", "status": 400}, Refused("30001", "Queue overflow", True)),
        (400, {"code": 21211, "message": "Invalid 'To'", "status": 400}, Refused("21211", "Invalid 'To'", False)),
        # a proxy's 502 may come after Twilio created the message: unknown, to be looked up
        (502, "<html>bad gateway</html>", Unknown("HTTP 502 after sending (http_502: Bad Gateway)")),
        (201, {"status": "queued"}, Unknown("Twilio answered 201 without a message sid")),
        (201, {"sid": "SM" + "d" * 32, "status": "queued"}, Submitted("SM" + "d" * 32)),
    ],
)
async def test_twilio_answers(status: int, body: Any, expected: Any) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    config = TwilioConfig(name="tw", account_sid=ACCOUNT, auth_token=SecretStr(TOKEN), from_number=FROM,
                          messaging_service_sid="MG" + "e" * 32, status_callback_url="https://h.example/cb?x=1")
    gateway = TwilioGateway(config, transport=httpx.MockTransport(handler))
    m = message()
    try:
        (outcome,) = await gateway.submit_many([m])
    finally:
        await gateway.close()
    assert outcome == expected
    (request,) = seen
    assert str(request.url) == f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {"To": m.to, "Body": m.body, "From": FROM, "MessagingServiceSid": "MG" + "e" * 32,
                    "StatusCallback": f"https://h.example/cb?x=1&ref={m.message_id}"}


def test_twilio_config_needs_a_sender() -> None:
    with pytest.raises(ValidationError, match="from_number or messaging_service_sid"):
        TwilioConfig(name="tw", account_sid=ACCOUNT, auth_token=SecretStr(TOKEN))
    with pytest.raises(ValidationError):
        TwilioConfig(name="tw", account_sid="AC123", auth_token=SecretStr(TOKEN), from_number=FROM)


# --- generic webhook provider ---------------------------------------------------------------------


class Provider:
    """A tiny JSON provider: records each request and answers what the test asks for."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.status = 202
        self.answer: Any = None
        self.delay_s = 0.0
        self.headers: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        app = web.Application()
        app.router.add_route("*", "/send", self.send)
        app.router.add_get("/lookup/{reference}", self.lookup)
        self.server = TestServer(app, host="127.0.0.1")

    async def send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append((request.method, dict(request.headers), raw))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.answer is not None:
            return web.json_response(self.answer, status=self.status, headers=self.headers)
        pid = f"wh-{len(self.requests)}"
        self.ids[json.loads(raw)["client_ref"]] = pid
        return web.json_response({"data": {"id": pid, "state": "queued"}}, status=self.status)

    async def lookup(self, request: web.Request) -> web.Response:
        ref = request.match_info["reference"]
        if ref == "boom":
            return web.json_response({"error": {"code": "oops", "message": "down"}}, status=500)
        if ref not in self.ids:
            return web.json_response({"error": {"code": "not_found"}}, status=404)
        return web.json_response({"data": {"id": self.ids[ref]}})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    await p.server.start_server()
    yield p
    await p.server.close()


def webhook(provider: Provider, **overrides: Any) -> WebhookGateway:
    config = WebhookConfig.model_validate({
        "kind": "webhook", "name": "wh", "url": f"{provider.url}/send", "id_path": "data.id",
        "template": {"to": "recipient.number", "sender": "originator", "body": "content.text",
                     "reference": "client_ref", "segments": "parts"},
        "static_fields": {"channel": "sms", "recipient": {"type": "mobile"}},
        "headers": {"X-Account": "acct-9"}, "bearer_token": "bearer-secret", "signing_secret": "hmac-secret",
        "timeout_s": 2.0, **overrides,
    })
    gateway = build_gateway(config)
    assert isinstance(gateway, WebhookGateway)
    return gateway


async def test_webhook_maps_the_body_signs_it_and_reads_the_id(provider: Provider) -> None:
    gateway = webhook(provider)
    m = message().model_copy(update={"sender": "Herald", "segments": 2})
    try:
        (outcome,) = await gateway.submit_many([m])
    finally:
        await gateway.close()
    assert outcome == Submitted("wh-1")
    ((method, headers, raw),) = provider.requests
    assert method == "POST"
    assert json.loads(raw) == {
        "channel": "sms",
        "recipient": {"type": "mobile", "number": m.to},
        "originator": "Herald",
        "content": {"text": m.body},
        "client_ref": str(m.message_id),
        "parts": 2,
    }
    assert headers["Authorization"] == "Bearer bearer-secret"
    assert headers["X-Account"] == "acct-9"
    assert headers["Content-Type"] == "application/json"
    verify(b"hmac-secret", raw, headers["X-Herald-Signature"], now=time.time())  # raises if wrong
    with pytest.raises(SignatureError):
        verify(b"another-secret", raw, headers["X-Herald-Signature"], now=time.time())
    with pytest.raises(SignatureError):
        verify(b"hmac-secret", raw.replace(b"Herald", b"Heralt"), headers["X-Herald-Signature"], now=time.time())
    for secret in ("bearer-secret", "hmac-secret", "acct-9"):
        assert secret not in repr(gateway) and secret not in repr(gateway.config)


async def test_webhook_sends_the_validity_left_only_where_its_template_names_it(provider: Provider) -> None:
    m = message().model_copy(update={"expires_at": utcnow() + timedelta(seconds=120)})
    plain = message()
    named = webhook(provider, template={"to": "to", "body": "text", "reference": "client_ref", "validity": "ttl.seconds"})
    unnamed = webhook(provider)  # the template has no validity field: never sent
    try:
        outcomes = [*await named.submit_many([m, plain]), *await unnamed.submit_many([m])]
    finally:
        await named.close()
        await unnamed.close()
    assert all(isinstance(o, Submitted) for o in outcomes), outcomes
    first, second, third = (json.loads(raw) for _, _, raw in provider.requests)
    assert 110 <= first["ttl"]["seconds"] <= 119, first
    assert "ttl" not in second and "ttl" not in third and "validity" not in json.dumps(third)


@pytest.mark.parametrize(
    ("status", "headers", "overrides", "expected"),
    [(503, {"Retry-After": "2"}, {}, "retry"), (429, {}, {}, "retry"), (400, {}, {}, "refused"), (409, {}, {}, "refused"),
     (409, {}, {"retriable_statuses": [409]}, "retry"), (503, {}, {}, "unknown"), (500, {}, {}, "unknown"),
     (502, {}, {}, "unknown"), (504, {}, {}, "unknown"), (408, {}, {}, "unknown"),
     (503, {"Retry-After": "2"}, {"retriable_statuses": []}, "retry")],
)
async def test_webhook_retriable_statuses(
    provider: Provider, status: int, headers: dict[str, str], overrides: dict[str, Any], expected: str
) -> None:
    """After the request went out only 429 (or a configured status) and 503 + Retry-After are
    retried; 408 and other 5xx may follow an accepted message: unknown, to be looked up."""
    provider.status, provider.answer, provider.headers = status, {"error": {"code": "nope", "message": "no"}}, headers
    gateway = webhook(provider, **overrides)
    try:
        (outcome,) = await gateway.submit_many([message()])
    finally:
        await gateway.close()
    if expected == "unknown":
        assert isinstance(outcome, Unknown) and f"HTTP {status}" in outcome.message, outcome
    else:
        assert outcome == Refused("nope", "no", expected == "retry")


async def test_webhook_unclear_answers(provider: Provider) -> None:
    provider.answer = {"data": {"state": "queued"}}  # 2xx without an id: it may have been taken
    gateway = webhook(provider, method="PUT")
    try:
        (no_id,) = await gateway.submit_many([message()])
        provider.answer, provider.delay_s = None, 3.0  # answers after the 2 s timeout
        (late,) = await gateway.submit_many([message()])
    finally:
        await gateway.close()
    assert isinstance(no_id, Unknown) and "data.id" in no_id.message
    assert isinstance(late, Unknown)
    assert [r[0] for r in provider.requests] == ["PUT", "PUT"]
    closed = WebhookGateway(WebhookConfig(name="wh", url=f"http://127.0.0.1:{free_port()}/send", timeout_s=1))
    try:
        (refused,) = await closed.submit_many([message()])
    finally:
        await closed.close()
    assert isinstance(refused, Refused) and (refused.code, refused.retriable) == ("connection_error", True)


async def test_webhook_lookup(provider: Provider) -> None:
    without = webhook(provider)
    with_lookup = webhook(provider, lookup_url=f"{provider.url}/lookup/{{reference}}")
    m = message()
    try:
        with pytest.raises(LookupUnsupported):
            await without.lookup(m)
        assert await with_lookup.lookup(m) is None  # 404: never received
        (outcome,) = await with_lookup.submit_many([m])
        assert isinstance(outcome, Submitted)
        assert await with_lookup.lookup(m) == outcome.gateway_message_id
        boom = m.model_copy(update={"message_id": uuid.UUID(int=0)})
        broken = webhook(provider, lookup_url=f"{provider.url}/lookup/boom?ref={{reference}}")
        with pytest.raises(RuntimeError, match="500"):  # the reconciler asks again later
            await broken.lookup(boom)
        await broken.close()
    finally:
        await without.close()
        await with_lookup.close()


def test_webhook_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="already hold"):
        WebhookConfig(name="wh", url="https://p.example/send", static_fields={"to": "x"})
    with pytest.raises(ValidationError, match="cannot also hold"):
        WebhookConfig.model_validate({"name": "wh", "url": "https://p.example/send",
                                      "template": {"to": "message", "body": "message.text"}})
    with pytest.raises(ValidationError, match="reference"):
        WebhookConfig(name="wh", url="https://p.example/send", lookup_url="https://p.example/{id}")
    with pytest.raises(ValidationError):
        WebhookConfig(name="wh", url="ftp://p.example/send")
