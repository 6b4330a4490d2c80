"""A gateway outage longer than the retry budget, against a real dispatcher process, Kafka,
PostgreSQL and the simulator: refused messages are parked (the consumer commits and moves on),
resent once the gateway listens again, each exactly once; a message with a validity expires,
one past its maximum age fails with gateway_unavailable_max_age."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from herald_tools.stack import Ports, Stack
from shared.contracts import MessageOutbound, MessageOutboundEvent, MessageStatusEvent, utcnow
from shared.statuses import Status
from shared.topics import OUTBOUND, STATUS
from tests.helpers import group_lag, produce_raw, read_topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
BUDGET_S = 3.0
SHORT_TENANT = "parking-short"  # its parked messages may wait 12 s


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_RETRY_BUDGET_S": str(BUDGET_S), "HERALD_RETRY_MAX_ATTEMPTS": "4", "HERALD_RETRY_BASE_S": "0.2",
             "HERALD_RETRY_CAP_S": "0.5", "HERALD_FAILOVER_COOLDOWN_S": "2", "HERALD_FAILOVER_MIN_SAMPLES": "3",
             "HERALD_PARKING_INTERVAL_S": "0.5", "HERALD_PARKING_RETRY_BASE_S": "1", "HERALD_PARKING_RETRY_CAP_S": "3",
             "HERALD_PARKING_TENANT_MAX_AGE_S": json.dumps({SHORT_TENANT: 12}),
             "HERALD_SIM_RECEIPT_URL": "http://127.0.0.1:9/none"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("parking-logs")),
        gateway_rate=4000,
    )
    s.start("simulator")
    s.start("dispatcher")
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()


def control(stack: Stack, mode: str) -> None:
    httpx.post(f"http://127.0.0.1:{stack.ports.simulator_control}/control", json={"mode": mode}, timeout=60).raise_for_status()


def gateway_counts(stack: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]


def messages(n: int, expires_in: float | None = None) -> list[MessageOutbound]:
    now = utcnow()
    return [
        MessageOutbound(message_id=uuid.uuid4(), to=f"+3461{i:07d}", country="ES", body="parked?", type="transactional",
                        encoding="GSM-7", segments=1, source="api", accepted_at=now, released_at=now,
                        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None)
        for i in range(n)
    ]


async def publish(env, tenant: str, items: list[MessageOutbound]) -> None:
    records = [(m.to.encode(), MessageOutboundEvent(tenant=tenant, payload=m).model_dump_json().encode()) for m in items]
    await produce_raw(env.bootstrap, OUTBOUND.name(env.prefix), records)


async def statuses(env, ids: set[uuid.UUID], until_final: bool = True, timeout_s: float = 5) -> dict[uuid.UUID, list]:
    """Every status event of these messages on the status topic."""
    def decoded(records) -> list[MessageStatusEvent]:
        out = []
        for r in records:
            event = MessageStatusEvent.model_validate_json(r.value)
            if event.payload.message_id in ids:
                out.append(event.payload)
        return out

    records = await read_topic(env.bootstrap, STATUS.name(env.prefix),
                               lambda rs: until_final and {p.message_id for p in decoded(rs)} >= ids, timeout_s=timeout_s)
    found: dict[uuid.UUID, list] = {}
    for p in decoded(records):
        found.setdefault(p.message_id, []).append(p)
    return found


async def claim_states(pool, ids) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM dispatch_claims WHERE message_id = ANY($1::uuid[]) GROUP BY state", list(ids))
    return {r["state"]: r["n"] for r in rows}


async def dispatcher_lag(env) -> int:
    return await group_lag(env, f"{env.prefix}dispatcher")


async def test_outage_longer_than_the_retry_budget_parks_then_sends_each_once(stack, env, pool) -> None:
    control(stack, "refuse")
    try:
        first = messages(20)
        await publish(env, "acme", first)
        ids = {m.message_id for m in first}

        async def all_past_the_budget():
            return sum((await claim_states(pool, ids)).values()) == len(ids) or None

        await wait_for(all_past_the_budget, timeout_s=30)
        await asyncio.sleep(3 * BUDGET_S)  # well past the retry budget, gateway still down
        ended = await statuses(env, ids, until_final=False, timeout_s=3)
        assert ended == {}, f"messages ended while their gateway was down: {[p[0].reason_code for p in ended.values()]}"
        # The parking loop takes a due message (state 'claimed' for a moment), finds its gateway
        # still down and parks it again: every one is parked between those checks.
        async def all_parked():
            return await claim_states(pool, ids) == {"parked": 20} or None

        await wait_for(all_parked, timeout_s=10)
        # Parked, not blocking: the consumer committed, and a later message goes through the same way.
        later = messages(1)
        await publish(env, "acme", later)
        ids |= {later[0].message_id}

        async def later_parked():
            return (await claim_states(pool, ids)).get("parked") == 21 or None

        await wait_for(later_parked, timeout_s=30)
        assert await wait_for(lambda: dispatcher_lag_zero(env), timeout_s=30)
        assert not any(gateway_counts(stack).get(str(i)) for i in ids)
    finally:
        control(stack, "normal")
    found = await statuses(env, ids, timeout_s=60)
    assert {i: [p.status for p in ps] for i, ps in found.items()} == {i: [Status.SUBMITTED] for i in ids}
    counts = gateway_counts(stack)
    assert [counts.get(str(i)) for i in ids] == [1] * len(ids), "a parked message was sent twice (or never)"
    assert await claim_states(pool, ids) == {"submitted": 21}


async def dispatcher_lag_zero(env) -> bool | None:
    return await dispatcher_lag(env) == 0 or None


async def test_parked_message_with_a_validity_expires_and_one_past_its_max_age_fails(stack, env, pool) -> None:
    control(stack, "refuse")
    try:
        valid = messages(1, expires_in=BUDGET_S + 5)  # outlives the retry budget, not the outage
        await publish(env, "acme", valid)
        old = messages(1)
        await publish(env, SHORT_TENANT, old)
        ids = {valid[0].message_id, old[0].message_id}
        found = await statuses(env, ids, timeout_s=60)
    finally:
        control(stack, "normal")
    got = {i: [(p.status, p.reason_code) for p in ps] for i, ps in found.items()}
    assert got == {
        valid[0].message_id: [(Status.EXPIRED, "validity_expired")],
        old[0].message_id: [(Status.FAILED, "gateway_unavailable_max_age")],
    }
    counts = gateway_counts(stack)
    assert not any(counts.get(str(i)) for i in ids)


async def test_a_parked_message_is_taken_by_one_instance_and_only_its_holder_parks_it(pool) -> None:
    from services.dispatcher.repository import ClaimRepository, ParkingRepository, ParkItem

    claims, parked = ClaimRepository(pool), ParkingRepository(pool)
    items = messages(40)
    await claims.claim("i1", 30, [(m.message_id, "acme", m.model_dump_json()) for m in items])
    ids = [m.message_id for m in items]
    due = utcnow() - timedelta(seconds=1)
    assert await parked.park("i2", [ParkItem(i, due, "sim", 8) for i in ids]) == 0  # not its claims
    assert await parked.park("i1", [ParkItem(i, due, "sim", 8, "parked", "refused") for i in ids]) == 40
    assert await claim_states(pool, ids) == {"parked": 40}
    # Other tests' parked rows are not this test's business.
    await pool.execute("UPDATE dispatch_claims SET park_retry_at = now() + interval '1 hour'"
                       " WHERE state = 'parked' AND message_id <> ALL($1::uuid[])", ids)
    takes = await asyncio.gather(*(parked.take_due(f"t{n}", 30, 7) for n in range(8)))
    taken = [r["message_id"] for rows in takes for r in rows]
    assert sorted(taken) == sorted(ids), "a parked message was taken twice, or not at all"
    owners = await pool.fetch("SELECT DISTINCT owner, state FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    assert {r["state"] for r in owners} == {"claimed"} and all(r["owner"].startswith("t") for r in owners)
