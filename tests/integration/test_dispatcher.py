"""The dispatcher's exactly-once machinery against real PostgreSQL and a real simulator process:
redelivered batches are not resent, stale claims are resolved by asking the gateway first,
and a submission whose answer was lost is never blindly repeated."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from services.dispatcher.gateways import build_gateway
from services.dispatcher.handlers import OutboundHandler, Reconciler, Sender
from services.dispatcher.repository import ClaimRepository
from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.settings import DispatcherSettings
from shared.contracts import MessageOutbound, MessageOutboundEvent, MessageStatusEvent, utcnow
from shared.devtools.stack import Ports, Stack
from shared.kafka import Incoming, Outgoing
from shared.statuses import Status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def simulator(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(env={}, ports=Ports.random(), log_dir=tmp_path_factory.mktemp("sim"))
    stack.start("simulator", extra_env={"HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none"})
    stack.wait_ready(30)
    yield stack
    stack.stop()


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    async def publish(self, items: list[Outgoing]) -> None:
        self.items.extend(items)


def settings_for(simulator: Stack, **overrides) -> DispatcherSettings:
    gateway = HeraldHttpConfig(name="sim", url=simulator.url("simulator"), api_token=SecretStr("sim-token"),
                            rate_per_s=5000, timeout_s=overrides.pop("timeout_s", 5.0))
    return DispatcherSettings(gateways=[gateway], instance_id="test", retry_base_s=0.05, retry_cap_s=0.2, **overrides)


def outbound(n: int) -> list[Incoming]:
    items = []
    for i in range(n):
        message = MessageOutbound(
            message_id=uuid.uuid4(), to=f"+3460{i:07d}", country="ES", body="hi", type="transactional",
            encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(), released_at=utcnow(),
        )
        items.append(Incoming(None, MessageOutboundEvent(tenant="acme", payload=message), None))  # type: ignore[arg-type]
    return items


def sim_counts(simulator: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{simulator.ports.simulator_control}/stats/client_refs").json()["client_refs"]


def control(simulator: Stack, body: dict) -> None:
    httpx.post(f"http://127.0.0.1:{simulator.ports.simulator_control}/control", json=body, timeout=60).raise_for_status()


async def only_these_are_stale(pool, ids: list) -> None:
    """The session database may hold other tests' claims: keep the reconciler on ours."""
    await pool.execute(
        "UPDATE dispatch_claims SET lease_until = now() + interval '1 hour'"
        " WHERE state = 'claimed' AND message_id <> ALL($1::uuid[])",
        ids,
    )
    await pool.execute(
        "UPDATE dispatch_claims SET lease_until = now() - interval '1 second' WHERE message_id = ANY($1::uuid[])", ids
    )


async def test_redelivered_batch_is_not_sent_again(pool, simulator) -> None:
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    batch = outbound(120)
    first = await handler(batch)
    second = await handler(batch)  # Kafka delivers the same records again
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    ids = [str(i.event.payload.message_id) for i in batch]
    assert [counts.get(i) for i in ids] == [1] * 120
    assert {o.event.event_id for o in first} == {o.event.event_id for o in second}  # same facts, same event ids
    assert all(isinstance(o.event, MessageStatusEvent) and o.event.payload.status is Status.SUBMITTED for o in first)


async def test_stale_claims_are_resolved_by_asking_the_gateway(pool, simulator) -> None:
    settings = settings_for(simulator, claim_lease_s=30)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    claims = ClaimRepository(pool)
    batch = outbound(2)
    got, lost = (i.event.payload for i in batch)
    # A dispatcher claimed both, submitted the first, and died before recording anything.
    await claims.claim("dead-instance", 30, [(m.message_id, "acme", m.model_dump_json()) for m in (got, lost)])
    await only_these_are_stale(pool, [got.message_id, lost.message_id])
    r = httpx.post(f"{simulator.url('simulator')}/v1/sms", headers={"Authorization": "Bearer sim-token"},
                   json={"to": got.to, "body": got.body, "client_ref": str(got.message_id)})
    gateway_id = r.json()["id"]
    publisher = ListPublisher()
    reconciler = Reconciler(claims, Sender(gateways, settings), publisher, settings)  # type: ignore[arg-type]
    assert await reconciler.reconcile_once() == 2
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    assert counts[str(got.message_id)] == 1 and counts[str(lost.message_id)] == 1
    by_id = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert by_id[got.message_id].gateway_message_id == gateway_id
    assert by_id[lost.message_id].status is Status.SUBMITTED
    rows = await pool.fetch("SELECT state FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", [got.message_id, lost.message_id])
    assert {r["state"] for r in rows} == {"submitted"}


