"""Durable timers on the real database: held messages are released once, by any instance,
on time, and decided again when due."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from herald_tools import admin
from services.scheduler.domain import Decision, Verdict, decide
from services.scheduler.handlers import FactsRepository, Timer
from shared.contracts import MessageAccepted, MessageOutboundEvent, MessageStatusEvent, utcnow
from shared.kafka import Outgoing
from shared.statuses import Status
from tests import factories
from tests.helpers import marketing_to

pytestmark = pytest.mark.integration


class ListPublisher:
    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    async def publish(self, items: list[Outgoing]) -> None:
        await asyncio.sleep(0.01)  # a broker round trip, so two timers really overlap
        self.items.extend(items)


def message(to: str = "+919812345678", kind: str = "transactional") -> MessageAccepted:
    return factories.accepted(to=to, country="IN" if to.startswith("+91") else "ES", type=kind, accepted_at=utcnow())


async def opt_out_tenant(pool) -> str:
    """A tenant whose marketing needs no recorded consent (these numbers are not contacts)."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    await pool.execute("INSERT INTO tenants (tenant_id, name, marketing_consent) VALUES ($1, $1, 'opt_out')", tenant)
    return tenant


async def hold(facts: FactsRepository, messages: list[MessageAccepted], due: datetime, tenant: str = "acme") -> None:
    await facts.hold(facts.pool, [(m, tenant, "trace", Decision(Verdict.DEFER, "scheduled", "test", due)) for m in messages])


async def test_two_timers_release_each_message_once(pool) -> None:
    facts = FactsRepository(pool)
    messages = [message() for _ in range(1200)]
    await hold(facts, messages, utcnow() - timedelta(seconds=1))
    a, b = ListPublisher(), ListPublisher()
    timers = [Timer(facts, a, 0.05, 100), Timer(facts, b, 0.05, 100)]
    await asyncio.gather(*(t.release_due() for t in timers for _ in range(8)))
    while any([await t.release_due() for t in timers]):
        pass
    released = [o.event.payload.message_id for o in a.items + b.items if isinstance(o.event, MessageOutboundEvent)]
    ours = {m.message_id for m in messages}
    assert sorted(r for r in released if r in ours) == sorted(ours)
    assert a.items and b.items, "both instances took a share"
    assert await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE message_id = ANY($1::uuid[])", list(ours)) == 0


async def test_due_messages_are_released_within_a_second(pool) -> None:
    facts = FactsRepository(pool)
    publisher = ListPublisher()
    timer = Timer(facts, publisher, 0.2, 500)
    task = asyncio.create_task(timer.run())
    m = message()
    due = utcnow() + timedelta(seconds=1.5)
    await hold(facts, [m], due)
    try:
        deadline = time.monotonic() + 5
        while not any(isinstance(o.event, MessageOutboundEvent) and o.event.payload.message_id == m.message_id
                      for o in publisher.items):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        lateness = (utcnow() - due).total_seconds()
    finally:
        timer.stop()
        await task
    assert -0.05 < lateness < 1.0


async def test_released_message_is_decided_again(pool) -> None:
    """Due at 23:30 in Madrid: a marketing message is held again until the morning; an
    opted-out number is suppressed at release."""
    facts = FactsRepository(pool)
    night = datetime(2026, 11, 25, 22, 30, tzinfo=UTC)
    tenant = await opt_out_tenant(pool)
    late, opted_out = message("+34600000002", "marketing"), message("+34600000003", "marketing")
    await pool.execute("INSERT INTO suppressions (tenant_id, phone_e164, reason, source) VALUES ($1, $2, 'stop', 'test')",
                       tenant, opted_out.to)
    await hold(facts, [late, opted_out], night - timedelta(minutes=1), tenant)
    publisher = ListPublisher()
    await Timer(facts, publisher, 1, 500, clock=lambda: night).release_due()
    statuses = {o.event.payload.message_id: o.event.payload for o in publisher.items if isinstance(o.event, MessageStatusEvent)}
    assert statuses[late.message_id].status is Status.SCHEDULED and statuses[late.message_id].reason_code == "quiet_hours"
    assert statuses[opted_out.message_id].status is Status.SUPPRESSED
    due = await pool.fetchval("SELECT due_at FROM scheduled_messages WHERE message_id = $1", late.message_id)
    assert due == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert not any(isinstance(o.event, MessageOutboundEvent) for o in publisher.items)


