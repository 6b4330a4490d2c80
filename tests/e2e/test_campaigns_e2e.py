"""Campaigns through all four services and the simulator: the scheduler's gate (consent,
frequency caps) with a reason for every skipped contact, and pause/resume with no SMS sent
twice. The gateway is slowed to 300 messages per second so a pause lands mid-campaign."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from services.ingest.campaigns.domain import message_id_for
from shared.auth import DEFAULT_SCOPES
from tests.conftest import Tenant, make_tenant
from tests.e2e.test_pipeline import all_final
from tests.helpers import new_stack, running, wait_for

pytestmark = pytest.mark.e2e
PROOF = {"form_id": "checkout", "ip": "203.0.113.9", "text_shown": "Send me offers by SMS"}


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("logs"), gateway_rate=300.0,
                            HERALD_CAMPAIGN_PAGE_SIZE="200")) as s:
        yield s


async def setup_campaign(client: httpx.AsyncClient, numbers: list[str], tag: str, **extra) -> str:
    csv = "phone,first_name,tags\n" + "\n".join(f"{n},Ana,{tag}" for n in numbers)
    r = await client.post("/v1/contacts/import", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["created"] == len(numbers), r.text
    r = await client.post("/v1/templates", json={"name": f"t-{tag}", "purpose": "marketing", "default_language": "en",
                                                 "variants": {"en": "Hi {{first_name|there}}, 30% off today"}})
    assert r.status_code == 201, r.text
    body = {"name": tag, "segment": f'"{tag}" in tags',
            "variants": [{"name": "A", "template_id": r.json()["template_id"], "percent": 100}], **extra}
    r = await client.post("/v1/campaigns", json=body)
    assert r.status_code == 201, r.text
    return r.json()["campaign_id"]


async def contact_ids(pool, tenant: Tenant, numbers: list[str]) -> dict[str, uuid.UUID]:
    rows = await pool.fetch("SELECT phone_e164, contact_id FROM contacts WHERE tenant_id = $1 AND phone_e164 = ANY($2::text[])",
                            tenant.tenant_id, numbers)
    return {r["phone_e164"]: r["contact_id"] for r in rows}


def simulator_refs(stack: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]


async def test_the_gate_skips_contacts_without_consent_or_over_the_cap_with_reasons(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "policy:write"), marketing_consent="required")
    numbers = list(dict.fromkeys(demo_numbers(120, seed=41, countries=marketing_countries(True))))
    consenting, refused, capped = numbers[:80], numbers[80:100], numbers[:10]  # numbers[100:] never answered
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as client:
        cid = await setup_campaign(client, numbers, "gate")
        ids = await contact_ids(pool, tenant, numbers)
        for n in consenting + refused:
            r = await client.post(f"/v1/contacts/{ids[n]}/consents", json={
                "purpose": "marketing", "granted": n in consenting, "source": "web_form", **({"proof": PROOF} if n in consenting else {})})
            assert r.status_code == 201, r.text
        r = await client.put("/v1/policy", json={"frequency_caps": [{"max": 1, "window_s": 86400}]})
        assert r.status_code == 200
        # Ten contacts got a marketing message today already: the campaign's is over their cap.
        r = await client.post("/v1/messages/batch", json={"messages": [{"to": n, "body": "Earlier offer", "type": "marketing"} for n in capped]})
        earlier = [x["message_id"] for x in r.json()["results"]]
        assert "suppressed" not in (await all_final(pool, earlier)).values()
        assert (await client.post(f"/v1/campaigns/{cid}/launch")).json()["state"] == "running"
        campaign_messages = {n: str(message_id_for(uuid.UUID(cid), ids[n])) for n in numbers}
        statuses = await all_final(pool, list(campaign_messages.values()))
    rows = await pool.fetch("SELECT message_id::text AS id, status, reason_code FROM messages WHERE message_id = ANY($1::uuid[])",
                            list(campaign_messages.values()))
    by_id = {r["id"]: (r["status"], r["reason_code"]) for r in rows}
    outcome = {n: by_id[m] for n, m in campaign_messages.items()}
    assert len(numbers) == 120 and Counter(r for s, r in outcome.values() if s == "suppressed") == {
        "frequency_capped": 10, "suppressed": 20, "no_consent": 20}  # a withdrawal also suppresses the number
    assert all(outcome[n][0] in ("delivered", "undelivered", "failed") for n in consenting[10:])
    refs = simulator_refs(stack)
    assert {campaign_messages[n] for n in numbers if campaign_messages[n] in refs} == {campaign_messages[n] for n in consenting[10:]}
    assert len(statuses) == 120


async def test_pause_stops_sending_within_seconds_and_resume_sends_the_rest_once(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)  # 'opt_out' mode: no consent calls needed for 1,500 contacts
    numbers = list(dict.fromkeys(demo_numbers(1500, seed=43, countries=marketing_countries(True))))
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as client:
        cid = await setup_campaign(client, numbers, "pause")
        ids = await contact_ids(pool, tenant, numbers)
        messages = {str(message_id_for(uuid.UUID(cid), c)) for c in ids.values()}
        assert (await client.post(f"/v1/campaigns/{cid}/launch")).status_code == 200

        def sent() -> int:
            refs = simulator_refs(stack)
            return sum(1 for m in messages if m in refs)

        async def started() -> bool:
            return sent() >= 150

        await wait_for(started, timeout_s=60)
        r = await client.post(f"/v1/campaigns/{cid}/pause")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "paused"
        await asyncio.sleep(4)  # what was already at the gateway's door finishes
        at_pause = sent()
        await asyncio.sleep(4)
        assert sent() == at_pause, "nothing more is sent while paused"
        assert at_pause < len(numbers) - 300, "paused well before the end"
        held = await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE campaign_id = $1 AND reason_code = 'campaign_paused'",
                                   uuid.UUID(cid))
        assert held > 0
        assert (await client.post(f"/v1/campaigns/{cid}/resume")).json()["state"] in ("running", "completed")
        statuses = await all_final(pool, list(messages), timeout_s=120)
    assert Counter(statuses.values()).keys() <= {"delivered", "undelivered", "failed"}
    refs = simulator_refs(stack)
    assert {m: refs.get(m) for m in messages} == {m: 1 for m in messages}, "every contact got exactly one SMS"
    assert httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats").json()["duplicates"] == {}


async def test_contacts_outside_the_tenants_geo_permissions_are_refused_and_reported_not_sent(stack: Stack, pool) -> None:
    """A campaign's messages pass the API's per-message checks: the contacts in a country the
    tenant may not send to get a failed status with `destination_not_allowed`, counted in the
    campaign's report, and never reach the gateway; the others are sent."""
    from herald_tools.demo import NUMBER_PATTERNS

    allowed = marketing_countries(True)[0]
    other = next(c for c in NUMBER_PATTERNS if c != allowed)
    tenant = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "policy:write"))
    inside = list(dict.fromkeys(demo_numbers(30, seed=47, countries=[allowed])))
    outside = list(dict.fromkeys(demo_numbers(10, seed=48, countries=[other])))
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as client:
        cid = await setup_campaign(client, inside + outside, "geo")
        r = await client.put("/v1/policy", json={"allowed_countries": [allowed]})
        assert r.status_code == 200, r.text
        ids = await contact_ids(pool, tenant, inside + outside)
        assert (await client.post(f"/v1/campaigns/{cid}/launch")).json()["state"] == "running"
        campaign_messages = {n: str(message_id_for(uuid.UUID(cid), ids[n])) for n in inside + outside}
        statuses = await all_final(pool, list(campaign_messages.values()))
    assert {statuses[campaign_messages[n]] for n in outside} == {"failed"}
    assert {statuses[campaign_messages[n]] for n in inside} <= {"delivered", "undelivered", "failed"}  # the simulator's mix

    async def reasons(numbers: list[str]) -> set[tuple]:
        rows = await pool.fetch("SELECT reason_code, campaign_id, variant FROM messages WHERE message_id = ANY($1::uuid[])",
                                [uuid.UUID(campaign_messages[n]) for n in numbers])
        return {(r["reason_code"], str(r["campaign_id"]), r["variant"]) for r in rows}

    assert await reasons(outside) == {("destination_not_allowed", cid, "A")}
    assert ("destination_not_allowed", cid, "A") not in await reasons(inside)
    refs = simulator_refs(stack)
    assert not any(campaign_messages[n] in refs for n in outside)
    assert all(refs.get(campaign_messages[n]) == 1 for n in inside)
    async with httpx.AsyncClient(base_url=stack.url("reports"), headers=tenant.headers, timeout=30) as reports:
        report = (await reports.get(f"/v1/campaigns/{cid}/report")).json()
    failed = sum(1 for m in campaign_messages.values() if statuses[m] == "failed")
    assert (report["totals"]["targeted"], report["totals"]["failed"]) == (len(inside) + len(outside), failed), report
