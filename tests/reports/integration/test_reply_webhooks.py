"""Reply webhooks on the real PostgreSQL: `herald admin` sets and audits a tenant's URL, the
replies lane puts it into the forwarded event, reports queues a batch of replies in the webhook
outbox with one insert (a redelivery queues nothing, seqs follow each conversation, two
instances never share a seq), and the worker posts them signed, in order, retrying a 503."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp import web

from herald_tools import admin
from services.ingest.replies.handler import RepliesHandler
from services.ingest.replies.repository import RepliesRepository
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.reports import metrics
from services.reports.settings import ReportsSettings
from services.reports.webhooks.handler import ReplyWebhookHandler
from services.reports.webhooks.repository import enqueue_replies
from services.reports.webhooks.rules import ATTEMPT_HEADER, EVENT_ID_HEADER, conversation_key
from services.reports.webhooks.worker import WebhookWorker
from shared.contracts import (
    SYSTEM_TENANT,
    InboundMessage,
    InboundMessageEvent,
    ReplyForwarded,
    ReplyForwardedEvent,
)
from shared.kafka import Incoming
from shared.signatures import HEADER, verify
from shared.topics import INBOUND, REPLIES
from tests.conftest import make_tenant
from tests.helpers import LOOPBACK_WEBHOOKS, http_receiver, loopback_policy
from tests.ingest.integration.test_campaigns import client, publisher  # noqa: F401 (fixtures: the ingest API)

pytestmark = pytest.mark.integration
T0 = datetime.now(UTC)


def handset() -> str:
    return f"+3461{random.randrange(10**6, 10**7)}"


def forwarded(tenant: str, phone: str, body: str, url: str | None, i: int = 0) -> ReplyForwardedEvent:
    return ReplyForwardedEvent(tenant=tenant, payload=ReplyForwarded(
        inbound_event_id=uuid.uuid4(), gateway="sim", phone=phone, recipient="+34911234567", body=body,
        received_at=T0 + timedelta(seconds=i), webhook_url=url))


async def hooked_tenant(pool, url: str | None) -> str:
    """A tenant whose record holds this reply webhook URL (reports posts there, never to an event's URL)."""
    tenant = (await make_tenant(pool)).tenant_id
    await pool.execute("UPDATE tenants SET reply_webhook_url = $2 WHERE tenant_id = $1", tenant, url)
    return tenant


async def outbox(pool, keys: list[uuid.UUID]) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT message_id, seq, tenant_id, event_id, url, payload, kind, state FROM webhook_outbox"
        " WHERE message_id = ANY($1::uuid[]) ORDER BY message_id, seq", keys)


@pytest.fixture
async def cleanup(pool) -> AsyncIterator[list[uuid.UUID]]:
    keys: list[uuid.UUID] = []
    yield keys
    await pool.execute("DELETE FROM webhook_outbox WHERE message_id = ANY($1::uuid[])", keys)
    await pool.execute("DELETE FROM webhook_sequences WHERE message_id = ANY($1::uuid[])", keys)


async def test_admin_sets_checks_and_audits_the_reply_webhook(pool) -> None:
    tenant = await make_tenant(pool)
    t = tenant.tenant_id
    async with pool.acquire() as conn:
        assert await admin.reply_webhook(conn, t) == {"tenant_id": t, "reply_webhook_url": None}
        url = "https://crm.example.com/herald/replies"
        assert await admin.reply_webhook_set(conn, "ops", t, url) == {"tenant_id": t, "reply_webhook_url": url}
        assert (await admin.tenant_policy(conn, t))["reply_webhook_url"] == url
        with pytest.raises(ValueError):
            await admin.reply_webhook_set(conn, "ops", t, "ftp://crm.example.com/x")
        assert await admin.reply_webhook_set(conn, "ops", "nobody-here", url) is None
        assert await admin.reply_webhook_set(conn, "ops", t, None) == {"tenant_id": t, "reply_webhook_url": None}
        audit = await conn.fetch("SELECT actor, action, detail FROM audit_log WHERE target = $1 ORDER BY id", t)
        assert [(a["actor"], a["action"], a["detail"]["reply_webhook_url"]) for a in audit] == [
            ("ops", "tenant.reply_webhook", url), ("ops", "tenant.reply_webhook", None)]
        # the table refuses what the admin code would refuse, whoever writes it
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE tenants SET reply_webhook_url = 'ftp://x' WHERE tenant_id = $1", t)


async def test_the_replies_lane_puts_the_tenants_url_in_the_forwarded_event(pool) -> None:
    with_url, without = await make_tenant(pool), await make_tenant(pool)
    url = "http://127.0.0.1:9/replies"
    numbers = [f"+3491{random.randrange(10**6, 10**7)}" for _ in range(2)]
    async with pool.acquire() as conn:
        await admin.number_add(conn, "test", with_url.tenant_id, numbers[0])
        await admin.number_add(conn, "test", without.tenant_id, numbers[1])
        await admin.reply_webhook_set(conn, "test", with_url.tenant_id, url, loopback_policy())
    handler = RepliesHandler(Acceptor(IngestRepository(pool), IngestSettings()), RepliesRepository(pool))
    phone = handset()
    batch = [Incoming(INBOUND, InboundMessageEvent(tenant=SYSTEM_TENANT, payload=InboundMessage(
        gateway="sim", sender=phone, recipient=n, body="Is it open on Sunday?", received_at=T0)), None)
        for n in numbers]
    out = await handler(batch)
    assert [o.topic for o in out] == [REPLIES, REPLIES]
    got = {o.event.tenant: o.event.payload.webhook_url for o in out}
    assert got == {with_url.tenant_id: url, without.tenant_id: None}


