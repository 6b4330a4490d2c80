"""The campaign lanes' mark on the real Kafka and PostgreSQL: ingest's links lane reads the
statuses the dispatcher and the scheduler publish and moves each tenant's mark of what left the
lanes (``campaign_lane_progress``, ingest's own table) in one statement per batch, forward only;
the launcher's count of the tenant's messages in flight follows (docs/operations.md, fair share)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.dispatcher.handlers import Job, status_event
from services.dispatcher.repository import Finish
from services.ingest.campaigns.pacing import InFlightRepository
from services.ingest.campaigns.progress import CampaignProgress, LaneProgressHandler
from services.ingest.link_activation import LinkActivationHandler
from services.ingest.links_repo import LinksRepository
from services.ingest.statuses import StatusesHandler
from services.scheduler.domain import Decision, Verdict
from services.scheduler.handlers import AcceptedHandler, FactsRepository, route
from shared.contracts import MessageAccepted, MessageAcceptedEvent, MessageOutbound, utcnow
from shared.kafka import BatchConsumer, Incoming, Outgoing, Publisher, make_producer
from shared.settings import ConsumerSettings
from shared.statuses import MessageType
from shared.topics import ACCEPTED_BULK, STATUS
from tests import factories
from tests.conftest import make_tenant
from tests.helpers import produce_raw, wait_for

pytestmark = pytest.mark.integration


def accepted(at: datetime, campaign: bool = True) -> MessageAccepted:
    return factories.accepted(to="+34600400001", body="Sale STOP to opt out", type="marketing",
                              source="campaign" if campaign else "api", accepted_at=at,
                              campaign_id=uuid.uuid4() if campaign else None)


def dispatched(tenant: str, message: MessageAccepted, state: str = "submitted") -> Outgoing:
    """The dispatcher's status of a message it handled (services/dispatcher/handlers.py)."""
    outbound = MessageOutbound(**message.model_dump(), released_at=message.accepted_at)
    return status_event(Job(tenant, "trace", outbound), Finish(message.message_id, state, "sim", "g1", 1))


def scheduled(tenant: str, message: MessageAccepted, *, mark: bool, held: bool = True) -> Outgoing:
    """The scheduler's status of a message it held or suppressed (services/scheduler/handlers.py)."""
    decision = (Decision(Verdict.DEFER, "quiet_hours", "quiet hours", utcnow() + timedelta(hours=8)) if held
                else Decision(Verdict.SUPPRESS, "no_consent", "no consent"))
    [out] = route(tenant, "trace", message, decision, utcnow(), [], mark_lanes=mark)
    return out


async def produce(env, events: Sequence[Outgoing]) -> None:
    await produce_raw(env.bootstrap, STATUS.name(env.prefix),
                      [(o.key.encode(), o.event.model_dump_json().encode()) for o in events])


class Counted(CampaignProgress):
    """The real table, with how many marks each handled batch moved."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.moved: list[int] = []

    async def handled(self, up_to: dict[str, datetime]) -> int:
        moved = await super().handled(up_to)
        if up_to:
            self.moved.append(moved)
        return moved


class Seen:
    """A later part of the lane that notes the statuses it was given (so a test knows when the
    lane got to them); with ``fail_first`` it fails the first batch with a deadlock, and the
    consumer handles the batch again, as after any failure before its offsets are committed."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self.ids: set[uuid.UUID] = set()

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected (test)")
        self.ids |= {item.event.payload.message_id for item in batch}
        return []

    def got(self, events: Sequence[Outgoing]) -> bool:
        return {o.event.payload.message_id for o in events} <= self.ids


async def run_lane(env, pool, progress: CampaignProgress, seen: Seen, events: Sequence[Outgoing]) -> None:
    """ingest's links lane as wired in services/ingest/app.py (and ``seen``), in a consumer group
    of its own (from the topic's start), until it has handled ``events``."""
    settings = ConsumerSettings(consumer_poll_ms=100, consumer_retry_backoff_s=0.05)
    producer = make_producer(settings, "test-lane-progress")
    await producer.start()
    handler = StatusesHandler([LinkActivationHandler(LinksRepository(pool)), LaneProgressHandler(progress), seen])
    consumer = BatchConsumer(settings, "ingest", f"g-{uuid.uuid4().hex[:8]}", [STATUS], handler,
                             Publisher(producer, env.prefix, "test"))
    await consumer.start()
    task = asyncio.create_task(consumer.run())

    async def done() -> bool:
        return seen.got(events)

    try:
        await wait_for(done, timeout_s=30)
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
        await producer.stop()


async def mark(pool, tenant: str) -> datetime | None:
    return await pool.fetchval("SELECT handled_up_to FROM campaign_lane_progress WHERE tenant_id = $1", tenant)


