"""A campaign's messages pass the same per-message checks as the API's (services/ingest/domain.py,
``route``): the tenant's geo permissions and its sender registry, read again for every page. A
contact the checks refuse is not sent: it gets a ``failed`` status with the API's reason code,
carrying the campaign, its variant and contact, so the campaign's report counts it and its
timeline says why. A sender the campaign names that can send to no one any more (suspended)
pauses the campaign with the reason instead (real PostgreSQL and Kafka)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from herald_tools import admin
from services.ingest.campaigns.domain import message_id_for
from services.ingest.campaigns.launcher import Launcher
from shared.contracts import MessageStatusEvent
from shared.statuses import Status
from shared.topics import STATUS
from tests.conftest import Tenant, register_senders
from tests.helpers import read_topic
from tests.ingest.integration.test_campaigns import campaign_events, client, publisher, template  # noqa: F401

pytestmark = pytest.mark.integration


async def failed_statuses(env, campaign_id: str, expected: int) -> list[MessageStatusEvent]:
    def ours(records: list) -> list[MessageStatusEvent]:
        events = [MessageStatusEvent.model_validate_json(r.value) for r in records]
        return [e for e in events if str(e.payload.campaign_id) == campaign_id]

    records = await read_topic(env.bootstrap, STATUS.name(env.prefix), lambda rs: len(ours(rs)) >= expected, timeout_s=60)
    return ours(records)


async def import_contacts(http: httpx.AsyncClient, tenant: Tenant, phones: list[str]) -> None:
    lines = ["phone,first_name,language,tags"] + [f"{p},Ana,en,vip" for p in phones]
    r = await http.post("/v1/contacts/import", content="\n".join(lines), headers={**tenant.headers, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text


async def launch(http: httpx.AsyncClient, tenant: Tenant, *, start: bool = True, **extra) -> str:
    t = await template(http, tenant, f"t-{uuid.uuid4().hex[:6]}", "Flash sale today. Reply STOP to opt out")
    r = await http.post("/v1/campaigns", headers=tenant.headers, json={
        "name": "geo", "segment": '"vip" in tags', "variants": [{"name": "A", "template_id": t, "percent": 100}], **extra})
    assert r.status_code == 201, r.text
    cid = r.json()["campaign_id"]
    if start:
        assert (await http.post(f"/v1/campaigns/{cid}/launch", headers=tenant.headers)).json()["state"] == "running"
    return cid


async def test_a_contact_in_a_country_the_tenant_may_not_send_to_is_refused_not_sent(client, pool, env, publisher, tenant) -> None:  # noqa: F811
    await pool.execute("UPDATE tenants SET country = 'ES' WHERE tenant_id = $1", tenant.tenant_id)
    spain = [f"+3460{i:07d}" for i in range(1, 6)]
    france = [f"+3361{i:07d}" for i in range(1, 4)]
    await import_contacts(client, tenant, spain + france)
    cid = await launch(client, tenant)
    assert await Launcher(pool, publisher, page_size=3).run_once()
    sent = await campaign_events(env, cid, len(spain))
    refused = await failed_statuses(env, cid, len(france))
    assert sorted(e.payload.to for e in sent) == spain
    contacts = {r["phone_e164"]: r["contact_id"] for r in await pool.fetch(
        "SELECT phone_e164, contact_id FROM contacts WHERE tenant_id = $1", tenant.tenant_id)}
    assert sorted(e.payload.message_id for e in refused) == sorted(message_id_for(uuid.UUID(cid), contacts[p]) for p in france)
    for e in refused:
        assert e.payload.status is Status.FAILED and e.payload.reason_code == "destination_not_allowed"
        assert e.payload.variant == "A" and e.payload.contact_id in {contacts[p] for p in france}
    done = (await client.get(f"/v1/campaigns/{cid}", headers=tenant.headers)).json()
    assert done["state"] == "completed"


class SuspendingPublisher:
    """Publishes for real, and suspends the campaign's sender after the first page."""

    def __init__(self, inner, pool, tenant: Tenant, sender: str) -> None:
        self.inner, self.pool, self.tenant, self.sender, self.pages = inner, pool, tenant, sender, 0

    async def publish(self, items) -> None:
        await self.inner.publish(items)
        self.pages += 1
        if self.pages == 1:
            async with self.pool.acquire() as conn:
                await admin.sender_set_state(conn, "ops", self.tenant.tenant_id, self.sender, "suspended", "carrier complaint")


async def test_a_sender_suspended_mid_campaign_pauses_it_with_the_reason_and_a_resume_sends_the_rest(
        client, pool, env, publisher, tenant) -> None:  # noqa: F811
    sender = "HeraldShop"
    await register_senders(pool, tenant.tenant_id, sender, countries=["ES"])
    phones = [f"+3460{i:07d}" for i in range(1, 10)]
    await import_contacts(client, tenant, phones)
    cid = await launch(client, tenant, sender=sender)
    publisher_ = SuspendingPublisher(publisher, pool, tenant, sender)
    assert await Launcher(pool, publisher_, page_size=3).run_once()  # type: ignore[arg-type]
    campaign = (await client.get(f"/v1/campaigns/{cid}", headers=tenant.headers)).json()
    assert campaign["state"] == "paused" and campaign["pause_reason"].startswith("sender_not_verified: ")
    assert campaign["progress"]["published"] == 3
    # the operator verifies the sender again; the tenant resumes: the other six go, from it
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, sender, "verified", "resolved")
    r = await client.post(f"/v1/campaigns/{cid}/resume", headers=tenant.headers)
    assert (r.json()["state"], r.json()["pause_reason"]) == ("running", None)
    assert await Launcher(pool, publisher, page_size=3).run_once()
    sent = await campaign_events(env, cid, 9)
    assert len(sent) == 9 and len({e.payload.message_id for e in sent}) == 9 and {e.payload.sender for e in sent} == {sender}
    assert (await client.get(f"/v1/campaigns/{cid}", headers=tenant.headers)).json()["state"] == "completed"


async def test_a_test_send_to_a_country_the_tenant_may_not_send_to_is_refused(client, pool, tenant) -> None:  # noqa: F811
    await pool.execute("UPDATE tenants SET country = 'ES' WHERE tenant_id = $1", tenant.tenant_id)
    cid = await launch(client, tenant, start=False)  # a draft: no launcher of another test claims it
    r = await client.post(f"/v1/campaigns/{cid}/test", headers=tenant.headers, json={"numbers": ["+34600000001", "+33610000001"]})
    assert r.status_code == 200, r.text
    by_number = {x["to"]: x for x in r.json()["results"]}
    assert r.json()["sent"] == 1 and "message_id" in by_number["+34600000001"]
    assert by_number["+33610000001"]["error"]["code"] == "destination_not_allowed"
