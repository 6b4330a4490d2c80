"""Subject-access export through the real services (Kafka, PostgreSQL, the gateway simulator): a
number is a contact with a proven marketing consent, is sent a code, an offer with a tracked link
and an offer held for tomorrow, replies, clicks, converts and starts a journey. Its export holds
each kind of data, from each of the four services, and nothing of another number or another
tenant; another tenant's key gets 404, a key without the scope 403. Erasing the number then
removes the export's document, and a scan of every table finds nothing of the number or its
texts (the export included)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from herald_tools import admin
from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.auth import DEFAULT_SCOPES
from shared.contracts import utcnow
from tests.conftest import make_tenant
from tests.e2e.test_erasure_e2e import IPHONE, marker, reply_click_and_convert, scan
from tests.e2e.test_pipeline import all_final, scrape
from tests.helpers import foreign_numbers_allowed, wait_for

pytestmark = pytest.mark.e2e

EXPORT_SCOPES = (*DEFAULT_SCOPES, "contacts:export")


async def test_a_number_exports_everything_each_service_holds_about_it(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool, scopes=EXPORT_SCOPES)
    other_tenant = await make_tenant(pool, scopes=EXPORT_SCOPES)
    no_scope = await make_tenant(pool)
    t = tenant.tenant_id
    countries = foreign_numbers_allowed(marketing_countries(True)) or ["ES"]  # where marketing may go out now, from a Spanish number (some country always is: JP, MX)
    number, other_number = demo_numbers(2, seed=random.randrange(10**9), countries=countries[:1])
    ours = f"+3491{random.randrange(10**6, 10**7)}"
    name, otp, sale, later, answer, browser, note, meta, shown = (marker() for _ in range(9))
    foreign, neighbour = marker(), marker()  # texts of another tenant and of another number
    texts = {"otp": f"Your code is {otp}", "sale": f"Sale {sale} today: https://shop.example/spring",
             "later": f"Tomorrow {later}", "reply": f"Do you have size {answer}?"}

    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30) as api, \
            httpx.AsyncClient(base_url=stack.url("ingest"), headers=other_tenant.headers, timeout=30) as other_api:
        async with pool.acquire() as conn:
            await admin.number_add(conn, "e2e", t, ours)
        # a contact with a proven marketing consent, and a journey its events start
        r = await api.post("/v1/contacts", json={"phone": number, "first_name": f"Zoe{name}"})
        assert r.status_code == 201, r.text
        contact_id = r.json()["contact_id"]
        r = await api.post(f"/v1/contacts/{contact_id}/consents", json={
            "purpose": "marketing", "granted": True, "source": "web_form",
            "proof": {"form_id": "spring-signup", "ip": "203.0.113.7", "text_shown": f"Yes, send me offers {shown}",
                      "user_agent": IPHONE}})
        assert r.status_code == 201, r.text
        journey = {"name": "cart", "trigger": {"event": "cart.updated"},
                   "steps": [{"type": "wait_for_event", "event": "never.happens", "timeout": "7d",
                              "on_event": "end", "on_timeout": "end"}]}
        assert (r := await api.post("/v1/journeys", json=journey)).status_code == 201, r.text

        # messages: a code, an offer with a link, an offer held for tomorrow; one to another number,
        # and one from another tenant to the same number
        sent = []
        for body in (
            {"to": number, "body": texts["otp"], "type": "transactional", "sender": ours, "metadata": {"ref": meta}},
            {"to": number, "body": texts["sale"], "type": "marketing", "sender": ours},
            {"to": number, "body": texts["later"], "type": "marketing", "send_at": (utcnow() + timedelta(days=1)).isoformat()},
            {"to": other_number, "body": f"Hello {neighbour}", "type": "transactional"},
        ):
            r = await api.post("/v1/messages", json=body)
            assert r.status_code == 202, r.text
            sent.append(r.json()["message_id"])
        r = await other_api.post("/v1/messages", json={"to": number, "body": f"Elsewhere {foreign}", "type": "transactional"})
        assert r.status_code == 202, r.text
        foreign_id = r.json()["message_id"]
        code_id, sale_id, held_id, neighbour_id = sent
        await all_final(pool, [code_id, sale_id, neighbour_id, foreign_id], timeout_s=120)
        await wait_for(lambda: pool.fetchval("SELECT status = 'scheduled' FROM messages WHERE message_id = $1::uuid", held_id),
                       timeout_s=60)

        # a reply, a click on the offer's link, a conversion, and an event that starts the journey
        code = await reply_click_and_convert(stack, pool, api, t, number=number, ours=ours, reply=texts["reply"],
                                      sale_id=sale_id, browser=browser, note=note)

        # the export: 202 with its id; a key without the scope is refused
        async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=no_scope.headers, timeout=30) as plain:
            r = await plain.post("/v1/subject-access", json={"phone": number})
            assert r.status_code == 403, r.text
        r = await api.post("/v1/subject-access", json={"phone": number})
        assert r.status_code == 202, r.text
        export_id = r.json()["export_id"]
        assert r.json()["status"] == "pending"

        async def complete():
            body = (await api.get(f"/v1/subject-access/{export_id}")).json()
            return body if body["status"] == "complete" else None

        status = await wait_for(complete, timeout_s=90, interval_s=0.5)
        # another tenant's key does not see it
        assert (await other_api.get(f"/v1/subject-access/{export_id}")).status_code == 404
        assert (await api.get(f"/v1/subject-access/{uuid.uuid4()}")).status_code == 404

        doc = status["document"]
        assert status["pending"] == [] and status["received"] == ["dispatcher", "ingest", "reports", "scheduler"]
        assert (doc["phone"], doc["tenant"], doc["contact_id"], doc["requested_by"]) == (
            number, t, contact_id, tenant.key.split("_")[1])
        ingest, scheduler, dispatcher, reports = (doc["services"][s] for s in ("ingest", "scheduler", "dispatcher", "reports"))
        # ingest: the contact, its consent with proof, the reply (links are the contact's: these messages were sent
        # to the number, and the link's code shows in reports' click)
        assert [c["first_name"] for c in ingest["contacts"]] == [f"Zoe{name}"]
        (consent,) = ingest["contact_consents"]
        assert (consent["purpose"], consent["granted"], consent["proof"]["text_shown"], consent["proof"]["ip"]) == (
            "marketing", True, f"Yes, send me offers {shown}", "203.0.113.7")
        assert [m["body"] for m in ingest["inbound_messages"]] == [texts["reply"]]
        assert ingest["links"] == [] and ingest["suppressions"] == []
        # scheduler: the held offer, the journey run
        assert [texts["later"] in m["accepted"]["body"] for m in scheduler["scheduled_messages"]] == [True]
        assert [run["trigger"]["properties"]["note"] for run in scheduler["journey_runs"]] == [note]
        # dispatcher: the claims of the two messages that went out, with their texts
        bodies = [c["outbound"]["body"] for c in dispatcher["dispatch_claims"]]
        assert len(bodies) == 2 and any(otp in b for b in bodies) and any(sale in b for b in bodies), bodies
        # reports: the three messages with statuses and timeline, the click, the conversion
        by_id = {m["message_id"]: m for m in reports["messages"]}
        assert set(by_id) == {code_id, sale_id, held_id}
        assert by_id[code_id]["metadata"] == {"ref": meta} and by_id[held_id]["status"] == "scheduled"
        assert by_id[code_id]["status"] in ("delivered", "submitted", "sent")
        timeline = {e["message_id"] for e in reports["message_events"]}
        assert {code_id, sale_id} <= timeline
        assert [(c["message_id"], c["code"], browser in c["user_agent"]) for c in reports["clicks"]] == [(sale_id, code, True)]
        assert [(c["name"], Decimal(c["value"]), c["currency"]) for c in reports["conversions"]] == [
            ("order.completed", Decimal("25.5"), "EUR")]
        assert doc["counts"]["reports"]["messages"] == 3
        # nothing of another number or another tenant
        raw = json.dumps(doc)
        for absent in (other_number, neighbour, foreign, neighbour_id, foreign_id, other_tenant.tenant_id):
            assert absent not in raw, absent
        # each service counted its part
        for service in ("ingest", "scheduler", "dispatcher", "reports"):
            samples = scrape(f"{stack.ops_url(service)}/metrics")
            assert samples[("herald_subject_access_parts_total", frozenset({("service", service)}))] >= 1, service
        # the audit row: who asked and when, kept
        audit = await pool.fetchrow("SELECT requested_by, completed_at FROM subject_access_exports WHERE export_id = $1::uuid",
                                    export_id)
        assert audit["requested_by"] == tenant.key.split("_")[1] and audit["completed_at"] is not None

        # erasing the number removes the export's document; nothing of the number is left anywhere
        needles = [number, number[1:], f"Zoe{name}", otp, sale, later, answer, browser, note, meta, shown, *texts.values()]
        assert "subject_access_parts" in await scan(pool, needles)
        for client in (api, other_api):
            assert (r := await client.post("/v1/erasures", json={"phone": number})).status_code == 202, r.text
            erasure_id = r.json()["erasure_id"]
            await wait_for(lambda client=client, erasure_id=erasure_id: _complete(client, erasure_id), timeout_s=60, interval_s=0.3)
        status = (await api.get(f"/v1/subject-access/{export_id}")).json()
        assert status["status"] == "erased" and "document" not in status and status["requested_by"] == audit["requested_by"]
    assert await scan(pool, needles) == {}


async def _complete(client: httpx.AsyncClient, erasure_id: str) -> bool:
    return (await client.get(f"/v1/erasures/{erasure_id}")).json()["complete"]
