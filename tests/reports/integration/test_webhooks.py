"""Status webhooks on the real PostgreSQL, posted to a small aiohttp receiver on a loopback
port: the outbox commits with the states, retries back off, a message's callbacks arrive in
order (two workers, a flaky receiver), 410 and exhausted rows are dead-lettered, slow
receivers time out, and every body verifies with shared/signatures.verify."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from aiohttp import web

from herald_tools.stack import free_port
from services.reports import metrics
from services.reports.domain import from_accepted, from_receipt, from_status
from services.reports.handlers import record
from services.reports.repository import ReportsRepository
from services.reports.settings import ReportsSettings
from services.reports.webhooks.rules import ATTEMPT_HEADER, EVENT_ID_HEADER
from services.reports.webhooks.worker import WebhookWorker
from shared.contracts import utcnow
from shared.signatures import HEADER, verify
from shared.statuses import ReceiptStatus, Status
from tests import factories
from tests.helpers import LOOPBACK_WEBHOOKS

pytestmark = pytest.mark.integration


@dataclass
class Hit:
    at: float
    status: int  # what the receiver answered (0: it stalled past the client's timeout)
    attempt: int
    event_id: str
    signature: str
    body: bytes

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    hits: list[Hit] = field(default_factory=list)
    # (payload, attempt) -> (HTTP status, seconds to wait before answering)
    behaviour: Callable[[dict, int], tuple[int, float]] = lambda payload, attempt: (200, 0.0)

    def by_message(self, only_ok: bool = False) -> dict[str, list[Hit]]:
        found: dict[str, list[Hit]] = defaultdict(list)
        for h in self.hits:
            if not only_ok or 200 <= h.status < 300:
                found[h.payload["message_id"]].append(h)
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        attempt = int(request.headers[ATTEMPT_HEADER])
        status, delay = rec.behaviour(json.loads(body), attempt)
        hit = Hit(time.monotonic(), status, attempt, request.headers[EVENT_ID_HEADER], request.headers[HEADER], body)
        if delay:
            hit.status = 0
            rec.hits.append(hit)
            await asyncio.sleep(delay)
            return web.Response(status=status)
        rec.hits.append(hit)
        return web.Response(status=status, text="ok" if status < 300 else "no")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield rec
    finally:
        await runner.cleanup()


def settings(**overrides) -> ReportsSettings:
    base = dict(webhook_backoff_base_s=0.3, webhook_backoff_max_s=5, webhook_backoff_jitter=0,
                webhook_poll_interval_s=0.05, webhook_timeout_s=2, webhook_concurrency=8, webhook_max_attempts=8,
                webhook_circuit_failures=1000,  # these tests fail receivers on purpose; the circuit has its own
                **LOOPBACK_WEBHOOKS)
    return ReportsSettings(**(base | overrides))


async def seed(pool, url: str, n: int = 1, final: ReceiptStatus = ReceiptStatus.DELIVERED,
               tenant: str | None = None, out: list | None = None) -> tuple[str, list[uuid.UUID]]:
    """n messages, each accepted → submitted → final, recorded the way reports records them."""
    tenant = tenant or f"t{uuid.uuid4().hex[:10]}"
    ids = [uuid.uuid4() for _ in range(n)]
    now = utcnow()
    changes = []
    for mid in ids:
        changes.append(from_accepted(uuid.uuid4(), tenant, factories.accepted(
            message_id=mid, to="+34600123456", body="hi", type="transactional",
            accepted_at=now, metadata={"k": mid.hex[:6]}, status_callback_url=url)))
        changes.append(from_status(uuid.uuid4(), tenant, now + timedelta(milliseconds=10), factories.status(
            mid, Status.SUBMITTED, gateway="sim", gateway_message_id=mid.hex, attempts=1)))
        changes.append(from_receipt(uuid.uuid4(), mid, tenant, now + timedelta(milliseconds=20), factories.receipt(
            final, "sim", mid.hex)))
    async with pool.acquire() as conn, conn.transaction():
        await record(ReportsRepository(conn), changes)
    if out is not None:
        out += changes
    return tenant, ids


async def rows(pool, ids: list[uuid.UUID]):
    return await pool.fetch(
        "SELECT message_id, seq, state, attempts, last_status, last_error, payload FROM webhook_outbox"
        " WHERE message_id = ANY($1::uuid[]) ORDER BY message_id, seq", ids)


async def until_settled(pool, ids: list[uuid.UUID], timeout_s: float = 30) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await rows(pool, ids)
        if found and all(r["state"] != "pending" for r in found):
            return found
        assert time.monotonic() < deadline, [dict(r) for r in found if r["state"] == "pending"][:3]
        await asyncio.sleep(0.05)


async def settle(pool, ids, worker_settings) -> list:
    """Run one webhook worker until the callbacks ``ids`` are settled; their rows."""
    worker = WebhookWorker(pool, worker_settings)
    tasks = await running(worker)
    try:
        return await until_settled(pool, ids)
    finally:
        await stop([worker], tasks)


@pytest.fixture
async def cleanup(pool) -> AsyncIterator[list[uuid.UUID]]:
    ids: list[uuid.UUID] = []
    yield ids
    await pool.execute("DELETE FROM webhook_outbox WHERE message_id = ANY($1::uuid[])", ids)


async def running(*workers: WebhookWorker) -> list[asyncio.Task]:
    return [asyncio.create_task(w.run()) for w in workers]


async def stop(workers: list[WebhookWorker], tasks: list[asyncio.Task]) -> None:
    for w in workers:
        w.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def secret(pool, tenant: str) -> bytes:
    return (await pool.fetchval("SELECT secret FROM webhook_secrets WHERE tenant_id = $1", tenant)).encode()


def sample(counter, *labels) -> float:
    return (counter.labels(*labels) if labels else counter)._value.get()


# --- tests ---------------------------------------------------------------------------------------


async def test_outbox_rows_commit_or_roll_back_with_the_states(pool, receiver, cleanup) -> None:
    mid = uuid.uuid4()
    cleanup.append(mid)
    accepted = from_accepted(uuid.uuid4(), "acme", factories.accepted(
        message_id=mid, to="+34600123456", body="hi", type="marketing",
        accepted_at=utcnow(), status_callback_url=receiver.url))
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await record(ReportsRepository(conn), [accepted])
            raise RuntimeError("crash before commit")
    assert await rows(pool, [mid]) == []
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE message_id = $1", mid) == 0
    changes: list = []
    _, ids = await seed(pool, receiver.url, n=1, out=changes)
    cleanup += ids
    found = await rows(pool, ids)
    assert [(r["seq"], r["payload"]["status"], r["payload"]["previous_status"], r["state"]) for r in found] == [
        (1, "accepted", None, "pending"), (2, "submitted", "accepted", "pending"), (3, "delivered", "submitted", "pending")]
    # recording the same events again (Kafka redelivery), in any order, adds nothing
    async with pool.acquire() as conn, conn.transaction():
        await record(ReportsRepository(conn), changes[::-1])
    assert len(await rows(pool, ids)) == 3


async def test_retries_back_off_and_every_attempt_is_signed(pool, receiver, cleanup) -> None:
    fails: dict[str, int] = defaultdict(int)

    def flaky(payload: dict, attempt: int) -> tuple[int, float]:
        if payload["seq"] == 1 and fails[payload["event_id"]] < 3:
            fails[payload["event_id"]] += 1
            return 503, 0.0
        return 200, 0.0

    receiver.behaviour = flaky
    failed_before = sample(metrics.WEBHOOKS_FAILED_ATTEMPTS, "http_5xx")
    tenant, ids = await seed(pool, receiver.url)
    cleanup += ids
    found = await settle(pool, ids, settings())
    assert [(r["seq"], r["state"], r["attempts"]) for r in found] == [(1, "delivered", 4), (2, "delivered", 1), (3, "delivered", 1)]
    first = [h for h in receiver.hits if h.payload["seq"] == 1]
    assert [h.attempt for h in first] == [1, 2, 3, 4] and [h.status for h in first] == [503, 503, 503, 200]
    gaps = [b.at - a.at for a, b in zip(first, first[1:], strict=False)]
    for gap, expected in zip(gaps, [0.3, 0.6, 1.2], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.5, gaps
    assert len({h.event_id for h in first}) == 1 and len({h.body for h in first}) == 1
    key = await secret(pool, tenant)
    for h in receiver.hits:
        verify(key, h.body, h.signature, now=time.time())
        assert h.event_id == h.payload["event_id"]
    assert sample(metrics.WEBHOOKS_FAILED_ATTEMPTS, "http_5xx") - failed_before == 3
    assert [h.payload["status"] for h in receiver.hits if h.status == 200] == ["accepted", "submitted", "delivered"]
    assert receiver.hits[-1].payload["metadata"] == {"k": ids[0].hex[:6]}


async def test_two_workers_and_a_flaky_slow_receiver_keep_each_message_in_order(pool, receiver, cleanup) -> None:
    rng = random.Random(7)

    def chaotic(payload: dict, attempt: int) -> tuple[int, float]:
        r = rng.random()
        return (500, 0.0) if r < 0.3 else (200, rng.random() * 0.03)

    receiver.behaviour = chaotic
    _, ids = await seed(pool, receiver.url, n=40)
    cleanup += ids
    workers = [WebhookWorker(pool, settings(webhook_backoff_base_s=0.05, webhook_max_attempts=50)) for _ in range(2)]
    tasks = await running(*workers)
    try:
        found = await until_settled(pool, ids, timeout_s=60)
    finally:
        await stop(workers, tasks)
    assert all(r["state"] == "delivered" for r in found) and len(found) == 120
    assert any(h.status == 500 for h in receiver.hits), "the receiver really failed some"
    # Per message, every request (failed ones too) came in seq order, and seq N+1 only after N succeeded.
    for mid, hits in receiver.by_message().items():
        seqs = [h.payload["seq"] for h in hits]
        assert seqs == sorted(seqs), (mid, seqs)
        ok = [h.payload["status"] for h in hits if h.status != 500]
        assert ok == ["accepted", "submitted", "delivered"], (mid, [(h.payload["seq"], h.status) for h in hits])


async def test_gone_is_dead_at_once_and_the_next_callbacks_still_go(pool, receiver, cleanup) -> None:
    receiver.behaviour = lambda payload, attempt: (410, 0.0) if payload["seq"] == 2 else (200, 0.0)
    dead_before = sample(metrics.WEBHOOKS_DEAD_LETTERS, "refused")
    _, ids = await seed(pool, receiver.url)
    cleanup += ids
    found = await settle(pool, ids, settings())
    assert [(r["seq"], r["state"], r["attempts"], r["last_status"], r["last_error"]) for r in found] == [
        (1, "delivered", 1, 200, None), (2, "dead", 1, 410, "HTTP 410"), (3, "delivered", 1, 200, None)]
    assert [h.payload["seq"] for h in receiver.hits] == [1, 2, 3]
    assert sample(metrics.WEBHOOKS_DEAD_LETTERS, "refused") - dead_before == 1


async def test_dead_after_max_attempts_then_the_next_seq_is_posted(pool, receiver, cleanup) -> None:
    receiver.behaviour = lambda payload, attempt: (500, 0.0) if payload["seq"] == 1 else (200, 0.0)
    dead_before = sample(metrics.WEBHOOKS_DEAD_LETTERS, "exhausted")
    _, ids = await seed(pool, receiver.url, final=ReceiptStatus.UNDELIVERED)
    cleanup += ids
    found = await settle(pool, ids, settings(webhook_max_attempts=3, webhook_backoff_base_s=0.1))
    assert [(r["seq"], r["state"], r["attempts"]) for r in found] == [(1, "dead", 3), (2, "delivered", 1), (3, "delivered", 1)]
    assert found[0]["last_error"] == "HTTP 500 after 3 attempts"
    assert [(h.payload["seq"], h.attempt) for h in receiver.hits] == [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]
    last = receiver.hits[-1].payload
    assert (last["status"], last["reason_code"]) == ("undelivered", "receipt_undelivered")
    assert sample(metrics.WEBHOOKS_DEAD_LETTERS, "exhausted") - dead_before == 1


async def test_a_slow_receiver_times_out_and_is_retried(pool, receiver, cleanup) -> None:
    receiver.behaviour = lambda payload, attempt: (200, 1.5) if attempt == 1 else (200, 0.0)
    timeouts_before = sample(metrics.WEBHOOKS_FAILED_ATTEMPTS, "timeout")
    _, ids = await seed(pool, receiver.url)
    cleanup += ids
    started = time.monotonic()
    found = await settle(pool, ids, settings(webhook_timeout_s=0.3, webhook_backoff_base_s=0.1))
    assert [(r["state"], r["attempts"]) for r in found] == [("delivered", 2)] * 3
    assert sample(metrics.WEBHOOKS_FAILED_ATTEMPTS, "timeout") - timeouts_before == 3
    assert time.monotonic() - started < 5


async def test_unreachable_receiver_is_retried_then_dead(pool, cleanup) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    _, ids = await seed(pool, url)
    cleanup += ids
    found = await settle(pool, ids, settings(webhook_max_attempts=2, webhook_backoff_base_s=0.05))
    assert [(r["state"], r["attempts"]) for r in found] == [("dead", 2)] * 3
    assert all(r["last_error"].startswith("ConnectError") for r in found)


# --- the claim reads heads only; results are written back in batches -------------------------


class ExplainedPool:
    """Stands for the pool in a WebhookStore: runs the claim under EXPLAIN ANALYZE in a
    transaction that is rolled back, and keeps the plan."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.plan: dict = {}

    async def fetch(self, sql: str, *args):
        async with self.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                found = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            finally:
                await tx.rollback()
        self.plan = (json.loads(found) if isinstance(found, str) else found)[0]["Plan"]
        return []