async def test_erased_numbers_stay_suppressed_by_their_hash(pool) -> None:
    import hashlib

    tenant = await opt_out_tenant(pool)
    phone = "+34600000077"
    digest = hashlib.sha256(f"herald-erasure-v1:{tenant}:{phone}".encode()).hexdigest()
    await pool.execute(
        "INSERT INTO suppression_hashes (tenant_id, phone_hash, reason, source) VALUES ($1, $2, 'erased', 'erasure')",
        tenant, digest,
    )
    facts = await FactsRepository(pool).load(marketing_to((tenant, phone), (tenant, "+34600000078")))
    assert facts.suppressions == {(tenant, phone): "erased"}  # hashes from before keys still match


async def test_erased_numbers_stay_suppressed_by_their_keyed_hash_under_every_key_version(pool) -> None:
    from shared.erasure import build_keys

    tenant = await opt_out_tenant(pool)
    old = build_keys({"k1": "scheduler-test-erasure-key-one-0123456789"}, None)
    rotated = build_keys({"k1": "scheduler-test-erasure-key-one-0123456789", "k2": "scheduler-test-erasure-key-two-0123456789"}, "k2")
    erased_before, erased_after, kept = "+34600000081", "+34600000082", "+34600000083"
    await pool.execute(
        "INSERT INTO suppression_hashes (tenant_id, phone_hash, reason, source) VALUES ($1, $2, 'erased', 'erasure'),"
        " ($1, $3, 'opt_out', 'erasure')", tenant, old.hash(tenant, erased_before), rotated.hash(tenant, erased_after),
    )
    try:
        pairs = [(tenant, erased_before), (tenant, erased_after), (tenant, kept)]
        facts = await FactsRepository(pool, erasure_keys=rotated).load(marketing_to(*pairs))
        assert facts.suppressions == {(tenant, erased_before): "erased", (tenant, erased_after): "opt_out"}
        # without the key the keyed hashes are not recognised: that is why the scheduler refuses to start then
        assert (await FactsRepository(pool).load(marketing_to(*pairs))).suppressions == {}
    finally:  # a k2 hash left behind would stop the schedulers other modules of the session start
        await pool.execute("DELETE FROM suppression_hashes WHERE tenant_id = $1", tenant)


async def test_a_disabled_tenants_held_messages_are_woken_and_suppressed_and_its_campaigns_cancelled(pool) -> None:
    facts = FactsRepository(pool)
    hostile, other = await opt_out_tenant(pool), await opt_out_tenant(pool)
    campaign = await pool.fetchval(
        "INSERT INTO campaigns (tenant_id, name, segment_filter, variants, state) VALUES ($1, 'c', 'true', '[]', 'running')"
        " RETURNING campaign_id", hostile)
    weeks_ahead = utcnow() + timedelta(days=30)
    theirs, ours = [message() for _ in range(3)], [message()]
    await hold(facts, theirs, weeks_ahead, hostile)
    await hold(facts, ours, weeks_ahead, other)
    async with pool.acquire() as conn:
        assert await admin.tenant_set_disabled(conn, "test", hostile, True)
    assert await pool.fetchval("SELECT state || '/' || cancel_reason FROM campaigns WHERE campaign_id = $1",
                               campaign) == "cancelled/tenant_disabled"
    audit = await pool.fetchval("SELECT detail FROM audit_log WHERE target = $1 AND action = 'tenant.disable'", hostile)
    assert audit["cancelled_campaigns"] == [str(campaign)]
    publisher = ListPublisher()
    timer = Timer(facts, publisher, 0.05, 100)
    await timer.housekeeping()
    while await timer.release_due():
        pass
    decided = {o.event.payload.message_id: o.event.payload for o in publisher.items}
    assert {m.message_id for m in theirs} <= decided.keys() and ours[0].message_id not in decided
    for m in theirs:
        assert (decided[m.message_id].status, decided[m.message_id].reason_code) == (Status.SUPPRESSED, "tenant_disabled")
    assert await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE tenant_id = $1", hostile) == 0
    assert await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE tenant_id = $1", other) == 1
    # Enabled again: new messages pass; nothing cancelled comes back.
    async with pool.acquire() as conn:
        assert await admin.tenant_set_disabled(conn, "test", hostile, False)
    assert await pool.fetchval("SELECT state FROM campaigns WHERE campaign_id = $1", campaign) == "cancelled"
    fresh = await FactsRepository(pool).load([(hostile, m := message())])  # past the 1 s cache
    assert decide(hostile, m, fresh, utcnow()).verdict is Verdict.RELEASE
