"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from shared.contracts import RejectedEventEnvelope


async def produce_raw(bootstrap: str, topic: str, values: list[tuple[Any, ...]]) -> None:
    """Publish (key, value) or (key, value, headers) records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value=r[1], key=r[0], headers=r[2] if len(r) > 2 else None)
                   for r in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def signed(pool: Any, tenant_id: str, records: list[tuple[bytes | None, bytes]]) -> list[tuple[Any, ...]]:
    """The records with the headers of a new Kafka input key of ``tenant_id`` (shared/kafka_signing.py)."""
    from herald_tools import admin
    from shared.kafka_signing import signed_headers

    async with pool.acquire() as conn:
        key = await admin.kafka_key_create(conn, "test", tenant_id)
    return [(k, v, signed_headers(key["key_id"], key["secret"], v)) for k, v in records]


@contextlib.asynccontextmanager
async def ingest_client(env: Any, pool: Any, settings: Any) -> Any:
    """ingest's HTTP API in-process (real PostgreSQL and Kafka) with these settings, as an httpx client."""
    from services.ingest.api import create_app
    from services.ingest.repository import IngestRepository
    from services.ingest.service import Acceptor
    from shared.kafka import Publisher, make_producer

    producer = make_producer(settings, f"test-ingest-{uuid.uuid4().hex[:6]}")
    await producer.start()
    try:
        repository = IngestRepository(pool)
        app = create_app(settings, pool, Acceptor(repository, settings), Publisher(producer, env.prefix, "ingest"),
                         repository)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest", timeout=60) as c:
            yield c
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout_s: float = 30
) -> list[Any]:
    """Read a topic from the beginning (no group) until ``until(records)`` holds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, client_id=f"test-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


def rejected_events(records: list[Any]) -> list[RejectedEventEnvelope]:
    return [RejectedEventEnvelope.model_validate_json(r.value) for r in records]


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.2) -> Any:
    """Await an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s}s (last value {value!r})")
        await asyncio.sleep(interval_s)


def marketing_to(*keys: tuple[str, str]) -> list[tuple[str, Any]]:
    """Marketing messages to (tenant, phone) pairs, as the scheduler's facts loader takes them."""
    from shared.contracts import MessageAccepted, utcnow

    return [
        (tenant_id, MessageAccepted(message_id=uuid.uuid4(), to=number, country="ES", body="x", type="marketing",
                                    encoding="GSM-7", segments=1, source="api", accepted_at=utcnow()))
        for tenant_id, number in keys
    ]


def new_stack(env: Any, log_dir: Any, *, gateway_rate: float = 2000.0, **extra_env: str) -> Any:
    """The four services and the simulator of a test module (not started: see ``running``), with
    the settings every test stack shares (text logs, fast polls, receipts within 200 ms) and the
    module's own on top."""
    from pathlib import Path

    from herald_tools.stack import Ports, Stack

    base = {"HERALD_LOG_FORMAT": "text", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200", "HERALD_CONSUMER_POLL_MS": "100"}
    return Stack(env={**env.vars(), **base, **extra_env}, ports=Ports.random(), log_dir=Path(log_dir),
                 gateway_rate=gateway_rate)


def foreign_numbers_allowed(countries: list[str]) -> list[str]:
    """Those of ``countries`` that take SMS from another country's number (docs/senders.md: the
    US, Canada and India require a local, registered one): where a test's Spanish number may send."""
    from shared.senders import load_rules

    rules = load_rules()
    return [c for c in countries if not rules.rule(c).local_number_required]


async def group_lag(env: Any, group: str) -> int:
    """Records of the topics a consumer group reads that it has not committed yet (0 before its first commit)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    if not committed:
        return 0
    consumer = AIOKafkaConsumer(bootstrap_servers=env.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(committed))
    finally:
        await consumer.stop()
    return sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items())


@contextlib.contextmanager
def running(stack: Any, ready_s: float = 90) -> Iterator[Any]:
    """Start every process of ``stack``, wait until each is ready, and stop them all after."""
    stack.start_all()
    try:
        stack.wait_ready(ready_s)
        yield stack
    finally:
        stack.stop()


@contextlib.asynccontextmanager
async def http_receiver(path: str, handler: Callable[[Any], Awaitable[Any]], host: str = "127.0.0.1") -> AsyncIterator[str]:
    """An HTTP server on a free loopback port (of ``host``, any 127.x address) that passes POSTs
    to ``path`` to ``handler`` (an aiohttp handler); yields the URL to post to."""
    from aiohttp import web

    from herald_tools.stack import free_port

    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, host, port).start()
    try:
        yield f"http://{host}:{port}{path}"
    finally:
        await runner.cleanup()


async def webhook_hit(request: Any) -> dict[str, Any]:
    """What a webhook receiver in a test keeps of one POST (an aiohttp request): the parsed
    payload, the exact body, Herald's signature, event id and attempt headers, and status 200
    (the receiver may change it before answering)."""
    from shared.signatures import HEADER

    body = await request.read()
    return {"payload": json.loads(body), "body": body, "signature": request.headers.get(HEADER),
            "event_id": request.headers.get("X-Herald-Event-Id"),
            "attempt": int(request.headers.get("X-Herald-Delivery-Attempt", "0")), "status": 200}


# A test's own webhook receivers listen on loopback over http: allowed explicitly (the default
# settings refuse both); every other private address stays refused (docs/webhooks.md#destinations).
LOOPBACK_WEBHOOKS: dict[str, Any] = {"webhook_allowed_networks": ["127.0.0.1/32"], "webhook_require_https": False}


def loopback_policy() -> Any:
    from types import SimpleNamespace

    from shared.egress import EgressPolicy

    return EgressPolicy.of(SimpleNamespace(**LOOPBACK_WEBHOOKS))