def outbox_rows_read(plan: dict) -> int:
    """Rows the plan read from webhook_outbox, apart from the UPDATE's own lookups by id."""
    read = 0
    if plan.get("Relation Name") == "webhook_outbox" and plan.get("Index Name") != "webhook_outbox_pkey" \
            and "Scan" in plan["Node Type"]:
        read += plan["Actual Rows"] * plan["Actual Loops"]
    return read + sum(outbox_rows_read(p) for p in plan.get("Plans", []))


async def test_a_claim_reads_no_row_waiting_behind_a_head_in_flight(pool, receiver, cleanup) -> None:
    _, ids = await seed(pool, receiver.url, n=200)
    cleanup += ids
    store = WebhookWorker(pool, settings()).store
    in_flight = await store.claim(1000, 60)  # every message's first row is being posted
    assert sorted(r["message_id"] for r in in_flight) == sorted(ids) and {r["seq"] for r in in_flight} == {1}
    # rows of other tests that are due and claimable may be read (each once, plus one probe)
    others = await pool.fetchval(
        "SELECT count(*) FROM webhook_outbox o WHERE o.state = 'pending' AND o.next_attempt_at <= now()"
        " AND NOT EXISTS (SELECT 1 FROM webhook_outbox p WHERE p.message_id = o.message_id AND p.state = 'pending'"
        " AND p.seq < o.seq)")
    explained = ExplainedPool(pool)
    await type(store)(explained).claim(32, 60)  # the same SQL, on the stand-in
    # 400 rows wait behind those 200 heads: none of them is read to find that nothing (of ours) is due
    assert outbox_rows_read(explained.plan) <= 2 * min(others, 32) + 10, json.dumps(explained.plan)[:3000]


