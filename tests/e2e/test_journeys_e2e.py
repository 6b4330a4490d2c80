"""Journeys through the real services: events in over HTTP and Kafka, the scheduler's lane and
timer, the normal gate, the dispatcher and the simulator.

Each shipped example in deploy/journeys runs end to end. Real waits (hours, days) cannot run
here, so :func:`shorten` loads the shipped JSON and scales every duration in the data down
to a few seconds, keeping their proportions (the unit and integration tests check the real
durations with an injected clock).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.contracts import ContactEventRequest, ContactEventRequestEvent, MessageAcceptedEvent
from shared.journeys.definition import parse_duration
from shared.statuses import FINAL
from shared.topics import ACCEPTED, ACCEPTED_BULK, CONTACT_EVENTS_IN, REJECTED
from tests.conftest import Tenant, make_tenant, register_senders
from tests.helpers import foreign_numbers_allowed, produce_raw, read_topic, rejected_events, signed, wait_for

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "journeys"
FINAL_NAMES = [s.value for s in FINAL]
PROOF = {"form_id": "signup", "text_shown": "Yes, send me offers by SMS"}


def shorten(definition: dict[str, Any], longest_s: int = 6) -> dict[str, Any]:
    """The shipped definition with every duration scaled so the longest lasts ``longest_s``."""
    found: list[int] = []

    def walk(node: Any, apply: bool) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in ("duration", "timeout", "offset", "within", "after") and isinstance(value, (str, int)):
                    seconds = parse_duration(value)
                    found.append(abs(seconds))
                    if apply:
                        scaled = max(1, round(abs(seconds) / factor)) if seconds else 0
                        value = -scaled if seconds < 0 else scaled
                out[key] = walk(value, apply) if not isinstance(value, int) else value
            return out
        if isinstance(node, list):
            return [walk(v, apply) for v in node]
        return node

    walk(definition, False)
    factor = max(found) / longest_s if found else 1
    return walk(definition, True)


def example(name: str, longest_s: int = 6) -> dict[str, Any]:
    return shorten(json.loads((EXAMPLES / f"{name}.json").read_text()), longest_s)


def numbers(count: int, seed: int) -> list[str]:
    # where marketing may go now, and a Spanish sender may send (ingest checks a journey's sender too)
    return demo_numbers(count, seed=seed, countries=foreign_numbers_allowed(marketing_countries(True, margin=timedelta(minutes=10))))


class Api:
    def __init__(self, stack: Stack, tenant: Tenant) -> None:
        self.client = httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30)
        self.tenant = tenant

    async def journey(self, definition: dict[str, Any]) -> str:
        r = await self.client.post("/v1/journeys", json=definition)
        assert r.status_code == 201, r.text
        return r.json()["journey_id"]

    async def contact(self, phone: str, first_name: str, marketing: bool = True) -> str:
        r = await self.client.post("/v1/contacts", json={"phone": phone, "first_name": first_name})
        assert r.status_code == 201, r.text
        contact_id = r.json()["contact_id"]
        if marketing:
            r = await self.client.post(f"/v1/contacts/{contact_id}/consents",
                                       json={"purpose": "marketing", "granted": True, "source": "web_form", "proof": PROOF})
            assert r.status_code == 201, r.text
        return contact_id

    async def event(self, name: str, phone: str, **properties: Any) -> str:
        r = await self.client.post("/v1/events", json={"name": name, "phone": phone, "properties": properties})
        assert r.status_code == 202, r.text
        return r.json()["event_id"]


async def journey_messages(pool, journey_id: str, count: int, timeout_s: float = 40) -> list[dict]:
    """The journey's messages once ``count`` of them reached a final state (reports' view)."""

    async def check():
        rows = await pool.fetch(
            "SELECT message_id::text AS id, to_e164, status, type, metadata->>'journey_step' AS step, accepted_at, submitted_at"
            " FROM messages WHERE metadata->>'journey_run' IN (SELECT run_id::text FROM journey_runs WHERE journey_id = $1::uuid)"
            " ORDER BY accepted_at",
            journey_id,
        )
        final = [dict(r) for r in rows if r["status"] in FINAL_NAMES]
        return final if len(final) >= count else None

    return await wait_for(check, timeout_s=timeout_s, interval_s=0.3)


async def runs(pool, journey_id: str) -> list[dict]:
    rows = await pool.fetch("SELECT * FROM journey_runs WHERE journey_id = $1::uuid ORDER BY entered_at", journey_id)
    return [dict(r) for r in rows]


async def bodies(env, topic, journey_id: str, count: int) -> list[str]:
    records = await read_topic(env.bootstrap, topic.name(env.prefix),
                               lambda rs: sum(1 for r in rs if journey_id.encode() in r.value) >= count)
    events = [MessageAcceptedEvent.model_validate_json(r.value) for r in records if journey_id.encode() in r.value]
    return [e.payload.body for e in sorted(events, key=lambda e: e.payload.accepted_at)]


def sim_refs(stack: Stack) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs").json()["client_refs"]


async def test_lead_follow_up_from_the_kafka_topic(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Acme")  # the journey's sender, verified
    api = Api(stack, tenant)
    journey_id = await api.journey(example("lead-follow-up"))
    [phone] = numbers(1, seed=501)
    await api.contact(phone, "Lena", marketing=False)
    marker = uuid.uuid4().hex[:10].encode()

    def record(payload: dict[str, Any]) -> bytes:
        return ContactEventRequestEvent(tenant=tenant.tenant_id, payload=ContactEventRequest(**payload)).model_dump_json().encode()

    good = record({"name": "form.submitted", "phone": phone, "properties": {"product": "solar panels"}})
    await produce_raw(env.bootstrap, CONTACT_EVENTS_IN.name(env.prefix), await signed(pool, tenant.tenant_id, [
        (marker, good),
        (marker, good),  # the same record again: one run, one message
        (marker, record({"name": "form.submitted", "contact_id": str(uuid.uuid4())})),
        (marker, b'{"type": "contact.event.requested", "version": 1, "tenant": "x", "payload": {"name": "Bad"}}'),
    ]))
    [message] = await journey_messages(pool, journey_id, 1)
    assert message["to_e164"] == phone and message["step"] == "thanks" and message["type"] == "transactional"
    assert await pool.fetchval("SELECT source FROM messages WHERE message_id = $1::uuid", message["id"]) == "journey"
    assert sim_refs(stack).get(message["id"]) == 1, "accepted by ingest, sent once through the simulator"
    assert await bodies(env, ACCEPTED, journey_id, 1) == [
        "Hi Lena, thanks for your enquiry about solar panels. An advisor will call you within one working day."]
    rejected = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                                lambda rs: len([e for e in rejected_events(rs) if e.payload.key == marker.decode()]) >= 2)
    assert sorted(e.payload.reason_code for e in rejected_events(rejected) if e.payload.key == marker.decode()) == [
        "schema_invalid", "unknown_contact"]
    await asyncio.sleep(1)
    assert len(await runs(pool, journey_id)) == 1 and len(await journey_messages(pool, journey_id, 1)) == 1


async def test_welcome_drip_day_0_2_7_and_an_order_skips_the_offer(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    api = Api(stack, tenant)
    journey_id = await api.journey(example("welcome-drip"))  # 2d → 2 s, 5d → 4 s
    drip, buyer = numbers(2, seed=502)
    await api.contact(drip, "Ana")
    await api.contact(buyer, "Ben")
    await api.event("user.signed_up", drip)
    await api.event("user.signed_up", buyer)

    async def tips_sent():
        rows = await runs(pool, journey_id)
        return all(r["sends"] >= 2 for r in rows) or None

    await wait_for(tips_sent, timeout_s=30)
    await api.event("order.completed", buyer, total=40)

    async def ended():
        return all(r["state"] == "completed" for r in await runs(pool, journey_id)) or None

    await wait_for(ended, timeout_s=30)
    messages = await journey_messages(pool, journey_id, 5)
    steps = {p: [m["step"] for m in messages if m["to_e164"] == p] for p in (drip, buyer)}
    assert steps == {drip: ["welcome", "tips", "offer"], buyer: ["welcome", "tips"]}
    times = [m["accepted_at"] for m in messages if m["to_e164"] == drip]
    assert timedelta(seconds=1.5) < times[1] - times[0] < timedelta(seconds=4)
    assert timedelta(seconds=3.5) < times[2] - times[1] < timedelta(seconds=7)
    assert {m["type"] for m in messages} == {"marketing"} and {m["status"] for m in messages} <= {"delivered", "undelivered", "failed"}


async def test_abandoned_cart_nudge_and_an_order_cancels_the_pending_step(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    api = Api(stack, tenant)
    journey_id = await api.journey(example("abandoned-cart"))  # 2 h → 6 s
    left, bought = numbers(2, seed=503)
    await api.contact(left, "Carla")
    await api.contact(bought, "Dan")
    await api.event("cart.updated", left, items=2, cart_url="acme.example/c/42")
    await api.event("cart.updated", bought, items=1)

    async def both_waiting():
        rows = await runs(pool, journey_id)
        return len(rows) == 2 and all(r["armed"] for r in rows) or None

    await wait_for(both_waiting, timeout_s=20)
    await api.event("order.completed", bought, total=25)
    [message] = await journey_messages(pool, journey_id, 1)
    assert message["to_e164"] == left and message["step"] == "nudge"
    [body] = await bodies(env, ACCEPTED_BULK, journey_id, 1)
    assert body.startswith("Carla, your cart is waiting: acme.example/c/42") and "STOP" in body
    await asyncio.sleep(2)  # past the bought contact's timeout too
    states = {r["phone_e164"]: (r["state"], r["exit_reason"], r["sends"]) for r in await runs(pool, journey_id)}
    assert states == {left: ("completed", None, 1), bought: ("exited", "exit_event:order.completed", 0)}
    assert len(await journey_messages(pool, journey_id, 1)) == 1


async def test_event_reminders_before_starts_at(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    api = Api(stack, tenant)
    journey_id = await api.journey(example("event-reminders"))  # -24h → -6 s, -1h → -1 s
    [phone] = numbers(1, seed=504)
    starts = datetime.now(UTC) + timedelta(seconds=10)
    await api.event("event.registered", phone, starts_at=starts.isoformat(), title="Herald meetup")
    messages = await journey_messages(pool, journey_id, 2)
    assert [m["step"] for m in messages] == ["remind_24h", "remind_1h"]
    assert abs(messages[0]["accepted_at"] - (starts - timedelta(seconds=6))) < timedelta(seconds=1.5)
    assert abs(messages[1]["accepted_at"] - (starts - timedelta(seconds=1))) < timedelta(seconds=1.5)
    assert await bodies(env, ACCEPTED, journey_id, 2) == [
        "Reminder: Herald meetup starts tomorrow at the time booked.", "Herald meetup starts in one hour. See you there!"]


async def test_re_engagement_after_quiet_days_activity_restarts_the_wait(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    api = Api(stack, tenant)
    journey_id = await api.journey(example("re-engagement"))  # 30 d → 6 s
    [phone] = numbers(1, seed=505)
    await api.contact(phone, "Eva")
    await api.event("app.opened", phone)
    await asyncio.sleep(3)
    await api.event("order.completed", phone, total=12)
    [message] = await journey_messages(pool, journey_id, 1)
    first, second = await runs(pool, journey_id)
    assert (first["state"], first["exit_reason"], second["state"]) == ("exited", "exit_event:order.completed", "completed")
    assert message["accepted_at"] - second["entered_at"] >= timedelta(seconds=5.9)


async def test_payment_and_shipping_updates_are_transactional(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    api = Api(stack, tenant)
    payments = await api.journey(example("payment-updates"))
    shipping = await api.journey(example("shipping-updates"))
    [phone] = numbers(1, seed=506)  # no contact, no consent: transactional messages need neither
    await api.event("payment.received", phone, amount="19.90", currency="EUR", order_id="A1")
    await api.event("payment.failed", phone, order_id="A2")
    await api.event("order.shipped", phone, order_id="A1", tracking_url="acme.example/t/A1")
    await api.event("order.delivered", phone, order_id="A1")
    assert sorted(m["step"] for m in await journey_messages(pool, payments, 2)) == ["failed", "received"]
    assert sorted(m["step"] for m in await journey_messages(pool, shipping, 2)) == ["delivered", "shipped"]
    assert sorted(await bodies(env, ACCEPTED, payments, 2) + await bodies(env, ACCEPTED, shipping, 2)) == sorted([
        "Payment of 19.90 EUR received for order A1. Thank you!",
        "Your payment for order A2 failed. Please update your card: acme.example/billing",
        "Order A1 is on its way. Track it: acme.example/t/A1",
        "Order A1 was delivered. Enjoy!",
    ])


async def test_scheduler_kill_9_in_the_middle_of_a_wait_loses_and_repeats_nothing(stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    api = Api(stack, tenant)
    journey_id = await api.journey(example("welcome-drip", longest_s=12))  # 2d → 3 s, 5d → 9 s
    phones = numbers(5, seed=507)
    for i, phone in enumerate(phones):
        await api.contact(phone, f"P{i}")
        await api.event("user.signed_up", phone)

    async def waiting():
        rows = await runs(pool, journey_id)
        return len(rows) == 5 and all(r["sends"] >= 1 and r["armed"] for r in rows) or None

    await wait_for(waiting, timeout_s=30)
    await asyncio.to_thread(stack.restart, stack.find("scheduler"), hard=True)
    messages = await journey_messages(pool, journey_id, 15, timeout_s=90)
    assert sorted(m["step"] for m in messages) == sorted(["welcome", "tips", "offer"] * 5)
    refs = sim_refs(stack)
    assert {m["id"]: refs.get(m["id"]) for m in messages} == {m["id"]: 1 for m in messages}
    assert [r["state"] for r in await runs(pool, journey_id)] == ["completed"] * 5


async def test_journey_sends_are_accepted_by_ingest_links_tracked_a_suspended_sender_fails(stack: Stack, pool, env) -> None:
    """Journey sends go through ingest's acceptance (docs/journeys.md): a marketing link becomes a
    tracked short link that reaches the simulator; a send from a sender suspended after the journey
    was written is refused, and reports shows the message failed with the reason."""
    from herald_tools import admin
    from services.scheduler.journeys.engine import message_id

    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Acme", "Shopco")
    api = Api(stack, tenant)
    promo = await api.journey({"name": "promo", "trigger": {"event": "promo.asked"}, "steps": [
        {"type": "send", "purpose": "marketing", "body": "Hi {{first_name}}, new deals at https://shop.example.com/deals",
         "sender": "Acme"}]})
    orders = await api.journey({"name": "orders", "trigger": {"event": "order.placed"}, "steps": [
        {"type": "send", "purpose": "transactional", "body": "Order received", "sender": "Shopco"}]})
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "e2e", tenant.tenant_id, "Shopco", "suspended", "complaints")
    [phone] = numbers(1, seed=508)
    await api.contact(phone, "Nora")
    await api.event("promo.asked", phone)
    await api.event("order.placed", phone)

    [message] = await journey_messages(pool, promo, 1)
    assert message["to_e164"] == phone and message["type"] == "marketing"
    [body] = await bodies(env, ACCEPTED_BULK, promo, 1)
    code = await pool.fetchval("SELECT code FROM links WHERE message_id = $1::uuid", message["id"])
    assert code and body.startswith("Hi Nora, new deals at ") and f"/{code}" in body and "shop.example.com" not in body
    assert sim_refs(stack).get(message["id"]) == 1

    [run] = await runs(pool, orders)
    refused = message_id(run["run_id"], 0)

    async def failed():
        row = await pool.fetchrow("SELECT status, reason_code FROM messages WHERE message_id = $1", refused)
        return row if row is not None and row["status"] == "failed" else None

    row = await wait_for(failed, timeout_s=40)
    assert row["reason_code"] == "sender_not_verified"
    timeline = await pool.fetch("SELECT status, detail FROM message_events WHERE message_id = $1", refused)
    detail = [(e["status"], e["detail"] if isinstance(e["detail"], dict) else json.loads(e["detail"])) for e in timeline]
    assert [(status, d.get("journey_id"), d.get("source")) for status, d in detail] == [("failed", orders, "journey")]
    assert refused.hex not in sim_refs(stack) and str(refused) not in sim_refs(stack)
    assert run["state"] == "completed" or (await runs(pool, orders))[0]["state"] == "completed"
