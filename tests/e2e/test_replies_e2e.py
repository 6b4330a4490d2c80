"""Inbound replies through the real services: a handset answers STOP (any case, any accent),
is opted out at once, gets a confirmation through the real pipeline (the simulator sees it),
and the next marketing message to it is suppressed; START subscribes it again; a STOP sent to a
number registered with a brand scope only stops that brand; HELP is answered in the keyword's
language (Spanish, French); the Spanish BAJA TODO opts out of everything even when sent to a
brand number and ALTA gives the contact its marketing consent back, each confirmed in Spanish;
an ordinary reply is forwarded on the replies topic with the conversation of that tenant, and
posted, signed, to the tenant's reply webhook, in order per handset, retried after a 503."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web

from herald_tools import admin
from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.contracts import (
    SYSTEM_TENANT,
    InboundMessage,
    InboundMessageEvent,
    MessageAcceptedEvent,
    ReplyForwardedEvent,
    derived_event_id,
)
from shared.signatures import verify
from shared.topics import ACCEPTED, INBOUND, REPLIES
from tests.conftest import Tenant, make_tenant
from tests.e2e.test_pipeline import scrape
from tests.helpers import (
    foreign_numbers_allowed,
    http_receiver,
    loopback_policy,
    produce_raw,
    read_topic,
    wait_for,
    webhook_hit,
)

pytestmark = pytest.mark.e2e


def a_handset() -> str:
    countries = foreign_numbers_allowed(marketing_countries(True)) or ["ES"]  # where marketing may go out now from a Spanish number, if anywhere
    return demo_numbers(1, seed=random.randrange(10**9), countries=countries[:1])[0]


def our_number() -> str:
    return f"+3491{random.randrange(10**6, 10**7)}"


async def send(stack: Stack, tenant: Tenant, to: str, kind: str = "marketing", sender: str | None = None) -> str:
    body = {"to": to, "body": f"Flash sale {uuid.uuid4().hex[:6]}", "type": kind}
    if sender:
        body["sender"] = sender
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers) as client:
        r = await client.post("/v1/messages", json=body)
    assert r.status_code == 202, r.text
    return r.json()["message_id"]


async def status_of(pool, message_id: str, timeout_s: float = 60) -> str:
    """The first status past accepted/queued (suppressed, scheduled, submitted or final)."""
    async def check():
        s = await pool.fetchval("SELECT status FROM messages WHERE message_id = $1::uuid", message_id)
        return s if s not in (None, "accepted", "queued") else None

    return await wait_for(check, timeout_s=timeout_s, interval_s=0.3)


async def reply(stack: Stack, handset: str, to: str, body: str) -> InboundMessageEvent:
    event = InboundMessageEvent(
        tenant=SYSTEM_TENANT,
        payload=InboundMessage(gateway="sim", sender=handset, recipient=to, body=body, received_at=datetime.now(UTC)),
    )
    await produce_raw(stack.env["HERALD_KAFKA_BOOTSTRAP"], INBOUND.name(stack.env["HERALD_TOPIC_PREFIX"]),
                      [(handset.encode(), event.model_dump_json().encode())])
    return event


async def confirmation_seen(stack: Stack, pool, tenant: Tenant, event: InboundMessageEvent, handset: str) -> str:
    """The confirmation's message id, once the simulator got it for ``handset``."""
    message_id = await wait_for(lambda: pool.fetchval(
        "SELECT message_id::text FROM idempotency_keys WHERE tenant_id = $1 AND idempotency_key = $2",
        tenant.tenant_id, f"reply:{event.event_id}"), timeout_s=60)

    async def seen():
        async with httpx.AsyncClient(base_url=stack.url("simulator"), headers={"Authorization": "Bearer sim-token"}) as c:
            r = await c.get("/v1/sms", params={"client_ref": message_id})
        return r.status_code == 200 and [m for m in r.json()["messages"] if m["to"] == handset]

    await wait_for(seen, timeout_s=60, interval_s=0.3)
    return message_id