async def test_results_are_written_in_one_batch_and_the_next_rows_become_heads(pool, receiver, cleanup) -> None:
    from services.reports.webhooks.rules import Outcome, Result

    _, ids = await seed(pool, receiver.url, n=4)
    cleanup += ids
    worker = WebhookWorker(pool, settings())
    claimed = sorted(await worker.store.claim(10, 60), key=lambda r: ids.index(r["message_id"]))
    assert [r["seq"] for r in claimed] == [1, 1, 1, 1]
    stale = dict(claimed[3]) | {"attempts": 0}  # claimed again since (attempts moved on): left alone
    await worker.write([
        Result(claimed[0], Outcome.DELIVERED, 200, None),
        Result(claimed[1], Outcome.RETRY, 503, "HTTP 503", delay_s=30),
        Result(claimed[2], Outcome.DEAD, 410, "HTTP 410", reason="refused"),
        Result(stale, Outcome.RETRY, 500, "HTTP 500", delay_s=30),
    ])
    found = await pool.fetch(
        "SELECT message_id, seq, state, head, last_status, last_error, next_attempt_at - now() AS wait"
        " FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) ORDER BY message_id, seq", ids)
    by = {(r["message_id"], r["seq"]): r for r in found}
    assert (by[ids[0], 1]["state"], by[ids[0], 2]["head"], by[ids[0], 3]["head"]) == ("delivered", True, False)
    assert (by[ids[1], 1]["state"], by[ids[1], 1]["last_status"], by[ids[1], 2]["head"]) == ("pending", 503, False)
    assert timedelta(seconds=25) < by[ids[1], 1]["wait"] <= timedelta(seconds=30)
    assert (by[ids[2], 1]["state"], by[ids[2], 1]["last_error"], by[ids[2], 2]["head"]) == ("dead", "HTTP 410", True)
    assert (by[ids[3], 1]["last_status"], by[ids[3], 1]["wait"] > timedelta(seconds=50)) == (None, True)
    # the next claim takes the new heads (seq 2 of the delivered and of the dead-lettered message)
    again = await worker.store.claim(10, 60)
    assert sorted((ids.index(r["message_id"]), r["seq"]) for r in again) == [(0, 2), (2, 2)]


