"""The erasures lanes of the scheduler, dispatcher and reports on the real PostgreSQL and Kafka:
each erases its own tables in one transaction with its audit row, and an erasure delivered again
changes nothing (the audit row is the guard)."""

from __future__ import annotations

import json
import uuid

import pytest

from services.dispatcher.erasure import dispatcher_eraser
from services.reports.erasure import reports_eraser
from services.scheduler.erasure import scheduler_eraser
from shared.contracts import ErasureRequested, ErasureRequestedEvent, MessageAccepted, MessageStatusEvent, utcnow
from shared.erasure import build_keys
from shared.erasure_store import ErasureHandler
from shared.kafka import Incoming, Publisher, make_producer
from shared.settings import KafkaSettings
from shared.topics import ERASURES, STATUS
from tests import factories
from tests.conftest import make_tenant
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

KEYS = build_keys({"k1": "lanes-test-erasure-key-0123456789abcdef"}, None)


def accepted(number: str, body: str) -> MessageAccepted:
    return factories.accepted(to=number, body=body, type="marketing", accepted_at=utcnow(), metadata={"k": body})


async def test_each_service_erases_its_own_tables_once(env, pool) -> None:
    tenant = (await make_tenant(pool)).tenant_id
    number, other = "+34600000931", "+34600000932"
    held, sent, kept = accepted(number, "held text"), accepted(number, "sent text"), accepted(other, "kept text")
    # scheduler: a held message, a release; dispatcher: an open claim and a final one; reports: the messages
    for m in (held, kept):
        await pool.execute("INSERT INTO scheduled_messages (message_id, tenant_id, due_at, accepted, trace_id, reason_code)"
                           " VALUES ($1, $2, now() + interval '1 day', $3, 'trace', 'scheduled')",
                           m.message_id, tenant, json.loads(m.model_dump_json()))
    await pool.execute("INSERT INTO marketing_releases (tenant_id, phone_e164, message_id, released_at) VALUES ($1, $2, $3, now())",
                       tenant, number, sent.message_id)
    for m, state in ((sent, "submitted"), (held, "claimed"), (kept, "submitted")):
        await pool.execute("INSERT INTO dispatch_claims (message_id, tenant_id, state, owner, lease_until, outbound)"
                           " VALUES ($1, $2, $3, 'test', now(), $4)", m.message_id, tenant, state, json.loads(m.model_dump_json()))
    for m in (held, sent, kept):
        await pool.execute("INSERT INTO messages (message_id, tenant_id, to_e164, metadata, status, status_rank)"
                           " VALUES ($1, $2, $3, $4, 'submitted', 3)", m.message_id, tenant, m.to, m.metadata)
    await pool.execute("INSERT INTO conversions (tenant_id, event_id, name, phone_e164, occurred_at, value, attribution)"
                       " VALUES ($1, $2, 'order.completed', $3, now(), 10, 'none')", tenant, uuid.uuid4(), number)

    erasure = ErasureRequested(erasure_id=uuid.uuid4(), phone=number, phone_hash=KEYS.hash(tenant, number),
                               requested_by="key-1", requested_at=utcnow())
    event = Incoming(ERASURES, ErasureRequestedEvent(tenant=tenant, payload=erasure), None)
    producer = make_producer(KafkaSettings(kafka_bootstrap=env.bootstrap), "test-erasure-lanes")
    await producer.start()
    try:
        publisher = Publisher(producer, env.prefix, "scheduler")
        handlers = [ErasureHandler(pool, "scheduler", scheduler_eraser(publisher)),
                    ErasureHandler(pool, "dispatcher", dispatcher_eraser), ErasureHandler(pool, "reports", reports_eraser)]
        for _ in range(2):  # delivered twice: applied once
            for handler in handlers:
                assert await handler([event, event]) == []
    finally:
        await producer.stop()

    audit = {r["service"]: r for r in await pool.fetch("SELECT * FROM erasure_audit WHERE erasure_id = $1", erasure.erasure_id)}
    assert {s: a["counts"] for s, a in audit.items()} == {
        "scheduler": {"scheduled_messages": 1, "journey_runs": 0, "marketing_releases": 1},
        "dispatcher": {"dispatch_claims": 2},
        "reports": {"messages": 2, "clicks": 0, "conversions": 1, "webhook_outbox": 0, "webhook_sequences": 0},
    }
    assert all((a["phone_hash"], a["requested_by"], a["tenant_id"]) == (erasure.phone_hash, "key-1", tenant) for a in audit.values())

    # the number and its texts are gone from these tables; the other number is untouched
    for table in ("scheduled_messages", "marketing_releases", "dispatch_claims", "messages", "conversions", "erasure_audit"):
        text = json.dumps([dict(r) for r in await pool.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", tenant)], default=str)
        assert number not in text and "held text" not in text and "sent text" not in text, table
    assert await pool.fetchval("SELECT count(*) FROM scheduled_messages WHERE tenant_id = $1", tenant) == 1
    assert await pool.fetchval("SELECT to_e164 FROM messages WHERE message_id = $1", kept.message_id) == other
    claims = {r["message_id"]: r for r in await pool.fetch("SELECT * FROM dispatch_claims WHERE tenant_id = $1", tenant)}
    assert (claims[held.message_id]["state"], claims[held.message_id]["reason_code"]) == ("failed", "erased")  # never resent
    assert claims[sent.message_id]["state"] == "submitted"
    assert claims[sent.message_id]["outbound"] == {"message_id": str(sent.message_id), "erased": True}
    assert claims[kept.message_id]["outbound"]["to"] == other
    assert await pool.fetchval("SELECT value FROM conversions WHERE tenant_id = $1 AND phone_e164 IS NULL", tenant) == 10

    # the held message ends suppressed, reason erased (published once: the second delivery found the audit row)
    records = await read_topic(env.bootstrap, STATUS.name(env.prefix),
                               lambda rs: any(str(held.message_id).encode() in r.value for r in rs))
    statuses = [MessageStatusEvent.model_validate_json(r.value) for r in records if str(held.message_id).encode() in r.value]
    assert [(s.payload.status.value, s.payload.reason_code) for s in statuses] == [("suppressed", "erased")]


async def test_the_scheduler_refuses_to_start_without_a_key_for_every_stored_version(pool) -> None:
    from services.scheduler.app import check_erasure_keys

    tenant = (await make_tenant(pool)).tenant_id
    k9 = build_keys({"k9": "lanes-test-erasure-key-nine-0123456789abc"}, None)
    await check_erasure_keys(pool, KEYS)  # whatever else the session stored: versions it knows
    await pool.execute("INSERT INTO suppression_hashes (tenant_id, phone_hash, reason, source) VALUES ($1, $2, 'erased', 'erasure')",
                       tenant, k9.hash(tenant, "+34600000933"))
    try:
        with pytest.raises(SystemExit, match=r"versions \['k9'\]"):
            await check_erasure_keys(pool, KEYS)
        await check_erasure_keys(pool, build_keys({"k1": "lanes-test-erasure-key-0123456789abcdef",
                                                   "k9": "lanes-test-erasure-key-nine-0123456789abc"}, "k1"))
    finally:  # other modules of the session start schedulers on this database
        await pool.execute("DELETE FROM suppression_hashes WHERE tenant_id = $1", tenant)