async def sent_text(stack: Stack, message_id: str, handset: str) -> str:
    """The text of a confirmation, as ingest published it on the accepted topic (reports does
    not store bodies)."""
    def found(records) -> list[MessageAcceptedEvent]:
        events = [MessageAcceptedEvent.model_validate_json(r.value) for r in records if r.key == handset.encode()]
        return [e for e in events if str(e.payload.message_id) == message_id]

    records = await read_topic(stack.env["HERALD_KAFKA_BOOTSTRAP"], ACCEPTED.name(stack.env["HERALD_TOPIC_PREFIX"]),
                               lambda rs: bool(found(rs)), timeout_s=30)
    events = found(records)
    assert events and all(e.payload.type.value == "transactional" and e.payload.to == handset for e in events)
    (body,) = {e.payload.body for e in events}  # at-least-once: a republished event has the same text
    return body


async def test_stop_confirms_and_suppresses_then_start_resubscribes(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    number, handset = our_number(), a_handset()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "e2e", tenant.tenant_id, number)
    first = await send(stack, tenant, handset)
    assert await status_of(pool, first) != "suppressed"

    stop = await reply(stack, handset, number, "stop")  # lowercase
    confirmation = await confirmation_seen(stack, pool, tenant, stop, handset)
    assert await pool.fetchval("SELECT reason FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, handset) == "replied STOP"
    assert await pool.fetchval("SELECT type FROM messages WHERE message_id = $1::uuid", confirmation) == "transactional"
    assert await status_of(pool, await send(stack, tenant, handset)) == "suppressed"

    start = await reply(stack, handset, number, "Start")
    await confirmation_seen(stack, pool, tenant, start, handset)
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, handset) == 0
    assert await status_of(pool, await send(stack, tenant, handset)) != "suppressed"