async def test_a_change_recorded_while_its_head_is_being_finished_becomes_the_next_head(pool, receiver, cleanup) -> None:
    from services.reports.webhooks.rules import Outcome, Result

    tenant = f"t{uuid.uuid4().hex[:10]}"
    mid = uuid.uuid4()
    cleanup.append(mid)
    now = utcnow()
    accepted = from_accepted(uuid.uuid4(), tenant, factories.accepted(
        message_id=mid, to="+34600123456", body="hi", type="transactional",
        accepted_at=now, status_callback_url=receiver.url))
    async with pool.acquire() as conn, conn.transaction():
        await record(ReportsRepository(conn), [accepted])
    worker = WebhookWorker(pool, settings())
    [head] = await worker.store.claim(10, 60)
    submitted = from_status(uuid.uuid4(), tenant, now + timedelta(milliseconds=10), factories.status(
        mid, Status.SUBMITTED, gateway="sim", gateway_message_id=mid.hex, attempts=1))
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await record(ReportsRepository(conn), [submitted])  # seq 2 queued behind the head in flight
        # the head's post ends now: its row is locked by this transaction, so its result waits
        left = await worker.write([Result(head, Outcome.DELIVERED, 200, None)])
        assert [r.row["id"] for r in left] == [head["id"]]
        await tx.commit()
    assert await worker.write(left) == []  # written now, and it sees seq 2
    assert [(r["seq"], r["state"], r["head"]) for r in await pool.fetch(
        "SELECT seq, state, head FROM webhook_outbox WHERE message_id = $1 ORDER BY seq", mid)] == [
        (1, "delivered", True), (2, "pending", True)]
    assert [r["seq"] for r in await worker.store.claim(10, 60)] == [2]


