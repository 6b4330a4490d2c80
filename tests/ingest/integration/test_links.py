"""Short links on the real Kafka and PostgreSQL: ingest's links lane activates the links of
submitted messages only (one statement per batch), codes stored first win over codes drawn
again (a retried accept, a duplicate in the batch, a resumed campaign page), and the redirect
answers by the link's state."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from herald_tools import admin
from services.ingest import deps
from services.ingest.link_activation import LinkActivationHandler
from services.ingest.links import new_code, records, track_message
from services.ingest.links_repo import LinksRepository
from services.ingest.redirect import ClickBuffer, LinkCache, router
from services.ingest.repository import IngestRepository
from services.ingest.service import Accepted, Acceptor
from services.ingest.settings import IngestSettings
from shared.api import install_error_handlers
from shared.contracts import MessageRequest, MessageStatusChanged, MessageStatusEvent, utcnow
from shared.kafka import BatchConsumer, Publisher, make_producer
from shared.settings import ConsumerSettings
from shared.statuses import MessageType, Status
from shared.topics import STATUS
from tests.conftest import make_tenant
from tests.helpers import produce_raw, wait_for

pytestmark = pytest.mark.integration

IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"
SETTINGS = IngestSettings(link_domain="go.example.test")


async def accept(pool, tenant_id: str, requests: list[MessageRequest]) -> list[Accepted]:
    acceptor = Acceptor(IngestRepository(pool), SETTINGS, LinksRepository(pool))
    results, _ = await acceptor.prepare(tenant_id, requests, source="api", now=utcnow(), trace_id="t")
    assert all(isinstance(r, Accepted) for r in results), results
    return results  # type: ignore[return-value]


def marketing(to: str, body: str, **extra) -> MessageRequest:
    return MessageRequest(to=to, body=f"{body} STOP to opt out", type="marketing", **extra)


def redirect_app(pool, ttl_s: float = 30.0) -> tuple[FastAPI, ClickBuffer]:
    class NoKafka:
        async def publish(self, items):  # the clicks are not what these tests look at
            return None

    clicks = ClickBuffer(NoKafka(), 60_000, 1000)  # type: ignore[arg-type]
    app = FastAPI()
    deps.install(app, IngestSettings(link_bot_min_delay_s=0.0), pool, None,
                 link_cache=LinkCache(LinksRepository(pool), 100, ttl_s), clicks=clicks)
    install_error_handlers(app)
    app.include_router(router)
    return app, clicks


async def test_the_links_lane_activates_the_links_of_submitted_messages_only(pool, env) -> None:
    tenant = await make_tenant(pool)
    results = await accept(pool, tenant.tenant_id, [
        marketing("+34600300001", "A https://shop.example.com/a"),
        marketing("+34600300002", "B https://shop.example.com/b"),
        marketing("+34600300003", "C https://shop.example.com/c"),
        marketing("+34600300004", "D https://shop.example.com/d"),
    ])
    sent, suppressed, sandbox, queued = (r.message.message_id for r in results)
    at = utcnow() - timedelta(seconds=30)

    def status(message_id, value, gateway=None):
        return MessageStatusEvent(tenant=tenant.tenant_id, occurred_at=at, payload=MessageStatusChanged(
            message_id=message_id, status=value, gateway=gateway, type=MessageType.MARKETING))

    events = [status(queued, Status.SCHEDULED), status(suppressed, Status.SUPPRESSED), status(sent, Status.SCHEDULED),
              status(sent, Status.SUBMITTED, "sim"), status(sandbox, Status.SUBMITTED, "sandbox"),
              status(sent, Status.SUBMITTED, "sim")]  # redelivered
    await produce_raw(env.bootstrap, STATUS.name(env.prefix),
                      [(str(e.payload.message_id).encode(), e.model_dump_json().encode()) for e in events])
    settings = ConsumerSettings(consumer_poll_ms=100)
    producer = make_producer(settings, "test-links")
    await producer.start()
    consumer = BatchConsumer(settings, "ingest", f"g-{uuid.uuid4().hex[:8]}", [STATUS],
                             LinkActivationHandler(LinksRepository(pool)), Publisher(producer, env.prefix, "test"))
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        activated = await wait_for(lambda: pool.fetchval(
            "SELECT activated_at FROM links WHERE message_id = $1", sent), timeout_s=30)
        await asyncio.sleep(1)  # the other events came in the same batches
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
        await producer.stop()
    assert abs((activated - at).total_seconds()) < 0.01  # the submission's time, not the lane's
    dark = await pool.fetch("SELECT message_id FROM links WHERE message_id = ANY($1::uuid[]) AND activated_at IS NULL",
                            [suppressed, sandbox, queued])
    assert len(dark) == 3

    app, _ = redirect_app(pool)
    codes = {r.message.message_id: r.message.body.split("/")[-1].split(" ")[0] for r in results}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://links") as client:
        r = await client.get(f"/l/{codes[sent]}", headers={"user-agent": IPHONE})
        assert (r.status_code, r.headers["location"]) == (302, "https://shop.example.com/a")
        for message_id in (suppressed, sandbox, queued):
            r = await client.get(f"/l/{codes[message_id]}", headers={"user-agent": IPHONE})
            assert (r.status_code, r.json()["error"]["code"]) == (404, "link_not_found")


async def test_codes_stored_first_win_over_codes_drawn_again(pool) -> None:
    tenant = await make_tenant(pool)
    request = marketing("+34600300011", "Sale https://shop.example.com/s and www.example.org/t", idempotency_key="k1")
    # the same request twice in one batch, then a retry: one set of rows, one body
    first, twin = await accept(pool, tenant.tenant_id, [request, request])
    (again,) = await accept(pool, tenant.tenant_id, [request])
    assert first.message.message_id == twin.message.message_id == again.message.message_id
    assert first.message.body == twin.message.body == again.message.body
    rows = await pool.fetch("SELECT code FROM links WHERE message_id = $1 ORDER BY link_index", first.message.message_id)
    assert len(rows) == 2 and all(f"/{r['code']}" in first.message.body for r in rows)

    # what a resumed campaign page does: the same message ids, new codes drawn, the stored ones returned
    message = again.message.model_copy(update={"message_id": uuid.uuid4(), "body": "Hi https://shop.example.com/p"})
    links = LinksRepository(pool)
    tracked, found = track_message(message, "go.example.test", smart=True)
    assert await links.store_many(records(tenant.tenant_id, tracked, found)) == {}
    redrawn, found_again = track_message(message, "go.example.test", smart=True)
    replaced = await links.store_many(records(tenant.tenant_id, redrawn, found_again))
    assert replaced == {found_again[0].code: found[0].code}

    # a drawn code that another link already has is drawn again
    other = message.model_copy(update={"message_id": uuid.uuid4()})
    clash, clash_links = track_message(other, "go.example.test", smart=True)
    row = records(tenant.tenant_id, clash, clash_links)[0]
    replaced = await links.store_many([replace(row, code=found[0].code)])
    assert set(replaced) == {found[0].code} and replaced[found[0].code] != found[0].code
    assert await pool.fetchval("SELECT code FROM links WHERE message_id = $1", other.message_id) == replaced[found[0].code]
    assert new_code() != new_code()


async def test_the_redirect_answers_by_the_links_state(pool) -> None:
    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        await admin.tenant_policy_set(conn, "test", tenant.tenant_id, link_domain=f"go.{tenant.tenant_id}.example",
                                      link_ttl_s=3600)
    brand = f"go.{tenant.tenant_id}.example"
    live, expired, down = await accept(pool, tenant.tenant_id, [
        marketing("+34600300021", "A https://shop.example.com/1"),
        marketing("+34600300022", "B https://shop.example.com/2"),
        marketing("+34600300023", "C https://shop.example.com/3"),
    ])
    assert all(f"https://{brand}/" in r.message.body for r in (live, expired, down))
    ids = [r.message.message_id for r in (live, expired, down)]
    links = LinksRepository(pool)
    assert await links.activate({i: utcnow() - timedelta(minutes=1) for i in ids}) == 3
    assert await links.activate({i: utcnow() for i in ids}) == 0  # at-least-once: nothing moves
    rows = {r["message_id"]: r for r in await pool.fetch(
        "SELECT message_id, code, expires_at - created_at AS ttl, domain FROM links WHERE message_id = ANY($1::uuid[])",
        ids)}
    assert {(r["ttl"], r["domain"]) for r in rows.values()} == {(timedelta(hours=1), brand)}
    await pool.execute("UPDATE links SET expires_at = now() WHERE message_id = $1", expired.message.message_id)
    async with pool.acquire() as conn:
        done = await admin.link_takedown(conn, "ops", rows[down.message.message_id]["code"], "malware")
    assert done["taken_down"] == 1

    app, _ = redirect_app(pool, ttl_s=0)
    host = {"user-agent": IPHONE, "host": brand}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://links") as client:
        async def get(message_id, headers=host):
            r = await client.get(f"/l/{rows[message_id]['code']}", headers=headers)
            return r.status_code, r.headers.get("location") or r.json()["error"]["code"]

        assert await get(live.message.message_id) == (302, "https://shop.example.com/1")
        assert await get(live.message.message_id, {"user-agent": IPHONE}) == (404, "link_not_found")
        assert await get(expired.message.message_id) == (410, "link_expired")
        assert await get(down.message.message_id) == (410, "link_taken_down")
        async with pool.acquire() as conn:
            await admin.link_restore(conn, "ops", rows[down.message.message_id]["code"])
        assert await get(down.message.message_id) == (302, "https://shop.example.com/3")


async def test_a_takedown_reaches_the_cache_at_the_next_look_and_is_counted_once(pool) -> None:
    from services.ingest import metrics
    from services.ingest.redirect import TakedownWatcher

    tenant = await make_tenant(pool)
    (result,) = await accept(pool, tenant.tenant_id, [marketing("+34600300031", "Go https://shop.example.com/w")])
    links = LinksRepository(pool)
    await links.activate({result.message.message_id: utcnow() - timedelta(minutes=1)})
    code = await pool.fetchval("SELECT code FROM links WHERE message_id = $1", result.message.message_id)
    cache = LinkCache(links, 100, ttl_s=3600)  # without the watcher, a takedown would wait an hour here
    clicks = ClickBuffer(None, 60_000, 1000)  # type: ignore[arg-type]  # never flushed
    app = FastAPI()
    deps.install(app, IngestSettings(link_bot_min_delay_s=0.0), pool, None, link_cache=cache, clicks=clicks)
    install_error_handlers(app)
    app.include_router(router)
    watcher = TakedownWatcher(links, cache, poll_s=1.0)
    await watcher.check()  # the first look learns what was taken down before
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://links") as client:
        assert (await client.get(f"/l/{code}", headers={"user-agent": IPHONE})).status_code == 302
        async with pool.acquire() as conn:
            await admin.link_takedown(conn, "ops", code, "spam")
        assert (await client.get(f"/l/{code}", headers={"user-agent": IPHONE})).status_code == 302  # cached
        before = metrics.LINK_TAKEDOWNS._value.get()
        assert await watcher.check() >= 1
        assert await watcher.check() == 0  # seen already
        assert metrics.LINK_TAKEDOWNS._value.get() - before >= 1
        r = await client.get(f"/l/{code}", headers={"user-agent": IPHONE})
        assert (r.status_code, r.json()["error"]["code"]) == (410, "link_taken_down")
