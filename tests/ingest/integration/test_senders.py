"""The sender registry on PostgreSQL, through ingest's API (docs/senders.md): a tenant sends only
from its own verified senders; requests, verification and suspension; templates, campaigns and
journeys that name a sender; replies routed by the same registry."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from herald_tools import admin
from services.ingest.journeys.api import router as journeys_router
from services.ingest.replies.repository import RepliesRepository
from services.ingest.settings import IngestSettings
from shared.api import install_error_handlers
from shared.auth import create_key
from tests.conftest import Tenant, make_tenant, register_senders
from tests.helpers import ingest_client

ES = "+34612345678"
US = "+12025550143"


def madrid() -> str:
    return f"+3491{random.randrange(10**6, 10**7)}"  # Madrid fixed lines: valid numbers to register


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(env, pool, IngestSettings(link_tracking=False)) as c:
        yield c


def code(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, (r.json().get("error", {}).get("code") if r.status_code >= 400 else None)


async def send(client: httpx.AsyncClient, tenant: Tenant, sender: str | None, to: str = ES) -> httpx.Response:
    body = {"to": to, "body": "Your code is 123456"} | ({"sender": sender} if sender is not None else {})
    return await client.post("/v1/messages", json=body, headers=tenant.headers)


async def test_a_tenant_cannot_send_from_another_tenants_number(client, pool) -> None:
    a, b = await make_tenant(pool), await make_tenant(pool)
    number = madrid()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "test", b.tenant_id, number)  # B's number (replies and sending)
    assert code(await send(client, b, number)) == (202, None)
    r = await send(client, a, number)
    assert code(r) == (422, "sender_not_registered"), r.text
    assert r.json()["error"]["details"][0]["loc"] == "sender"
    # the same in a batch: that item only
    r = await client.post("/v1/messages/batch", headers=a.headers, json={"messages": [
        {"to": ES, "body": "x", "sender": number}, {"to": ES, "body": "y"}]})
    assert r.status_code == 202, r.text
    assert [x.get("error", {}).get("code") for x in r.json()["results"]] == ["sender_not_registered", None]


async def test_request_verify_suspend_and_the_very_next_request(client, pool) -> None:
    tenant = await make_tenant(pool)
    r = await client.post("/v1/senders", headers=tenant.headers, json={"sender": "Acme", "countries": ["es", "FR"]})
    assert r.status_code == 201, r.text
    assert (r.json()["state"], r.json()["kind"], r.json()["countries"]) == ("pending", "alphanumeric", ["ES", "FR"])
    r = await send(client, tenant, "Acme")
    assert code(r) == (422, "sender_not_verified"), r.text
    assert "pending" in r.json()["error"]["message"]

    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, "Acme", "verified", "checked the brand")
    assert code(await send(client, tenant, "Acme")) == (202, None)
    r = await send(client, tenant, "Acme", to="+4915112345678")  # Germany: not among the sender's countries
    assert code(r) == (422, "sender_not_allowed_for_country"), r.text

    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, "Acme", "suspended", "complaints")
    r = await send(client, tenant, "Acme")
    assert code(r) == (422, "sender_not_verified") and "suspended" in r.json()["error"]["message"], r.text
    # no sender: the gateway's default sender, as before
    assert code(await send(client, tenant, None)) == (202, None)

    # the tenant sees its senders; each operator action is audited
    listed = (await client.get("/v1/senders", headers=tenant.headers)).json()["senders"]
    assert [(s["sender"], s["state"], s["note"]) for s in listed] == [("Acme", "suspended", "complaints")]
    assert (await client.get("/v1/senders/Acme", headers=tenant.headers)).json()["state"] == "suspended"
    assert code(await client.get("/v1/senders/Globex", headers=tenant.headers)) == (404, "sender_not_found")
    async with pool.acquire() as conn:
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE target = 'Acme' AND detail->>'tenant_id' = $1 ORDER BY id", tenant.tenant_id)]
    assert actions == ["sender.add", "sender.verify", "sender.suspend"]


async def test_us_and_country_rules(client, pool) -> None:
    tenant = await make_tenant(pool)
    us_number = f"+1201{random.randrange(2_000_000, 10_000_000)}"
    await register_senders(pool, tenant.tenant_id, "Acme", us_number)
    r = await send(client, tenant, "Acme", to=US)
    assert code(r) == (422, "sender_not_allowed_for_country") and "not supported in US" in r.json()["error"]["message"]
    r = await send(client, tenant, us_number, to=US)
    assert code(r) == (422, "sender_registration_missing") and "ten_dlc" in r.json()["error"]["message"], r.text
    async with pool.acquire() as conn:
        await admin.sender_register(conn, "ops", tenant.tenant_id, us_number,
                                    {"ten_dlc": {"brand_id": "BRAND1", "campaign_id": "CAMP1"}})
    assert code(await send(client, tenant, us_number, to=US)) == (202, None)
    assert code(await send(client, tenant, "Acme", to=ES)) == (202, None)


async def test_numbers_have_one_owner_alphanumeric_ids_may_be_shared(client, pool) -> None:
    a, b = await make_tenant(pool), await make_tenant(pool)
    number = madrid()
    assert (await client.post("/v1/senders", headers=a.headers, json={"sender": number})).status_code == 201
    assert code(await client.post("/v1/senders", headers=b.headers, json={"sender": number})) == (409, "sender_exists")
    assert code(await client.post("/v1/senders", headers=a.headers, json={"sender": number})) == (409, "sender_exists")
    # an alphanumeric id is a brand each tenant is verified for: B requesting it does not give it A's
    assert (await client.post("/v1/senders", headers=a.headers, json={"sender": "Shop"})).status_code == 201
    assert (await client.post("/v1/senders", headers=b.headers, json={"sender": "Shop"})).status_code == 201
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", a.tenant_id, "Shop", "verified")
    assert code(await send(client, a, "Shop")) == (202, None)
    assert code(await send(client, b, "Shop")) == (422, "sender_not_verified")
    # bad requests
    r = await client.post("/v1/senders", headers=a.headers, json={"sender": "12345"})  # a short code needs its countries
    assert code(r) == (422, "validation_failed"), r.text
    r = await client.post("/v1/senders", headers=a.headers, json={"sender": "Shop2", "capabilities": ["sms", "mo"]})
    assert code(r) == (422, "validation_failed"), r.text
    # withdrawing one's own sender
    assert (await client.delete("/v1/senders/Shop", headers=b.headers)).status_code == 204
    assert code(await client.delete("/v1/senders/Shop", headers=b.headers)) == (404, "sender_not_found")


async def test_scopes(client, pool) -> None:
    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant.tenant_id, ("messages:write",))
    other = {"Authorization": f"Bearer {key}"}
    assert code(await client.get("/v1/senders", headers=other)) == (403, "insufficient_scope")
    assert code(await client.post("/v1/senders", headers=other, json={"sender": "Acme"})) == (403, "insufficient_scope")


async def test_templates_campaigns_and_journeys_name_verified_senders(client, pool) -> None:
    tenant = await make_tenant(pool)
    template = {"name": "otp", "purpose": "transactional", "default_language": "en", "sender": "Acme",
                "variants": {"en": "Your code is {{values.code|0}}"}}
    r = await client.post("/v1/templates", json=template, headers=tenant.headers)
    assert code(r) == (422, "sender_not_registered"), r.text
    assert r.json()["error"]["details"][0]["loc"] == "body.sender"
    await register_senders(pool, tenant.tenant_id, "Acme")
    r = await client.post("/v1/templates", json=template, headers=tenant.headers)
    assert r.status_code == 201, r.text
    tid = r.json()["template_id"]

    campaign = {"name": "c", "segment": "all", "variants": [{"name": "a", "template_id": tid, "percent": 100}]}
    r = await client.post("/v1/campaigns", json={**campaign, "sender": "Globex"}, headers=tenant.headers)
    assert code(r) == (422, "sender_not_registered"), r.text
    r = await client.post("/v1/campaigns", json=campaign, headers=tenant.headers)
    assert r.status_code == 201, r.text
    # suspended after the campaign was made: its launch is refused with the reason
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, "Acme", "suspended")
    r = await client.post(f"/v1/campaigns/{r.json()['campaign_id']}/launch", headers=tenant.headers)
    assert code(r) == (422, "sender_not_verified"), r.text

    # a journey's send step: checked when the journey is stored
    app = FastAPI()
    app.state.pool = pool
    install_error_handlers(app)
    app.include_router(journeys_router)
    journey = json.loads((Path(__file__).resolve().parents[3] / "deploy" / "journeys" / "abandoned-cart.json").read_text())
    journey["steps"][1]["sender"] = "Globex"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as journeys:
        r = await journeys.post("/v1/journeys", json=journey, headers=tenant.headers)
        assert code(r) == (422, "sender_not_registered") and r.json()["error"]["details"][0]["loc"] == "body.steps.1.sender"
        await register_senders(pool, tenant.tenant_id, "Globex")
        r = await journeys.post("/v1/journeys", json=journey, headers=tenant.headers)
        assert r.status_code == 201, r.text


async def test_replies_are_routed_by_the_registry(pool) -> None:
    tenant = await make_tenant(pool)
    number, pending = madrid(), madrid()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "test", tenant.tenant_id, number, scope="shoes")
        # a number the tenant only requested takes no replies until an operator verifies it
        await admin.sender_add(conn, "test", tenant.tenant_id, pending, capabilities=["sms", "mo"])
        listed = await admin.number_list(conn, tenant.tenant_id)
        row = await conn.fetchrow("SELECT kind, state, capabilities FROM senders WHERE sender = $1", number)
    assert [n["number"] for n in listed] == [number]
    assert (row["kind"], row["state"], sorted(row["capabilities"])) == ("long_code", "verified", ["mo", "sms"])
    found = await RepliesRepository(pool).numbers([number, pending])
    assert {n: t.tenant_id for n, t in found.items()} == {number: tenant.tenant_id}
    assert found[number].scope == "shoes"
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, pending, "verified")
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, number, "suspended")  # STOP still reaches the tenant
    found = await RepliesRepository(pool).numbers([number, pending])
    assert sorted(found) == sorted([number, pending])


def herald(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "herald_tools.cli", "admin", *args], env={**os.environ, **env.vars()},
                          capture_output=True, text=True, timeout=60)


async def test_the_admin_cli(env, pool) -> None:
    tenant = await make_tenant(pool)
    t = tenant.tenant_id
    number = madrid()
    run = herald(env, "sender", "add", t, number, "--capabilities", "sms,mo", "--countries", "es", "--scope", "Shoes")
    assert run.returncode == 0, run.stderr
    added = json.loads(run.stdout)
    assert (added["state"], added["kind"], added["countries"], added["scope"]) == ("pending", "long_code", ["ES"], "shoes")
    assert herald(env, "sender", "add", t, "12345").returncode == 1  # a short code needs its countries
    assert json.loads(herald(env, "sender", "verify", t, number, "--note", "ok").stdout)["state"] == "verified"
    run = herald(env, "sender", "register", t, number, "--dlt-entity", "1101")
    assert json.loads(run.stdout)["registrations"] == {"dlt": {"entity_id": "1101"}}, run.stderr
    run = herald(env, "sender", "update", t, number, "--countries", "", "--scope", "")
    assert (json.loads(run.stdout)["countries"], json.loads(run.stdout)["scope"]) == (None, None), run.stderr
    run = herald(env, "sender", "update", t, number, "--kind", "toll_free", "--countries", "ES,PT")
    assert (json.loads(run.stdout)["kind"], json.loads(run.stdout)["countries"]) == ("toll_free", ["ES", "PT"]), run.stderr
    assert herald(env, "sender", "update", t, number, "--kind", "alphanumeric").returncode == 1
    listed = json.loads(herald(env, "sender", "list", t).stdout)
    assert [(s["sender"], s["state"]) for s in listed] == [(number, "verified")]
    assert json.loads(herald(env, "sender", "suspend", t, number).stdout)["state"] == "suspended"
    assert herald(env, "sender", "verify", t, "+34910000000").returncode == 1  # not this tenant's
    assert herald(env, "sender", "remove", t, number).returncode == 0
    assert herald(env, "sender", "remove", t, number).returncode == 1
    async with pool.acquire() as conn:
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE target = $1 ORDER BY id", number)]
    assert actions == ["sender.add", "sender.verify", "sender.register", "sender.update", "sender.update",
                       "sender.suspend", "sender.remove"]


async def test_an_indian_template_send_carries_both_dlt_ids(client, env, pool) -> None:
    from tests.ingest.integration.test_template_sends import accepted

    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "AcmeIN", registrations={"dlt": {"entity_id": "1101000000001"}})
    template = {"name": "otp-in", "purpose": "transactional", "default_language": "en", "sender": "AcmeIN",
                "dlt_template_id": "1107000000000042", "variants": {"en": "Your OTP is {{values.code}}"}}
    r = await client.post("/v1/templates", json=template, headers=tenant.headers)
    assert r.status_code == 201 and r.json()["dlt_template_id"] == "1107000000000042", r.text
    tid = r.json()["template_id"]
    versions = (await client.get(f"/v1/templates/{tid}/versions", headers=tenant.headers)).json()
    assert str(versions).count("1107000000000042") == 1, versions
    india = await client.post("/v1/messages", headers=tenant.headers,
                              json={"to": "+919812345678", "template_id": tid, "values": {"code": "4321"}})
    spain = await client.post("/v1/messages", headers=tenant.headers,
                              json={"to": ES, "template_id": tid, "values": {"code": "4321"}})
    assert india.status_code == 202 and spain.status_code == 202, (india.text, spain.text)
    got = await accepted(env, [india.json()["message_id"], spain.json()["message_id"]])
    assert got[india.json()["message_id"]].carrier_ids == {"dlt_entity_id": "1101000000001",
                                                           "dlt_template_id": "1107000000000042"}
    assert got[spain.json()["message_id"]].carrier_ids == {}  # Spain requires no registration: nothing goes with it
