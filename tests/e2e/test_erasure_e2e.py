"""Erasure through the real services: a number is sent a code (with a status webhook), a marketing
message with a tracked link and a held one, replies (forwarded to the reply webhook), clicks,
converts and starts a journey, and is a contact; then it is erased. Every table of the database
is scanned, every column as text: neither the number (E.164, without '+', national) nor any of
its texts, its name or its browser is left anywhere; what is left is the keyed hash in
suppression_hashes and each service's audit row. Kafka keeps what it carried for its short
retention (docs/data-map.md): every record of every topic is read too, and each topic that holds
the number or its texts must be one whose configuration on the real broker deletes it within
days (a topic kept at the broker's default retention must hold none of it)."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import httpx
import phonenumbers
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from herald_tools import admin
from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.contracts import SYSTEM_TENANT, InboundMessage, InboundMessageEvent, utcnow
from shared.topics import ALL, INBOUND, PERSONAL_DATA_RETENTION
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, scrape
from tests.helpers import foreign_numbers_allowed, http_receiver, loopback_policy, produce_raw, wait_for, webhook_hit

pytestmark = pytest.mark.e2e

IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


def marker() -> str:
    return uuid.uuid4().hex[:12]


async def scan(pool, needles: list[str]) -> dict[str, list[str]]:
    """Every base table of the database whose rows, read as text (every column: text, jsonb,
    arrays...), contain one of ``needles``: {table: [the needles found]}."""
    tables = [r["table_name"] for r in await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")]
    assert {"messages", "dispatch_claims", "scheduled_messages", "inbound_messages", "clicks", "conversions"} <= set(tables)
    found: dict[str, list[str]] = {}
    for table in tables:
        hits = [n for n in needles if await pool.fetchval(
            f'SELECT EXISTS (SELECT 1 FROM "{table}" x WHERE strpos(x::text, $1) > 0)', n)]
        if hits:
            found[table] = hits
    return found


async def test_an_erased_number_leaves_nothing_but_its_keyed_hash(stack: Stack, pool) -> None:
    hits: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(await webhook_hit(request))
        return web.Response(status=200)

    tenant = await make_tenant(pool)
    t = tenant.tenant_id
    countries = foreign_numbers_allowed(marketing_countries(True)) or ["ES"]  # where marketing may go out now, from a Spanish number (some country always is: JP, MX)
    number = demo_numbers(1, seed=random.randrange(10**9), countries=countries[:1])[0]
    national = str(phonenumbers.parse(number).national_number)  # the number without its country code
    ours = f"+3491{random.randrange(10**6, 10**7)}"
    name, otp, sale, later, answer, browser, note, meta = (marker() for _ in range(8))
    texts = {"otp": f"Your code is {otp}", "sale": f"Sale {sale} today: https://shop.example/spring",
             "later": f"Tomorrow {later}", "reply": f"Do you have size {answer}?"}

    async with http_receiver("/hooks", hook) as url, httpx.AsyncClient(
        base_url=stack.url("ingest"), headers=tenant.headers, timeout=30
    ) as api:
        async with pool.acquire() as conn:
            await admin.number_add(conn, "e2e", t, ours)
            await admin.reply_webhook_set(conn, "e2e", t, url, loopback_policy())
        # a contact, and a journey its events start (the run waits a week)
        r = await api.post("/v1/contacts", json={"phone": number, "first_name": f"Zoe{name}"})
        assert r.status_code == 201, r.text
        journey = {"name": "cart", "trigger": {"event": "cart.updated"},
                   "steps": [{"type": "wait_for_event", "event": "never.happens", "timeout": "7d",
                              "on_event": "end", "on_timeout": "end"}]}
        assert (r := await api.post("/v1/journeys", json=journey)).status_code == 201, r.text

        # 1. send: a code with a status webhook and metadata, an offer with a link, an offer held for tomorrow
        sent = []
        for body in (
            {"to": number, "body": texts["otp"], "type": "transactional", "sender": ours, "status_callback_url": url,
             "metadata": {"ref": meta}},
            {"to": number, "body": texts["sale"], "type": "marketing", "sender": ours},
            {"to": number, "body": texts["later"], "type": "marketing", "send_at": (utcnow() + timedelta(days=1)).isoformat()},
        ):
            r = await api.post("/v1/messages", json=body)
            assert r.status_code == 202, r.text
            sent.append(r.json()["message_id"])
        code_id, sale_id, held_id = sent
        await all_final(pool, [code_id, sale_id], timeout_s=120)
        await wait_for(lambda: pool.fetchval("SELECT status = 'scheduled' FROM messages WHERE message_id = $1::uuid", held_id),
                       timeout_s=60)
        await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM webhook_outbox WHERE message_id = $1::uuid", code_id),
                       timeout_s=60)

        # 2-4. reply (forwarded to the reply webhook), click the offer's link, convert, start the journey
        await reply_click_and_convert(stack, pool, api, t, number=number, ours=ours, reply=texts["reply"],
                                      sale_id=sale_id, browser=browser, note=note)
        await wait_for(lambda: pool.fetchval(
            "SELECT count(*) > 0 FROM webhook_outbox WHERE tenant_id = $1 AND kind = 'reply'", t), timeout_s=60)

        needles = [number, number[1:], national, f"Zoe{name}", otp, sale, later, answer, browser, note, meta,
                   *texts.values()]
        before = await scan(pool, needles)
        for table in ("contacts", "messages", "dispatch_claims", "scheduled_messages", "inbound_messages", "clicks",
                      "conversions", "journey_runs", "webhook_outbox"):
            assert table in before, f"{table} should hold the number or its texts before the erasure ({before})"

        # 5. erase the number; every service applies it
        r = await api.post("/v1/erasures", json={"phone": number})
        assert r.status_code == 202, r.text
        erasure_id = r.json()["erasure_id"]

        async def complete():
            status = (await api.get(f"/v1/erasures/{erasure_id}")).json()
            return status if status["complete"] else None

        status = await wait_for(complete, timeout_s=60, interval_s=0.3)
        assert sorted(status["applied"]) == ["dispatcher", "ingest", "reports", "scheduler"]
        counts = {service: a["counts"] for service, a in status["applied"].items()}
        assert counts["ingest"]["contacts"] == 1 and counts["ingest"]["inbound_messages"] == 1
        assert counts["scheduler"]["scheduled_messages"] == 1 and counts["scheduler"]["journey_runs"] == 1
        assert counts["dispatcher"]["dispatch_claims"] >= 2 and counts["reports"]["messages"] >= 3
        assert counts["reports"]["clicks"] == 1 and counts["reports"]["conversions"] == 1
        for service in ("scheduler", "dispatcher", "reports", "ingest"):
            samples = scrape(f"{stack.ops_url(service)}/metrics")
            assert samples[("herald_erasures_total", frozenset({("service", service)}))] >= 1, service

    # 6. nothing left of the number or its texts, in any table
    assert await scan(pool, needles) == {}
    hashes = await pool.fetch("SELECT phone_hash, reason FROM suppression_hashes WHERE tenant_id = $1", t)
    assert [(h["phone_hash"][:3], len(h["phone_hash"]), h["reason"]) for h in hashes] == [("k1:", 67, "erased")]
    audit = await pool.fetch("SELECT service, phone_hash FROM erasure_audit WHERE erasure_id = $1::uuid ORDER BY service", erasure_id)
    assert [(a["service"], a["phone_hash"]) for a in audit] == [
        (s, hashes[0]["phone_hash"]) for s in ("dispatcher", "ingest", "reports", "scheduler")]
    # the held offer ended suppressed because of the erasure; counts of the campaign world stay
    row = await pool.fetchrow("SELECT status, reason_code, to_e164 FROM messages WHERE message_id = $1::uuid", held_id)
    assert (row["status"], row["reason_code"], row["to_e164"]) == ("suppressed", "erased", None)
    assert await pool.fetchval("SELECT value FROM conversions WHERE tenant_id = $1", t) == 25.5

    # the number stays suppressed for marketing: a new offer to it is suppressed by the hash
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers) as api:
        r = await api.post("/v1/messages", json={"to": number, "body": "Come back", "type": "marketing"})
        assert r.status_code == 202
    again = r.json()["message_id"]
    await wait_for(lambda: pool.fetchval("SELECT status = 'suppressed' FROM messages WHERE message_id = $1::uuid", again),
                   timeout_s=60)

    # 7. Kafka: the topics that carry numbers and texts keep them a short time, and no other topic carries them
    await check_topic_retention(stack)
    on_topics = await scan_topics(stack.env["HERALD_KAFKA_BOOTSTRAP"], stack.env["HERALD_TOPIC_PREFIX"], needles)
    for suffix in ("messages.accepted.v1", "messages.outbound.bulk.v1", "inbound.v1", "replies.v1", "erasures.v1"):
        assert suffix in on_topics, f"{suffix} should have carried the number or its texts ({on_topics})"
    short = {t.suffix for t in ALL if t.config == PERSONAL_DATA_RETENTION}
    assert {suffix: hits for suffix, hits in on_topics.items() if suffix not in short} == {}


async def scan_topics(bootstrap: str, prefix: str, needles: list[str]) -> dict[str, list[str]]:
    """Every record of every topic of ``prefix`` (key and value, as text) read from the start to
    the end offsets: {topic suffix: [the needles found]}."""
    found: dict[str, list[str]] = {}
    for topic in ALL:
        name = topic.name(prefix)
        consumer = AIOKafkaConsumer(name, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                    auto_offset_reset="earliest", client_id=f"test-scan-{uuid.uuid4().hex[:6]}")
        await consumer.start()
        try:
            partitions = await wait_for(lambda consumer=consumer: _assigned(consumer), timeout_s=30)
            ends = await consumer.end_offsets(partitions)
            text: list[str] = []
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(*partitions, timeout_ms=1000)).values():
                    text += [(r.key or b"").decode(errors="replace") + (r.value or b"").decode(errors="replace")
                             for r in records]
        finally:
            await consumer.stop()
        if hits := [n for n in needles if any(n in t for t in text)]:
            found[topic.suffix] = hits
    return found


async def _assigned(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    return sorted(consumer.assignment())


async def check_topic_retention(stack: Stack) -> None:
    prefix = stack.env["HERALD_TOPIC_PREFIX"]
    client = AIOKafkaAdminClient(bootstrap_servers=stack.env["HERALD_KAFKA_BOOTSTRAP"])
    await client.start()
    try:
        short = [t for t in ALL if t.config == PERSONAL_DATA_RETENTION]
        assert len(short) >= 11
        responses = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.name(prefix)) for t in short])
        found = {}
        for response in responses:
            for resource in response.resources:
                _, _, _, name, entries = resource[:5]
                found[name] = {e[0]: e[1] for e in entries}
        for topic in short:
            configs = found[topic.name(prefix)]
            assert (configs["retention.ms"], configs["segment.ms"]) == (
                PERSONAL_DATA_RETENTION["retention.ms"], PERSONAL_DATA_RETENTION["segment.ms"]), topic.suffix
    finally:
        await client.close()


async def reply_click_and_convert(stack: Stack, pool, api: httpx.AsyncClient, tenant: str, *, number: str, ours: str,
                                  reply: str, sale_id: str, browser: str, note: str) -> str:
    """What a number does after its messages arrived: it replies to ``ours``, clicks the tracked
    link of the offer ``sale_id`` (after the message went out: not too fast for a person), buys
    (a conversion) and puts something in its cart (an event that starts a journey). Returns
    the link's code once Herald holds each of them."""
    inbound = InboundMessageEvent(tenant=SYSTEM_TENANT, payload=InboundMessage(
        gateway="sim", sender=number, recipient=ours, body=reply, received_at=utcnow()))
    await produce_raw(stack.env["HERALD_KAFKA_BOOTSTRAP"], INBOUND.name(stack.env["HERALD_TOPIC_PREFIX"]),
                      [(number.encode(), inbound.model_dump_json().encode())])
    await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM inbound_messages WHERE tenant_id = $1", tenant),
                   timeout_s=60)
    code = await pool.fetchval("SELECT code FROM links WHERE message_id = $1::uuid", sale_id)
    assert code, "the offer's URL was rewritten to a short link"
    await asyncio.sleep(1.2)
    r = await api.get(f"/l/{code}", headers={"user-agent": f"{IPHONE} Herald{browser}"})
    assert r.status_code == 302
    await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM clicks WHERE message_id = $1::uuid", sale_id),
                   timeout_s=60)
    for event in ({"name": "order.completed", "phone": number, "value": "25.50", "currency": "EUR"},
                  {"name": "cart.updated", "phone": number, "properties": {"note": note}}):
        assert (r := await api.post("/v1/events", json=event)).status_code == 202, r.text
    await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM conversions WHERE tenant_id = $1", tenant), timeout_s=60)
    await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM journey_runs WHERE tenant_id = $1", tenant), timeout_s=60)
    return code
