"""Sender pools and sticky senders on PostgreSQL and Kafka, through ingest's API (docs/senders.md,
"Pools and sticky senders"), and the per-sender token bucket shared by dispatcher instances
("Throughput per sender")."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from herald_tools import admin
from services.dispatcher.throttle import PostgresThrottle, sender_key
from services.ingest.settings import IngestSettings
from shared.contracts import MessageAcceptedEvent
from shared.topics import ACCEPTED
from tests.conftest import make_tenant, register_senders
from tests.helpers import ingest_client, read_topic


def madrid() -> str:
    return f"+3491{random.randrange(10**6, 10**7)}"


def handset() -> str:
    return f"+346{random.randrange(10**7, 10**8)}"


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(env, pool, IngestSettings(link_tracking=False)) as c:
        yield c


async def accepted_events(env, ids: set[str]) -> dict[str, MessageAcceptedEvent]:
    records = await read_topic(env.bootstrap, ACCEPTED.name(env.prefix),
                               lambda rs: ids <= {json.loads(r.value)["payload"]["message_id"] for r in rs}, timeout_s=60)
    events = [MessageAcceptedEvent.model_validate_json(r.value) for r in records]
    return {str(e.payload.message_id): e for e in events if str(e.payload.message_id) in ids}


async def test_pools_are_managed_and_a_recipient_keeps_its_sender_until_it_falls_back(client, pool, env) -> None:
    tenant = await make_tenant(pool)
    a, b, c = madrid(), madrid(), madrid()
    await register_senders(pool, tenant.tenant_id, a, b, c, countries=["ES"])
    h = tenant.headers

    # managing pools: only the tenant's own senders
    r = await client.put("/v1/sender-pools/otp", headers=h, json={"senders": [a, "+34919999999"]})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_not_registered"), r.text
    r = await client.put("/v1/sender-pools/otp", headers=h, json={"senders": [a, b, c]})
    assert r.status_code == 200 and r.json()["senders"] == [a, b, c], r.text
    assert (await client.get("/v1/sender-pools/otp", headers=h)).json()["geo_match"] is False
    assert [p["name"] for p in (await client.get("/v1/sender-pools", headers=h)).json()["sender_pools"]] == ["otp"]
    r = await client.get("/v1/sender-pools/nope", headers=h)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "sender_pool_not_found")
    r = await client.post("/v1/messages", headers=h, json={"to": handset(), "body": "x", "sender_pool": "nope"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_pool_not_found"), r.text
    r = await client.post("/v1/messages", headers=h, json={"to": handset(), "body": "x", "sender": a, "sender_pool": "otp"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_or_pool"), r.text

    # a batch: each recipient gets a sender, the same one for its two messages; stored once
    people = [handset() for _ in range(6)]
    r = await client.post("/v1/messages/batch", headers=h, json={"messages": [
        {"to": p, "body": f"Your code is {i}", "sender_pool": "otp"} for i, p in enumerate(people + people)]})
    assert r.status_code == 202, r.text
    ids = [x["message_id"] for x in r.json()["results"]]
    events = await accepted_events(env, set(ids))
    got = [events[i].payload for i in ids]
    assert all(m.sender in (a, b, c) and m.sender_pool == "otp" for m in got)
    assert [m.sender for m in got[:6]] == [m.sender for m in got[6:]]
    assert [m.sender_choice["sender_choice"] for m in got] == ["assigned"] * 6 + ["sticky"] * 6
    stored = {r["phone_e164"]: r["sender"] for r in await pool.fetch(
        "SELECT phone_e164, sender FROM sender_assignments WHERE tenant_id = $1 AND pool = 'otp'", tenant.tenant_id)}
    assert stored == {m.to: m.sender for m in got[:6]}

    # the sticky sender is suspended: the next message falls back in pool order, the reason on the event;
    # the new sender is stored and kept (sticky) from then on, also once the old one is back
    person = people[0]
    old = stored[person]
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, old, "suspended", "complaints")
    r = await client.post("/v1/messages", headers=h, json={"to": person, "body": "Your code is 9", "sender_pool": "otp"})
    assert r.status_code == 202, r.text
    fallback = (await accepted_events(env, {r.json()["message_id"]}))[r.json()["message_id"]].payload
    expected = next(s for s in (a, b, c) if s != old)
    assert fallback.sender == expected
    assert (fallback.sender_choice["sender_choice"], fallback.sender_choice["fallback_from"],
            fallback.sender_choice["fallback_reason"]) == ("fallback", old, "sender_not_verified")
    assert await pool.fetchval("SELECT sender FROM sender_assignments WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, person) == expected
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, old, "verified", "resolved")
    r = await client.post("/v1/messages", headers=h, json={"to": person, "body": "Your code is 10", "sender_pool": "otp"})
    kept = (await accepted_events(env, {r.json()["message_id"]}))[r.json()["message_id"]].payload
    assert (kept.sender, kept.sender_choice["sender_choice"]) == (expected, "sticky")

    # deleting the pool deletes its assignments; messages naming it are refused
    assert (await client.delete("/v1/sender-pools/otp", headers=h)).status_code == 204
    assert await pool.fetchval("SELECT count(*) FROM sender_assignments WHERE tenant_id = $1", tenant.tenant_id) == 0
    r = await client.post("/v1/messages", headers=h, json={"to": person, "body": "x", "sender_pool": "otp"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_pool_not_found"), r.text


async def test_geo_match_and_the_operators_commands(client, pool, env) -> None:
    tenant = await make_tenant(pool)
    nj, ny = f"+1201{random.randrange(2_000_000, 10_000_000)}", f"+1212{random.randrange(2_000_000, 10_000_000)}"
    es = madrid()
    await register_senders(pool, tenant.tenant_id, nj, ny, countries=["US"])
    await register_senders(pool, tenant.tenant_id, es, countries=["ES"])
    async with pool.acquire() as conn:
        for n in (nj, ny):
            await admin.sender_register(conn, "ops", tenant.tenant_id, n, {"ten_dlc": {"brand_id": "B", "campaign_id": "C"}})
    run_env = {**os.environ, **env.vars()}
    cli = subprocess.run([sys.executable, "-m", "herald_tools.cli", "admin", "sender-pool", "set", tenant.tenant_id, "mixed",
                          "--senders", f"{es},{nj},{ny}", "--geo-match"], env=run_env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["geo_match"] is True
    cli = subprocess.run([sys.executable, "-m", "herald_tools.cli", "admin", "sender", "update", tenant.tenant_id, nj,
                          "--rate", "20", "--burst", "5"], env=run_env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert (json.loads(cli.stdout)["rate_per_s"], json.loads(cli.stdout)["burst"]) == (20, 5)
    assert (await client.get(f"/v1/senders/{nj}", headers=tenant.headers)).json()["rate_per_s"] == 20

    to_ny, to_nj, to_es = "+12125550143", "+12015550143", handset()
    r = await client.post("/v1/messages/batch", headers=tenant.headers, json={"messages": [
        {"to": to, "body": "Your code is 1", "sender_pool": "mixed"} for to in (to_ny, to_nj, to_es)]})
    assert r.status_code == 202, r.text
    ids = [x["message_id"] for x in r.json()["results"]]
    events = await accepted_events(env, set(ids))
    got = [events[i].payload for i in ids]
    assert [m.sender for m in got] == [ny, nj, es]
    assert got[1].carrier_ids == {"ten_dlc_brand_id": "B", "ten_dlc_campaign_id": "C"}  # the chosen sender's
    # the rate-limited sender's messages carry its throughput to the dispatcher; the others none
    assert got[1].sender_throttle is not None and (got[1].sender_throttle.kind, got[1].sender_throttle.rate_per_s,
                                                   got[1].sender_throttle.burst) == ("long_code", 20, 5)
    assert got[0].sender_throttle is None
    cli = subprocess.run([sys.executable, "-m", "herald_tools.cli", "admin", "sender-pool", "remove", tenant.tenant_id, "mixed"],
                         env=run_env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert await pool.fetchval("SELECT count(*) FROM sender_pools WHERE tenant_id = $1", tenant.tenant_id) == 0


async def test_two_instances_share_a_senders_bucket(pool) -> None:
    """Two dispatcher instances' throttles (each its own PostgresThrottle) on one sender's bucket:
    priority chunks booked ahead and campaign chunks taken when free together stay at its rate."""
    key = sender_key(f"t{uuid.uuid4().hex[:8]}", madrid())
    first, second = PostgresThrottle(pool, {}), PostgresThrottle(pool, {})
    await asyncio.gather(first.ensure(key, 20.0, 2.0), second.ensure(key, 20.0, 2.0))
    assert await pool.fetchval("SELECT rate FROM throttle_buckets WHERE gateway = $1", key) == 20.0

    async def priority(throttle: PostgresThrottle, n: int) -> int:
        for _ in range(n):
            wait = await throttle.reserve(key, 1)
            if wait > 0:
                await asyncio.sleep(wait)
        return n

    async def bulk(throttle: PostgresThrottle, n: int) -> int:
        for _ in range(n):
            while (wait := await throttle.take_free(key, 1)) > 0:  # noqa: ASYNC110 - the bucket lives in PostgreSQL: polled, as the dispatcher does
                await asyncio.sleep(max(wait, 0.001))
        return n

    started = time.monotonic()
    sent = sum(await asyncio.gather(priority(first, 20), priority(second, 20), bulk(first, 10), bulk(second, 10)))
    elapsed = time.monotonic() - started
    # 60 segments at 20/s with a burst of 2: (60 - 2) / 20 = 2.9 s; within 10 %
    assert sent == 60
    assert 2.9 * 0.9 <= elapsed <= 2.9 * 1.1, elapsed
    # a changed contracted rate is taken on (the tokens kept)
    third = PostgresThrottle(pool, {})
    await third.ensure(key, 50.0, None)
    assert await pool.fetchval("SELECT capacity FROM throttle_buckets WHERE gateway = $1", key) == 50.0


async def test_the_trigger_consumers_registry_read_has_pools_and_rates(pool) -> None:
    """The trigger topic's path reads a batch's tenants' registries in one query: with their pools."""
    from services.ingest.repository import IngestRepository

    tenant, other = await make_tenant(pool), await make_tenant(pool)
    a = madrid()
    await register_senders(pool, tenant.tenant_id, a, countries=["ES"])
    async with pool.acquire() as conn:
        await admin.sender_update(conn, "ops", tenant.tenant_id, a, rate_per_s=5.0)
        await admin.pool_set(conn, "ops", tenant.tenant_id, "otp", [a], geo_match=True)
        await admin.pool_set(conn, "ops", tenant.tenant_id, "second", [a])
    books = await IngestRepository(pool).sender_books({tenant.tenant_id, other.tenant_id})
    book = books[tenant.tenant_id]
    assert set(book.pools) == {"otp", "second"} and book.pools["otp"].geo_match and book.pools["otp"].senders == (a,)
    assert book.senders[a].rate_per_s == 5.0 and book.senders[a].countries == frozenset({"ES"})
    assert other.tenant_id not in books


