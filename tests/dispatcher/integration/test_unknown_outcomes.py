"""Submissions whose outcome is ambiguous, against real PostgreSQL and the simulator's HTTP and
SMPP faces run as a process: an HTTP 504 after the provider accepted is looked up, never sent
again; a lost submit_sm_resp the SMSC cannot be asked about ends ``unknown`` (not ``failed``);
where the SMSC answers query_sm the outcome is resolved; a graceful stop lets the submit_sm in
flight be answered; and reports keeps ``unknown`` apart, moving it on when a receipt comes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from herald_tools.stack import Ports, Stack, free_port
from services.dispatcher.gateways import build_gateway
from services.dispatcher.gateways.base import Submitted
from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.gateways.smpp import SmppConfig, SmppGateway
from services.dispatcher.gateways.webhook import WebhookConfig, WebhookTemplate
from services.dispatcher.handlers import OutboundHandler, Reconciler, Sender
from services.dispatcher.repository import ClaimRepository
from services.dispatcher.settings import DispatcherSettings
from services.reports.handlers import StatusHandler
from shared.contracts import (
    MessageOutbound,
    MessageOutboundEvent,
    utcnow,
)
from shared.kafka import Incoming, Outgoing
from shared.statuses import ReceiptStatus, Status
from tests import factories

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("sim-unknown"))
    stack.smpp_port = free_port()  # type: ignore[attr-defined]
    stack.start("simulator", extra_env={
        "HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none", "HERALD_SIM_SMPP_PORT": str(stack.smpp_port),  # type: ignore[attr-defined]
        "HERALD_SIM_RECEIPT_DELAY_MIN_MS": "20", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "100",
    })
    stack.wait_ready(30)
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def normal(sim: Stack) -> Iterator[None]:
    control(sim, {"mode": "normal"})
    yield
    control(sim, {"mode": "normal"})


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    async def publish(self, items: list[Outgoing]) -> None:
        self.items.extend(items)


def control(sim: Stack, body: dict) -> None:
    httpx.post(f"http://127.0.0.1:{sim.ports.simulator_control}/control", json=body, timeout=60).raise_for_status()


def sim_counts(sim: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{sim.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]


def smpp_ids(sim: Stack, ref: str) -> list[str]:
    r = httpx.get(f"http://127.0.0.1:{sim.ports.simulator_control}/stats/smpp/messages", params={"client_ref": ref}, timeout=30)
    r.raise_for_status()
    return [pid for m in r.json()["messages"] for pid in m["part_ids"]]


def herald_http(sim: Stack) -> HeraldHttpConfig:
    return HeraldHttpConfig(name="sim", url=sim.url("simulator"), api_token=SecretStr("sim-token"), rate_per_s=5000)


def webhook(sim: Stack) -> WebhookConfig:
    """The simulator's single-message API, driven as a generic webhook provider with a lookup."""
    base = sim.url("simulator")
    return WebhookConfig(
        name="sim", url=f"{base}/v1/sms", bearer_token=SecretStr("sim-token"), rate_per_s=5000,
        template=WebhookTemplate(reference="client_ref"), id_path="id",
        lookup_url=f"{base}/v1/sms?client_ref={{reference}}", lookup_id_path="messages.0.id",
    )


def smpp(sim: Stack, **overrides: Any) -> SmppConfig:
    values: dict[str, Any] = dict(
        name="smsc", host="127.0.0.1", port=sim.smpp_port, system_id="herald", password=SecretStr("sim-pass"),  # type: ignore[attr-defined]
        send_message_id_tlv=True, timeout_s=1.0, reconnect_min_s=0.1, reconnect_max_s=0.5, rate_per_s=5000,
    )
    return SmppConfig(**(values | overrides))


def settings_with(gateway: Any, **overrides: Any) -> DispatcherSettings:
    return DispatcherSettings(gateways=[gateway], instance_id=f"test-{uuid.uuid4().hex[:6]}", retry_base_s=0.05,
                              retry_cap_s=0.2, **overrides)


def outbound(n: int) -> list[Incoming]:
    items = []
    for _ in range(n):
        message = MessageOutbound(
            message_id=uuid.uuid4(), to=f"+3460{uuid.uuid4().int % 10**7:07d}", country="ES", body="hi", type="transactional",
            encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(), released_at=utcnow(),
        )
        items.append(Incoming(None, MessageOutboundEvent(tenant="acme", payload=message), None))  # type: ignore[arg-type]
    return items