async def test_lost_answer_is_looked_up_not_resent(pool, simulator) -> None:
    settings = settings_for(simulator, timeout_s=0.5)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    claims = ClaimRepository(pool)
    handler = OutboundHandler(claims, Sender(gateways, settings), settings)
    batch = outbound(3)
    control(simulator, {"mode": "slow", "delay_ms": 1500})  # the gateway gets them but answers too late
    try:
        out = await handler(batch)
    finally:
        control(simulator, {"mode": "normal"})
    assert out == []  # nothing is known yet: no status, no resend
    ids = [i.event.payload.message_id for i in batch]
    await only_these_are_stale(pool, ids)
    publisher = ListPublisher()
    await Reconciler(claims, Sender(gateways, settings), publisher, settings).reconcile_once()  # type: ignore[arg-type]
    await gateways["sim"].close()
    counts = sim_counts(simulator)
    assert [counts.get(str(i)) for i in ids] == [1, 1, 1]
    assert sorted(o.event.payload.message_id for o in publisher.items) == sorted(ids)


async def test_permanent_refusal_fails_with_the_gateway_reason(pool, simulator) -> None:
    settings = settings_for(simulator)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    control(simulator, {"mode": "fail", "status": 400})
    try:
        out = await handler(outbound(2))
    finally:
        control(simulator, {"mode": "normal"})
        await gateways["sim"].close()
    assert [o.event.payload.status for o in out] == [Status.FAILED, Status.FAILED]
    assert all(o.event.payload.reason_code not in (None, "retries_exhausted") for o in out)


async def test_transient_refusals_give_up_after_the_attempt_limit(pool, simulator) -> None:
    settings = settings_for(simulator, retry_max_attempts=3)
    gateways = {"sim": build_gateway(settings.gateways[0])}
    handler = OutboundHandler(ClaimRepository(pool), Sender(gateways, settings), settings)
    control(simulator, {"mode": "fail", "status": 503})
    try:
        out = await handler(outbound(1))
    finally:
        control(simulator, {"mode": "normal"})
        await gateways["sim"].close()
    status = out[0].event.payload
    assert (status.status, status.reason_code, status.attempts) == (Status.FAILED, "retries_exhausted", 3)


async def test_live_instances_renew_their_leases_and_dead_ones_expire(pool, simulator) -> None:
    claims = ClaimRepository(pool)
    alive, dead = outbound(2)
    for owner, item in (("alive", alive), ("dead", dead)):
        m = item.event.payload
        await claims.claim(owner, 3, [(m.message_id, "acme", m.model_dump_json())])
    await claims.release_for_reconcile([], 1)
    assert await claims.renew("alive", 3) == 1
    import asyncio

    await asyncio.sleep(2)
    assert await claims.renew("alive", 3) == 1  # renewed in time: still its own
    await asyncio.sleep(1.5)
    ours = [alive.event.payload.message_id, dead.event.payload.message_id]
    await pool.execute(  # other tests' claims are not this test's business
        "UPDATE dispatch_claims SET lease_until = now() + interval '1 hour'"
        " WHERE state = 'claimed' AND message_id <> ALL($1::uuid[])",
        ours,
    )
    stale = await claims.take_stale("reconciler-test", 30, 10)
    ids = {r["message_id"] for r in stale}
    assert dead.event.payload.message_id in ids and alive.event.payload.message_id not in ids
