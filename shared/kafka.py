"""Kafka helpers: client options, an idempotent publisher, a batch consumer, topic creation.

The consumer is at-least-once: it decodes a batch, hands the good events to the
service's handler, publishes what the handler returns plus a rejected event for every
bad record, waits for the broker's acks and only then commits. Handlers must therefore
be idempotent; deterministic event ids (``derived_event_id``) help downstream dedupe.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.helpers import create_ssl_context
from pydantic import ValidationError

from shared import metrics
from shared.contracts import SYSTEM_TENANT, Envelope, RejectedEvent, RejectedEventEnvelope
from shared.errors import field_errors
from shared.settings import ConsumerSettings, KafkaSettings
from shared.topics import ALL, REJECTED, Topic

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 256 * 1024
TOPIC_ALREADY_EXISTS = 36


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection options shared by producers, consumers and admin clients (TLS, SASL)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return options


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event to publish: which topic, which key."""

    topic: Topic
    key: str
    event: Envelope


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded event and the record it came from."""

    topic: Topic
    event: Envelope
    record: ConsumerRecord


Handler = Callable[[list[Incoming]], Awaitable[list[Outgoing]]]


# Loops over a batch hand the event loop back every this many items, so a process's other
# lanes and its HTTP API wait at most one slice of a large batch (a few milliseconds).
YIELD_EVERY = 100


class Publisher:
    """Publishes envelopes with an idempotent producer (acks=all) and waits for every ack.

    With a ``bulk_producer``, campaign traffic (the bulk topics, or everything a bulk lane
    publishes: see :meth:`for_bulk`) goes through a producer of its own. aiokafka keeps one
    produce request in flight per broker and producer, so on a shared producer a one-time
    code waits for megabytes of campaign records to be acknowledged before it leaves.
    """

    def __init__(
        self, producer: AIOKafkaProducer, prefix: str, service: str, bulk_producer: AIOKafkaProducer | None = None,
        *, all_bulk: bool = False,
    ) -> None:
        self._producer = producer
        self._bulk_producer = bulk_producer or producer
        self._prefix = prefix
        self._service = service
        self._all_bulk = all_bulk
        self._joined: Any = None  # the Coalescer of publish_joined, made on first use

    def for_bulk(self) -> Publisher:
        """The same publisher for a bulk lane: everything it publishes goes the bulk way."""
        return Publisher(self._producer, self._prefix, self._service, self._bulk_producer, all_bulk=True)

    def _producer_for(self, topic: Topic) -> AIOKafkaProducer:
        return self._bulk_producer if self._all_bulk or topic.bulk else self._producer

    async def publish(self, items: Sequence[Outgoing]) -> None:
        if not items:
            return
        futures = []
        for index, item in enumerate(items):
            if index and index % YIELD_EVERY == 0:
                # send() rarely suspends: let other lanes (an OTP behind a campaign page) run.
                await asyncio.sleep(0)
            name = item.topic.name(self._prefix)
            value = item.event.model_dump_json().encode()
            futures.append(await self._producer_for(item.topic).send(name, value=value, key=item.key.encode()))
        await asyncio.gather(*futures)
        for item in items:
            metrics.PUBLISHED.labels(self._service, item.topic.suffix).inc()


    async def publish_joined(self, items: Sequence[Outgoing]) -> None:
        """``publish`` for one request among many concurrent ones (single sends).

        The records of the requests in flight are handed to the producer together, one batch
        after another, and their acks awaited together; each caller returns once its own
        records are acknowledged (acks=all), or raises its own record's error.
        """
        if not items:
            return
        if self._joined is None:
            from shared.coalesce import Coalescer

            self._joined = Coalescer(self._publish_group, max_batch=1000, max_in_flight=4)
        error = await self._joined.submit(items)
        if error is not None:
            raise error

    async def _publish_group(self, groups: list[Sequence[Outgoing]]) -> list[BaseException | None]:
        futures: list[list[Any]] = []
        for items in groups:
            mine = []
            for item in items:
                value = item.event.model_dump_json().encode()
                mine.append(await self._producer_for(item.topic).send(
                    item.topic.name(self._prefix), value=value, key=item.key.encode()))
            futures.append(mine)
        flat = await asyncio.gather(*(f for mine in futures for f in mine), return_exceptions=True)
        errors: list[BaseException | None] = []
        position = 0
        for items in groups:
            outcome = flat[position : position + len(items)]
            position += len(items)
            failed = next((o for o in outcome if isinstance(o, BaseException)), None)
            errors.append(failed)
            if failed is None:
                for item in items:
                    metrics.PUBLISHED.labels(self._service, item.topic.suffix).inc()
        return errors


def make_producer(settings: KafkaSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
        request_timeout_ms=30_000,
        **client_options(settings),
    )


def rejection(
    source: str,
    reason_code: str,
    reason: str,
    original: bytes | str | None,
    *,
    tenant: str = SYSTEM_TENANT,
    errors: list[dict[str, str]] | None = None,
    key: bytes | str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    trace_id: str | None = None,
) -> Outgoing:
    """A rejected-topic event carrying the original payload and a machine-readable reason."""
    raw = original.encode() if isinstance(original, str) else (original or b"")
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    payload = RejectedEvent(
        source=source,
        reason_code=reason_code,
        reason=reason,
        errors=errors or [],
        original=text,
        original_encoding=encoding,
        key=key_text,
        partition=partition,
        offset=offset,
    )
    extra = {"trace_id": trace_id} if trace_id else {}
    return Outgoing(REJECTED, source, RejectedEventEnvelope(tenant=tenant, payload=payload, **extra))


def decode(topic: Topic, record: ConsumerRecord) -> Incoming | Outgoing:
    """Decode one record into an ``Incoming`` or, if it is bad, a rejection ``Outgoing``."""
    value: bytes | None = record.value
    where = {"key": record.key, "partition": record.partition, "offset": record.offset}
    if value is None:
        return rejection(record.topic, "empty_value", "record has no value", b"", **where)
    if len(value) > MAX_EVENT_BYTES:
        return rejection(
            record.topic,
            "too_large",
            f"event is {len(value)} bytes, more than {MAX_EVENT_BYTES}",
            value[:4096],
            **where,
        )
    try:
        event = topic.model.model_validate_json(value)
    except ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False, include_input=False))
        codes = {e["code"] for e in errors}
        locs = {e["loc"].split(".")[0] for e in errors}
        if "json_invalid" in codes or "json_type" in codes or "model_type" in codes:
            code, reason = "malformed_json", "value is not a JSON object"
        elif locs & {"type", "version"}:
            code, reason = "unsupported_event", f"expected type and version of {topic.model.__name__}"
        else:
            code, reason = "schema_invalid", "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        return rejection(record.topic, code, reason, value, errors=errors, **where)
    return Incoming(topic, event, record)


ErrorKind = Literal["unavailable", "transient", "permanent"]

# The database answered, but this work lost a race or ran out of time: trying again may
# pass, yet the same record can fail this way every time (a lock it always waits for).
_CONTENTION = (
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout (a subclass of OperatorIntervention)
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout, NOWAIT
)
# The database or broker cannot be reached or refuses work: no record causes these.
_UNAVAILABLE = (
    OSError,  # connection refused or reset, network unreachable, TimeoutError (asyncio's too)
    asyncpg.PostgresConnectionError,  # 08xxx: cannot connect, connection lost mid-query
    asyncpg.exceptions.OperatorInterventionError,  # 57Pxx: shutting down, starting up (CannotConnectNow)
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full, out of memory
    KafkaConnectionError,
    KafkaTimeoutError,
)
# asyncpg's InterfaceError is raised in the client: for a statement it will not send (too
# many arguments, a value it cannot encode: asyncpg.exceptions._base.DataError) it is the
# request's fault; only a closed connection or pool is the infrastructure's.
_CLOSED = ("connection is closed", "pool is closing", "pool is closed")


def error_kind(exc: BaseException) -> ErrorKind:
    """``unavailable``: infrastructure away (retry without bound); ``transient``: contention
    (retry, a bounded number of times); ``permanent``: bad data or a bug (never retry)."""
    if isinstance(exc, _CONTENTION):
        return "transient"
    if isinstance(exc, _UNAVAILABLE):
        return "unavailable"
    if isinstance(exc, KafkaError):
        return "unavailable" if exc.retriable else "permanent"
    if isinstance(exc, asyncpg.InterfaceError) and any(text in str(exc) for text in _CLOSED):
        return "unavailable"
    return "permanent"


def is_transient(exc: BaseException) -> bool:
    """Infrastructure or contention errors worth retrying (broker or database away, a deadlock)."""
    return error_kind(exc) != "permanent"


class _Abandoned(Exception):
    """The consumer was asked to stop while a batch waited: leave it uncommitted."""


@dataclass
class BatchConsumer:
    """Consume topics in batches: decode → handle → publish → commit, forever.

    Bad records go to the rejected topic. When the handler raises (see ``error_kind``):

    * ``permanent`` (bad data, a bug): the batch is split in halves at once, and halves
      again, until the failing record is alone; it is rejected (``handler_error``), the
      others are handled.
    * ``transient`` (deadlock, lock or statement timeout): the batch is retried with
      backoff ``consumer_retry_attempts`` times, then split the same way; a record still
      failing alone is rejected (``handler_retries_exhausted``).
    * ``unavailable`` (database or broker away): retried with backoff and without bound
      while ``probe`` (a ``SELECT 1`` on the service's database) fails too: the partition
      waits for its database and nothing is rejected. If the probe answers, the error is
      this work's own and it is bounded like a transient one. Without a probe, always waits.
    """

    settings: ConsumerSettings
    service: str
    group_id: str
    topics: Sequence[Topic]
    handler: Handler
    publisher: Publisher
    probe: Callable[[], Awaitable[Any]] | None = None
    _consumer: AIOKafkaConsumer | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _by_name: dict[str, Topic] = field(default_factory=dict)
    _age_children: dict[str, Any] = field(default_factory=dict)
    assigned: bool = False

    async def start(self) -> None:
        self._by_name = {t.name(self.settings.topic_prefix): t for t in self.topics}
        self._consumer = AIOKafkaConsumer(
            *self._by_name,
            group_id=self.group_id,
            client_id=f"{self.service}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.consumer_max_records,
            max_poll_interval_ms=self.settings.consumer_max_poll_interval_ms,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.settings.consumer_session_timeout_ms // 4),
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **client_options(self.settings),
        )
        await self._consumer.start()

    def stop_fetching(self) -> None:
        """Ask the loop to finish its in-flight batch and return."""
        self._stopping.set()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group
            self._consumer = None

    async def run(self) -> None:
        if self._consumer is None:
            # Joining the group can wait for a dead member's session to time out: do it
            # here, in the worker, so HTTP and the other workers start at once.
            await self.start()
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(
                    timeout_ms=self.settings.consumer_poll_ms, max_records=self.settings.consumer_max_records
                )
            except KafkaError as exc:
                log.warning("fetch failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1)
                continue
            assignment = consumer.assignment()
            self.assigned = bool(assignment)
            for topic_name, topic in self._by_name.items():
                metrics.ASSIGNED.labels(self.service, topic.suffix).set(
                    sum(1 for tp in assignment if tp.topic == topic_name)
                )
            if not batches:
                continue
            records = [r for part in batches.values() for r in part]
            started = time.perf_counter()
            try:
                await self._process(records)
            except _Abandoned:
                # Stopping while the batch waits for a dependency: not committed, so the
                # next owner of these partitions handles it again.
                log.warning("stopping with a batch not handled; it is delivered again")
                break
            await self._commit({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
            metrics.BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - started)
            try:
                self._record_lag(batches)
            except Exception:  # a metric must never stop the consumer
                log.debug("lag not recorded", exc_info=True)

    async def _process(self, records: list[ConsumerRecord]) -> None:
        incoming: list[Incoming] = []
        rejected: list[Outgoing] = []
        for index, record in enumerate(records):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # decoding a large batch must not hold the event loop
            metrics.CONSUMED.labels(self.service, self._by_name[record.topic].suffix).inc()
            decoded = decode(self._by_name[record.topic], record)
            if isinstance(decoded, Incoming):
                incoming.append(decoded)
            else:
                rejected.append(decoded)
        self._record_age(incoming)
        outgoing = await self._handle_resilient(incoming, rejected)
        await self._publish_with_retry(outgoing + rejected)
        for item in rejected:
            metrics.REJECTED.labels(self.service, item.event.payload.reason_code).inc()

    async def _handle_resilient(self, incoming: list[Incoming], rejected: list[Outgoing]) -> list[Outgoing]:
        if not incoming:
            return []
        try:
            return await self._settle(incoming, rejected)
        finally:
            metrics.WAITING.labels(self.service).set(0)

    async def _settle(self, items: list[Incoming], rejected: list[Outgoing]) -> list[Outgoing]:
        """Handle ``items``; on errors retry, wait, or split them (see the class docstring).
        Depth first, so what the handler returns stays in record order."""
        attempts = 0
        delay = self.settings.consumer_retry_backoff_s
        while True:
            try:
                return await self.handler(items)
            except Exception as exc:
                kind = error_kind(exc)
                attempts += 1
                metrics.HANDLER_ERRORS.labels(self.service, "error" if kind == "permanent" else "transient").inc()
                if kind == "permanent":
                    if len(items) == 1:
                        log.exception("handler failed on a record, rejecting it")
                    else:
                        log.warning("handler failed on %d records, splitting them", len(items), extra={"error": repr(exc)})
                    failure, code = exc, "handler_error"
                    break
                bounded = kind == "transient" or await self._dependency_answers()
                if bounded and attempts >= self.settings.consumer_retry_attempts:
                    log.warning(
                        "handler keeps failing on %d records, %s",
                        len(items),
                        "rejecting it" if len(items) == 1 else "splitting them",
                        extra={"error": repr(exc), "attempts": attempts},
                    )
                    failure, code = exc, "handler_retries_exhausted"
                    break
                waiting = not bounded
                metrics.WAITING.labels(self.service).set(1 if waiting else 0)
                log.warning(
                    "waiting for the database or broker, retrying batch" if waiting
                    else "handler hit a transient error, retrying batch",
                    extra={"error": repr(exc), "attempts": attempts, "records": len(items)},
                )
                await self._sleep(delay)
                delay = min(delay * 2, self.settings.consumer_retry_backoff_max_s)
        metrics.WAITING.labels(self.service).set(0)
        if len(items) > 1:
            middle = len(items) // 2
            return await self._settle(items[:middle], rejected) + await self._settle(items[middle:], rejected)
        item = items[0]
        r = item.record
        reason = f"{type(failure).__name__}: {failure}"
        if code == "handler_retries_exhausted":
            reason = f"{reason} (still failing after {attempts} attempts)"
        rejected.append(
            rejection(
                r.topic,
                code,
                reason[:500],
                r.value,
                tenant=item.event.tenant,
                key=r.key,
                partition=r.partition,
                offset=r.offset,
                trace_id=item.event.trace_id,
            )
        )
        return []

    async def _dependency_answers(self) -> bool:
        """Whether the service's database answers now (then a failure is the work's own)."""
        if self.probe is None:
            return False
        try:
            await asyncio.wait_for(self.probe(), timeout=5)
        except Exception:  # noqa: BLE001 - any failure of the probe is the answer: the database does not answer
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        """Back off, but give up the batch at once when asked to stop."""
        if self._stopping.is_set():
            raise _Abandoned
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return
        raise _Abandoned

    async def _publish_with_retry(self, items: list[Outgoing]) -> None:
        delay = 0.2
        while True:
            try:
                await self.publisher.publish(items)
                return
            except KafkaError as exc:
                log.warning("publish failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced while we worked: another member will see these records
            # again, and the handlers are idempotent.
            log.warning("commit refused after a rebalance", extra={"error": repr(exc)})
        except KafkaError as exc:
            log.warning("commit failed", extra={"error": repr(exc)})

    def _record_age(self, incoming: list[Incoming]) -> None:
        """Observe each event's age once per batch (a clock skew between hosts shows as 0)."""
        now = time.time()
        for item in incoming:
            self._age_metric(item.topic).observe(max(0.0, now - item.event.occurred_at.timestamp()))

    def _age_metric(self, topic: Topic) -> Any:
        child = self._age_children.get(topic.suffix)
        if child is None:
            child = self._age_children[topic.suffix] = metrics.EVENT_AGE_SECONDS.labels(self.service, topic.suffix)
        return child

    def _record_lag(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, recs in batches.items():
            if tp not in assigned:  # revoked by a rebalance while the batch was handled
                continue
            high = self._consumer.highwater(tp)
            if high is not None:
                metrics.LAG.labels(self.service, self._by_name[tp.topic].suffix, str(tp.partition)).set(
                    max(0, high - (recs[-1].offset + 1))
                )


async def ensure_topics(settings: KafkaSettings, topics: Sequence[Topic] = ALL, timeout_s: float = 60) -> list[str]:
    """Create missing topics with the configured partitions; return the names created."""
    admin = AIOKafkaAdminClient(client_id="herald-admin", **client_options(settings))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                t.name(settings.topic_prefix),
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs=dict(t.config),
            )
            for t in topics
            if t.name(settings.topic_prefix) not in existing
        ]
        if not wanted:
            return []
        response = await admin.create_topics(wanted)
        created = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code and code != TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create topic {name}: error code {code}")
            created.append(name)
        return created
    finally:
        await admin.close()
