"""Sending by template through ingest's API (in-process, real PostgreSQL and Kafka): single
sends and batches rendered in the recipient's language with per-send values, the refusals with
their codes, versions (a send after an update uses the new one; a message says which), archive,
and scopes."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.ingest.settings import IngestSettings
from shared.contracts import MessageAccepted, MessageAcceptedEvent
from shared.topics import ACCEPTED, ACCEPTED_BULK
from tests.conftest import Tenant, make_tenant, register_senders
from tests.helpers import ingest_client, read_topic

pytestmark = pytest.mark.integration

PROMO = {
    "name": "promo", "purpose": "marketing", "default_language": "en",
    "variants": {"en": "Hi {{first_name|there}}, use {{values.code}} today", "es": "Hola {{first_name|}}, usa {{values.code}} hoy"},
}
US_LONG_CODE = f"+1201{random.randrange(2_000_000, 10_000_000)}"  # a New Jersey number of its own per run
OTP = {"name": "otp", "purpose": "transactional", "default_language": "en", "sender": "Acme",
       "variants": {"en": "Your code is {{values.code}}", "es": "Tu código es {{values.code}}"}}


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(env, pool, IngestSettings(link_tracking=False)) as c:
        yield c


async def accepted(env, ids: list[str]) -> dict[str, MessageAccepted]:
    """The accepted message of each id, from both lanes."""
    wanted, found = set(ids), {}
    for topic in (ACCEPTED, ACCEPTED_BULK):
        def done(records, topic=topic) -> bool:
            for r in records:
                m = MessageAcceptedEvent.model_validate_json(r.value).payload
                if str(m.message_id) in wanted:
                    found[str(m.message_id)] = m
            return wanted <= set(found)

        await read_topic(env.bootstrap, topic.name(env.prefix), done, timeout_s=30)
    return found


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def create(client: httpx.AsyncClient, tenant: Tenant, body: dict) -> str:
    r = await client.post("/v1/templates", json={**body, "name": f"{body['name']}-{uuid.uuid4().hex[:6]}"},
                          headers=tenant.headers)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["archived"] is False
    return r.json()["template_id"]


async def test_single_and_batch_sends_render_in_the_recipients_language(client, env, pool) -> None:
    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Acme", "Other")  # the senders its templates and messages name
    # alphanumeric ids do not reach US handsets: the US message goes from a US long code with its 10DLC registration
    await register_senders(pool, tenant.tenant_id, US_LONG_CODE, registrations={"ten_dlc": {"brand_id": "B1", "campaign_id": "C1"}})
    promo, otp = await create(client, tenant, PROMO), await create(client, tenant, OTP)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO contacts (tenant_id, phone_e164, country, language, first_name)"
                           " VALUES ($1, '+34600770001', 'ES', 'es', 'Lucía'), ($1, '+34600770002', 'ES', 'en', 'Sam')",
                           tenant.tenant_id)

    async def send(**body) -> httpx.Response:
        return await client.post("/v1/messages", json=body, headers=tenant.headers)

    r = await send(to="+34600770001", template_id=promo, values={"code": "SALE20"})
    assert r.status_code == 202, r.text
    single = r.json()["message_id"]
    r = await client.post("/v1/messages/batch", headers=tenant.headers, json={"messages": [
        {"to": "+34600770002", "template_id": promo, "values": {"code": "SALE20"}},  # a contact who reads English
        {"to": "+34600770003", "template_id": promo, "values": {"code": "SALE20"}},  # a Spanish number, no contact
        {"to": "+12025550143", "template_id": otp, "values": {"code": 482913}, "sender": US_LONG_CODE},  # a US number: the default
        {"to": "+34600770001", "template_id": otp, "values": {"code": "111"}, "sender": "Other"},
        {"to": "+34600770004", "template_id": promo},  # values.code missing
        {"to": "+34600770004", "template_id": str(uuid.uuid4()), "values": {"code": "1"}},
        {"to": "+34600770004", "template_id": promo, "body": "both"},
        {"to": "+34600770004", "template_id": otp, "values": {"code": "1"}, "type": "marketing"},
        {"to": "+34600770004", "template_id": promo, "template_version": 5, "values": {"code": "1"}},
        {"to": "+34600770005", "body": "Rebajas hoy", "type": "marketing"},  # a raw one in the same batch
    ]})
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x.get("error", {}).get("code") for x in results] == [
        None, None, None, None, "template_variable_missing", "template_not_found", "template_or_body",
        "template_type_mismatch", "template_version_not_found", None]
    assert results[4]["error"]["details"][0]["loc"] == "values.code"
    ids = [single] + [x["message_id"] for x in results if "message_id" in x]
    got = await accepted(env, ids)
    texts = [got[i].body for i in ids]
    assert texts == [
        "Hola Lucía, usa SALE20 hoy\nResponde BAJA para darte de baja",
        "Hi Sam, use SALE20 today\nReply STOP to opt out",
        "Hola , usa SALE20 hoy\nResponde BAJA para darte de baja",
        "Your code is 482913",
        "Tu código es 111",
        "Rebajas hoy\nResponde BAJA para darte de baja",
    ]
    assert [got[i].type.value for i in ids] == ["marketing", "marketing", "marketing", "transactional", "transactional",
                                                "marketing"]
    assert [got[i].sender for i in ids[3:5]] == [US_LONG_CODE, "Other"]
    assert [(str(got[i].template_id), got[i].template_version) for i in ids[:5]] == (
        [(promo, 1)] * 3 + [(otp, 1)] * 2)
    assert got[ids[5]].template_id is None

    # single sends answer the specific reasons
    assert error(await send(to="+34600770001", template_id=promo)) == (422, "template_variable_missing")
    assert error(await send(to="+34600770001")) == (422, "template_or_body")
    assert error(await send(to="+34600770001", body="x", template_id=promo)) == (422, "template_or_body")
    assert error(await send(to="+34600770001", template_id=str(uuid.uuid4()), values={"code": "1"})) == (
        422, "template_not_found")
    other = await make_tenant(pool)  # another tenant's template is unknown
    r = await client.post("/v1/messages", json={"to": "+34600770001", "template_id": promo, "values": {"code": "1"}},
                          headers=other.headers)
    assert error(r) == (422, "template_not_found")
    # an idempotency key replays the same message, rendered or not
    keyed = {"to": "+34600770001", "template_id": otp, "values": {"code": "9"}, "idempotency_key": "tpl-1"}
    first, again = await send(**keyed), await send(**keyed)
    assert first.json()["message_id"] == again.json()["message_id"] and again.json()["duplicate"] is True
    assert error(await send(**{**keyed, "values": {"code": "8"}})) == (409, "idempotency_conflict")


async def test_versions_and_archive(client, env, pool) -> None:
    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Acme", "Other")  # the senders its templates and messages name
    tid = await create(client, tenant, OTP)
    base = f"/v1/templates/{tid}"
    v2 = {**OTP, "name": "otp-v2", "variants": {"en": "Code: {{values.code}}", "es": "Código: {{values.code}}"}}
    r = await client.put(base, json=v2, headers={**tenant.headers, "If-Match": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["variants"]["en"] == "Code: {{values.code}}"
    assert error(await client.put(base, json=v2, headers={**tenant.headers, "If-Match": "1"})) == (409, "version_conflict")
    bad = {**v2, "variants": {"en": "Code: {{code}}"}}
    assert error(await client.put(base, json=bad, headers=tenant.headers)) == (422, "template_invalid")
    assert (await client.get(base, headers=tenant.headers)).json()["version"] == 2
    assert (await client.get(f"{base}?version=1", headers=tenant.headers)).json()["variants"]["en"] == OTP["variants"]["en"]
    assert error(await client.get(f"{base}?version=3", headers=tenant.headers)) == (404, "template_not_found")
    versions = (await client.get(f"{base}/versions", headers=tenant.headers)).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]

    send = {"to": "+34600770011", "template_id": tid, "values": {"code": "5"}}
    latest = await client.post("/v1/messages", json=send, headers=tenant.headers)
    pinned = await client.post("/v1/messages", json={**send, "template_version": 1}, headers=tenant.headers)
    assert latest.status_code == pinned.status_code == 202, (latest.text, pinned.text)
    got = await accepted(env, [latest.json()["message_id"], pinned.json()["message_id"]])
    assert (got[latest.json()["message_id"]].body, got[latest.json()["message_id"]].template_version) == ("Código: 5", 2)
    assert (got[pinned.json()["message_id"]].body, got[pinned.json()["message_id"]].template_version) == ("Tu código es 5", 1)

    r = await client.post(f"{base}/archive", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["archived"] is True and r.json()["archived_at"]
    assert (await client.post(f"{base}/archive", headers=tenant.headers)).json()["archived_at"] == r.json()["archived_at"]
    assert error(await client.post("/v1/messages", json=send, headers=tenant.headers)) == (422, "template_archived")
    r = await client.post("/v1/messages/batch", json={"messages": [send]}, headers=tenant.headers)
    assert error(r) == (422, "all_rejected") and r.json()["error"]["details"][0]["code"] == "template_archived"
    assert error(await client.put(base, json=v2, headers=tenant.headers)) == (409, "template_archived")
    assert (await client.get(base, headers=tenant.headers)).json()["archived"] is True  # still readable
    listed = (await client.get("/v1/templates?archived=true", headers=tenant.headers)).json()["templates"]
    assert [t["template_id"] for t in listed] == [tid]
    assert (await client.get("/v1/templates?archived=false", headers=tenant.headers)).json()["templates"] == []
    campaign = {"name": "x", "segment": 'country = "ES"', "variants": [{"name": "A", "template_id": tid, "percent": 100}]}
    assert error(await client.post("/v1/campaigns", json=campaign, headers=tenant.headers)) == (422, "template_archived")
    assert error(await client.post("/v1/templates/nope/archive", headers=tenant.headers)) == (404, "template_not_found")


async def test_scopes(client, pool) -> None:
    from shared.auth import create_key

    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Acme", "Other")  # the senders its templates and messages name
    tid = await create(client, tenant, OTP)
    async with pool.acquire() as conn:
        reader = Tenant(tenant.tenant_id, await create_key(conn, tenant.tenant_id, ("contacts:read", "messages:read")))
        sender = Tenant(tenant.tenant_id, await create_key(conn, tenant.tenant_id, ("messages:write",)))
    # template writes need contacts:write, as creating one does
    for r in (await client.put(f"/v1/templates/{tid}", json=OTP, headers=reader.headers),
              await client.post(f"/v1/templates/{tid}/archive", headers=reader.headers),
              await client.put(f"/v1/templates/{tid}", json=OTP, headers=sender.headers)):
        assert error(r) == (403, "insufficient_scope")
    send = {"to": "+34600770021", "template_id": tid, "values": {"code": "1"}}
    assert error(await client.post("/v1/messages", json=send, headers=reader.headers)) == (403, "insufficient_scope")
    # sending by template needs messages:write only, as any send
    assert (await client.post("/v1/messages", json=send, headers=sender.headers)).status_code == 202
