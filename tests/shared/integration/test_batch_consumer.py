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


# --- errors: bad values are isolated at once, an outage is waited out, a stuck record is bounded ---


async def own_topic(env, name: str):
    """A topic of this test's own (one partition), so only its records reach the handler."""
    from dataclasses import replace

    from shared.kafka import ensure_topics

    topic = replace(TRIGGERS, suffix=f"{name}-{uuid.uuid4().hex[:8]}.v1")
    await ensure_topics(ConsumerSettings(topic_prefix=env.prefix, topic_partitions=1), [topic])
    return topic


def numbered(marker: str, n: int) -> bytes:
    return TriggerEvent(tenant="acme", payload=MessageRequest(to="+34600000001", body=f"{marker}-{n}")).model_dump_json().encode()


def number(item: Incoming) -> int:
    return int(item.event.payload.body.rsplit("-", 1)[1])


async def start_on(env, topic, handler, service: str, probe=None, group: str | None = None, **overrides):
    settings = ConsumerSettings(consumer_poll_ms=100, topic_prefix=env.prefix, **overrides)
    producer = make_producer(settings, "test")
    await producer.start()
    extra = {"probe": probe} if probe is not None else {}
    consumer = BatchConsumer(settings, service, group or f"g-{uuid.uuid4().hex}", [topic], handler,
                             Publisher(producer, env.prefix, service), **extra)
    await consumer.start()
    return consumer, asyncio.create_task(consumer.run()), producer


async def stop(consumer, task, producer) -> None:
    consumer.stop_fetching()
    await asyncio.wait_for(task, 30)
    await consumer.close()
    await producer.stop()


async def test_a_value_the_database_client_cannot_encode_is_isolated_not_retried_forever(env, pool) -> None:
    """asyncpg's DataError (raised in the client, a subclass of InterfaceError) is no
    transient error: the record is rejected with its reason, the others are stored, the
    partition moves on."""
    marker = uuid.uuid4().hex[:8]
    topic = await own_topic(env, "dataerror")
    await pool.execute("CREATE TABLE IF NOT EXISTS test_consumer_rows (marker text, n int4)")

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        # One round trip for the batch, as Herald's handlers do; 2**40 does not fit an int4.
        await pool.execute(
            "INSERT INTO test_consumer_rows SELECT $1, unnest($2::int4[])", marker, [number(i) for i in batch]
        )
        return []

    async def stored() -> list[int]:
        rows = await pool.fetch("SELECT n FROM test_consumer_rows WHERE marker = $1 ORDER BY n", marker)
        return [r["n"] for r in rows]

    await produce_raw(env.bootstrap, topic.name(env.prefix),
                      [(b"k", numbered(marker, n)) for n in (1, 2, 2**40, 3, 4)])
    consumer, task, producer = await start_on(env, topic, handler, f"dataerr-{marker}")
    try:
        await wait_for(lambda: stored_has(stored, [1, 2, 3, 4]), timeout_s=40)
        # The consumer keeps going: a record produced afterwards is handled too.
        await produce_raw(env.bootstrap, topic.name(env.prefix), [(b"k", numbered(marker, 5))])
        await wait_for(lambda: stored_has(stored, [1, 2, 3, 4, 5]), timeout_s=40)
        records = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                                   lambda rs: any(f"{marker}-{2**40}".encode() in r.value for r in rs))
    finally:
        await stop(consumer, task, producer)
    mine = [e for e in rejected_events(records) if marker in e.payload.original]
    assert len(mine) == 1, [e.payload.reason for e in mine]
    assert mine[0].payload.reason_code == "handler_error"
    assert mine[0].payload.reason.startswith("DataError:") and "int32" in mine[0].payload.reason
    assert str(2**40) in mine[0].payload.original and mine[0].payload.source == topic.name(env.prefix)
    assert await stored() == [1, 2, 3, 4, 5], "each good record stored once"