async def test_a_batch_of_replies_is_queued_once_in_conversation_order(pool, cleanup) -> None:
    url = "https://crm.example.com/replies"
    tenant, no_hook, a, b = await hooked_tenant(pool, url), await hooked_tenant(pool, None), handset(), handset()
    ka, kb = conversation_key(tenant, a), conversation_key(tenant, b)
    cleanup += [ka, kb, conversation_key(no_hook, b)]
    events = [forwarded(tenant, a, "a1", url, 0), forwarded(tenant, b, "b1", url, 1), forwarded(tenant, a, "a2", url, 2),
              forwarded(no_hook, b, "no url", url, 3), forwarded(tenant, a, "a3", url, 4), forwarded(tenant, b, "b2", url, 5)]
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue_replies(conn, events) == 5
    found = await outbox(pool, [ka, kb])
    by_key = defaultdict(list)
    for r in found:
        by_key[r["message_id"]].append((r["seq"], r["payload"]["body"], r["payload"]["seq"]))
        assert (r["kind"], r["state"], r["tenant_id"], r["url"]) == ("reply", "pending", tenant, url)
        assert r["payload"]["event_id"] == str(r["event_id"]) and r["payload"]["type"] == "message.reply"
    assert by_key[ka] == [(1, "a1", 1), (2, "a2", 2), (3, "a3", 3)]
    assert by_key[kb] == [(1, "b1", 1), (2, "b2", 2)]
    # Kafka redelivers the batch: nothing new. Redelivered with one new reply: only that one,
    # with the next seq (no gap for the ones already queued).
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue_replies(conn, events) == 0
    a4 = forwarded(tenant, a, "a4", url, 6)
    handler = ReplyWebhookHandler(pool)
    assert await handler([Incoming(REPLIES, e, None) for e in [*events[-2:], a4]]) == []
    found = await outbox(pool, [ka])
    assert [(r["seq"], r["payload"]["body"]) for r in found] == [(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4")]
    # seqs live in webhook_sequences: delivered rows pruned from the outbox do not restart them
    assert await pool.fetchval("SELECT seq FROM webhook_sequences WHERE message_id = $1", ka) == 4


async def test_two_instances_queueing_one_conversation_never_share_a_seq(pool, cleanup) -> None:
    url = "https://crm.example.com/replies"
    tenant, phone = await hooked_tenant(pool, url), handset()
    key = conversation_key(tenant, phone)
    cleanup.append(key)

    async def instance(label: str) -> None:
        for i in range(5):
            async with pool.acquire() as conn, conn.transaction():
                await enqueue_replies(conn, [forwarded(tenant, phone, f"{label}{i}.{j}", url) for j in range(3)])
                await asyncio.sleep(0.01)  # hold the conversation while the other instance tries

    await asyncio.gather(instance("x"), instance("y"))
    found = await outbox(pool, [key])
    assert [r["seq"] for r in found] == list(range(1, 31))
    # each instance's batch got consecutive seqs, in its order
    for label in ("x", "y"):
        mine = [(r["seq"], r["payload"]["body"]) for r in found if r["payload"]["body"].startswith(label)]
        assert [b for _, b in mine] == [f"{label}{i}.{j}" for i in range(5) for j in range(3)]


async def test_the_worker_posts_replies_signed_in_order_and_retries_a_503(pool, cleanup) -> None:
    hits: list[tuple[int, int, dict, bytes, str, str]] = []
    refused: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        payload = json.loads(body)
        status = 200
        if payload["seq"] == 1 and payload["event_id"] not in refused:
            refused.add(payload["event_id"])
            status = 503
        hits.append((status, int(request.headers[ATTEMPT_HEADER]), payload, body, request.headers[HEADER],
                     request.headers[EVENT_ID_HEADER]))
        return web.Response(status=status)

    tenant, phones = await hooked_tenant(pool, None), [handset(), handset()]
    keys = [conversation_key(tenant, p) for p in phones]
    cleanup += keys
    posted = metrics.WEBHOOK_POSTS.labels("reply", "delivered")._value.get()
    worker = WebhookWorker(pool, ReportsSettings(
        webhook_backoff_base_s=0.3, webhook_backoff_jitter=0, webhook_poll_interval_s=0.05, webhook_timeout_s=2,
        **LOOPBACK_WEBHOOKS))
    async with http_receiver("/replies", hook) as url:
        await pool.execute("UPDATE tenants SET reply_webhook_url = $2 WHERE tenant_id = $1", tenant, url)
        task = asyncio.create_task(worker.run())
        try:
            async with pool.acquire() as conn, conn.transaction():
                await enqueue_replies(conn, [forwarded(tenant, p, f"{p} #{i}", None, i) for i in range(3) for p in phones])
            deadline = time.monotonic() + 20
            while len([h for h in hits if h[0] == 200]) < 6:
                assert time.monotonic() < deadline, hits
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    secret = (await pool.fetchval("SELECT secret FROM webhook_secrets WHERE tenant_id = $1", tenant)).encode()
    for phone in phones:
        mine = [h for h in hits if h[2]["from"] == phone]
        # seq 1 refused once, tried again; seq 2 not posted before seq 1 was delivered
        assert [(h[0], h[1], h[2]["seq"], h[2]["body"]) for h in mine] == [
            (503, 1, 1, f"{phone} #0"), (200, 2, 1, f"{phone} #0"), (200, 1, 2, f"{phone} #1"), (200, 1, 3, f"{phone} #2")]
    for _, _, payload, body, signature, event in hits:
        verify(secret, body, signature, now=time.time())
        assert event == payload["event_id"]
    assert all(r["state"] == "delivered" for r in await outbox(pool, keys))
    assert metrics.WEBHOOK_POSTS.labels("reply", "delivered")._value.get() - posted == 6


async def test_the_admin_command(pool, capsys) -> None:
    from herald_tools.cli import main

    tenant = (await make_tenant(pool)).tenant_id
    url = "https://crm.example.com/herald/replies"
    assert await asyncio.to_thread(main, ["admin", "--actor", "ops", "tenant", "reply-webhook", tenant, url]) == 0
    assert json.loads(capsys.readouterr().out) == {"tenant_id": tenant, "reply_webhook_url": url}
    assert await asyncio.to_thread(main, ["admin", "tenant", "reply-webhook", tenant]) == 0
    assert json.loads(capsys.readouterr().out)["reply_webhook_url"] == url
    assert await asyncio.to_thread(main, ["admin", "tenant", "reply-webhook", tenant, "mailto:ops@example.com"]) == 1
    assert "not an http or https URL" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["admin", "tenant", "reply-webhook", "nobody-here", url]) == 1
    assert await asyncio.to_thread(main, ["admin", "tenant", "reply-webhook", tenant, "--clear"]) == 0
    assert await pool.fetchval("SELECT reply_webhook_url FROM tenants WHERE tenant_id = $1", tenant) is None
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE target = $1 AND action = 'tenant.reply_webhook'"
                               " AND actor = 'ops'", tenant) == 1