async def test_inbound_messages_are_listed_newest_first_with_filters(stack: Stack, pool) -> None:
    """GET /v1/inbound (ingest): a tenant's received messages, filters and cursor pages; another
    tenant sees none of them."""
    tenant, other = await make_tenant(pool), await make_tenant(pool)
    number, handset = our_number(), a_handset()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "e2e", tenant.tenant_id, number)
    sent = [await reply(stack, handset, number, text) for text in ("Is my order shipped?", "stop", "thanks")]

    async def recorded():
        return await pool.fetchval("SELECT count(*) FROM inbound_messages WHERE tenant_id = $1", tenant.tenant_id) == 3 or None

    await wait_for(recorded, timeout_s=30)
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30) as client:
        pages, cursor = [], None
        while True:
            r = await client.get("/v1/inbound", params={"phone": handset, "limit": 2, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            pages.append(r.json()["inbound"])
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        got = [m for p in pages for m in p]
        assert [len(p) for p in pages] == [2, 1]
        assert [m["event_id"] for m in got] == [str(e.event_id) for e in reversed(sent)]  # newest first
        assert [m["body"] for m in got] == ["thanks", "stop", "Is my order shipped?"]
        r = await client.get("/v1/inbound", params={"phone": handset, "keyword": "stop"})
        assert [m["keyword_group"] for m in r.json()["inbound"]] == ["stop"]
        r = await client.get("/v1/inbound", params={"phone": handset, "keyword": "none"})
        assert {m["body"] for m in r.json()["inbound"]} == {"thanks", "Is my order shipped?"}
        r = await client.get("/v1/inbound", params={"phone": "12345"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "not_e164")
        r = await client.get("/v1/inbound", params={"phone": handset}, headers=other.headers)
        assert r.status_code == 200 and r.json()["inbound"] == []


async def test_accented_stop_to_a_brand_number_is_scoped(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    shoes, general, handset = our_number(), our_number(), a_handset()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "e2e", tenant.tenant_id, shoes, scope="shoes")
        await admin.number_add(conn, "e2e", tenant.tenant_id, general)

    stop = await reply(stack, handset, shoes, "ARRÊT")
    await confirmation_seen(stack, pool, tenant, stop, handset)
    assert await pool.fetchval("SELECT scope FROM scoped_suppressions WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, handset) == "shoes"
    # Marketing from the shoes number is suppressed; from another sender it still goes.
    assert await status_of(pool, await send(stack, tenant, handset, sender=shoes)) == "suppressed"
    assert await status_of(pool, await send(stack, tenant, handset, sender=general)) != "suppressed"

    # HELP, in Spanish and in French: each answered in its language, and consent unchanged.
    name = tenant.tenant_id  # test tenants are named after their id
    for word, text in (("Ayuda", f"{name}: responde BAJA para darte de baja, ALTA para volver a suscribirte."),
                       ("aide", f"{name} : repondez STOP pour vous desabonner, START pour vous reabonner.")):
        help_event = await reply(stack, handset, general, word)
        confirmation = await confirmation_seen(stack, pool, tenant, help_event, handset)
        assert await sent_text(stack, confirmation, handset) == text
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1", tenant.tenant_id) == 0
    assert [r["scope"] for r in await pool.fetch(
        "SELECT scope FROM scoped_suppressions WHERE tenant_id = $1 AND phone_e164 = $2", tenant.tenant_id, handset)
    ] == ["shoes"]


async def marketing_consent(pool, tenant: Tenant, handset: str) -> tuple[bool | None, list[tuple[bool, str, str | None]]]:
    """The contact's current marketing consent and its history (granted, source, keyword), oldest first."""
    current = await pool.fetchval("SELECT consent_marketing FROM contacts WHERE tenant_id = $1 AND phone_e164 = $2",
                                  tenant.tenant_id, handset)
    rows = await pool.fetch(
        "SELECT k.granted, k.source, k.proof->>'keyword' AS keyword FROM contact_consents k"
        " JOIN contacts c USING (tenant_id, contact_id) WHERE c.tenant_id = $1 AND c.phone_e164 = $2"
        " AND k.purpose = 'marketing' ORDER BY k.consent_id",
        tenant.tenant_id, handset,
    )
    return current, [(r["granted"], r["source"], r["keyword"]) for r in rows]


async def test_spanish_baja_todo_stops_everything_and_alta_restores_consent(stack: Stack, pool) -> None:
    # A tenant that needs recorded consent: marketing goes out only while the contact has it.
    tenant = await make_tenant(pool, marketing_consent="required")
    shoes, general, handset = our_number(), our_number(), a_handset()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "e2e", tenant.tenant_id, shoes, scope="shoes")
        await admin.number_add(conn, "e2e", tenant.tenant_id, general)
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers) as client:
        r = await client.post("/v1/contacts", json={"phone": handset, "first_name": "Lucía"})  # no language
        assert r.status_code == 201, r.text
        r = await client.post(f"/v1/contacts/{r.json()['contact_id']}/consents", json={
            "purpose": "marketing", "granted": True, "source": "web_form", "proof": {"form_id": "signup"}})
        assert r.status_code == 201, r.text
    assert await status_of(pool, await send(stack, tenant, handset, sender=general)) != "suppressed"
    name = tenant.tenant_id

    # "BAJA TODO" to the brand number: the global opt-out, not the brand's; confirmed in Spanish.
    stop = await reply(stack, handset, shoes, "¡Baja todo!")
    confirmation = await confirmation_seen(stack, pool, tenant, stop, handset)
    assert await sent_text(stack, confirmation, handset) == (
        f"Te has dado de baja de los mensajes de {name}. Responde ALTA para volver a suscribirte.")
    assert await pool.fetchval("SELECT reason FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, handset) == "replied BAJA"
    assert await pool.fetchval("SELECT count(*) FROM scoped_suppressions WHERE tenant_id = $1", tenant.tenant_id) == 0
    assert await marketing_consent(pool, tenant, handset) == (
        False, [(True, "web_form", None), (False, "sms_keyword", "BAJA")])
    for sender in (general, shoes):
        assert await status_of(pool, await send(stack, tenant, handset, sender=sender)) == "suppressed"

    # "Alta" to the general number: subscribed again, consent back, confirmed in Spanish.
    start = await reply(stack, handset, general, "Alta")
    confirmation = await confirmation_seen(stack, pool, tenant, start, handset)
    assert await sent_text(stack, confirmation, handset) == (
        f"Te has vuelto a suscribir a los mensajes de {name}. Responde BAJA para darte de baja.")
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, handset) == 0
    assert await marketing_consent(pool, tenant, handset) == (
        True, [(True, "web_form", None), (False, "sms_keyword", "BAJA"), (True, "sms_keyword", "ALTA")])
    for sender in (general, shoes):
        assert await status_of(pool, await send(stack, tenant, handset, sender=sender)) != "suppressed"


async def forwarded(stack: Stack, events: list[InboundMessageEvent]) -> list[ReplyForwardedEvent]:
    """The replies-topic events forwarding ``events``, in the same order."""
    wanted = {derived_event_id("reply.forwarded", e.event_id): i for i, e in enumerate(events)}

    def found(records) -> dict[uuid.UUID, ReplyForwardedEvent]:
        out = {}
        for r in records:
            event = ReplyForwardedEvent.model_validate_json(r.value)
            if event.event_id in wanted:
                assert r.key == event.payload.phone.encode()  # keyed by the handset's number
                out[event.event_id] = event
        return out

    records = await read_topic(stack.env["HERALD_KAFKA_BOOTSTRAP"], REPLIES.name(stack.env["HERALD_TOPIC_PREFIX"]),
                               lambda rs: len(found(rs)) == len(wanted), timeout_s=60)
    by_id = found(records)
    assert len(by_id) == len(wanted), f"forwarded {len(by_id)} of {len(wanted)} replies"
    return sorted(by_id.values(), key=lambda e: wanted[e.event_id])


async def test_an_ordinary_reply_is_forwarded_with_the_conversation(stack: Stack, pool) -> None:
    tenant, other = await make_tenant(pool), await make_tenant(pool)
    number, handset = our_number(), a_handset()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "e2e", tenant.tenant_id, number)
    offer = await send(stack, tenant, handset, "marketing", sender=number)
    code = await send(stack, tenant, handset, "transactional", sender=number)
    elsewhere = await send(stack, other, handset, "transactional")  # another tenant's: not in the conversation
    for message_id in (offer, code, elsewhere):
        assert await status_of(pool, message_id) != "suppressed"

    first = await reply(stack, handset, number, "Hola, ¿a qué hora abrís mañana?")
    (forward_1,) = await forwarded(stack, [first])
    second = await reply(stack, handset, number, "Y el sábado?")
    (forward_2,) = await forwarded(stack, [second])

    for forward, event in ((forward_1, first), (forward_2, second)):
        assert forward.tenant == tenant.tenant_id
        p = forward.payload
        assert (p.inbound_event_id, p.phone, p.recipient, p.scope, p.body, p.gateway) == (
            event.event_id, handset, number, None, event.payload.body, "sim")
    # The conversation: the tenant's messages to and from this number, newest first, without
    # the reply itself; outbound entries carry id, status, type and sender but no text.
    c1 = forward_1.payload.conversation
    assert [(e.direction, e.message_id) for e in c1] == [("outbound", uuid.UUID(code)), ("outbound", uuid.UUID(offer))]
    assert [(e.type, e.sender, e.body) for e in c1] == [("transactional", number, None), ("marketing", number, None)]
    assert all(e.status not in (None, "suppressed") for e in c1)
    c2 = forward_2.payload.conversation
    assert [(e.direction, e.message_id or e.inbound_event_id) for e in c2] == [
        ("inbound", first.event_id), ("outbound", uuid.UUID(code)), ("outbound", uuid.UUID(offer))]
    assert (c2[0].body, c2[0].sender) == (first.payload.body, number)
    assert [e.at for e in c2] == sorted((e.at for e in c2), reverse=True)
    # Ordinary replies change no consent and get no confirmation.
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1", tenant.tenant_id) == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[])",
        tenant.tenant_id, [f"reply:{first.event_id}", f"reply:{second.event_id}"]) == 0
    assert await pool.fetchval("SELECT count(*) FROM inbound_messages WHERE tenant_id = $1 AND phone_e164 = $2"
                               " AND keyword_group IS NULL", tenant.tenant_id, handset) == 2


