"""Cancel and reschedule a held message: ingest's API publishes a command to Kafka, the
scheduler applies it to its timer (it owns scheduled_messages) and publishes the status, and
reports shows the outcome. Real PostgreSQL and Kafka; the services' apps and handlers in-process."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.reports.handlers import StatusHandler
from services.scheduler.handlers import AcceptedHandler, CommandHandler, FactsRepository
from shared.contracts import MessageAcceptedEvent, MessageCommandEvent, MessageStatusEvent, utcnow
from shared.kafka import Incoming, Publisher, make_producer
from shared.topics import ACCEPTED_BULK, MESSAGE_COMMANDS, STATUS
from tests.conftest import Tenant, make_tenant
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


def incoming(topic, event) -> Incoming:
    return Incoming(topic, event, None)  # handlers never read the record


@pytest.fixture(scope="module")
async def stack(env, pool) -> AsyncIterator[tuple[httpx.AsyncClient, Publisher]]:
    settings = IngestSettings()
    producer = make_producer(settings, "test-commands")
    await producer.start()
    repository = IngestRepository(pool)
    publisher = Publisher(producer, env.prefix, "ingest")

    app = create_app(settings, pool, Acceptor(repository, settings), publisher, repository)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        yield client, publisher
    await producer.stop()


async def held_message(env, pool, client: httpx.AsyncClient, tenant: Tenant) -> uuid.UUID:
    """A marketing message sent with send_at tomorrow: accepted by ingest, held by the scheduler,
    folded by reports."""
    send_at = (utcnow() + timedelta(days=1)).isoformat()
    r = await client.post("/v1/messages", json={"to": "+34600000001", "body": "Oferta", "type": "marketing",
                                                "send_at": send_at}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    message_id = uuid.UUID(r.json()["message_id"])
    records = await read_topic(env.bootstrap, ACCEPTED_BULK.name(env.prefix),
                               lambda rs: any(str(message_id).encode() in r.value for r in rs))
    accepted = next(MessageAcceptedEvent.model_validate_json(r.value) for r in records
                    if str(message_id).encode() in r.value)
    decided = await AcceptedHandler(FactsRepository(pool))([incoming(ACCEPTED_BULK, accepted)])
    assert [o.event.payload.status.value for o in decided] == ["scheduled"]
    await StatusHandler(pool)([incoming(ACCEPTED_BULK, accepted), *(incoming(o.topic, o.event) for o in decided)])
    assert await pool.fetchval("SELECT status FROM messages WHERE message_id = $1", message_id) == "scheduled"
    return message_id


async def apply_commands(env, pool, publisher: Publisher, message_id: uuid.UUID, n: int) -> list[MessageStatusEvent]:
    """The scheduler's command lane on what ingest published; reports folds the statuses it publishes."""
    records = await read_topic(env.bootstrap, MESSAGE_COMMANDS.name(env.prefix),
                               lambda rs: sum(str(message_id).encode() in r.value for r in rs) >= n)
    commands = [MessageCommandEvent.model_validate_json(r.value) for r in records if str(message_id).encode() in r.value]
    assert await CommandHandler(pool, publisher)([incoming(MESSAGE_COMMANDS, c) for c in commands[-1:]]) == []
    records = await read_topic(env.bootstrap, STATUS.name(env.prefix),
                               lambda rs: sum(str(message_id).encode() in r.value for r in rs) >= n)
    statuses = [MessageStatusEvent.model_validate_json(r.value) for r in records if str(message_id).encode() in r.value]
    await StatusHandler(pool)([incoming(STATUS, s) for s in statuses])
    return statuses


async def test_cancel_a_held_message(env, pool, stack, tenant: Tenant) -> None:
    client, publisher = stack
    message_id = await held_message(env, pool, client, tenant)
    r = await client.delete(f"/v1/messages/{message_id}", headers=tenant.headers)
    assert (r.status_code, r.json()["status"]) == (202, "cancel_requested"), r.text
    statuses = await apply_commands(env, pool, publisher, message_id, 1)
    assert (statuses[-1].payload.status.value, statuses[-1].payload.reason_code) == ("suppressed", "cancelled_by_client")
    assert await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE message_id = $1", message_id) == 0
    row = await pool.fetchrow("SELECT status, reason_code FROM messages WHERE message_id = $1", message_id)
    assert (row["status"], row["reason_code"]) == ("suppressed", "cancelled_by_client")
    r = await client.delete(f"/v1/messages/{message_id}", headers=tenant.headers)  # final now
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_scheduled")


async def test_reschedule_a_held_message(env, pool, stack, tenant: Tenant) -> None:
    client, publisher = stack
    message_id = await held_message(env, pool, client, tenant)
    new_time = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    r = await client.patch(f"/v1/messages/{message_id}", json={"send_at": new_time.isoformat()}, headers=tenant.headers)
    assert (r.status_code, r.json()["status"]) == (202, "reschedule_requested"), r.text
    statuses = await apply_commands(env, pool, publisher, message_id, 1)
    assert statuses[-1].payload.status.value == "scheduled"
    assert statuses[-1].payload.detail["due_at"] == new_time.isoformat()
    row = await pool.fetchrow("SELECT due_at, accepted FROM scheduled_messages WHERE message_id = $1", message_id)
    assert row["due_at"] == new_time and row["accepted"]["send_at"] == new_time.isoformat()
    timeline = await pool.fetch("SELECT detail FROM message_events WHERE message_id = $1 AND status = 'scheduled'",
                                message_id)
    assert any(json.loads(json.dumps(e["detail"])).get("rescheduled") == "true" for e in timeline)


async def test_already_sent_unknown_and_another_tenant(env, pool, stack, tenant: Tenant) -> None:
    client, _ = stack
    message_id = await held_message(env, pool, client, tenant)
    await pool.execute("UPDATE messages SET status = 'submitted', status_rank = 40 WHERE message_id = $1", message_id)
    r = await client.delete(f"/v1/messages/{message_id}", headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "already_sent")
    assert "already on its way" in r.json()["error"]["message"]
    r = await client.patch(f"/v1/messages/{message_id}", json={"send_at": utcnow().isoformat()}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "already_sent")
    r = await client.delete(f"/v1/messages/{uuid.uuid4()}", headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "message_not_found")
    other = await make_tenant(pool)
    r = await client.delete(f"/v1/messages/{message_id}", headers=other.headers)  # not theirs
    assert (r.status_code, r.json()["error"]["code"]) == (404, "message_not_found")
