"""Admin actions with their audit trail, key rotation and revocation, and per-key rate
limits enforced across two ingest app instances sharing one database."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from herald_tools import admin
from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from shared.kafka import Publisher, make_producer

pytestmark = pytest.mark.integration
MSG = {"to": "+34600000001", "body": "hi"}


@pytest.fixture(scope="module")
async def two_ingests(env, pool):
    settings = IngestSettings()
    producer = make_producer(settings, "test-limits")
    await producer.start()
    repository = IngestRepository(pool)

    clients = []
    for _ in range(2):  # two instances: separate apps, one shared database
        app = create_app(settings, pool, Acceptor(repository, settings), Publisher(producer, env.prefix, "ingest"), repository)
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest"))
    yield clients
    for c in clients:
        await c.aclose()
    await producer.stop()


async def test_burst_is_held_to_the_key_limit_across_instances(pool, two_ingests) -> None:
    async with pool.acquire() as conn:
        await admin.tenant_create(conn, "tester", "limits-tenant", "Limits")
        key = await admin.key_create(conn, "tester", "limits-tenant", ["messages:write"], "burst", requests_per_minute=100)
    headers = {"Authorization": f"Bearer {key}"}

    async def one(i: int) -> httpx.Response:
        return await two_ingests[i % 2].post("/v1/messages", json=MSG, headers=headers)

    answers = await asyncio.gather(*(one(i) for i in range(300)))
    accepted = sum(r.status_code == 202 for r in answers)
    limited = [r for r in answers if r.status_code == 429]
    assert 90 <= accepted <= 110, accepted
    assert len(limited) == 300 - accepted
    assert limited[0].json()["error"]["code"] == "rate_limited" and int(limited[0].headers["retry-after"]) >= 1


async def test_messages_per_minute_counts_batch_items(pool, two_ingests) -> None:
    async with pool.acquire() as conn:
        await admin.tenant_create(conn, "tester", "mpm-tenant", "MPM")
        key = await admin.key_create(conn, "tester", "mpm-tenant", ["messages:write"], "mpm", messages_per_minute=1000)
    headers = {"Authorization": f"Bearer {key}"}
    r = await two_ingests[0].post("/v1/messages/batch", json={"messages": [MSG] * 900}, headers=headers)
    assert r.status_code == 202
    r = await two_ingests[1].post("/v1/messages/batch", json={"messages": [MSG] * 200}, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited")
    r = await two_ingests[1].post("/v1/messages/batch", json={"messages": [MSG] * 100}, headers=headers)
    assert r.status_code == 202, "refused messages must not use up the budget"


async def test_revoke_and_rotate_take_effect_at_once_on_every_instance(pool, two_ingests) -> None:
    async with pool.acquire() as conn:
        first = await admin.tenant_create(conn, "tester", "keys-tenant", "Keys")
    headers = {"Authorization": f"Bearer {first}"}
    for client in two_ingests:
        assert (await client.post("/v1/messages", json=MSG, headers=headers)).status_code == 202
    async with pool.acquire() as conn:
        rotated = await admin.key_rotate(conn, "tester", first.split("_")[1], overlap_s=3600)
    for client in two_ingests:  # overlap: both keys work
        assert (await client.post("/v1/messages", json=MSG, headers=headers)).status_code == 202
        assert (await client.post("/v1/messages", json=MSG, headers={"Authorization": f"Bearer {rotated}"})).status_code == 202
    async with pool.acquire() as conn:
        assert await admin.key_revoke(conn, "tester", first.split("_")[1])
    for client in two_ingests:
        r = await client.post("/v1/messages", json=MSG, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "revoked_api_key")
    async with pool.acquire() as conn:
        expiring = await admin.key_rotate(conn, "tester", rotated.split("_")[1], overlap_s=0)
        entries = await admin.audit_entries(conn, 10)
    r = await two_ingests[0].post("/v1/messages", json=MSG, headers={"Authorization": f"Bearer {rotated}"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "expired_api_key")
    assert (await two_ingests[1].post("/v1/messages", json=MSG, headers={"Authorization": f"Bearer {expiring}"})).status_code == 202
    actions = [(e["actor"], e["action"]) for e in entries]
    assert ("tester", "key.revoke") in actions and ("tester", "key.rotate") in actions
    assert all(e["detail"] is not None and isinstance(e["detail"], dict) for e in entries)


async def test_suppression_import_and_export(pool) -> None:
    async with pool.acquire() as conn:
        await admin.tenant_create(conn, "tester", "supp-tenant", "Supp")
        result = await admin.suppressions_import(
            conn, "tester", "supp-tenant",
            [{"phone": "+34600000001", "reason": "stop"}, {"phone": "oops"}, {"phone": "+34600000002"}], "imported",
        )
        exported = await admin.suppressions_export(conn, "tester", "supp-tenant")
    assert result["imported"] == 2 and result["errors"][0]["line"] == 3
    assert exported.splitlines()[1:] and "+34600000001,stop,import" in exported and "+34600000002,imported" in exported


async def test_gateways_view_hides_secrets_and_shows_state(pool, monkeypatch) -> None:
    import json
    import uuid

    carrier = f"carrier-{uuid.uuid4().hex[:6]}"  # its own throttle row in the session's database

    monkeypatch.setenv("HERALD_GATEWAYS", json.dumps([
        {"name": carrier, "kind": "smpp", "host": "127.0.0.1", "port": 2775, "system_id": "acme", "password": "s3cr3t"},
        {"name": "tw", "kind": "twilio", "account_sid": "AC" + "1" * 32, "auth_token": "t0ken", "from_number": "+15005550006"},
    ]))
    monkeypatch.setenv("HERALD_ROUTES", json.dumps([{"name": "es", "gateways": [carrier, "tw"], "countries": ["ES"]}]))
    async with pool.acquire() as conn:
        # the live throttle state of a gateway (the dispatcher's shared bucket) is shown, as JSON
        await conn.execute(
            "INSERT INTO throttle_buckets (gateway, rate, capacity, tokens, updated_at) VALUES ($1, 50, 100, 42.5, now())"
            " ON CONFLICT (gateway) DO UPDATE SET rate = 50, capacity = 100, tokens = 42.5, updated_at = now()", carrier)
        view = await admin.gateways_view(conn)
    text = json.dumps(view)
    assert "s3cr3t" not in text and "t0ken" not in text
    assert [g["name"] for g in view["gateways"]] == [carrier, "tw"]
    assert view["routes"][0]["gateways"] == [carrier, "tw"]
    throttle = view["gateways"][0]["throttle"]
    assert (throttle["rate"], throttle["capacity"], throttle["tokens"]) == (50.0, 100.0, 42.5) and throttle["updated_at"]
