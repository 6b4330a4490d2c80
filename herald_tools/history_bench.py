"""Message history: does the hot path slow as history grows? (`herald bench --history N`)

In a database of its own (``herald_history_bench`` on the local PostgreSQL, migrated), it
measures, first on an empty history and then with N messages of history spread over
``--days`` days (each with its three timeline rows: accepted, submitted, delivered):

- the hot path: reports recording whole message lifecycles (accepted, submitted, delivered)
  with the statements the service runs (services/reports/handlers.record: upsert and lock the
  message rows, update them, insert their timeline), in batches of 500 messages;
- typical reads: a message by id with its timeline (GET /v1/messages/{id}), the first page of
  a big tenant's messages (GET /v1/messages) and its messages to one number (``to=``), and a
  day's status counts of that tenant (a report);
- retention: the reports job expiring one day of that history (a partition drop for the
  timeline, batched deletes along the accepted_at index for the messages).

The history is written by SQL (generate_series, one day per statement, in time order, the
indexes dropped during the load and built again after it), not through the services: it is what
years of traffic leave behind. The result is a section of
docs/benchmarks.md ("message history").
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.reports.domain import from_accepted, from_receipt, from_status
from services.reports.handlers import record
from services.reports.repository import ReportsRepository, fetch_message, search_messages
from services.reports.retention import tasks as reports_tasks
from services.reports.search import MessageQuery, build_sql
from services.reports.settings import ReportsSettings
from shared import retention
from shared.contracts import DeliveryReceipt, MessageAccepted, MessageStatusChanged
from shared.db import create_pool, migrate
from shared.retention_store import RetentionJob
from shared.settings import DatabaseSettings
from shared.statuses import RANK, ReceiptStatus, Status

DB = "herald_history_bench"
TENANTS = 100
BIG = "hist7"  # a tenant with 1 % of the history, whose reads are measured
BATCH = 500
DAY = timedelta(days=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history", type=int, default=0, metavar="MESSAGES",
                        help="instead: measure the hot path and typical reads on an empty history, then with this many "
                             "messages of history (e.g. 50000000; written by SQL)")
    parser.add_argument("--history-days", type=int, default=400, help="with --history: days the history spans")
    parser.add_argument("--history-keep", action="store_true",
                        help="with --history: reuse the history database when it already holds that many messages")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> str:
    return f"{pct(values, 0.5) * 1000:.2f} / {pct(values, 0.99) * 1000:.2f} ms"


async def hot_path(pool: asyncpg.Pool, batches: int, now: datetime) -> float:
    """Messages per second, each taken through accepted, submitted and delivered as reports records them."""
    total = 0.0
    for _ in range(batches):
        ids = [uuid.uuid4() for _ in range(BATCH)]
        tenants = [f"hist{random.randrange(TENANTS)}" for _ in ids]
        stages = [
            [from_accepted(uuid.uuid4(), t, MessageAccepted(
                message_id=m, to=f"+3460{random.randrange(10_000_000):07d}", country="ES", body="x", type="transactional",
                encoding="GSM-7", segments=1, source="api", accepted_at=now, metadata={"order": m.hex[:8]}))
             for m, t in zip(ids, tenants, strict=True)],
            [from_status(uuid.uuid4(), t, now + timedelta(seconds=1), MessageStatusChanged(
                message_id=m, status=Status.SUBMITTED, gateway="sim", gateway_message_id=m.hex, attempts=1))
             for m, t in zip(ids, tenants, strict=True)],
            [from_receipt(uuid.uuid4(), m, t, now + timedelta(seconds=3), DeliveryReceipt(
                gateway="sim", gateway_message_id=m.hex, status=ReceiptStatus.DELIVERED))
             for m, t in zip(ids, tenants, strict=True)],
        ]
        began = time.perf_counter()
        for changes in stages:
            async with pool.acquire() as conn, conn.transaction():
                await record(ReportsRepository(conn), changes)
        total += time.perf_counter() - began
    return batches * BATCH / total


async def timed(fn: Any, reps: int) -> list[float]:
    out = []
    for i in range(reps):
        began = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - began)
    return out


async def reads(pool: asyncpg.Pool, now: datetime, reps: int) -> dict[str, list[float]]:
    sample = await pool.fetch(
        "SELECT message_id, tenant_id, to_e164 FROM messages WHERE accepted_at IS NOT NULL"
        " AND tenant_id = $1 ORDER BY accepted_at DESC LIMIT 20000", BIG)
    random.shuffle(sample := list(sample))
    picks = [sample[i % len(sample)] for i in range(reps)]
    # ids of any age, from the whole history: a few thousand picked by the primary key's order
    spread = await pool.fetch("SELECT message_id, tenant_id FROM messages TABLESAMPLE SYSTEM (0.1) LIMIT 5000") or sample
    olds = [spread[random.randrange(len(spread))] for _ in range(reps)]

    async def by_id(i: int) -> None:
        found = await fetch_message(pool, olds[i]["tenant_id"], olds[i]["message_id"])
        assert found is not None and found["timeline"]

    async def page(i: int) -> None:
        sql, args = build_sql(MessageQuery(tenant_id=BIG), 50)
        assert await search_messages(pool, sql, args, 5000)

    async def by_number(i: int) -> None:
        sql, args = build_sql(MessageQuery(tenant_id=BIG, to=picks[i]["to_e164"]), 50)
        assert await search_messages(pool, sql, args, 5000)

    async def day_report(i: int) -> None:
        day = now - (i % 30 + 1) * DAY
        await pool.fetch("SELECT status, count(*) FROM messages WHERE tenant_id = $1 AND accepted_at >= $2"
                         " AND accepted_at < $3 GROUP BY status", BIG, day, day + DAY)

    return {"by_id": await timed(by_id, reps), "page": await timed(page, reps),
            "by_number": await timed(by_number, reps), "day_report": await timed(day_report, max(20, reps // 10))}


async def fill(pool: asyncpg.Pool, count: int, days: int, now: datetime) -> float:
    """``count`` delivered messages spread evenly over the ``days`` days before today, each with
    its three timeline rows: one day per statement pair, oldest first. Returns seconds."""
    began = time.perf_counter()
    today = now.date()
    first = today - days * DAY
    async with pool.acquire() as conn:
        for i in range(days):
            day = first + i * DAY
            name = retention.partition_name("message_events", day)
            start, end = retention.day_start(day), retention.day_start(day + DAY)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF message_events"
                               f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
    # A bulk load: the indexes go during the fill and are built again after it (as a restore does).
    async with pool.acquire() as conn:
        keys = await conn.fetch(
            "SELECT conrelid::regclass::text AS tab, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
            " WHERE contype = 'p' AND conrelid IN ('messages'::regclass, 'message_events'::regclass)")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('messages', 'message_events')"
            " AND schemaname = current_schema() AND indexname NOT IN"
            " (SELECT conname FROM pg_constraint WHERE contype = 'p')")
        for ix in indexes:
            await conn.execute(f"DROP INDEX {ix['indexname']}")
        for k in keys:
            await conn.execute(f"ALTER TABLE {k['tab']} DROP CONSTRAINT {k['conname']}")
    per_day = count // days
    rank = RANK[Status.DELIVERED]
    done = [0, 0]  # messages written, days written

    async def one_day(i: int) -> None:
        n = per_day + (1 if i < count % days else 0)
        first_g = i * per_day + min(i, count % days)
        start = retention.day_start(first + i * DAY)
        step = 86400.0 / max(n, 1)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            # The day's messages and their timeline in one statement: the timeline takes the rows
            # the insert returns (no scan of the growing, unindexed messages table per day).
            await conn.execute(
                "WITH m AS (INSERT INTO messages (message_id, tenant_id, to_e164, country, type, sender, encoding, segments,"
                " source, metadata, status, status_rank, gateway, gateway_message_id, accepted_at, submitted_at, final_at,"
                " updated_at)"
                " SELECT gen_random_uuid(), 'hist' || (g % $4), '+3460' || lpad((g * 7919 % 10000000)::text, 7, '0'), 'ES',"
                " CASE WHEN g % 5 = 0 THEN 'marketing' ELSE 'transactional' END, 'Herald', 'GSM-7', 1, 'api',"
                " jsonb_build_object('order', g::text), 'delivered', $5, 'sim', md5(g::text),"
                " t, t + interval '1 second', t + interval '3 seconds', t + interval '3 seconds'"
                " FROM (SELECT g, $1::timestamptz + make_interval(secs => (g - $2) * $6) AS t"
                "       FROM generate_series($2::bigint, $3::bigint) AS g) AS s"
                " RETURNING message_id, accepted_at)"
                " INSERT INTO message_events (event_id, message_id, status, occurred_at, detail)"
                " SELECT gen_random_uuid(), m.message_id, s.status, m.accepted_at + s.off,"
                " CASE WHEN s.status = 'accepted' THEN '{}'::jsonb ELSE jsonb_build_object('gateway', 'sim') END"
                " FROM m CROSS JOIN (VALUES ('accepted', interval '0'), ('submitted', interval '1 second'),"
                " ('delivered', interval '3 seconds')) AS s(status, off)",
                start, first_g, first_g + n - 1, TENANTS, rank, step, timeout=3600,
            )
        done[0] += n
        done[1] += 1
        if done[1] % 20 == 0 or done[1] == days:
            elapsed = time.perf_counter() - began
            print(f"  history: {done[0]:,} messages ({done[1]}/{days} days), {elapsed:.0f} s,"
                  f" {done[0] / elapsed:,.0f} msg/s", flush=True)

    # Two days at a time, oldest first: the machine's two cores both write.
    queue = iter(range(days))

    async def writer() -> None:
        for i in queue:
            await one_day(i)

    await asyncio.gather(writer(), writer())
    async with pool.acquire() as conn:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for k in keys:
            print(f"  building {k['tab']} {k['conname']}", flush=True)
            await conn.execute(f"ALTER TABLE {k['tab']} ADD CONSTRAINT {k['conname']} {k['def']}", timeout=3600)
        for ix in indexes:
            print(f"  building {ix['indexname']}", flush=True)
            # pg_indexes shows a partitioned table's index as ON ONLY (the parent alone): build it on every partition
            await conn.execute(ix["indexdef"].replace(" ON ONLY ", " ON "), timeout=3600)
        await conn.execute("ANALYZE messages", timeout=3600)
        await conn.execute("ANALYZE message_events", timeout=3600)
        invalid = await conn.fetchval("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
        assert invalid == 0, f"{invalid} invalid indexes after the load"
    return time.perf_counter() - began


async def sizes(pool: asyncpg.Pool) -> str:
    row = await pool.fetchrow(
        "SELECT pg_total_relation_size('messages') AS m,"
        " (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        "  WHERE i.inhparent = 'message_events'::regclass) AS e")
    return f"messages {row['m'] / 2**30:.1f} GiB, message_events {int(row['e'] or 0) / 2**30:.1f} GiB (with indexes)"


async def expire_one_day(pool: asyncpg.Pool) -> tuple[float, int, int]:
    """The reports retention job with an age that expires the history's oldest day."""
    # the age whose cutoff is the end of the history's oldest day (00:00 UTC after it)
    now = datetime.now(UTC)
    oldest = await pool.fetchval("SELECT min(accepted_at) FROM messages")
    age = (now - retention.day_start(oldest.astimezone(UTC).date() + DAY)).total_seconds() / 86400
    settings = ReportsSettings(retention_messages_days=age, retention_clicks_days=3650,
                               retention_dead_webhooks_days=3650, retention_interval_s=1)
    await pool.execute("DELETE FROM retention_runs WHERE job = 'reports'")
    before = await pool.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'message_events'::regclass")
    began = time.perf_counter()
    outcome = await RetentionJob(pool, "reports", settings, reports_tasks(settings)).run_once()
    took = time.perf_counter() - began
    assert outcome == "success", outcome
    counts = await pool.fetchval("SELECT last_counts FROM retention_runs WHERE job = 'reports'")
    after = await pool.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'message_events'::regclass")
    return took, int(counts.get("messages", 0)), int(counts.get("message_events:dropped", 0) or before - after)