async def test_a_record_the_client_library_refuses_is_isolated_not_retried_forever(env, pool) -> None:
    """asyncpg raises InterfaceError (client side, before anything reaches PostgreSQL) for a
    statement it will not send: here one record carries 20 000 rows, more than the 32 767
    query arguments a statement may have. That record is rejected with its reason; the
    records around it are stored; the partition does not stop."""
    marker = uuid.uuid4().hex[:8]
    topic = await own_topic(env, "interface")
    await pool.execute("CREATE TABLE IF NOT EXISTS test_consumer_rows (marker text, n int4)")

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        # Each record asks for n rows; one multi-row INSERT for the batch (two arguments a row).
        rows = [(marker, number(i)) for i in batch for _ in range(number(i))]
        values = ", ".join(f"(${2 * k + 1}, ${2 * k + 2}::int4)" for k in range(len(rows)))
        await pool.execute(f"INSERT INTO test_consumer_rows VALUES {values}", *[v for row in rows for v in row])
        return []

    async def stored() -> list[int]:
        rows = await pool.fetch("SELECT n FROM test_consumer_rows WHERE marker = $1 ORDER BY n", marker)
        return [r["n"] for r in rows]

    await produce_raw(env.bootstrap, topic.name(env.prefix),
                      [(b"k", numbered(marker, n)) for n in (1, 2, 20_000, 3)])
    consumer, task, producer = await start_on(env, topic, handler, f"iface-{marker}")
    try:
        await wait_for(lambda: stored_has(stored, [1, 2, 3]), timeout_s=40)
        await produce_raw(env.bootstrap, topic.name(env.prefix), [(b"k", numbered(marker, 4))])
        await wait_for(lambda: stored_has(stored, [1, 2, 3, 4]), timeout_s=40)
        records = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                                   lambda rs: any(f"{marker}-20000".encode() in r.value for r in rs))
    finally:
        await stop(consumer, task, producer)
    mine = [e for e in rejected_events(records) if marker in e.payload.original]
    assert len(mine) == 1 and number_of(mine[0].payload.original) == 20_000
    assert mine[0].payload.reason_code == "handler_error"
    assert mine[0].payload.reason.startswith("InterfaceError:") and "32767" in mine[0].payload.reason
    assert await stored() == [1, 2, 2, 3, 3, 3, 4, 4, 4, 4], "each good record stored once"


async def stored_has(stored, expected: list[int]) -> bool:
    return sorted(set(await stored())) == expected