async def test_changes_recorded_while_the_worker_runs_are_all_posted_in_order(pool, receiver, cleanup) -> None:
    rng = random.Random(11)
    receiver.behaviour = lambda payload, attempt: (200, rng.random() * 0.01)
    tenant = f"t{uuid.uuid4().hex[:10]}"
    ids = [uuid.uuid4() for _ in range(60)]
    cleanup += ids
    now = utcnow()
    workers = [WebhookWorker(pool, settings()) for _ in range(2)]
    tasks = await running(*workers)

    async def lifecycle(mid: uuid.UUID) -> None:
        steps = [
            from_accepted(uuid.uuid4(), tenant, factories.accepted(
                message_id=mid, to="+34600123456", body="hi", type="transactional",
                accepted_at=now, status_callback_url=receiver.url)),
            from_status(uuid.uuid4(), tenant, now + timedelta(milliseconds=10), factories.status(
                mid, Status.SUBMITTED, gateway="sim", gateway_message_id=mid.hex, attempts=1)),
            from_receipt(uuid.uuid4(), mid, tenant, now + timedelta(milliseconds=20), factories.receipt(
                ReceiptStatus.DELIVERED, "sim", mid.hex)),
        ]
        for change in steps:  # each change its own transaction, racing the workers' results
            async with pool.acquire() as conn, conn.transaction():
                await record(ReportsRepository(conn), [change])
            await asyncio.sleep(rng.random() * 0.02)

    try:
        await asyncio.gather(*(lifecycle(m) for m in ids))
        found = await until_settled(pool, ids, timeout_s=60)
    finally:
        await stop(workers, tasks)
    assert len(found) == 180 and all(r["state"] == "delivered" for r in found)
    for mid, hits in receiver.by_message(only_ok=True).items():
        assert [h.payload["status"] for h in hits] == ["accepted", "submitted", "delivered"], mid


