"""Results on the real Kafka and PostgreSQL: tracked links stored by the Acceptor, the redirect
publishing clicks through Kafka to reports' results lane, conversions attributed, multipart
receipts (early and late) aggregated, the campaign report and the A/B auto-winner."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from services.ingest import deps
from services.ingest.campaigns.winners import CampaignWinnersHandler
from services.ingest.links_repo import LinksRepository
from services.ingest.redirect import ClickBuffer, LinkCache, router
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.reports import campaign_report
from services.reports.handlers import StatusHandler
from services.reports.results import ResultsHandler
from services.reports.winner import WinnerWorker
from shared.api import install_error_handlers
from shared.contracts import (
    CampaignWinnerDecided,
    CampaignWinnerEvent,
    ContactEventAccepted,
    ContactEventAcceptedEvent,
    DeliveryReceipt,
    DeliveryReceiptEvent,
    MessageRequest,
    MessageStatusChanged,
    MessageStatusEvent,
    utcnow,
)
from shared.kafka import BatchConsumer, Incoming, Publisher, make_producer
from shared.settings import ConsumerSettings
from shared.statuses import ReceiptStatus, Status
from shared.topics import CAMPAIGN_WINNERS, CLICKS, CONTACT_EVENTS, RECEIPTS, STATUS
from tests.conftest import make_tenant
from tests.helpers import produce_raw, wait_for

pytestmark = pytest.mark.integration

IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


def incoming(topic, event) -> Incoming:
    return Incoming(topic, event, None)  # handlers never read the record


@pytest.fixture
async def kafka(env):
    """A publisher and a running results-lane consumer (its own group) for one test."""
    settings = ConsumerSettings(consumer_poll_ms=100)
    producer = make_producer(settings, "test-results")
    await producer.start()
    publisher = Publisher(producer, env.prefix, "test")
    yield publisher, settings
    await producer.stop()


async def start_results_lane(pool, settings, publisher, window=timedelta(days=7)):
    handler = ResultsHandler(pool, window, 1.0)
    consumer = BatchConsumer(settings, "reports", f"g-{uuid.uuid4().hex[:8]}", [CLICKS, CONTACT_EVENTS], handler,
                             publisher)
    await consumer.start()
    return consumer, asyncio.create_task(consumer.run())


async def accept_marketing(pool, tenant_id: str, bodies: list[str], **extra) -> list:
    acceptor = Acceptor(IngestRepository(pool), IngestSettings(link_domain="go.example.test"), LinksRepository(pool))
    # Each text tells how to opt out (else ingest appends the line, after the links: docs/audience.md).
    requests = [MessageRequest(to=f"+3460012{i:04d}", body=f"Reply STOP to opt out. {b}", type="marketing", **extra)
                for i, b in enumerate(bodies)]
    results, outgoing = await acceptor.prepare(tenant_id, requests, source="api", now=utcnow(), trace_id="t")
    return [r.message for r in results], outgoing


async def test_links_are_stored_once_and_a_retry_gives_the_same_body(pool) -> None:
    tenant = await make_tenant(pool)
    body = "Sale: https://shop.example.com/spring?utm_source=sms and www.example.org/stores (STOP to opt out)"
    acceptor = Acceptor(IngestRepository(pool), IngestSettings(link_domain="go.example.test"), LinksRepository(pool))
    request = MessageRequest(to="+34600123456", body=body, type="marketing", idempotency_key="spring-1")
    (first,), _ = await acceptor.prepare(tenant.tenant_id, [request], source="api", now=utcnow(), trace_id="t")
    (again,), _ = await acceptor.prepare(tenant.tenant_id, [request], source="api", now=utcnow(), trace_id="t")
    assert again.duplicate and again.message.message_id == first.message.message_id
    assert again.message.body == first.message.body and "https://go.example.test/" in first.message.body
    rows = await pool.fetch("SELECT * FROM links WHERE message_id = $1 ORDER BY link_index", first.message.message_id)
    assert [r["url"] for r in rows] == ["https://shop.example.com/spring?utm_source=sms", "https://www.example.org/stores"]
    assert all(f"/{r['code']}" in first.message.body for r in rows) and rows[0]["tenant_id"] == tenant.tenant_id

    opted_out = MessageRequest(to="+34600123456", body=body, type="marketing", track_links=False)
    transactional = MessageRequest(to="+34600123456", body=body)
    results, _ = await acceptor.prepare(tenant.tenant_id, [opted_out, transactional], source="api", now=utcnow(),
                                        trace_id="t")
    assert [r.message.body for r in results] == [body, body]


async def test_redirect_clicks_reach_the_clicks_table_through_kafka(pool, kafka) -> None:
    publisher, settings = kafka
    tenant = await make_tenant(pool)
    (message,), _ = await accept_marketing(pool, tenant.tenant_id, ["Offer https://shop.example.com/x"])
    code = message.body.rsplit("/", 1)[1]
    # the message was submitted a while ago (a click right after it would be too fast): ingest's links
    # lane activated its links, and reports knows it
    await LinksRepository(pool).activate({message.message_id: utcnow() - timedelta(minutes=1)})
    await pool.execute(
        "INSERT INTO messages (message_id, tenant_id, status, status_rank, type, to_e164, submitted_at)"
        " VALUES ($1, $2, 'submitted', 40, 'marketing', $3, now() - interval '1 minute')",
        message.message_id, tenant.tenant_id, message.to,
    )
    links = LinksRepository(pool)
    clicks = ClickBuffer(publisher, 50, 1000)
    app = FastAPI()
    install_error_handlers(app)
    cache = LinkCache(links, 100)
    deps.install(app, IngestSettings(link_bot_min_delay_s=0.0), pool, publisher, link_cache=cache, clicks=clicks)
    app.include_router(router)
    flusher = asyncio.create_task(clicks.run())
    consumer, task = await start_results_lane(pool, settings, publisher)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://links") as client:
            r = await client.get(f"/l/{code}", headers={"user-agent": IPHONE})
            assert (r.status_code, r.headers["location"]) == (302, "https://shop.example.com/x")
            assert r.headers["cache-control"] == "private, no-store"
            r = await client.get(f"/l/{code}", headers={"user-agent": IPHONE})
            assert r.status_code == 302
            r = await client.head(f"/l/{code}", headers={"user-agent": IPHONE})
            assert r.status_code == 302
            r = await client.get(f"/l/{code}", headers={"user-agent": "WhatsApp/2.23.20.0"})
            assert r.status_code == 302
            r = await client.get("/l/AAAAAAAAAA", headers={"user-agent": IPHONE})
            assert (r.status_code, r.json()["error"]["code"]) == (404, "link_not_found")
            r = await client.get("/l/bad!", headers={"user-agent": IPHONE})
            assert r.status_code == 404 and "not a short link" in r.json()["error"]["message"]
        assert code in cache._hits  # the later redirects were answered from memory

        async def stored():
            rows = await pool.fetch("SELECT * FROM clicks WHERE message_id = $1 ORDER BY clicked_at", message.message_id)
            bots = await pool.fetch("SELECT reason, clicks FROM bot_clicks WHERE message_id = $1 ORDER BY reason",
                                    message.message_id)
            return (rows, bots) if len(rows) == 2 and sum(b["clicks"] for b in bots) == 2 else None

        rows, bots = await wait_for(stored, timeout_s=30)
    finally:
        clicks.stop()
        await flusher
        consumer.stop_fetching()
        await task
        await consumer.close()
    # people's clicks are rows; the HEAD and the preview fetch are counted, not stored
    assert [(r["bot"], r["bot_reason"]) for r in rows] == [(False, None), (False, None)]
    assert [(b["reason"], b["clicks"]) for b in bots] == [("head_request", 1), ("preview_agent", 1)]
    assert {r["tenant_id"] for r in rows} == {tenant.tenant_id} and rows[0]["url"] == "https://shop.example.com/x"


async def test_bot_clicks_are_counted_per_link_and_reason_not_stored_and_never_counted_twice(pool, kafka) -> None:
    """A preview fetcher or scanner hammering a link: one buffered event per link, reason and day,
    counters in bot_clicks instead of a row a click, and a redelivered topic counts nothing again."""
    publisher, settings = kafka
    tenant = await make_tenant(pool)
    (message,), _ = await accept_marketing(pool, tenant.tenant_id, ["Deal https://shop.example.com/bots"])
    code = message.body.rsplit("/", 1)[1]
    await LinksRepository(pool).activate({message.message_id: utcnow() - timedelta(minutes=1)})
    await pool.execute(
        "INSERT INTO messages (message_id, tenant_id, status, status_rank, type, to_e164, submitted_at)"
        " VALUES ($1, $2, 'submitted', 40, 'marketing', $3, now() - interval '1 minute')",
        message.message_id, tenant.tenant_id, message.to,
    )
    clicks = ClickBuffer(publisher, 60_000, 1000)  # flushed by hand below
    app = FastAPI()
    install_error_handlers(app)
    deps.install(app, IngestSettings(link_bot_min_delay_s=0.0), pool, publisher,
                 link_cache=LinkCache(LinksRepository(pool), 100), clicks=clicks)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://links") as client:
        for _ in range(40):
            assert (await client.get(f"/l/{code}", headers={"user-agent": "WhatsApp/2.23.20.0"})).status_code == 302
        for _ in range(10):
            assert (await client.head(f"/l/{code}", headers={"user-agent": IPHONE})).status_code == 302
        assert (await client.get(f"/l/{code}", headers={"user-agent": IPHONE})).status_code == 302
        # 51 redirects, 3 events: the person's click, and one per bot reason with its count
        assert len(clicks) == 3
        assert await clicks.flush() == 3
        consumer, task = await start_results_lane(pool, settings, publisher)

        async def stored():
            rows = await pool.fetch("SELECT bot FROM clicks WHERE message_id = $1", message.message_id)
            bots = await pool.fetch("SELECT reason, clicks, tenant_id, day FROM bot_clicks WHERE message_id = $1"
                                    " ORDER BY reason", message.message_id)
            return (rows, bots) if len(rows) == 1 and sum(b["clicks"] for b in bots) == 50 else None

        try:
            rows, bots = await wait_for(stored, timeout_s=30)
        finally:
            consumer.stop_fetching()
            await task
            await consumer.close()
        assert [r["bot"] for r in rows] == [False]
        assert [(b["reason"], b["clicks"], b["tenant_id"]) for b in bots] == [
            ("head_request", 10, tenant.tenant_id), ("preview_agent", 40, tenant.tenant_id)]
        assert bots[0]["day"] == utcnow().date()

        # Another consumer group reads the whole topic again (a redelivery of every record): people's
        # clicks are kept once by event id, bot counts do not move. One more person's click (same
        # key, so the same partition, after the others) says when the lane is through them.
        assert (await client.get(f"/l/{code}", headers={"user-agent": IPHONE})).status_code == 302
        assert await clicks.flush() == 1
    consumer, task = await start_results_lane(pool, settings, publisher)
    try:
        async def two_people():
            n = await pool.fetchval("SELECT count(*) FROM clicks WHERE message_id = $1", message.message_id)
            return n if n == 2 else None

        await wait_for(two_people, timeout_s=30)
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
    assert await pool.fetchval("SELECT sum(clicks) FROM bot_clicks WHERE message_id = $1", message.message_id) == 50


async def test_conversions_are_attributed_once_to_the_clicked_else_delivered_message(pool, kafka, env) -> None:
    publisher, settings = kafka
    tenant = await make_tenant(pool)
    phone, campaign = "+34600987654", uuid.uuid4()
    clicked, delivered, old = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    rows = [  # (id, variant, submitted ago, delivered ago)
        (clicked, "A", timedelta(hours=30), timedelta(hours=29)),
        (delivered, "B", timedelta(hours=3), timedelta(hours=2)),
        (old, "A", timedelta(days=20), timedelta(days=20)),
    ]
    for mid, variant, sub, dlv in rows:
        await pool.execute(
            "INSERT INTO messages (message_id, tenant_id, status, status_rank, type, to_e164, campaign_id, variant,"
            " accepted_at, submitted_at, final_at) VALUES ($1, $2, 'delivered', 100, 'marketing', $3, $4, $5, $6, $6, $7)",
            mid, tenant.tenant_id, phone, campaign, variant, now - sub, now - dlv,
        )
    await pool.execute(
        "INSERT INTO clicks (event_id, tenant_id, code, message_id, link_index, url, campaign_id, variant, clicked_at, bot)"
        " VALUES ($1, $2, 'c1', $3, 0, 'https://x', $4, 'A', $5, false), ($6, $2, 'c2', $7, 0, 'https://x', $4, 'B', $8, true)",
        uuid.uuid4(), tenant.tenant_id, clicked, campaign, now - timedelta(hours=20),
        uuid.uuid4(), delivered, now - timedelta(hours=1),  # a bot click does not count
    )

    def event(value: str | None, ago: timedelta, key: str, who: str = phone) -> tuple[bytes, bytes]:
        payload = ContactEventAccepted(
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant.tenant_id}:{key}"), name="order.completed", phone=who,
            event_key=key, occurred_at=now - ago, received_at=now, value=Decimal(value) if value else None,
            currency="EUR", source="api",
        )
        return who.encode(), ContactEventAcceptedEvent(tenant=tenant.tenant_id, payload=payload).model_dump_json().encode()

    await produce_raw(env.bootstrap, CONTACT_EVENTS.name(env.prefix), [
        event("49.90", timedelta(minutes=5), "order-1"),
        event("49.90", timedelta(minutes=5), "order-1"),  # the same event again: counted once
        event(None, timedelta(minutes=5), "cart-1"),  # no value: not a conversion
        event("10", timedelta(hours=25), "order-0"),  # before the click, after the first delivery
        event("5", timedelta(minutes=1), "order-2", "+34600111222"),  # no message to this number
    ])
    consumer, task = await start_results_lane(pool, settings, publisher, window=timedelta(days=7))
    try:
        async def three():
            found = await pool.fetch("SELECT * FROM conversions WHERE tenant_id = $1 ORDER BY occurred_at",
                                     tenant.tenant_id)
            return found if len(found) == 3 else None

        found = await wait_for(three, timeout_s=30)
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
    order0, order1, order2 = found
    assert (order0["attribution"], order0["message_id"]) == ("delivery", clicked)
    assert (order1["attribution"], order1["message_id"], order1["variant"]) == ("click", clicked, "A")
    assert order1["value"] == Decimal("49.90") and order1["campaign_id"] == campaign
    assert (order2["attribution"], order2["message_id"]) == ("none", None)


async def test_multipart_receipts_early_and_late_aggregate(pool) -> None:
    tenant = await make_tenant(pool)
    handler = StatusHandler(pool)
    (message,), accepted = await accept_marketing(pool, tenant.tenant_id, ["Long " + "text " * 70])
    assert message.segments == 3
    parts = [f"smpp-{uuid.uuid4().hex[:12]}" for _ in range(3)]

    def receipt(part: str, status: ReceiptStatus):
        r = DeliveryReceipt(gateway="smsc", gateway_message_id=part, status=status, done_at=utcnow())
        return incoming(RECEIPTS, DeliveryReceiptEvent(tenant="_system", payload=r))

    submitted = incoming(STATUS, MessageStatusEvent(tenant=tenant.tenant_id, payload=MessageStatusChanged(
        message_id=message.message_id, status=Status.SUBMITTED, gateway="smsc", gateway_message_id=parts[0],
        gateway_part_ids=parts, attempts=1, segments=3)))
    # one part's receipt before the submission is recorded: parked
    await handler([incoming(accepted[0].topic, accepted[0].event), receipt(parts[2], ReceiptStatus.DELIVERED)])
    assert await pool.fetchval("SELECT count(*) FROM pending_receipts WHERE gateway_message_id = $1", parts[2]) == 1
    await handler([submitted, receipt(parts[0], ReceiptStatus.DELIVERED)])
    row = await pool.fetchrow("SELECT status, part_ids, part_status FROM messages WHERE message_id = $1",
                              message.message_id)
    assert row["status"] == "submitted" and row["part_ids"] == parts
    assert {p: v["status"] for p, v in row["part_status"].items()} == {parts[0]: "delivered", parts[2]: "delivered"}
    await handler([receipt(parts[1], ReceiptStatus.DELIVERED)])  # the last part, late
    row = await pool.fetchrow("SELECT status FROM messages WHERE message_id = $1", message.message_id)
    assert row["status"] == "delivered"
    timeline = [r["status"] for r in await pool.fetch(
        "SELECT status FROM message_events WHERE message_id = $1 ORDER BY recorded_at, occurred_at", message.message_id)]
    assert sorted(timeline) == sorted(["accepted", "submitted", "part_delivered", "part_delivered", "delivered"])


async def test_campaign_report_and_auto_winner(pool, kafka) -> None:
    tenant = await make_tenant(pool)
    campaign = uuid.uuid4()
    ab = {"test_percent": 20, "metric": "click_rate", "wait_s": 60, "min_sample": 100}
    variants = [{"name": "A", "template_id": str(uuid.uuid4()), "percent": 50},
                {"name": "B", "template_id": str(uuid.uuid4()), "percent": 50}]
    await pool.execute(
        "INSERT INTO campaigns (tenant_id, campaign_id, name, segment_filter, variants, ab_test, state, decide_at)"
        " VALUES ($1, $2, 'Spring', 'true', $3, $4, 'testing', now() - interval '1 second')",
        tenant.tenant_id, campaign, variants, ab,
    )
    # A: 300 delivered, 60 clicked; B: 300 delivered, 30 clicked; 5 suppressed each
    now = utcnow()
    ids = {"A": [uuid.uuid4() for _ in range(305)], "B": [uuid.uuid4() for _ in range(305)]}
    for variant, mids in ids.items():
        await pool.execute(
            "INSERT INTO messages (message_id, tenant_id, status, status_rank, type, campaign_id, variant, segments,"
            " accepted_at, submitted_at, final_at, reason_code)"
            " SELECT m, $2, CASE WHEN i <= 300 THEN 'delivered' ELSE 'suppressed' END, 100, 'marketing', $3, $4, 1,"
            " $5::timestamptz, CASE WHEN i <= 300 THEN $5::timestamptz END, $5::timestamptz, CASE WHEN i > 300 THEN 'opted_out' END"
            " FROM unnest($1::uuid[]) WITH ORDINALITY AS t(m, i)",
            mids, tenant.tenant_id, campaign, variant, now - timedelta(minutes=10),
        )
        clicked = mids[: 60 if variant == "A" else 30]
        await pool.execute(
            "INSERT INTO clicks (event_id, tenant_id, code, message_id, link_index, url, campaign_id, variant,"
            " clicked_at, bot) SELECT gen_random_uuid(), $2, 'c', m, 0, 'https://x', $3, $4, now(), false"
            " FROM unnest($1::uuid[]) AS t(m)",
            clicked, tenant.tenant_id, campaign, variant,
        )
    async with pool.acquire() as conn:
        report = await campaign_report.load(conn, campaign, tenant.tenant_id, 0.05)
        assert await campaign_report.load(conn, campaign, "someone-else", 0.05) is None
    a, b = report["variants"]
    assert (a["variant"], a["sent"], a["delivered"], a["clicks_unique"], a["skipped"]) == ("A", 300, 300, 60,
                                                                                         {"opted_out": 5})
    assert report["ab_test"]["significant"] and report["ab_test"]["winner"] == "A"

    # reports publishes the winner (herald.campaigns.winners.v1); ingest's campaign-winners lane applies it
    publisher, settings = kafka
    lane = BatchConsumer(settings, "ingest", f"g-{uuid.uuid4().hex[:8]}", [CAMPAIGN_WINNERS],
                         CampaignWinnersHandler(pool), publisher)
    await lane.start()
    task = asyncio.create_task(lane.run())
    try:
        workers = [WinnerWorker(pool, publisher, 1.0, 0.05), WinnerWorker(pool, publisher, 1.0, 0.05)]
        decided = await asyncio.gather(*(w.decide_once() for w in workers))
        assert sum(1 for d in decided for c, _ in d if c == campaign) == 1  # judged once

        async def applied():
            row = await pool.fetchrow("SELECT state, phase, winner, winner_detail FROM campaigns WHERE campaign_id = $1",
                                      campaign)
            return row if row["state"] != "testing" else None

        row = await wait_for(applied, timeout_s=30)
    finally:
        lane.stop_fetching()
        await task
        await lane.close()
    assert (row["state"], row["phase"], row["winner"]) == ("running", "winner", "A")
    assert row["winner_detail"]["picked_by"] == "significant"
    assert row["winner_detail"]["comparisons"][0]["p_value"] < 0.05
    assert json.loads(json.dumps(row["winner_detail"]))["metric"] == "click_rate"
    assert await workers[0].decide_once() == []  # no longer testing: nothing to judge
    # a redelivered (or late, other) decision changes nothing once the winner phase started
    late = CampaignWinnerEvent(tenant=tenant.tenant_id, payload=CampaignWinnerDecided(
        campaign_id=campaign, winner="B", detail={"picked_by": "best_rate"}, decided_at=utcnow()))
    await CampaignWinnersHandler(pool)([incoming(CAMPAIGN_WINNERS, late)])
    again = await pool.fetchrow("SELECT state, winner, winner_detail FROM campaigns WHERE campaign_id = $1", campaign)
    assert (again["state"], again["winner"], again["winner_detail"]) == ("running", "A", row["winner_detail"])