async def fresh_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def open_migrated(dsn: str) -> asyncpg.Pool:
    pool = await create_pool(DatabaseSettings(database_url=dsn, db_pool_min=1, db_pool_max=4))
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


async def interleaved(empty: asyncpg.Pool, full: asyncpg.Pool, now: datetime, rounds: int,
                      reps: int) -> tuple[list[float], list[float], dict[str, list[float]], dict[str, list[float]]]:
    """The same measures on both databases, alternating in rounds: the machine is shared, so
    whatever else runs meanwhile weighs on both alike."""
    rates: tuple[list[float], list[float]] = ([], [])
    reads_of: tuple[dict[str, list[float]], dict[str, list[float]]] = ({}, {})
    for r in range(rounds):
        for side, pool in enumerate((empty, full)):
            rates[side].append(await hot_path(pool, 4, now))
            for key, values in (await reads(pool, now, reps // rounds)).items():
                reads_of[side].setdefault(key, []).extend(values)
        print(f"  round {r + 1}/{rounds}: {rates[0][-1]:,.0f} / {rates[1][-1]:,.0f} msg/s", flush=True)
    return rates[0], rates[1], reads_of[0], reads_of[1]


async def run(args: argparse.Namespace, results: Any) -> None:
    base = DatabaseSettings().database_url.get_secret_value()
    server = base.rsplit("/", 1)[0]
    admin_dsn, dsn = f"{server}/postgres", f"{server}/{DB}"
    now = datetime.now(UTC)
    admin = await asyncpg.connect(admin_dsn)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB)
    finally:
        await admin.close()
    keep = False
    if exists and args.history_keep:
        probe = await asyncpg.connect(dsn)
        try:
            # (less the day an earlier run's retention measurement expired)
            held = await probe.fetchval("SELECT count(*) FROM messages WHERE tenant_id LIKE 'hist%'") or 0
            keep = held >= args.history * (1 - 2 / args.history_days)
        finally:
            await probe.close()
    if not keep:
        await fresh_database(admin_dsn, DB)
    pool = await open_migrated(dsn)
    await fresh_database(admin_dsn, f"{DB}_empty")  # the empty history: made for this run
    empty = await open_migrated(f"{server}/{DB}_empty")
    try:
        if not keep:
            print(f"filling {args.history:,} messages over {args.history_days} days", flush=True)
            fill_s = await fill(pool, args.history, args.history_days, now)
            results.add(f"history written by SQL: {args.history:,} messages, {3 * args.history:,} timeline rows, "
                        f"{args.history_days} days (indexes built after the load)",
                        f"{fill_s:.0f} s ({args.history / fill_s:,.0f} msg/s)")
        else:
            print("reusing the history of an earlier run", flush=True)
            async with pool.acquire() as conn:
                await conn.execute("ANALYZE messages", timeout=3600)
                await conn.execute("ANALYZE message_events", timeout=3600)
        print("hot path and reads, empty and full history in turn", flush=True)
        for side in (empty, pool):
            await hot_path(side, 4, now)  # warm-up (and, in the empty one, rows for the reads)
            await side.execute("ANALYZE messages")
            await reads(side, now, 50)
        empty_rates, full_rates, empty_reads, full_reads = await interleaved(empty, pool, now, 5, 500)
        results.add("size on disk", await sizes(pool))
        label = f"{args.history:,} messages"
        med = lambda v: pct(v, 0.5)  # noqa: E731
        results.add(f"hot path, reports recording whole lifecycles (accepted, submitted, delivered; {BATCH} per batch), "
                    f"median of 5 rounds: empty / {label}", f"{med(empty_rates):,.0f} / {med(full_rates):,.0f} msg/s")
        for key, what in (("by_id", "message by id with its timeline (any age), p50 / p99"),
                          ("page", f"first page (50) of a tenant's messages ({args.history // TENANTS:,} of them), p50 / p99"),
                          ("by_number", "a tenant's messages to one number, p50 / p99"),
                          ("day_report", f"a tenant's status counts for one day ({args.history // TENANTS // args.history_days:,}"
                                         " messages a day in the history), p50 / p99")):
            results.add(f"{what}: empty → {label}", f"{ms(empty_reads[key])} → {ms(full_reads[key])}")
        took, messages, dropped = await expire_one_day(pool)
        results.add("retention: the reports job expiring the oldest day",
                    f"{took:.1f} s ({messages:,} messages deleted in batches, {dropped} timeline partition dropped)")
        results.notes.append(
            "One PostgreSQL 15 on the same shared machine as everything else (2 cores shared with other work), default "
            "configuration of deploy/local/infra.py. The empty and the full history are measured in turn, five rounds, "
            "so load from elsewhere weighs on both. The empty history is a fresh database; the full one is kept after "
            "the run (herald_history_bench: `--history-keep` reuses it; drop it with `DROP DATABASE herald_history_bench`).")
    finally:
        await pool.close()
        await empty.close()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB}_empty" WITH (FORCE)')
        finally:
            await admin.close()