async def test_a_campaign_sends_from_a_pool_with_sticky_senders(env, pool) -> None:
    """A campaign naming a sender pool: the launcher picks each contact's sender (sticky across
    campaigns, falling back when one is suspended) and stores the assignments."""
    from fastapi import FastAPI

    from services.ingest import deps
    from services.ingest.audience.contacts_api import router as audience_router
    from services.ingest.campaigns.api import router as campaigns_router
    from services.ingest.campaigns.launcher import Launcher
    from shared.api import install_error_handlers
    from shared.kafka import Publisher, make_producer
    from shared.settings import ServiceSettings
    from shared.topics import ACCEPTED_BULK

    tenant = await make_tenant(pool)
    a, b = madrid(), madrid()
    await register_senders(pool, tenant.tenant_id, a, b, countries=["ES"])
    async with pool.acquire() as conn:
        await admin.pool_set(conn, "ops", tenant.tenant_id, "promo", [a, b])
        await admin.sender_update(conn, "ops", tenant.tenant_id, a, rate_per_s=50.0)
    settings = ServiceSettings()
    producer = make_producer(settings, "test-campaign-pools")
    await producer.start()
    publisher = Publisher(producer, settings.topic_prefix, "test")
    app = FastAPI()
    deps.install(app, IngestSettings(), pool, publisher)
    install_error_handlers(app)
    app.include_router(audience_router)
    app.include_router(campaigns_router)
    h = tenant.headers
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=120) as c:
            base = random.randrange(10**6, 10**7)
            lines = ["phone,first_name,tags"] + [f"+3469{base + i:07d},Ana,vip" for i in range(30)]
            r = await c.post("/v1/contacts/import", content="\n".join(lines), headers={**h, "Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
            r = await c.post("/v1/templates", headers=h, json={"name": "sale", "purpose": "marketing", "default_language": "en",
                                                              "variants": {"en": "Sale today. Reply STOP to opt out"}})
            template_id = r.json()["template_id"]
            body = {"name": "promo", "segment": '"vip" in tags',
                    "variants": [{"name": "A", "template_id": template_id, "percent": 100}]}
            r = await c.post("/v1/campaigns", headers=h, json={**body, "sender_pool": "nope"})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_pool_not_found"), r.text
            r = await c.post("/v1/campaigns", headers=h, json={**body, "sender_pool": "promo", "sender": a})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "sender_or_pool"), r.text

            async def run_campaign(**naming: str) -> list:
                naming = naming or {"sender_pool": "promo"}
                r = await c.post("/v1/campaigns", headers=h, json={**body, **naming})
                assert r.status_code == 201 and r.json()["sender_pool"] == naming.get("sender_pool"), r.text
                cid = r.json()["campaign_id"]
                assert (await c.post(f"/v1/campaigns/{cid}/launch", headers=h)).json()["state"] == "running"
                assert await Launcher(pool, publisher, page_size=10).run_once()

                def ours(records: list) -> list:
                    events = [MessageAcceptedEvent.model_validate_json(x.value) for x in records]
                    return [e.payload for e in events if str(e.payload.campaign_id) == cid]

                records = await read_topic(env.bootstrap, ACCEPTED_BULK.name(env.prefix), lambda rs: len(ours(rs)) >= 30,
                                           timeout_s=60)
                return ours(records)

            first = await run_campaign()
            assert len(first) == 30 and {m.sender for m in first} == {a, b}
            assert {m.sender_choice["sender_choice"] for m in first} == {"assigned"}
            assert all((m.sender_throttle is not None) == (m.sender == a) for m in first)
            stored = {r["phone_e164"]: r["sender"] for r in await pool.fetch(
                "SELECT phone_e164, sender FROM sender_assignments WHERE tenant_id = $1 AND pool = 'promo'", tenant.tenant_id)}
            assert stored == {m.to: m.sender for m in first}

            async with pool.acquire() as conn:
                await admin.sender_set_state(conn, "ops", tenant.tenant_id, b, "suspended", "complaints")
            second = await run_campaign()
            assert {m.sender for m in second} == {a}
            for m in second:
                if stored[m.to] == b:
                    assert (m.sender_choice["sender_choice"], m.sender_choice["fallback_from"]) == ("fallback", b)
                else:
                    assert m.sender_choice["sender_choice"] == "sticky"
            assert set((await pool.fetch("SELECT DISTINCT sender FROM sender_assignments WHERE tenant_id = $1",
                                         tenant.tenant_id))[0]) == {a}

            # a campaign naming one sender with a contracted rate carries it too (docs/senders.md,
            # "Throughput per sender"); one without a rate carries none
            single = await run_campaign(sender=a)
            assert {m.sender for m in single} == {a} and all(not m.sender_choice and m.sender_pool is None for m in single)
            assert all(m.sender_throttle is not None and (m.sender_throttle.kind, m.sender_throttle.rate_per_s)
                       == ("long_code", 50.0) for m in single), single[0].sender_throttle
            async with pool.acquire() as conn:
                await admin.sender_set_state(conn, "ops", tenant.tenant_id, b, "verified", "resolved")
            assert all(m.sender == b and m.sender_throttle is None for m in await run_campaign(sender=b))
    finally:
        await producer.stop()


async def test_two_instances_assigning_one_new_recipient_at_once_agree(pool) -> None:
    """Another ingest instance stores the recipient's sender between this one's read and write:
    its choice stands, and this message goes from it too."""
    from services.ingest.repository import IngestRepository
    from services.ingest.service import Accepted, Acceptor
    from shared.contracts import MessageRequest, utcnow
    from shared.senders import Pool, Sender, SenderBook, choose_from_pool, load_rules

    tenant = await make_tenant(pool)
    a, b = madrid(), madrid()
    person = handset()
    book = SenderBook({s: Sender(s, "long_code", countries=frozenset({"ES"})) for s in (a, b)}, {"otp": Pool("otp", (a, b))})
    ours = choose_from_pool(book, "otp", person, "ES", load_rules()).sender  # type: ignore[union-attr]
    theirs = b if ours == a else a  # what the other instance chose (another spread, an older pool order)

    class Racing(IngestRepository):
        async def sender_assignments(self, tenant_id, keys):  # noqa: ANN001, ANN201
            found = await super().sender_assignments(tenant_id, keys)
            # the other instance, right after this one read: it stored the other sender
            await pool.execute("INSERT INTO sender_assignments (tenant_id, pool, phone_e164, sender) VALUES ($1, 'otp', $2, $3)",
                               tenant_id, person, theirs)
            return found

    acceptor = Acceptor(Racing(pool), IngestSettings(link_tracking=False))
    results, outgoing = await acceptor.prepare(tenant.tenant_id, [MessageRequest(to=person, body="x", sender_pool="otp")],
                                               source="api", now=utcnow(), trace_id="t", senders=book)
    (result,) = results
    assert isinstance(result, Accepted)
    assert (result.message.sender, result.message.sender_choice["sender_choice"]) == (theirs, "sticky")
    assert outgoing[0].event.payload.sender == theirs  # type: ignore[attr-defined]
    assert await pool.fetchval("SELECT sender FROM sender_assignments WHERE tenant_id = $1 AND phone_e164 = $2",
                               tenant.tenant_id, person) == theirs