async def only_these_are_stale(pool, ids: list[uuid.UUID]) -> None:
    """The session database may hold other tests' claims: keep the reconciler on ours."""
    await pool.execute(
        "UPDATE dispatch_claims SET lease_until = now() + interval '1 hour' WHERE state = 'claimed' AND message_id <> ALL($1::uuid[])",
        ids,
    )
    await pool.execute("UPDATE dispatch_claims SET lease_until = now() - interval '1 second' WHERE message_id = ANY($1::uuid[])", ids)


async def claim_states(pool, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await pool.fetch("SELECT message_id, state FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    return {r["message_id"]: r["state"] for r in rows}


# -- HTTP: a 504 after accepting ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["herald-http", "webhook"])
async def test_504_after_accepting_is_looked_up_not_sent_again(pool, sim: Stack, kind: str) -> None:
    config = herald_http(sim) if kind == "herald-http" else webhook(sim)
    settings = settings_with(config, retry_max_attempts=3)
    gateways = {"sim": build_gateway(config)}
    claims = ClaimRepository(pool)
    batch = outbound(4)
    ids = [i.event.payload.message_id for i in batch]
    control(sim, {"mode": "fail_after_accept", "status": 504})  # the provider takes them, the proxy answers 504
    try:
        out = await OutboundHandler(claims, Sender(gateways, settings), settings)(batch)
        counts = sim_counts(sim)
        assert [counts.get(str(i), 0) for i in ids] == [1, 1, 1, 1], "a message was sent again after a 504"
        assert out == []  # no status yet: neither failed nor retried, left to the reconciler
        assert set((await claim_states(pool, ids)).values()) == {"claimed"}
        await only_these_are_stale(pool, ids)
        publisher = ListPublisher()
        assert await Reconciler(claims, Sender(gateways, settings), publisher, settings).reconcile_once() == 4  # type: ignore[arg-type]
    finally:
        await gateways["sim"].close()
    counts = sim_counts(sim)
    assert [counts.get(str(i), 0) for i in ids] == [1, 1, 1, 1]
    statuses = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert {s.status for s in statuses.values()} == {Status.SUBMITTED}
    assert all(s.gateway_message_id for s in statuses.values())
    assert set((await claim_states(pool, ids)).values()) == {"submitted"}


async def test_503_with_retry_after_is_retried(pool, sim: Stack) -> None:
    """The one 5xx that promises nothing was done: retried at once (the simulator sends Retry-After)."""
    config = herald_http(sim)
    settings = settings_with(config, retry_max_attempts=2)
    gateways = {"sim": build_gateway(config)}
    control(sim, {"mode": "fail", "status": 503})
    try:
        out = await OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)(outbound(1))
    finally:
        await gateways["sim"].close()
    status = out[0].event.payload
    assert (status.status, status.reason_code, status.attempts) == (Status.FAILED, "retries_exhausted", 2)


# -- SMPP: a lost submit_sm_resp -----------------------------------------------------------------


async def lost_answers(pool, sim: Stack, config: SmppConfig, n: int) -> tuple[list[uuid.UUID], ListPublisher, dict]:
    """Submit n messages whose submit_sm_resp the SMSC never sends, then reconcile them."""
    settings = settings_with(config)
    gateway = build_gateway(config)
    assert isinstance(gateway, SmppGateway) and await gateway.wait_bound(10)
    claims = ClaimRepository(pool)
    batch = outbound(n)
    ids = [i.event.payload.message_id for i in batch]
    publisher = ListPublisher()
    try:
        control(sim, {"mode": "fail_after_accept"})
        out = await OutboundHandler(claims, Sender({"smsc": gateway}, settings), settings)(batch)
        control(sim, {"mode": "normal"})
        assert out == []
        await only_these_are_stale(pool, ids)
        await Reconciler(claims, Sender({"smsc": gateway}, settings), publisher, settings).reconcile_once()  # type: ignore[arg-type]
    finally:
        await gateway.close()
    return ids, publisher, sim_counts(sim)


async def test_smpp_outcome_nobody_can_tell_is_unknown_not_failed(pool, sim: Stack) -> None:
    ids, publisher, counts = await lost_answers(pool, sim, smpp(sim), 3)
    assert [counts.get(str(i), 0) for i in ids] == [1, 1, 1]  # the SMSC has them all
    statuses = [o.event.payload for o in publisher.items]
    assert sorted(s.message_id for s in statuses) == sorted(ids)
    assert {s.status.value for s in statuses} == {"unknown"}, [s.status.value for s in statuses]
    assert {s.reason_code for s in statuses} == {"submit_outcome_unknown"}
    assert set((await claim_states(pool, ids)).values()) == {"unknown"}


async def test_smpp_query_sm_resolves_lost_answers(pool, sim: Stack) -> None:
    config = smpp(sim, query_sm=True)
    ids, publisher, counts = await lost_answers(pool, sim, config, 3)
    assert [counts.get(str(i), 0) for i in ids] == [1, 1, 1]
    by_id = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert {s.status for s in by_id.values()} == {Status.SUBMITTED}
    for mid in ids:
        assert by_id[mid].gateway_message_id == smpp_ids(sim, str(mid))[0]  # the SMSC's id: its receipts match
    # A claim whose owner died before anything went out: the SMSC says it never got it, so it is sent.
    never = outbound(1)[0].event.payload
    claims = ClaimRepository(pool)
    await claims.claim("dead-instance", 30, [(never.message_id, "acme", never.model_dump_json())])
    await only_these_are_stale(pool, [never.message_id])
    gateway = build_gateway(config)
    assert isinstance(gateway, SmppGateway) and await gateway.wait_bound(10)
    publisher = ListPublisher()
    settings = settings_with(config)
    try:
        await Reconciler(claims, Sender({"smsc": gateway}, settings), publisher, settings).reconcile_once()  # type: ignore[arg-type]
    finally:
        await gateway.close()
    assert sim_counts(sim).get(str(never.message_id)) == 1
    assert [(o.event.payload.message_id, o.event.payload.status) for o in publisher.items] == [(never.message_id, Status.SUBMITTED)]


async def test_graceful_close_lets_submit_sm_in_flight_be_answered(sim: Stack) -> None:
    gateway = build_gateway(smpp(sim, timeout_s=5.0))
    assert isinstance(gateway, SmppGateway) and await gateway.wait_bound(10)
    control(sim, {"mode": "slow", "delay_ms": 800})
    messages = [i.event.payload for i in outbound(5)]
    sending = asyncio.create_task(gateway.submit_many(messages))
    await asyncio.sleep(0.3)  # all written, none answered yet
    await gateway.close()
    outcomes = await sending
    assert all(isinstance(o, Submitted) for o in outcomes), outcomes
    counts = sim_counts(sim)
    assert [counts.get(str(m.message_id), 0) for m in messages] == [1] * 5


# -- reports: unknown is its own status, and a receipt still moves it on -------------------------


def _accepted(mid: uuid.UUID, tenant: str) -> Incoming:
    payload = factories.accepted(message_id=mid, to="+34600123456", body="hi", type="transactional", accepted_at=utcnow())
    return Incoming(None, factories.accepted_event(payload, tenant), None)  # type: ignore[arg-type]


def _unknown(mid: uuid.UUID, tenant: str) -> Incoming:
    payload = factories.status(mid, Status.UNKNOWN, gateway="sim", attempts=1, reason_code="submit_outcome_unknown",
                               reason="cannot tell")
    return Incoming(None, factories.status_event(payload, tenant,  # type: ignore[arg-type]
                                                 occurred_at=utcnow() + timedelta(milliseconds=10)), None)


def _receipt(mid: uuid.UUID, status: ReceiptStatus = ReceiptStatus.DELIVERED) -> Incoming:
    payload = factories.receipt(status, "sim", f"gw-{mid.hex[:12]}", client_ref=str(mid))
    return Incoming(None, factories.receipt_event(payload, "sim"), None)  # type: ignore[arg-type]


async def test_unknown_is_reported_apart_and_a_receipt_echoing_the_id_moves_it_on(pool) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    stays, early, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    handler = StatusHandler(pool)
    await handler([_accepted(m, tenant) for m in (stays, early, late)])
    await handler([_receipt(early)])  # came before the dispatcher gave up: parked (no gateway id known)
    await handler([_unknown(m, tenant) for m in (stays, early, late)])
    await handler([_receipt(late, ReceiptStatus.UNDELIVERED)])
    rows = {r["message_id"]: r for r in await pool.fetch(
        "SELECT message_id, status, reason_code, final_at FROM messages WHERE message_id = ANY($1::uuid[])", [stays, early, late])}
    assert (rows[stays]["status"], rows[stays]["reason_code"]) == ("unknown", "submit_outcome_unknown")
    assert rows[stays]["final_at"] is not None
    assert rows[early]["status"] == "delivered" and rows[late]["status"] == "undelivered"
    timeline = await pool.fetch("SELECT message_id, status FROM message_events WHERE message_id = ANY($1::uuid[])", [early, late])
    assert {(r["message_id"], r["status"]) for r in timeline} >= {(early, "unknown"), (early, "delivered"), (late, "unknown"), (late, "undelivered")}
