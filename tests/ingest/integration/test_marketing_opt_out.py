"""Marketing through the raw API gets its opt-out line (ingest in-process, real PostgreSQL and
Kafka): in the contact's language, else the number's country's; a text that has one is left
alone; a tenant set to 'refuse' gets 422 opt_out_missing instead; transactional texts never."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from herald_tools import admin
from services.ingest.settings import IngestSettings
from shared.contracts import MessageAcceptedEvent
from shared.topics import ACCEPTED, ACCEPTED_BULK
from tests.conftest import make_tenant
from tests.helpers import ingest_client, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(env, pool, IngestSettings(link_tracking=False)) as c:
        yield c


async def bodies(env, ids: dict[str, str]) -> dict[str, str]:
    """The accepted text of each message (name -> message id), from both lanes."""
    wanted = set(ids.values())
    found: dict[str, str] = {}
    for topic in (ACCEPTED_BULK, ACCEPTED):
        def done(records, topic=topic) -> bool:
            for r in records:
                e = MessageAcceptedEvent.model_validate_json(r.value)
                if str(e.payload.message_id) in wanted:
                    found[str(e.payload.message_id)] = e.payload.body
            return wanted <= set(found)

        await read_topic(env.bootstrap, topic.name(env.prefix), done, timeout_s=5 if topic is ACCEPTED else 30)
    return {name: found.get(mid, "") for name, mid in ids.items()}


async def test_raw_marketing_gets_its_opt_out_line_or_is_refused(client, env, pool) -> None:
    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO contacts (tenant_id, phone_e164, country, language) VALUES ($1, '+34600880001', 'ES', 'fr')",
                           tenant.tenant_id)

    async def send(to: str, body: str, kind: str = "marketing") -> httpx.Response:
        return await client.post("/v1/messages", json={"to": to, "body": body, "type": kind}, headers=tenant.headers)

    ids = {}
    for name, to, body, kind in [
        ("contact_fr", "+34600880001", "Soldes -30% aujourd'hui", "marketing"),
        ("spanish_number", "+34600880002", "Rebajas hoy", "marketing"),
        ("german_number", "+4915112345678", "Heute 30% Rabatt", "marketing"),
        ("has_one", "+34600880003", "Sale today. Reply STOP to opt out", "marketing"),
        ("transactional", "+34600880004", "Your code is 123456", "transactional"),
    ]:
        r = await send(to, body, kind)
        assert r.status_code == 202, r.text
        ids[name] = r.json()["message_id"]
    # what cannot be a number is refused for itself (a NUL byte must not fail the lookup for the batch)
    r = await client.post("/v1/messages/batch", headers=tenant.headers, json={"messages": [
        {"to": "+346\x00", "body": "Rebajas", "type": "marketing"}, {"to": "+34600880005", "body": "Rebajas", "type": "marketing"}]})
    assert r.status_code == 202, r.text
    assert r.json()["results"][0]["error"]["code"] in ("not_e164", "unparseable_number", "invalid_number", "impossible_number")
    got = await bodies(env, ids)
    assert got["contact_fr"] == "Soldes -30% aujourd'hui\nRépondez STOP pour vous désabonner"
    assert got["spanish_number"] == "Rebajas hoy\nResponde BAJA para darte de baja"
    assert got["german_number"] == "Heute 30% Rabatt\nAntworte STOP zum Abmelden"
    assert got["has_one"] == "Sale today. Reply STOP to opt out"
    assert got["transactional"] == "Your code is 123456"

    async with pool.acquire() as conn:
        await admin.tenant_policy_set(conn, "test", tenant.tenant_id, marketing_opt_out="refuse")
    r = await send("+34600880002", "Rebajas hoy")
    assert r.status_code == 422 and r.json()["error"]["code"] == "opt_out_missing", r.text
    assert "Responde BAJA" in r.json()["error"]["details"][0]["msg"]
    assert (await send("+34600880002", "Rebajas hoy. Responde BAJA para darte de baja")).status_code == 202
    r = await client.post("/v1/messages/batch", headers=tenant.headers, json={"messages": [
        {"to": "+34600880002", "body": "Rebajas", "type": "marketing"}, {"to": "+34600880004", "body": "Code 1"}]})
    assert r.status_code == 202 and r.json()["results"][0]["error"]["code"] == "opt_out_missing"
    assert r.json()["accepted"] == 1