async def test_ordinary_replies_reach_the_reply_webhook_signed_in_order_after_a_retry(stack: Stack, pool) -> None:
    hits: list[dict] = []
    refused: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        hit = await webhook_hit(request)
        payload = hit["payload"]
        if payload.get("body") == "¿Tenéis talla 42?" and payload["event_id"] not in refused:
            refused.add(payload["event_id"])  # the receiver is down for the first reply's first try
            hit["status"] = 503
        hits.append(hit)
        return web.Response(status=hit["status"])

    async with http_receiver("/replies", hook) as url:
        tenant, quiet = await make_tenant(pool), await make_tenant(pool)
        number, quiet_number, handset = our_number(), our_number(), a_handset()
        async with pool.acquire() as conn:
            await admin.number_add(conn, "e2e", tenant.tenant_id, number)
            await admin.reply_webhook_set(conn, "e2e", tenant.tenant_id, url, loopback_policy())
            await admin.number_add(conn, "e2e", quiet.tenant_id, quiet_number)  # no reply webhook
        code = await send(stack, tenant, handset, "transactional", sender=number)
        assert await status_of(pool, code) != "suppressed"

        first = await reply(stack, handset, number, "¿Tenéis talla 42?")
        second = await reply(stack, handset, number, "Y en azul?")
        unposted = await reply(stack, handset, quiet_number, "Hello?")
        # all three are on the replies topic; only the two of the tenant with a webhook carry its URL
        f1, f2, f3 = await forwarded(stack, [first, second, unposted])
        assert (f1.payload.webhook_url, f2.payload.webhook_url, f3.payload.webhook_url) == (url, url, None)

        async def both_delivered():
            return len([h for h in hits if h["status"] == 200]) >= 2 or None

        await wait_for(both_delivered, timeout_s=60, interval_s=0.2)
        secret = (await pool.fetchval("SELECT secret FROM webhook_secrets WHERE tenant_id = $1",
                                      tenant.tenant_id)).encode()
        for h in hits:
            verify(secret, h["body"], h["signature"], now=time.time())
            assert h["event_id"] == h["payload"]["event_id"]
        # refused once, tried again with the same event id; the second reply waited for it
        assert [(h["payload"]["body"], h["attempt"], h["status"]) for h in hits] == [
            (first.payload.body, 1, 503), (first.payload.body, 2, 200), (second.payload.body, 1, 200)]
        p1, p2 = hits[1]["payload"], hits[2]["payload"]
        assert p1["event_id"] == str(derived_event_id("reply.forwarded", first.event_id)) == str(f1.event_id)
        assert p2["event_id"] == str(f2.event_id)
        for p, event in ((p1, first), (p2, second)):
            assert (p["type"], p["tenant"], p["from"], p["to"], p["body"], p["inbound_event_id"]) == (
                "message.reply", tenant.tenant_id, handset, number, event.payload.body, str(event.event_id))
            assert datetime.fromisoformat(p["received_at"]) == event.payload.received_at
        assert p2["seq"] == p1["seq"] + 1
        # the conversation, newest first: the code sent before, and (for the second) the first reply
        assert [(e["direction"], e["message_id"]) for e in p1["conversation"]] == [("outbound", code)]
        assert [(e["direction"], e["message_id"] or e["inbound_event_id"], e["body"]) for e in p2["conversation"]] == [
            ("inbound", str(first.event_id), first.payload.body), ("outbound", code, None)]
        assert await pool.fetchval("SELECT count(*) FROM webhook_outbox WHERE tenant_id = $1", quiet.tenant_id) == 0
        rows = await pool.fetch("SELECT kind, state, attempts FROM webhook_outbox WHERE tenant_id = $1 ORDER BY seq",
                                tenant.tenant_id)
        assert [tuple(r) for r in rows] == [("reply", "delivered", 2), ("reply", "delivered", 1)]
        posts = scrape(f"{stack.ops_url('reports')}/metrics")
        assert posts[("herald_webhook_posts_total", frozenset({("kind", "reply"), ("outcome", "delivered")}))] >= 2
        assert posts[("herald_webhook_posts_total", frozenset({("kind", "reply"), ("outcome", "retry")}))] >= 1
