"""Disabling a tenant stops its traffic at every stage, through all four services and the
simulator: a campaign part way through (its test share queued at a slow gateway, the rest
waiting for the winner), a message scheduled a few seconds ahead and a marketing message
held by quiet hours. Each ends ``suppressed`` with ``tenant_disabled``, the campaign is
cancelled, nothing more of the tenant reaches the gateway, and another tenant's traffic goes
on. Enabling the tenant again lets new messages through; what was suppressed stays so."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from herald_tools import admin
from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from services.ingest.campaigns.domain import message_id_for
from tests.conftest import make_tenant
from tests.e2e.test_campaigns_e2e import contact_ids, simulator_refs
from tests.e2e.test_journeys_e2e import PROOF, example, journey_messages, runs
from tests.e2e.test_pipeline import all_final
from tests.helpers import new_stack, running, wait_for

pytestmark = pytest.mark.e2e
GATEWAY_RATE = 25.0  # slow, so much of the campaign is still queued when the tenant is disabled


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("logs"), gateway_rate=GATEWAY_RATE,
                            HERALD_CONSUMER_MAX_RECORDS="20", HERALD_CAMPAIGN_PAGE_SIZE="50")) as s:
        yield s


async def ab_campaign(client: httpx.AsyncClient, numbers: list[str], tag: str) -> str:
    """A campaign whose test share (half the audience) goes out now; the rest waits an hour for the winner."""
    csv = "phone,first_name,tags\n" + "\n".join(f"{n},Ana,{tag}" for n in numbers)
    r = await client.post("/v1/contacts/import", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["created"] == len(numbers), r.text
    templates = []
    for name in ("a", "b"):
        r = await client.post("/v1/templates", json={"name": f"{tag}-{name}", "purpose": "marketing", "default_language": "en",
                                                     "variants": {"en": f"Hi {{{{first_name}}}}, offer {name}"}})
        assert r.status_code == 201, r.text
        templates.append(r.json()["template_id"])
    r = await client.post("/v1/campaigns", json={
        "name": tag, "segment": f'"{tag}" in tags',
        "variants": [{"name": "A", "template_id": templates[0], "percent": 50},
                     {"name": "B", "template_id": templates[1], "percent": 50}],
        "ab_test": {"test_percent": 50, "wait_s": 3600, "min_sample": 1},
    })
    assert r.status_code == 201, r.text
    return r.json()["campaign_id"]


async def send(client: httpx.AsyncClient, **body) -> str:
    r = await client.post("/v1/messages", json=body)
    assert r.status_code in (200, 201, 202), r.text
    return r.json()["message_id"]


async def test_a_disabled_tenant_sends_nothing_more_and_others_are_unaffected(stack: Stack, pool) -> None:
    quiet = marketing_countries(False, margin=timedelta(minutes=15))
    assert quiet, "some demo country is in quiet hours at any time of day"
    hostile, other = await make_tenant(pool), await make_tenant(pool)
    numbers = list(dict.fromkeys(demo_numbers(400, seed=61, countries=marketing_countries(True))))
    held_number = demo_numbers(1, seed=62, countries=quiet)[0]
    journey_phone, numbers = numbers[-1], numbers[:-1]
    later = (datetime.now(UTC) + timedelta(seconds=8)).isoformat()
    h = httpx.AsyncClient(base_url=stack.url("ingest"), headers=hostile.headers, timeout=60)
    o = httpx.AsyncClient(base_url=stack.url("ingest"), headers=other.headers, timeout=60)
    async with h, o:
        # A journey run waits (2 h, here 10 s) and then sends a nudge: after the tenant is disabled.
        r = await h.post("/v1/journeys", json=example("abandoned-cart", longest_s=120))
        assert r.status_code == 201, r.text
        journey_id = r.json()["journey_id"]
        r = await h.post("/v1/contacts", json={"phone": journey_phone, "first_name": "Carla"})
        assert r.status_code == 201, r.text
        r = await h.post(f"/v1/contacts/{r.json()['contact_id']}/consents",
                         json={"purpose": "marketing", "granted": True, "source": "web_form", "proof": PROOF})
        assert r.status_code == 201, r.text
        r = await h.post("/v1/events", json={"name": "cart.updated", "phone": journey_phone, "properties": {"items": 2}})
        assert r.status_code == 202, r.text
        cid = await ab_campaign(h, numbers, "hostile")
        ids = await contact_ids(pool, hostile, numbers)
        campaign_messages = {str(message_id_for(uuid.UUID(cid), c)) for c in ids.values()}
        scheduled = await send(h, to=numbers[0], body="Your code is 1234", send_at=later)
        quiet_held = await send(h, to=held_number, body="Offer of the night", type="marketing")
        others = [await send(o, to=numbers[1], body="Your code is 5678", send_at=later),
                  await send(o, to=held_number, body="Their offer", type="marketing")]
        assert (await h.post(f"/v1/campaigns/{cid}/launch")).status_code == 200

        def sent() -> set[str]:
            refs = simulator_refs(stack)
            return {m for m in campaign_messages if m in refs}

        async def started() -> bool:
            return len(sent()) >= 10

        await wait_for(started, timeout_s=60)
        held = await pool.fetchval("SELECT reason_code FROM scheduled_messages WHERE message_id = $1", uuid.UUID(quiet_held))
        assert held == "quiet_hours"
        assert [(r["state"], r["sends"]) for r in await runs(pool, journey_id)] == [("active", 0)], "still waiting"
        async with pool.acquire() as conn:
            assert await admin.tenant_set_disabled(conn, "e2e", hostile.tenant_id, True)
        await asyncio.sleep(4)  # what was already at the gateway's door finishes
        at_disable = sent()
        assert len(at_disable) < 150, "the campaign's test share (about 200) was still going out"
        await asyncio.sleep(8)  # past the scheduled message's send_at
        refs = simulator_refs(stack)
        assert sent() == at_disable, "nothing more of the campaign reaches the gateway"
        assert scheduled not in refs and quiet_held not in refs

        async def journey_done():
            return all(r["state"] != "active" for r in await runs(pool, journey_id)) or None

        await wait_for(journey_done, timeout_s=30)
        [nudge] = await journey_messages(pool, journey_id, 1)
        assert nudge["step"] == "nudge" and nudge["id"] not in simulator_refs(stack)

        async def settled():
            rows = await pool.fetch("SELECT message_id::text AS id, status, reason_code FROM messages"
                                    " WHERE tenant_id = $1", hostile.tenant_id)
            return rows if all(r["status"] not in ("accepted", "scheduled", "queued") for r in rows) else None

        statuses = {r["id"]: (r["status"], r["reason_code"]) for r in await wait_for(settled, timeout_s=30)}
        assert statuses[scheduled] == ("suppressed", "tenant_disabled")
        assert statuses[quiet_held] == ("suppressed", "tenant_disabled")
        assert statuses[nudge["id"]] == ("suppressed", "tenant_disabled")
        unsent = {m for m in campaign_messages if m in statuses} - at_disable
        assert unsent, "some of the campaign's queued messages were never sent"
        assert {statuses[m] for m in unsent} == {("suppressed", "tenant_disabled")}
        campaign = await pool.fetchrow("SELECT state, cancel_reason FROM campaigns WHERE campaign_id = $1", uuid.UUID(cid))
        assert (campaign["state"], campaign["cancel_reason"]) == ("cancelled", "tenant_disabled")
        r = await h.get(f"/v1/campaigns/{cid}")
        assert r.status_code == 403  # the disabled tenant's keys are refused
        assert await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE tenant_id = $1", hostile.tenant_id) == 0

        # The other tenant: the scheduled message went out; the quiet-hours one is still held.
        other_final = await all_final(pool, others[:1], timeout_s=30)
        # Any gateway outcome will do (the simulator draws some failures): it went out, once.
        assert other_final[others[0]] in ("delivered", "submitted", "undelivered", "failed")
        assert simulator_refs(stack).get(others[0]) == 1
        assert await pool.fetchval("SELECT reason_code FROM scheduled_messages WHERE message_id = $1",
                                   uuid.UUID(others[1])) == "quiet_hours"

        # Enabled again: new messages flow; what was suppressed stays suppressed.
        async with pool.acquire() as conn:
            assert await admin.tenant_set_disabled(conn, "e2e", hostile.tenant_id, False)
        await asyncio.sleep(1.5)  # the services' cached view of the tenant expires
        again = await send(h, to=numbers[2], body="Welcome back")
        final = await all_final(pool, [again, scheduled], timeout_s=30)
        assert final[again] != "suppressed" and simulator_refs(stack).get(again) == 1
        assert final[scheduled] == "suppressed" and scheduled not in simulator_refs(stack)
