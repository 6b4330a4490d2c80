"""``herald bench --stages N``: each Kafka stage alone, one instance then two, for capacity planning.

For every stage (scheduler, dispatcher, reports) and for one and then two instances, on topics
of their own (a fresh prefix each time) in the benchmark's database:

1. the stage's input topic is filled with N events before any instance starts (the scheduler
   and reports read accepted marketing messages; the dispatcher reads released ones and sends
   them to the gateway simulator's HTTP face);
2. the instances start, each pinned to a core of its own (``sched_setaffinity``, what
   ``taskset -c`` does; instance i on core i modulo the cores), Kafka, PostgreSQL and the
   simulator left free to run anywhere;
3. the clock runs from the first offset the stage commits to the moment every input event is
   committed (processed and its output published), so start-up and the first group join are
   not counted, a rebalance while it works is.

The result per stage: messages per second with one instance and with two, per core used, and
the scaling factor (two against one). On two shared cores Kafka and PostgreSQL share the cores
with the pinned instances, so the factor measured here is a floor for a cluster where they
run elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.kafka import Outgoing, Publisher, client_options, ensure_topics, make_producer
from shared.phones import parse_e164
from shared.settings import KafkaSettings
from shared.statuses import MessageType
from shared.topics import ACCEPTED_BULK, OUTBOUND_BULK, Topic

STAGES = ("scheduler", "dispatcher", "reports")


@dataclass(frozen=True)
class StageRun:
    stage: str
    instances: int
    messages: int
    seconds: float
    cpu_s: dict[str, float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def input_topic(stage: str) -> Topic:
    return OUTBOUND_BULK if stage == "dispatcher" else ACCEPTED_BULK


def build_events(stage: str, tenant: str, count: int) -> list[Outgoing]:
    """``count`` events for the stage's input topic: marketing to numbers where it is daytime
    (no quiet-hours hold), each of one segment."""
    from shared.contracts import MessageAccepted, MessageAcceptedEvent, MessageOutbound, MessageOutboundEvent

    now = datetime.now(UTC)
    countries = marketing_countries(True) or ["US"]
    numbers = demo_numbers(count, seed=31, countries=countries)
    out: list[Outgoing] = []
    for i, to in enumerate(numbers):
        country = parse_e164(to, allowed_types=None).country
        mid = uuid.uuid4()
        fields: dict[str, Any] = dict(
            message_id=mid, to=to, country=country, body=f"Stage bench {i}: 30% off today", type=MessageType.MARKETING,
            encoding="GSM-7", segments=1, source="api", accepted_at=now,
        )
        if stage == "dispatcher":
            message = MessageOutbound(**fields, released_at=now)
            event: Any = MessageOutboundEvent(event_id=mid, tenant=tenant, payload=message)
        else:
            event = MessageAcceptedEvent(event_id=mid, tenant=tenant, payload=MessageAccepted(**fields))
        out.append(Outgoing(input_topic(stage), to, event))
    return out


async def fill(settings: KafkaSettings, events: list[Outgoing]) -> None:
    producer = make_producer(settings, "stage-bench")
    await producer.start()
    try:
        publisher = Publisher(producer, settings.topic_prefix, "bench")
        for i in range(0, len(events), 5000):
            await publisher.publish(events[i : i + 5000])
    finally:
        await producer.stop()


async def committed(settings: KafkaSettings, group_prefix: str, topic: str) -> int:
    """Offsets committed on ``topic`` by every consumer group whose name starts with ``group_prefix``."""
    admin = AIOKafkaAdminClient(client_id="stage-bench", **client_options(settings))
    await admin.start()
    try:
        total = 0
        for group in await admin.list_consumer_groups():
            name = group[0]
            if not name.startswith(group_prefix):
                continue
            offsets = await admin.list_consumer_group_offsets(name)
            total += sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
        return total
    finally:
        await admin.close()


async def end_offsets(settings: KafkaSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**client_options(settings))
    await consumer.start()
    try:
        # The topic is this run's own, created by ensure_topics with the configured partitions.
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def run_stage(stack_factory: Callable[[dict[str, str]], Stack], base: KafkaSettings, stage: str, instances: int,
                    count: int, tenant: str, cpu_of: Callable[[Stack], dict[str, float]]) -> StageRun:
    prefix = f"{base.topic_prefix}{stage[:3]}{instances}{uuid.uuid4().hex[:4]}."
    settings = base.model_copy(update={"topic_prefix": prefix})
    await ensure_topics(settings)
    topic = input_topic(stage).name(prefix)
    print(f"  {stage} x{instances}: filling {topic} with {count:,} events", flush=True)
    await fill(settings, build_events(stage, tenant, count))
    total = await end_offsets(settings, topic)
    stack = stack_factory({"HERALD_TOPIC_PREFIX": prefix})
    cores = sorted(os.sched_getaffinity(0))
    try:
        if stage == "dispatcher":
            stack.start("simulator")
        for i in range(instances):
            stack.start(stage, cpus={cores[i % len(cores)]})
        await asyncio.to_thread(stack.wait_ready, 120)
        group = f"{prefix}{stage}"
        deadline = time.monotonic() + max(600, count / 20)
        first_at = first_done = None
        before: dict[str, float] = {}
        while True:
            done = await committed(settings, group, topic)
            now = time.monotonic()
            if first_at is None and done > 0:
                first_at, first_done, before = now, done, cpu_of(stack)
            if done >= total:
                break
            if now > deadline:
                raise TimeoutError(f"{stage} x{instances}: {done:,} of {total:,} committed")
            await asyncio.sleep(0.2)
        assert first_at is not None and first_done is not None
        if total - first_done < total // 2:
            raise RuntimeError(f"{stage} x{instances}: {first_done:,} of {total:,} events were done by the first look; "
                               "give --stages more events (100,000 is a steady measure)")
        after = cpu_of(stack)
        seconds = time.monotonic() - first_at
        return StageRun(stage, instances, total - first_done, seconds,
                        {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after})
    finally:
        stack.stop()


def scaling_rows(runs: list[StageRun]) -> list[tuple[str, str, str]]:
    """Table rows (what, measured, target): per stage the rate with one and two instances, per
    core, CPU per message, and the scaling factor."""
    rows = []
    by = {(r.stage, r.instances): r for r in runs}
    for stage in STAGES:
        one, two = by.get((stage, 1)), by.get((stage, 2))
        if one is None:
            continue
        cpu_one = one.cpu_s.get(stage, 0.0)
        rows.append((f"{stage} alone, one instance on one core",
                     f"{one.rate:,.0f} msg/s ({one.messages:,} in {one.seconds:.1f} s; "
                     f"{cpu_one / one.messages * 1e6:,.0f} µs CPU per message)", ""))
        if two is not None:
            factor = two.rate / one.rate if one.rate else 0.0
            rows.append((f"{stage}, two instances, one core each",
                         f"{two.rate:,.0f} msg/s ({two.rate / 2:,.0f} per core); scaling {factor:.2f}×", "≥ 1.8×"))
    return rows
