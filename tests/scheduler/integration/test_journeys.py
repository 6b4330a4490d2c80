"""Journeys on the real PostgreSQL and Kafka: the definitions API, contact events over HTTP,
and the engine's lane and durable timer with an injected clock (real durations)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.ingest import deps
from services.ingest.events.api import router as events_router
from services.ingest.events.service import ContactsLookup, EventAcceptor
from services.ingest.journey_sends import JourneySendsHandler
from services.ingest.journeys.api import router as journeys_router
from services.ingest.links_repo import LinksRepository
from services.ingest.ratelimit import RateLimiter
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.scheduler.journeys.handlers import JourneyEventsHandler, JourneyTimer
from services.scheduler.journeys.limits import JourneyLimiter
from services.scheduler.journeys.repository import JourneyRepository
from services.scheduler.quiet_hours.clock import FakeClock
from shared.api import install_error_handlers
from shared.contracts import ContactEventAcceptedEvent, MessageAcceptedEvent, MessageStatusEvent, utcnow
from shared.kafka import BatchConsumer, Incoming, Publisher, make_producer
from shared.settings import ConsumerSettings, KafkaSettings
from shared.topics import ACCEPTED, ACCEPTED_BULK, CONTACT_EVENTS, JOURNEY_SENDS, REJECTED, STATUS
from tests import factories
from tests.conftest import Tenant, make_tenant, register_senders
from tests.helpers import read_topic, rejected_events

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "journeys"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
async def publisher(env) -> AsyncIterator[Publisher]:
    producer = make_producer(KafkaSettings(), "test-journeys")
    await producer.start()
    yield Publisher(producer, env.prefix, "test")
    await producer.stop()


@pytest.fixture(scope="module", autouse=True)
async def ingest_lane(env, pool, publisher) -> AsyncIterator[None]:
    """ingest's journey-sends lane, on the real topic: the timers' send requests become accepted
    messages (or refusals) as in the running service (services/ingest/app.py)."""
    settings = ConsumerSettings(consumer_poll_ms=100)
    acceptor = Acceptor(IngestRepository(pool), IngestSettings(), LinksRepository(pool))
    consumer = BatchConsumer(settings, "ingest", f"g-journey-sends-{uuid.uuid4().hex[:8]}", [JOURNEY_SENDS],
                             JourneySendsHandler(acceptor, IngestRepository(pool)), publisher)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    yield
    consumer.stop_fetching()
    await task
    await consumer.close()


@pytest.fixture(scope="module")
async def client(env, pool, publisher) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    deps.install(app, IngestSettings(events_batch_max=100), pool, publisher,
                 event_acceptor=EventAcceptor(ContactsLookup(pool)), events_limiter=RateLimiter(pool, 6000, 600000))
    install_error_handlers(app)
    app.include_router(events_router)
    app.include_router(journeys_router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=60) as c:
        yield c


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def test_every_shipped_example_is_accepted_and_read_back_as_written(client, pool, tenant: Tenant) -> None:
    await register_senders(pool, tenant.tenant_id, "Acme")  # the sender the examples name, verified
    for path in sorted(EXAMPLES.glob("*.json")):
        body = json.loads(path.read_text())
        r = await client.post("/v1/journeys", json=body, headers=tenant.headers)
        assert r.status_code == 201, (path.name, r.text)
        journey = r.json()
        assert (journey["version"], journey["state"], journey["definition"]) == (1, "active", body)
    r = await client.get("/v1/journeys", headers=tenant.headers)
    assert sorted(j["name"] for j in r.json()["journeys"]) == sorted(json.loads(p.read_text())["name"] for p in EXAMPLES.glob("*.json"))


async def test_update_makes_a_version_if_match_and_archive(client, pool, tenant: Tenant) -> None:
    r = await client.post("/v1/journeys", json=example("abandoned-cart"), headers=tenant.headers)
    journey_id = r.json()["journey_id"]
    changed = {**example("abandoned-cart"), "name": "Cart (faster)"}
    changed["steps"] = [{**changed["steps"][0], "timeout": "1h"}, changed["steps"][1]]
    r = await client.put(f"/v1/journeys/{journey_id}", json=changed, headers={**tenant.headers, "If-Match": "1"})
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["definition"]["steps"][0]["timeout"] == "1h"
    r = await client.put(f"/v1/journeys/{journey_id}", json=changed, headers={**tenant.headers, "If-Match": "1"})
    assert error(r) == (409, "version_conflict")
    r = await client.get(f"/v1/journeys/{journey_id}?version=1", headers=tenant.headers)
    assert r.json()["definition"]["steps"][0]["timeout"] == "2h" and r.json()["version"] == 2
    assert r.json()["runs"] == {"active": 0, "completed": 0, "exited": 0}
    r = await client.post(f"/v1/journeys/{journey_id}/archive", headers=tenant.headers)
    assert r.json()["state"] == "archived"
    assert error(await client.put(f"/v1/journeys/{journey_id}", json=changed, headers=tenant.headers)) == (409, "journey_archived")
    other = await make_tenant(pool)
    assert error(await client.get(f"/v1/journeys/{journey_id}", headers=other.headers)) == (404, "journey_not_found")
    assert error(await client.post(f"/v1/journeys/{journey_id}/archive", headers=other.headers)) == (404, "journey_not_found")
    reader = await make_tenant(pool, scopes=("contacts:read",))
    assert error(await client.post("/v1/journeys", json=changed, headers=reader.headers)) == (403, "insufficient_scope")


async def test_definition_errors_are_machine_readable(client, tenant: Tenant) -> None:
    bad = {**example("abandoned-cart"), "steps": [{"type": "send", "template_id": str(uuid.uuid4())}]}
    r = await client.post("/v1/journeys", json=bad, headers=tenant.headers)
    assert error(r) == (422, "unknown_template") and r.json()["error"]["details"][0]["loc"] == "body.steps.0.template_id"
    jump = {**example("abandoned-cart")}
    jump["steps"] = [jump["steps"][1], {**jump["steps"][0], "on_event": "nudge"}]
    r = await client.post("/v1/journeys", json=jump, headers=tenant.headers)
    assert error(r) == (422, "validation_failed")
    assert [d["code"] for d in r.json()["error"]["details"]] == ["backward_jump"]


async def test_events_resolve_contacts_update_activity_and_publish_keyed_by_phone(client, pool, env, tenant: Tenant) -> None:
    contact_id = await pool.fetchval(
        "INSERT INTO contacts (tenant_id, phone_e164, country) VALUES ($1, '+34600111222', 'ES') RETURNING contact_id",
        tenant.tenant_id,
    )
    key = f"order-{uuid.uuid4().hex[:6]}"
    r = await client.post("/v1/events", json={"name": "order.completed", "contact_id": str(contact_id), "event_key": key,
                                              "occurred_at": "2026-01-05T10:00:00Z", "value": "19.90", "currency": "EUR"},
                          headers=tenant.headers)
    assert r.status_code == 202, r.text
    first = r.json()
    again = (await client.post("/v1/events", json={"name": "order.completed", "phone": "+34 600 111 222", "event_key": key},
                               headers=tenant.headers)).json()
    assert again["event_id"] == first["event_id"] and again["contact_id"] == str(contact_id)
    assert await pool.fetchval("SELECT last_activity_at FROM contacts WHERE contact_id = $1", contact_id) > utcnow() - timedelta(minutes=1)

    r = await client.post("/v1/events/batch", headers=tenant.headers, json={"events": [
        {"name": "form.submitted", "phone": "+34600111333"},
        {"name": "form.submitted", "phone": "+34123"},
        {"name": "form.submitted", "contact_id": str(uuid.uuid4())},
        {"name": "Bad Name", "phone": "+34600111333"},
    ]})
    assert r.status_code == 202
    assert [x.get("error", {}).get("code") for x in r.json()["results"]] == [None, "impossible_number", "unknown_contact", "validation_failed"]
    assert error(await client.post("/v1/events", json={"name": "x.y"}, headers=tenant.headers)) == (422, "phone_or_contact_required")
    other = await make_tenant(pool)  # another tenant's contact id is unknown
    r = await client.post("/v1/events", json={"name": "x.y", "contact_id": str(contact_id)}, headers=other.headers)
    assert error(r) == (422, "unknown_contact")

    records = await read_topic(env.bootstrap, CONTACT_EVENTS.name(env.prefix),
                               lambda rs: sum(1 for x in rs if tenant.tenant_id.encode() in x.value) >= 3)
    mine = [(x.key, ContactEventAcceptedEvent.model_validate_json(x.value)) for x in records if tenant.tenant_id.encode() in x.value]
    assert sorted((k, e.payload.name) for k, e in mine) == [  # partitions: order only within one number
        (b"+34600111222", "order.completed"), (b"+34600111222", "order.completed"), (b"+34600111333", "form.submitted")]
    orders = [e for k, e in mine if k == b"+34600111222"]
    assert orders[0].event_id == orders[1].event_id == orders[0].payload.event_id
    assert str(orders[0].payload.value) == "19.90" and orders[0].payload.contact_id == contact_id


# --- the engine on the database --------------------------------------------------------------


def incoming(tenant: str, name: str, phone: str, clock: FakeClock, **properties) -> Incoming:
    now = clock.now()
    payload = factories.contact_event(name, phone, occurred_at=now, received_at=now, properties=properties)
    return Incoming(CONTACT_EVENTS, factories.contact_event_event(payload, tenant), None)


async def create_journey(pool, tenant: str, definition: dict) -> uuid.UUID:
    from services.ingest.journeys.repository import JourneysRepository
    from shared.journeys.definition import JourneyDefinition

    created = await JourneysRepository(pool).create(tenant, JourneyDefinition.model_validate(definition), definition)
    return uuid.UUID(created["journey_id"])


async def sent_to(env, topic, phone: str, n: int, timeout_s: float = 60) -> list[MessageAcceptedEvent]:
    records = await read_topic(env.bootstrap, topic.name(env.prefix), lambda rs: sum(1 for r in rs if r.key == phone.encode()) >= n,
                               timeout_s=timeout_s)
    return [MessageAcceptedEvent.model_validate_json(r.value) for r in records if r.key == phone.encode()]


async def runs_of(pool, journey_id: uuid.UUID) -> list:
    return await pool.fetch("SELECT * FROM journey_runs WHERE journey_id = $1 ORDER BY entered_at", journey_id)


async def test_abandoned_cart_real_two_hours_with_an_injected_clock(pool, env, publisher) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    journey_id = await create_journey(pool, tenant, example("abandoned-cart"))
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    lane = JourneyEventsHandler(repo, clock.now)
    timer = JourneyTimer(repo, publisher, 0.1, 100, clock.now)
    phone, ordered = "+34600222001", "+34600222002"
    await lane([incoming(tenant, "cart.updated", phone, clock, items=2, cart_url="acme.example/c/1"),
                incoming(tenant, "cart.updated", ordered, clock, items=1),
                incoming(tenant, "cart.updated", ordered, clock, items=3)])  # active already: no second run
    runs = await runs_of(pool, journey_id)
    assert len(runs) == 2 and {r["phone_e164"] for r in runs} == {phone, ordered}
    await timer.advance_due()
    assert {(r["step"], r["armed"]) for r in await runs_of(pool, journey_id)} == {(0, True)}
    clock.advance(hours=1)
    await lane([incoming(tenant, "order.completed", ordered, clock)])
    clock.advance(minutes=59)
    await timer.advance_due()
    assert [r["state"] for r in await runs_of(pool, journey_id) if r["phone_e164"] == phone] == ["active"]
    clock.advance(minutes=1, seconds=1)
    await timer.advance_due()
    states = {r["phone_e164"]: (r["state"], r["exit_reason"], r["sends"]) for r in await runs_of(pool, journey_id)}
    assert states == {phone: ("completed", None, 1), ordered: ("exited", "exit_event:order.completed", 0)}
    [event] = await sent_to(env, ACCEPTED_BULK, phone, 1)
    m = event.payload
    assert (m.journey_id, m.type.value, event.event_id, m.source) == (journey_id, "marketing", m.message_id, "journey")
    assert m.body.startswith("Hi, your cart is waiting: acme.example/c/1")  # no scheme, no www.: not a link


async def test_event_reminders_with_real_offsets_and_two_timers_never_double_send(pool, env, publisher) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    journey_id = await create_journey(pool, tenant, example("event-reminders"))
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    starts = clock.now() + timedelta(days=2)
    phones = [f"+3460033{i:04d}" for i in range(60)]
    await JourneyEventsHandler(repo, clock.now)(
        [incoming(tenant, "event.registered", p, clock, starts_at=starts.isoformat(), title="Launch") for p in phones])
    timers = [JourneyTimer(JourneyRepository(pool), publisher, 0.1, 7, clock.now) for _ in range(3)]

    async def drain() -> None:
        while sum(await asyncio.gather(*(t.advance_due() for t in timers))):
            pass

    await drain()
    clock.set(starts - timedelta(hours=24))
    await drain()
    clock.set(starts - timedelta(hours=1))
    await drain()
    runs = await runs_of(pool, journey_id)
    assert {(r["state"], r["sends"]) for r in runs} == {("completed", 2)}
    events = await sent_to(env, ACCEPTED, phones[-1], 2)
    assert [e.payload.body for e in events] == ["Reminder: Launch starts tomorrow at the time booked.",
                                                "Launch starts in one hour. See you there!"]
    records = await read_topic(env.bootstrap, ACCEPTED.name(env.prefix),
                               lambda rs: sum(1 for r in rs if str(journey_id).encode() in r.value) >= 120, timeout_s=90)
    ids = [MessageAcceptedEvent.model_validate_json(r.value).payload.message_id for r in records if str(journey_id).encode() in r.value]
    assert len(ids) == len(set(ids)) == 120


class FailingPublisher:
    async def publish(self, items) -> None:
        raise OSError("broker away")


async def test_a_failed_publish_rolls_back_and_the_next_advance_sends_the_same_ids(pool, env, publisher) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    journey_id = await create_journey(pool, tenant, example("payment-updates"))
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    phone = "+34600444001"
    await JourneyEventsHandler(repo, clock.now)([incoming(tenant, "payment.failed", phone, clock, order_id="A7")])
    with pytest.raises(OSError):
        await JourneyTimer(repo, FailingPublisher(), 0.1, 100, clock.now).advance_due()  # type: ignore[arg-type]
    [run] = await runs_of(pool, journey_id)
    assert (run["state"], run["step"], run["sends"]) == ("active", 0, 0)
    await JourneyTimer(repo, publisher, 0.1, 100, clock.now).advance_due()
    [event] = await sent_to(env, ACCEPTED, phone, 1)
    assert event.payload.body.startswith("Your payment for order A7 failed")
    assert (await runs_of(pool, journey_id))[0]["state"] == "completed"


async def test_two_lanes_on_the_same_contact_keep_the_reentry_rule(pool) -> None:
    """A rebalance can hand one contact's events to two instances at once: still one run."""
    tenant = (await make_tenant(pool)).tenant_id
    journey_id = await create_journey(pool, tenant, example("welcome-drip"))  # reentry: never
    clock = FakeClock(utcnow())
    lanes = [JourneyEventsHandler(JourneyRepository(pool), clock.now) for _ in range(4)]
    phones = [f"+3460055{i:04d}" for i in range(60)]
    await asyncio.gather(*(lane([incoming(tenant, "user.signed_up", p, clock) for p in phones]) for lane in lanes))
    rows = await runs_of(pool, journey_id)
    assert sorted(r["phone_e164"] for r in rows) == sorted(phones)