async def test_recording_changes_in_two_statements_while_results_are_written_never_deadlocks(
        pool, receiver, cleanup) -> None:
    """reports records a batch's status changes, then its receipts, in one transaction: it locks
    one message's outbox rows, then another's. A worker writing both heads' results meanwhile
    must not hold the second while it waits for the first."""
    from services.reports.webhooks.rules import Outcome, Result

    tenant = f"t{uuid.uuid4().hex[:10]}"
    first, second = uuid.uuid4(), uuid.uuid4()  # first queued first: its head has the lower id
    cleanup += [first, second]
    now = utcnow()

    def accepted(mid: uuid.UUID):
        return from_accepted(uuid.uuid4(), tenant, factories.accepted(
            message_id=mid, to="+34600123456", body="hi", type="transactional",
            accepted_at=now, status_callback_url=receiver.url))

    def submitted(mid: uuid.UUID):
        return from_status(uuid.uuid4(), tenant, now + timedelta(milliseconds=10), factories.status(
            mid, Status.SUBMITTED, gateway="sim", gateway_message_id=mid.hex, attempts=1))

    for mid in (first, second):
        async with pool.acquire() as conn, conn.transaction():
            await record(ReportsRepository(conn), [accepted(mid)])
    worker = WebhookWorker(pool, settings())
    heads = {r["message_id"]: r for r in await worker.store.claim(10, 60)}
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await record(ReportsRepository(conn), [submitted(second)])  # locks the second message's rows
        writing = asyncio.create_task(worker.write([Result(heads[m], Outcome.DELIVERED, 200, None) for m in (first, second)]))
        await asyncio.sleep(0.3)
        await record(ReportsRepository(conn), [submitted(first)])  # then the first's
        await tx.commit()
    left = await asyncio.wait_for(writing, 10)
    while left:
        left = await worker.write(left)
    found = await pool.fetch("SELECT message_id, seq, state, head FROM webhook_outbox WHERE message_id = ANY($1::uuid[])"
                             " ORDER BY message_id, seq", [first, second])
    assert sorted((r["message_id"] == first, r["seq"], r["state"], r["head"]) for r in found) == [
        (False, 1, "delivered", True), (False, 2, "pending", True), (True, 1, "delivered", True), (True, 2, "pending", True)]
