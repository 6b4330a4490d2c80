"""The replies lane on the real broker and database: STOP/START/HELP change consent and send
confirmations as accepted (transactional) events, once per inbound event; other replies are
forwarded with the conversation; an unknown number is rejected."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from herald_tools import admin
from services.ingest.replies.handler import RepliesHandler
from services.ingest.replies.repository import RepliesRepository
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from shared.contracts import (
    SYSTEM_TENANT,
    InboundMessageEvent,
    MessageAcceptedEvent,
    ReplyForwardedEvent,
)
from shared.kafka import BatchConsumer, Publisher, make_producer
from shared.settings import ConsumerSettings
from shared.topics import ACCEPTED, INBOUND, REJECTED, REPLIES
from tests import factories
from tests.conftest import make_tenant
from tests.helpers import marketing_to, produce_raw, read_topic, rejected_events

pytestmark = pytest.mark.integration


def handset() -> str:
    return f"+3461{random.randrange(10**6, 10**7)}"


def tenant_number() -> str:
    return f"+3491{random.randrange(10**6, 10**7)}"  # Madrid fixed lines: valid numbers to register


def inbound(sender: str, recipient: str, body: str, at: datetime | None = None) -> InboundMessageEvent:
    return factories.inbound_event(
        factories.inbound(body, sender, recipient, gateway="sim", received_at=at or datetime.now(UTC)), SYSTEM_TENANT)


async def test_replies_lane_end_to_end_on_broker_and_database(env, pool) -> None:
    tenant = await make_tenant(pool)
    t = tenant.tenant_id
    plain, scoped = tenant_number(), tenant_number()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "test", t, plain)
        await admin.number_add(conn, "test", t, scoped, scope="Shoes")
        audit = await conn.fetch("SELECT action, target FROM audit_log WHERE detail->>'tenant_id' = $1", t)
    assert sorted(r["action"] for r in audit) == ["number.add", "number.add"]

    en, es, fr, brand, chat, unknown_sender, helper = (handset() for _ in range(7))
    # An audience contact in French: the STOP goes to its consent history, the reply is in French.
    await pool.execute("INSERT INTO contacts (tenant_id, phone_e164, language, country) VALUES ($1, $2, 'fr', 'ES')", t, fr)
    # An earlier outbound message to the chatting number: part of the forwarded conversation.
    sent_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO messages (message_id, tenant_id, to_e164, type, sender, status, status_rank, accepted_at)"
        " VALUES ($1, $2, $3, 'marketing', 'Acme', 'delivered', 100, now() - interval '1 hour')",  # final rank
        sent_id, t, chat,
    )
    t0 = datetime.now(UTC)
    stop_en = inbound(en.lstrip("+"), plain, "Stop")  # a gateway may drop the +
    events = [
        stop_en,
        inbound(es, plain, "¡BAJA!", t0),
        inbound(fr, plain, "stop", t0),
        inbound(brand, scoped, "STOP", t0),
        inbound(chat, plain, "Can I move my appointment to Friday?", t0),
        inbound(unknown_sender, tenant_number(), "STOP", t0),
        inbound(helper, plain, "Ayuda", t0),
        inbound(es, plain, "alta", t0 + timedelta(seconds=1)),  # after the BAJA: subscribed again
        stop_en,  # redelivered: one confirmation only
    ]
    marker = uuid.uuid4().hex
    await produce_raw(env.bootstrap, INBOUND.name(env.prefix),
                      [(marker.encode(), e.model_dump_json().encode()) for e in events])

    settings = ConsumerSettings(consumer_poll_ms=100)
    producer = make_producer(settings, "test")
    await producer.start()
    acceptor = Acceptor(IngestRepository(pool), IngestSettings())
    handler = RepliesHandler(acceptor, RepliesRepository(pool))
    consumer = BatchConsumer(settings, "test", f"g-{marker}", [INBOUND], handler, Publisher(producer, env.prefix, "test"))
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        def mine(records: list) -> list[MessageAcceptedEvent]:
            out = [MessageAcceptedEvent.model_validate_json(r.value) for r in records]
            return [e for e in out if e.tenant == t]

        accepted = mine(await read_topic(env.bootstrap, ACCEPTED.name(env.prefix),
                                         lambda rs: len({e.event_id for e in mine(rs)}) >= 6, timeout_s=45))
        replies = await read_topic(env.bootstrap, REPLIES.name(env.prefix),
                                   lambda rs: any(ReplyForwardedEvent.model_validate_json(r.value).tenant == t for r in rs))
        rejected = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                                    lambda rs: any(e.payload.key == marker for e in rejected_events(rs)))
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
        await producer.stop()

    # Confirmations: one per keyword message, transactional, keyed by the inbound event id.
    by_to: dict[str, set[uuid.UUID]] = {}
    bodies: dict[str, list[str]] = {}
    for e in accepted:
        p = e.payload
        assert p.type.value == "transactional"
        assert p.idempotency_key == f"reply:{p.metadata['inbound_event_id']}"
        by_to.setdefault(p.to, set()).add(p.message_id)
        bodies.setdefault(p.to, []).append(p.body)
    assert set(by_to) == {en, es, fr, brand, helper}
    assert len(by_to[en]) == 1, "a redelivered STOP sends one confirmation"
    assert len(by_to[es]) == 2  # BAJA and ALTA
    assert any(b.startswith("You are unsubscribed from") for b in bodies[en])
    assert any("dado de baja" in b for b in bodies[es]) and any("vuelto a suscribir" in b for b in bodies[es])
    assert any("desabonne" in b for b in bodies[fr])
    assert any("(shoes)" in b for b in bodies[brand])
    assert all(b.startswith(t) or "ALTA" in b for b in bodies[helper])
    key = await pool.fetchval("SELECT message_id FROM idempotency_keys WHERE tenant_id = $1 AND idempotency_key = $2",
                              t, f"reply:{stop_en.event_id}")
    assert by_to[en] == {key}

    # Consent: global STOP, the re-subscribed number is off the list, the scoped one only in its scope.
    suppressed = {r["phone_e164"] for r in await pool.fetch("SELECT phone_e164 FROM suppressions WHERE tenant_id = $1", t)}
    assert suppressed == {en, fr}
    scoped_rows = await pool.fetch("SELECT phone_e164, scope FROM scoped_suppressions WHERE tenant_id = $1", t)
    assert [(r["phone_e164"], r["scope"]) for r in scoped_rows] == [(brand, "shoes")]
    consents = await pool.fetch(
        "SELECT c.granted, c.source, c.proof FROM contact_consents c JOIN contacts USING (tenant_id, contact_id)"
        " WHERE tenant_id = $1 AND phone_e164 = $2", t, fr)
    assert [(r["granted"], r["source"]) for r in consents] == [(False, "sms_keyword")]
    assert await pool.fetchval("SELECT consent_marketing FROM contacts WHERE tenant_id = $1 AND phone_e164 = $2", t, fr) is False

    # The scheduler's facts: scoped opt-out applies to the scoped sender only.
    from services.scheduler.handlers import FactsRepository

    facts = await FactsRepository(pool).load(marketing_to((t, brand), (t, en)))
    assert (t, en) in facts.suppressions and (t, brand) not in facts.suppressions
    assert (t, brand, scoped) in facts.scoped_suppressions

    # The ordinary reply is forwarded, with the earlier outbound message in its conversation.
    forwarded = [ReplyForwardedEvent.model_validate_json(r.value) for r in replies]
    forwarded = [f for f in forwarded if f.tenant == t]
    assert len({f.event_id for f in forwarded}) == 1
    reply = forwarded[0].payload
    assert reply.phone == chat and reply.recipient == plain and reply.body.startswith("Can I move")
    assert [c.message_id for c in reply.conversation if c.direction == "outbound"] == [sent_id]

    # The message to a number no tenant owns is kept on the rejected topic.
    mine_rejected = [e for e in rejected_events(rejected) if e.payload.key == marker]
    assert [e.payload.reason_code for e in mine_rejected] == ["unknown_recipient_number"]
    assert unknown_sender in mine_rejected[0].payload.original


async def test_tenant_keywords_and_numbers_admin(pool) -> None:
    tenant = await make_tenant(pool)
    other = await make_tenant(pool)
    number = tenant_number()
    async with pool.acquire() as conn:
        await admin.number_add(conn, "test", tenant.tenant_id, number)
        with pytest.raises(ValueError):
            await admin.number_add(conn, "test", other.tenant_id, number)
        assert [r["number"] for r in await admin.number_list(conn, tenant.tenant_id)] == [number]
        assert await admin.number_remove(conn, "test", tenant.tenant_id, number)
        assert not await admin.number_remove(conn, "test", tenant.tenant_id, number)
    await pool.execute(
        "INSERT INTO tenant_keywords (tenant_id, keyword, grp, language) VALUES ($1, 'PARE', 'stop', 'pt')", tenant.tenant_id
    )
    keywords, _ = await RepliesRepository(pool).keywords_and_scopes({tenant.tenant_id})
    assert keywords[tenant.tenant_id]["PARE"].group == "stop"
