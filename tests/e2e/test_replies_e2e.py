"""Inbound replies through the real services: a handset answers STOP (any case, any accent),
is opted out at once, gets a confirmation through the real pipeline (the simulator sees it),
and the next marketing message to it is suppressed; START subscribes it again; a STOP sent to a
number registered with a brand scope only stops that brand."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from shared import admin
from shared.contracts import SYSTEM_TENANT, InboundMessage, InboundMessageEvent
from shared.devtools.demo import demo_numbers, marketing_countries
from shared.devtools.stack import Stack
from shared.topics import INBOUND
from tests.conftest import Tenant, make_tenant
from tests.helpers import produce_raw, wait_for

pytestmark = pytest.mark.e2e


def a_handset() -> str:
    countries = marketing_countries(True) or ["ES"]  # where marketing may go out now, if anywhere
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

    # An ordinary reply and HELP do not change consent.
    await reply(stack, handset, general, "Ayuda")
    help_event = await reply(stack, handset, general, "aide")
    await confirmation_seen(stack, pool, tenant, help_event, handset)
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1", tenant.tenant_id) == 0