# scopes and number types ----------------------------------------------------------------------------

WAIT_ONLY = {"name": "quiet", "trigger": {"event": "ping"}, "steps": [{"type": "wait", "duration": "1h"}]}
SENDS = {"name": "ping", "trigger": {"event": "ping"}, "reentry": {"mode": "always"},
         "steps": [{"type": "send", "purpose": "transactional", "body": "Your code is 1234"}]}


async def test_a_journey_that_sends_needs_the_sending_scope(client, pool) -> None:
    contacts_only = await make_tenant(pool, scopes=("contacts:write", "contacts:read"))
    r = await client.post("/v1/journeys", json=SENDS, headers=contacts_only.headers)
    assert error(r) == (403, "insufficient_scope"), r.text
    assert "messages:write" in r.json()["error"]["message"]
    r = await client.post("/v1/journeys", json=WAIT_ONLY, headers=contacts_only.headers)
    assert r.status_code == 201, r.text
    r = await client.put(f"/v1/journeys/{r.json()['journey_id']}", json=SENDS, headers=contacts_only.headers)
    assert error(r) == (403, "insufficient_scope"), r.text
    sender = await make_tenant(pool, scopes=("contacts:write", "contacts:read", "messages:write"))
    assert (await client.post("/v1/journeys", json=SENDS, headers=sender.headers)).status_code == 201