async def test_ingest_moves_each_tenants_mark_from_the_statuses_and_the_launcher_counts_less(pool, env) -> None:
    a, b, c = [await make_tenant(pool) for _ in range(3)]
    base = utcnow().replace(microsecond=0) - timedelta(seconds=30)
    pages = [base + timedelta(seconds=s) for s in range(4)]
    in_flight = InFlightRepository(pool)
    for tenant in (a, b, c):
        for at in pages:
            await in_flight.record(tenant.tenant_id, at, 100)
    since = base - timedelta(seconds=60)
    assert [await in_flight.in_flight(t.tenant_id, since) for t in (a, b, c)] == [400, 400, 400]

    events = [
        dispatched(a.tenant_id, accepted(pages[0])),
        dispatched(a.tenant_id, accepted(pages[2]), "failed"),
        dispatched(a.tenant_id, accepted(pages[1])),  # older than what the lane saw: no step back
        dispatched(a.tenant_id, accepted(pages[3], campaign=False)),  # not a campaign message
        scheduled(b.tenant_id, accepted(pages[1]), mark=True),  # held for quiet hours
        scheduled(b.tenant_id, accepted(pages[0]), mark=True, held=False),  # suppressed
        scheduled(c.tenant_id, accepted(pages[3]), mark=False),  # its batch passed others on
    ]
    await produce(env, events)
    await run_lane(env, pool, Counted(pool), Seen(), events)
    assert await mark(pool, a.tenant_id) == pages[2], "the newest page of its statuses"
    assert await mark(pool, b.tenant_id) == pages[1], "what the scheduler held or suppressed"
    assert await mark(pool, c.tenant_id) is None, "a status without a page moves nothing"
    # The launcher's count: pages up to the mark have left the lanes (and are deleted).
    assert [await in_flight.in_flight(t.tenant_id, since) for t in (a, b, c)] == [100, 200, 400]
    assert await pool.fetchval("SELECT count(*) FROM campaign_pages WHERE tenant_id = $1", a.tenant_id) == 1


async def test_a_batch_handled_twice_moves_the_mark_once_and_never_back(pool, env) -> None:
    tenants = [await make_tenant(pool) for _ in range(2)]
    base = utcnow().replace(microsecond=0) - timedelta(seconds=20)
    newest = {t.tenant_id: base + timedelta(seconds=i + 1) for i, t in enumerate(tenants)}
    events = [dispatched(t.tenant_id, accepted(base)) for t in tenants]
    events += [dispatched(t, accepted(at)) for t, at in newest.items()]
    await produce(env, events)

    # The first delivery fails after the marks were written; the consumer handles the batch again.
    progress, seen = Counted(pool), Seen(fail_first=True)
    await run_lane(env, pool, progress, seen, events)
    assert seen.calls >= 2 and len(progress.moved) >= 2, "the failed batch's marks were written, then handled again"
    assert {t: await mark(pool, t) for t in newest} == newest
    assert sum(progress.moved) == 2, f"each mark moved once; moved per delivery: {progress.moved}"
    updated = {t: await pool.fetchval("SELECT updated_at FROM campaign_lane_progress WHERE tenant_id = $1", t)
               for t in newest}

    # The whole topic again (another group: what a rebalance or a restored offset delivers): nothing moves.
    again = Counted(pool)
    await run_lane(env, pool, again, Seen(), events)
    assert again.moved and sum(again.moved) == 0, f"moved per delivery: {again.moved}"
    assert {t: await pool.fetchval("SELECT updated_at FROM campaign_lane_progress WHERE tenant_id = $1", t)
            for t in newest} == updated, "the rows are not even written again"

    # An older page seen late (a status republished by the reconciler, say) never moves a mark back.
    late = [dispatched(t, accepted(base)) for t in newest]
    await produce(env, late)
    later = Counted(pool)
    await run_lane(env, pool, later, Seen(), late)
    assert {t: await mark(pool, t) for t in newest} == newest
    assert sum(later.moved) == 0


SATURDAY_NIGHT = datetime(2026, 12, 5, 22, 30, tzinfo=UTC)  # 23:30 in Madrid: quiet hours


async def test_the_schedulers_real_decisions_mark_a_tenant_only_when_none_of_its_batch_went_on(pool, env) -> None:
    """The scheduler's batch handler on PostgreSQL: X's campaign messages are all held (quiet
    hours), so their statuses carry the page and ingest moves X's mark; Y's batch also released a
    transactional campaign message (queued at the dispatcher now), so Y's held status carries
    none and Y's mark stays where the dispatcher will put it."""
    x, y = await make_tenant(pool), await make_tenant(pool)
    page = SATURDAY_NIGHT - timedelta(seconds=5)
    batch = []
    for tenant, kinds in ((x, ("marketing", "marketing")), (y, ("marketing", "transactional"))):
        campaign = uuid.uuid4()
        # running, every page published (fanned_out_at): the launcher of a later test has nothing to take up
        await pool.execute("INSERT INTO campaigns (tenant_id, campaign_id, name, segment_filter, variants, state,"
                           " fanned_out_at) VALUES ($1, $2, 'Sale', 'true', '[]', 'running', $3)",
                           tenant.tenant_id, campaign, page)
        for i, kind in enumerate(kinds):
            message = accepted(page).model_copy(update={"campaign_id": campaign, "type": MessageType(kind),
                                                        "to": f"+3460055{i:04d}"})
            batch.append(Incoming(ACCEPTED_BULK, MessageAcceptedEvent(tenant=tenant.tenant_id, payload=message), None))
    out = await AcceptedHandler(FactsRepository(pool), clock=lambda: SATURDAY_NIGHT)(batch)  # type: ignore[arg-type]
    statuses = {(o.event.tenant, o.event.payload.status.value, o.event.payload.campaign_page_at)
                for o in out if o.topic is STATUS}
    assert statuses == {(x.tenant_id, "scheduled", page), (y.tenant_id, "scheduled", None)}
    assert [o.event.tenant for o in out if o.topic is not STATUS] == [y.tenant_id], "Y's transactional one went on"

    status_events = [o for o in out if o.topic is STATUS]
    await produce(env, status_events)
    await run_lane(env, pool, Counted(pool), Seen(), status_events)
    assert await mark(pool, x.tenant_id) == page
    assert await mark(pool, y.tenant_id) is None