async def test_the_policy_api_sets_and_clears_the_reply_webhook(client, pool) -> None:  # noqa: F811
    from shared.auth import DEFAULT_SCOPES

    tenant = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "policy:write"))  # PUT /v1/policy needs policy:write
    url = "https://crm.example.com/herald/replies"
    r = await client.put("/v1/policy", json={"reply_webhook_url": url}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.json()["reply_webhook_url"] == url and r.json()["marketing_consent"] == "opt_out"
    assert (await client.get("/v1/policy", headers=tenant.headers)).json()["reply_webhook_url"] == url
    # other policy changes leave it alone; a bad URL is refused and changes nothing
    r = await client.put("/v1/policy", json={"marketing_consent": "required"}, headers=tenant.headers)
    assert (r.json()["marketing_consent"], r.json()["reply_webhook_url"]) == ("required", url)
    r = await client.put("/v1/policy", json={"reply_webhook_url": "ftp://crm.example.com/x"}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_failed")
    assert await pool.fetchval("SELECT reply_webhook_url FROM tenants WHERE tenant_id = $1", tenant.tenant_id) == url
    r = await client.put("/v1/policy", json={"reply_webhook_url": None}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["reply_webhook_url"] is None
    actors = await pool.fetch("SELECT actor FROM audit_log WHERE target = $1 AND action = 'tenant.reply_webhook'",
                              tenant.tenant_id)
    assert len(actors) == 2 and all(a["actor"].startswith("api:") for a in actors)


async def test_a_reply_event_naming_another_url_is_posted_to_the_tenants_own_only(pool, cleanup) -> None:
    """Anything that can write to replies.v1 could name any URL (an internal service, a
    collector): reports posts a tenant's replies to the URL on the tenant's record, or nowhere."""
    own = "https://crm.example.com/replies"
    tenant, silent, phone = await hooked_tenant(pool, own), await hooked_tenant(pool, None), handset()
    keys = [conversation_key(tenant, phone), conversation_key(silent, phone)]
    cleanup += keys
    forged = [forwarded(tenant, phone, "to the attacker?", "http://169.254.169.254/latest", 0),
              forwarded(silent, phone, "and this one?", "https://collector.example.net/x", 1)]
    handler = ReplyWebhookHandler(pool)
    assert await handler([Incoming(REPLIES, e, None) for e in forged]) == []
    rows = await outbox(pool, keys)
    assert [(r["tenant_id"], r["url"], r["payload"]["body"]) for r in rows] == [(tenant, own, "to the attacker?")]