async def test_journey_sends_obey_the_allowed_number_types(pool, env, publisher) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    journey_id = await create_journey(pool, tenant, SENDS)
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    premium, mobile = "+34806123456", "+34600333001"
    await JourneyEventsHandler(repo, clock.now)([incoming(tenant, "ping", premium, clock), incoming(tenant, "ping", mobile, clock)])
    await JourneyTimer(repo, publisher, 0.1, 100, clock.now).advance_due()
    [sent] = await sent_to(env, ACCEPTED, mobile, 1)
    assert sent.payload.journey_id == journey_id
    records = await read_topic(env.bootstrap, ACCEPTED.name(env.prefix), lambda rs: any(r.key == mobile.encode() for r in rs))
    assert not [r for r in records if r.key == premium.encode()], "a premium-rate number gets nothing"
    states = {r["phone_e164"]: r["state"] for r in await runs_of(pool, journey_id)}
    assert states == {premium: "completed", mobile: "completed"}
    # ingest refused it as it refuses the API's: the reason in rejected.v1 and on the message's failed status
    [failed] = await statuses_of(env, (await journey_send_ids(pool, journey_id))[premium])
    assert (failed.payload.status.value, failed.payload.reason_code) == ("failed", "unsupported_number_type")


async def test_journey_sends_count_against_the_message_limit_of_the_key_that_wrote_it(client, pool, env, publisher) -> None:
    tenant = await make_tenant(pool)
    key_id = tenant.key.split("_")[1]
    await pool.execute("UPDATE api_keys SET messages_per_minute = 2 WHERE key_id = $1", key_id)
    r = await client.post("/v1/journeys", json={**SENDS, "trigger": {"event": "limited.ping"}}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    journey_id = uuid.UUID(r.json()["journey_id"])
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    phones = ["+34600555001", "+34600555002", "+34600555003"]
    await JourneyEventsHandler(repo, clock.now)([incoming(tenant.tenant_id, "limited.ping", p, clock) for p in phones])
    api_counts = await pool.fetch("SELECT * FROM rate_counters WHERE key_id = $1 ORDER BY window_start", key_id)
    await JourneyTimer(repo, publisher, 0.1, 100, clock.now, limiter=JourneyLimiter(pool, 600000)).advance_due()
    runs = await runs_of(pool, journey_id)
    sent = [r for r in runs if r["sends"] == 1]
    waiting = [r for r in runs if r["sends"] == 0]
    assert len(sent) == 2 and len(waiting) == 1, [dict(r) for r in runs]
    assert waiting[0]["state"] == "active" and waiting[0]["due_at"] > clock.now(), "over the limit: it waits, not lost"
    records = await read_topic(env.bootstrap, ACCEPTED.name(env.prefix),
                               lambda rs: sum(1 for x in rs if x.key in {p.encode() for p in phones}) >= 2)
    assert sum(1 for x in records if x.key in {p.encode() for p in phones}) == 2
    # Counted on the scheduler's own counters (what was sent; the refused send was taken off again);
    # ingest's counters of the key's API use are not the scheduler's to write.
    assert await pool.fetchval("SELECT sum(messages) FROM journey_rate_counters WHERE key_id = $1", key_id) == 2
    assert await pool.fetch("SELECT * FROM rate_counters WHERE key_id = $1 ORDER BY window_start", key_id) == api_counts


# --- ingest's acceptance of journey sends ---------------------------------------------------------


async def journey_send_ids(pool, journey_id: uuid.UUID) -> dict[str, list[uuid.UUID]]:
    """The message ids each contact's run sent (uuid5(run_id, step index), services/scheduler/journeys/engine.py)."""
    from services.scheduler.journeys.engine import message_id

    out: dict[str, list[uuid.UUID]] = {}
    for run in await runs_of(pool, journey_id):
        out.setdefault(run["phone_e164"], []).append(message_id(run["run_id"], 0))
    return out


async def statuses_of(env, ids: list[uuid.UUID], timeout_s: float = 60) -> list[MessageStatusEvent]:
    wanted = {str(i).encode() for i in ids}
    records = await read_topic(env.bootstrap, STATUS.name(env.prefix),
                               lambda rs: wanted <= {r.key for r in rs}, timeout_s=timeout_s)
    return [MessageStatusEvent.model_validate_json(r.value) for r in records if r.key in wanted]


async def accepted_ids(env, topic, ids: set[uuid.UUID], timeout_s: float = 60) -> list[MessageAcceptedEvent]:
    wanted = {str(i) for i in ids}
    records = await read_topic(env.bootstrap, topic.name(env.prefix),
                               lambda rs: wanted <= {json.loads(r.value)["payload"]["message_id"] for r in rs},
                               timeout_s=timeout_s)
    events = [MessageAcceptedEvent.model_validate_json(r.value) for r in records]
    return [e for e in events if str(e.payload.message_id) in wanted]


async def test_a_redelivered_send_is_accepted_once(pool, env, publisher) -> None:
    """The timer's send published again (a crash between publish and commit, a redelivery): ingest
    accepts the message id once (one idempotency key, the same message and short links)."""
    tenant = (await make_tenant(pool)).tenant_id
    definition = {"name": "sale", "trigger": {"event": "sale.ping"}, "steps": [
        {"type": "send", "purpose": "marketing", "body": "Sale today at https://shop.example.com/sale"}]}
    journey_id = await create_journey(pool, tenant, definition)
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    phone = "+34600777001"
    await JourneyEventsHandler(repo, clock.now)([incoming(tenant, "sale.ping", phone, clock)])

    class Twice:
        """Publishes every batch twice, as a redelivery would."""

        async def publish(self, items) -> None:
            await publisher.publish(items)
            await publisher.publish(items)

    await JourneyTimer(repo, Twice(), 0.1, 100, clock.now).advance_due()  # type: ignore[arg-type]
    [message_id] = (await journey_send_ids(pool, journey_id))[phone]
    await asyncio.sleep(2)  # both sends through the lane
    events = await accepted_ids(env, ACCEPTED_BULK, {message_id})
    assert events and {e.event_id for e in events} == {message_id}
    assert len({e.payload.body for e in events}) == 1, "one set of short links"
    m = events[0].payload
    assert (m.source, m.journey_id, m.to) == ("journey", journey_id, phone)
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1", tenant) == 1
    assert await pool.fetchval("SELECT count(*) FROM links WHERE message_id = $1", message_id) == 1
    code = await pool.fetchval("SELECT code FROM links WHERE message_id = $1", message_id)
    assert f"/{code}" in m.body and "shop.example.com" not in m.body


async def test_a_send_from_a_suspended_sender_is_refused_with_the_reason(client, pool, env, publisher) -> None:
    """A journey naming a sender that was suspended after the journey was written: ingest refuses
    the send (rejected.v1, and a failed status for the message with the reason); the run goes on."""
    from herald_tools import admin

    tenant = await make_tenant(pool)
    await register_senders(pool, tenant.tenant_id, "Shopco")
    body = {"name": "orders", "trigger": {"event": "order.placed"}, "reentry": {"mode": "always"}, "steps": [
        {"type": "send", "purpose": "transactional", "body": "Order received", "sender": "Shopco"}]}
    r = await client.post("/v1/journeys", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    journey_id = uuid.UUID(r.json()["journey_id"])
    async with pool.acquire() as conn:
        await admin.sender_set_state(conn, "ops", tenant.tenant_id, "Shopco", "suspended", "complaints")
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    phone = "+34600777101"
    await JourneyEventsHandler(repo, clock.now)([incoming(tenant.tenant_id, "order.placed", phone, clock)])
    await JourneyTimer(repo, publisher, 0.1, 100, clock.now).advance_due()
    [message_id] = (await journey_send_ids(pool, journey_id))[phone]
    [status] = await statuses_of(env, [message_id])
    p = status.payload
    assert (p.status.value, p.reason_code) == ("failed", "sender_not_verified"), p
    assert (p.detail["source"], p.detail["journey_id"]) == ("journey", str(journey_id))
    records = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                               lambda rs: any(str(message_id) in e.payload.original for e in rejected_events(rs)))
    [rejected] = [e for e in rejected_events(records) if str(message_id) in e.payload.original]
    assert (rejected.payload.reason_code, rejected.payload.source, rejected.tenant) == (
        "sender_not_verified", JOURNEY_SENDS.name(env.prefix), tenant.tenant_id)
    records = await read_topic(env.bootstrap, ACCEPTED.name(env.prefix), lambda rs: False, timeout_s=2)
    assert not [r for r in records if str(message_id).encode() in r.value], "nothing accepted"
    assert [r["state"] for r in await runs_of(pool, journey_id)] == ["completed"]


async def test_a_journey_sends_from_a_pool_with_sticky_senders(client, pool, env, publisher) -> None:
    """A send step naming a sender pool (checked when the journey is written): the contact gets a
    sender of the pool and keeps it on the next send (stored like the API's assignments)."""
    from herald_tools import admin

    tenant = await make_tenant(pool)
    a, b = "+34910000101", "+34910000102"
    await register_senders(pool, tenant.tenant_id, a, b, countries=["ES"])
    async with pool.acquire() as conn:
        await admin.pool_set(conn, "ops", tenant.tenant_id, "otp", [a, b])
        await admin.sender_update(conn, "ops", tenant.tenant_id, a, rate_per_s=20.0)
        await admin.sender_update(conn, "ops", tenant.tenant_id, b, rate_per_s=20.0)
    body = {"name": "codes", "trigger": {"event": "code.asked"}, "reentry": {"mode": "always"}, "steps": [
        {"type": "send", "purpose": "transactional", "body": "Your code is {{trigger.code}}", "sender_pool": "nope"}]}
    r = await client.post("/v1/journeys", json=body, headers=tenant.headers)
    assert error(r) == (422, "sender_pool_not_found") and r.json()["error"]["details"][0]["loc"] == "body.steps.0.sender_pool"
    body["steps"][0]["sender_pool"] = "otp"
    r = await client.post("/v1/journeys", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    journey_id = uuid.UUID(r.json()["journey_id"])
    r = await client.put(f"/v1/journeys/{journey_id}", json={**body, "steps": [{**body["steps"][0], "sender_pool": "gone"}]},
                         headers=tenant.headers)
    assert error(r) == (422, "sender_pool_not_found"), "checked on update too"
    clock = FakeClock(utcnow())
    repo = JourneyRepository(pool)
    lane, timer = JourneyEventsHandler(repo, clock.now), JourneyTimer(repo, publisher, 0.1, 100, clock.now)
    phone = "+34600777201"
    await lane([incoming(tenant.tenant_id, "code.asked", phone, clock, code="1111")])
    await timer.advance_due()
    first_ids = (await journey_send_ids(pool, journey_id))[phone]
    [first] = await accepted_ids(env, ACCEPTED, set(first_ids))
    clock.advance(seconds=1)
    await lane([incoming(tenant.tenant_id, "code.asked", phone, clock, code="2222")])
    await timer.advance_due()
    second_ids = set((await journey_send_ids(pool, journey_id))[phone]) - set(first_ids)
    [second] = await accepted_ids(env, ACCEPTED, second_ids)
    m1, m2 = first.payload, second.payload
    assert m1.sender in (a, b) and m2.sender == m1.sender
    assert (m1.sender_pool, m1.sender_choice["sender_choice"], m2.sender_choice["sender_choice"]) == ("otp", "assigned", "sticky")
    assert m1.sender_throttle is not None and m1.sender_throttle.rate_per_s == 20.0, "the sender's throughput holds"
    assert (m1.source, m1.journey_id, m2.body) == ("journey", journey_id, "Your code is 2222")
    assert await pool.fetchval("SELECT sender FROM sender_assignments WHERE tenant_id = $1 AND pool = 'otp' AND phone_e164 = $2",
                               tenant.tenant_id, phone) == m1.sender