class Gate:
    """A TCP port in front of the real PostgreSQL: closed (connections refused, as when the
    database is down) until ``open()``, then it forwards every byte."""

    def __init__(self, target: str) -> None:
        host_port = target.split("@", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.target_port = int(port)
        from herald_tools.stack import free_port

        self.port = free_port()  # nobody listens on it until open()
        self.dsn = target.replace(f"{self.host}:{port}", f"127.0.0.1:{self.port}")
        self._server: asyncio.AbstractServer | None = None

    async def open(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self._server = await asyncio.start_server(serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_database_down_is_waited_out_without_rejecting_anything(env) -> None:
    """Connection refused (PostgreSQL down) is infrastructure: the batch is retried without
    bound, nothing goes to the rejected topic, a gauge says the consumer waits; once the
    database answers, every record is handled."""
    import asyncpg
    from prometheus_client import REGISTRY

    marker = uuid.uuid4().hex[:8]
    service = f"outage-{marker}"
    topic = await own_topic(env, "outage")
    gate = Gate(env.dsn)
    handled: list[int] = []

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        conn = await asyncpg.connect(gate.dsn, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        handled.extend(number(i) for i in batch)
        return []

    async def probe() -> None:  # what the service's probe does: ask its database
        conn = await asyncpg.connect(gate.dsn, timeout=5)
        await conn.close()

    await produce_raw(env.bootstrap, topic.name(env.prefix), [(b"k", numbered(marker, n)) for n in range(1, 7)])
    group = f"g-{marker}"
    options = {"consumer_retry_attempts": 2, "consumer_retry_backoff_s": 0.05, "consumer_retry_backoff_max_s": 0.2}
    consumer, task, producer = await start_on(env, topic, handler, service, probe, group, **options)
    errors = lambda: REGISTRY.get_sample_value(  # noqa: E731
        "herald_consumer_handler_errors_total", {"service": service, "kind": "transient"}) or 0
    try:
        # Far more failures than the retry bound: the records are still not rejected.
        await wait_for(lambda: asyncio.sleep(0, result=errors() >= 12), timeout_s=40)
        assert REGISTRY.get_sample_value("herald_consumer_waiting_for_dependency", {"service": service}) == 1
        assert handled == []
        # Stopping while it waits returns at once and commits nothing: the next member of the
        # group gets the same records.
        started = asyncio.get_running_loop().time()
        await stop(consumer, task, producer)
        assert asyncio.get_running_loop().time() - started < 15
        consumer, task, producer = await start_on(env, topic, handler, service, probe, group, **options)
        before = errors()
        await wait_for(lambda: asyncio.sleep(0, result=errors() >= before + 3), timeout_s=40)
        assert handled == []
        await gate.open()
        await wait_for(lambda: asyncio.sleep(0, result=sorted(handled) == [1, 2, 3, 4, 5, 6]), timeout_s=40)
        await wait_for(lambda: asyncio.sleep(0, result=REGISTRY.get_sample_value(
            "herald_consumer_waiting_for_dependency", {"service": service}) == 0), timeout_s=10)
    finally:
        await stop(consumer, task, producer)
        await gate.close()
    records = await read_topic(env.bootstrap, REJECTED.name(env.prefix), lambda rs: False, timeout_s=3)
    assert not [e for e in rejected_events(records) if marker in e.payload.original]


async def test_a_record_failing_transiently_while_the_database_answers_is_isolated_after_a_bound(env, pool) -> None:
    """A lock that never frees (lock_timeout each time) and a record whose handling cannot
    connect while the database's probe answers: each is retried a bounded number of times,
    then isolated with reason handler_retries_exhausted; the records around them are handled."""
    import asyncpg

    marker = uuid.uuid4().hex[:8]
    topic = await own_topic(env, "stuck")
    await pool.execute("CREATE TABLE IF NOT EXISTS test_consumer_locks (marker text, n int4, hits int4 DEFAULT 0,"
                       " PRIMARY KEY (marker, n))")
    await pool.execute("INSERT INTO test_consumer_locks (marker, n) SELECT $1, generate_series(1, 6)", marker)
    refused = Gate(env.dsn)  # never opened

    async def handler(batch: list[Incoming]) -> list[Outgoing]:
        numbers = [number(i) for i in batch]
        if 5 in numbers:  # this record's work needs a host that refuses connections
            await asyncpg.connect(refused.dsn, timeout=5)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '200ms'")
            await conn.execute("UPDATE test_consumer_locks SET hits = hits + 1 WHERE marker = $1 AND n = ANY($2::int4[])",
                               marker, numbers)
        return []

    async def probe() -> None:
        await pool.fetchval("SELECT 1")

    holder = await pool.acquire()
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM test_consumer_locks WHERE marker = $1 AND n = 3 FOR UPDATE", marker)
    await produce_raw(env.bootstrap, topic.name(env.prefix), [(b"k", numbered(marker, n)) for n in range(1, 7)])
    consumer, task, producer = await start_on(
        env, topic, handler, f"stuck-{marker}", probe, consumer_retry_attempts=2, consumer_retry_backoff_s=0.05,
    )
    try:
        records = await read_topic(
            env.bootstrap, REJECTED.name(env.prefix),
            lambda rs: len([e for e in rejected_events(rs) if marker in e.payload.original]) >= 2, timeout_s=60,
        )
        hits = await pool.fetch("SELECT n, hits FROM test_consumer_locks WHERE marker = $1 ORDER BY n", marker)
    finally:
        await tx.rollback()
        await pool.release(holder)
        await stop(consumer, task, producer)
    mine = {number_of(e.payload.original): e.payload for e in rejected_events(records) if marker in e.payload.original}
    assert sorted(mine) == [3, 5]
    assert mine[3].reason_code == "handler_retries_exhausted" and "LockNotAvailableError" in mine[3].reason
    assert mine[5].reason_code == "handler_retries_exhausted" and "ConnectionRefusedError" in mine[5].reason
    assert {r["n"]: r["hits"] for r in hits} == {1: 1, 2: 1, 3: 0, 4: 1, 5: 0, 6: 1}


def number_of(original: str) -> int:
    return int(json.loads(original)["payload"]["body"].rsplit("-", 1)[1])
