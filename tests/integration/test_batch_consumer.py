"""The batch consumer on the real broker: bad records are rejected with reasons, good ones
around them are handled, offsets are committed, a poison record is isolated."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from shared.contracts import MessageRequest, TriggerEvent
from shared.kafka import BatchConsumer, Incoming, Outgoing, Publisher, make_producer
from shared.settings import ConsumerSettings
from shared.topics import REJECTED, TRIGGERS
from tests.helpers import produce_raw, read_topic, rejected_events, wait_for

pytestmark = pytest.mark.integration


def good(i: int) -> bytes:
    return TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body=f"m{i}")).model_dump_json().encode()


async def run_consumer(env, handler, group: str) -> tuple[BatchConsumer, asyncio.Task, object]:
    settings = ConsumerSettings(consumer_poll_ms=100)
    producer = make_producer(settings, "test")
    await producer.start()
    consumer = BatchConsumer(settings, "test", group, [TRIGGERS], handler, Publisher(producer, env.prefix, "test"))
    await consumer.start()
    return consumer, asyncio.create_task(consumer.run()), producer


async def test_bad_records_go_to_rejected_topic_and_good_ones_pass(env) -> None:
    marker = uuid.uuid4().hex
    handled: list[str] = []

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        handled.extend(i.event.payload.body for i in batch if i.record.key == marker.encode())
        return []

    wrong_version = json.loads(good(0))
    wrong_version["version"] = 7
    missing_field = json.loads(good(0))
    del missing_field["payload"]["to"]
    k = marker.encode()
    values = [
        (k, good(1)),
        (k, b"{not json"),
        (k, json.dumps(wrong_version).encode()),
        (k, json.dumps(missing_field).encode()),
        (k, b'{"pad": "' + b"x" * 300_000 + b'"}'),
        (k, None),
        (k, b"\xff\xfe binary"),
        (k, good(2)),
    ]
    await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), values)
    consumer, task, producer = await run_consumer(env, handler, f"g-{marker}")
    try:
        await wait_for(lambda: asyncio.sleep(0, result=len(handled) >= 2), timeout_s=30)
        records = await read_topic(
            env.bootstrap, REJECTED.name(env.prefix), lambda rs: len([e for e in rejected_events(rs) if e.payload.key == marker]) >= 6
        )
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
        await producer.stop()
    assert handled == ["m1", "m2"]
    mine = [e for e in rejected_events(records) if e.payload.key == marker]
    reasons = sorted(e.payload.reason_code for e in mine)
    assert reasons == sorted(
        ["malformed_json", "unsupported_event", "schema_invalid", "too_large", "empty_value", "malformed_json"]
    )
    binary = [e for e in mine if e.payload.original_encoding == "base64"]
    assert len(binary) == 1, "undecodable bytes are kept as base64"
    schema = next(e for e in mine if e.payload.reason_code == "schema_invalid")
    assert schema.payload.errors[0]["loc"] == "payload.to"


async def test_offsets_are_committed_after_handling(env) -> None:
    group = f"g-{uuid.uuid4().hex}"
    seen: list[str] = []

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        seen.extend(i.event.payload.body for i in batch)
        return []

    # Use a dedicated topic name space: a fresh marker body so we can tell our records apart.
    marker = uuid.uuid4().hex[:6]
    payloads = [(b"k", TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body=f"{marker}-{i}")).model_dump_json().encode()) for i in range(50)]
    await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), payloads)
    consumer, task, producer = await run_consumer(env, handler, group)
    await wait_for(lambda: asyncio.sleep(0, result=sum(1 for s in seen if s.startswith(marker)) == 50))
    consumer.stop_fetching()
    await task
    await consumer.close()
    # A second consumer in the same group sees none of them again.
    again: list[str] = []

    async def handler2(batch: list[Incoming]) -> list[Outgoing]:
        again.extend(i.event.payload.body for i in batch)
        return []

    consumer2, task2, producer2 = await run_consumer(env, handler2, group)
    await asyncio.sleep(3)
    consumer2.stop_fetching()
    await task2
    await consumer2.close()
    await producer.stop()
    await producer2.stop()
    assert not [s for s in again if s.startswith(marker)]


async def test_poison_record_is_isolated(env) -> None:
    marker = uuid.uuid4().hex[:6]
    handled: list[str] = []

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        if any(i.event.payload.body == f"{marker}-poison" for i in batch):
            raise ValueError("cannot handle this one")
        handled.extend(i.event.payload.body for i in batch)
        return []

    bodies = [f"{marker}-a", f"{marker}-poison", f"{marker}-b"]
    await produce_raw(
        env.bootstrap,
        TRIGGERS.name(env.prefix),
        [(b"same-key", TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body=b)).model_dump_json().encode()) for b in bodies],
    )
    consumer, task, producer = await run_consumer(env, handler, f"g-{uuid.uuid4().hex}")
    try:
        await wait_for(lambda: asyncio.sleep(0, result={f"{marker}-a", f"{marker}-b"} <= set(handled)), timeout_s=40)
        records = await read_topic(
            env.bootstrap,
            REJECTED.name(env.prefix),
            lambda rs: any(marker in r.value.decode(errors="replace") and b"handler_error" in r.value for r in rs),
        )
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
        await producer.stop()
    poison = [e for e in rejected_events(records) if e.payload.reason_code == "handler_error" and marker in e.payload.original]
    assert len(poison) == 1 and "cannot handle this one" in poison[0].payload.reason


async def test_event_age_is_observed_per_stage(env) -> None:
    """herald_consumer_event_age_seconds: the time from an event's occurred_at to its handling."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from prometheus_client import REGISTRY

    from shared.kafka import ensure_topics

    marker = uuid.uuid4().hex
    topic = replace(TRIGGERS, suffix=f"age-{marker[:8]}.v1")  # a topic of its own: only this test's events
    settings = ConsumerSettings(consumer_poll_ms=100, topic_prefix=env.prefix, topic_partitions=1)
    await ensure_topics(settings, [topic])
    seen: list[str] = []

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        seen.extend(i.event.payload.body for i in batch)
        return []

    def event(body: str, age_s: float) -> bytes:
        return TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body=body),
                            occurred_at=datetime.now(UTC) - timedelta(seconds=age_s)).model_dump_json().encode()

    await produce_raw(env.bootstrap, topic.name(env.prefix), [(b"k", event("old", 40)), (b"k", event("fresh", 0))])
    producer = make_producer(settings, "test")
    await producer.start()
    service = f"age-{marker[:8]}"
    consumer = BatchConsumer(settings, service, f"g-{marker}", [topic], handler, Publisher(producer, env.prefix, service))
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: asyncio.sleep(0, result=len(seen) >= 2), timeout_s=30)
    finally:
        consumer.stop_fetching()
        await task
        await consumer.close()
        await producer.stop()
    labels = {"service": service, "topic": topic.suffix}
    assert REGISTRY.get_sample_value("herald_consumer_event_age_seconds_count", labels) == 2
    assert REGISTRY.get_sample_value("herald_consumer_event_age_seconds_bucket", {**labels, "le": "30.0"}) == 1
    assert REGISTRY.get_sample_value("herald_consumer_event_age_seconds_bucket", {**labels, "le": "60.0"}) == 2
    assert REGISTRY.get_sample_value("herald_consumer_event_age_seconds_sum", labels) >= 40
