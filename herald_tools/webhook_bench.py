"""``herald bench --webhooks ROWS``: the status webhook outbox in isolation.

Starts (or reuses) the local PostgreSQL, makes a fresh database, queues ROWS outbox rows
(``--webhook-events`` status changes per message, through ``enqueue()``, the path reports
uses), starts an aiohttp receiver in a process of its own on a loopback port, runs the real
``WebhookWorker`` in this process and reports rows posted per second from the worker's start
to the last row recorded delivered, with the CPU seconds of the worker, the receiver and
PostgreSQL. The receiver checks that each message's callbacks come in ``seq`` order.

``--webhook-receiver-ms MS``: the receiver answers after MS milliseconds (a receiver across
the internet rather than on loopback), so the posts in flight (``--webhook-concurrency``)
bound the rate.

``--webhook-stuck PCT``: that share of the messages has a receiver answering 503 for ever
(their first row retries, their later rows stay pending behind it), so the claim runs with a
backlog of blocked rows; the figure is then for the other messages' rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from herald_tools.stack import free_port, start_infra

STATUSES = ("accepted", "scheduled", "unknown", "submitted", "delivered")


def stuck(message_id: str, pct: float) -> bool:
    return pct > 0 and uuid.UUID(message_id).int % 10_000 < pct * 100


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(port: int) -> float:
    """CPU seconds of the postmaster listening on ``port`` and its children (so far)."""
    total = 0.0
    postmaster = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"postgres") and str(port).encode() in b" ".join(cmd):
                postmaster = int(proc.name)
        except OSError:
            continue
    if postmaster is None:
        return float("nan")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(proc.name) == postmaster or int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return total


def receiver_main(port: int, stuck_pct: float, delay_ms: float, ready: Any) -> None:
    """The receiver process: 200 (503 for the stuck messages); GET /stats says what it saw."""
    from aiohttp import web

    from shared.statuses import FINAL

    finals = {f.value for f in FINAL}
    last: dict[str, int] = {}
    stats = {"ok": 0, "refused": 0, "out_of_order": 0, "final": 0}

    async def hook(request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        mid, seq = payload["message_id"], payload["seq"]
        if stuck(mid, stuck_pct):
            stats["refused"] += 1
            return web.Response(status=503)
        if seq <= last.get(mid, 0):
            stats["out_of_order"] += 1
        last[mid] = seq
        stats["ok"] += 1
        stats["final"] += payload.get("status") in finals
        return web.Response(status=200)

    async def stats_view(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats_view)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)


async def fill(pool: asyncpg.Pool, url: str, rows: int, events: int, tenant: str) -> dict[str, int]:
    """Queue ``rows`` outbox rows, ``events`` per message, the way reports queues them."""
    from services.reports.webhooks.repository import enqueue
    from services.reports.webhooks.rules import Notification
    from shared.statuses import Status

    statuses = [Status(s) for s in STATUSES[:events]]
    messages = rows // events
    per_message: dict[str, int] = defaultdict(int)
    chunk = 2_000
    for start in range(0, messages, chunk):
        notes = []
        for _ in range(min(chunk, messages - start)):
            mid = uuid.uuid4()
            previous = None
            for status in statuses:
                notes.append(Notification(
                    message_id=mid, tenant_id=tenant, url=url, status=status, previous_status=previous,
                    occurred_at=None, reason_code=None, reason=None, gateway="sim", segments=1,
                    metadata={"order": mid.hex[:8]}, attempts=None))
                previous = status
            per_message[str(mid)] = len(statuses)
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, notes)
    return per_message


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from services.reports.settings import ReportsSettings
    from services.reports.webhooks.worker import WebhookWorker
    from shared.db import create_pool, migrate
    from shared.settings import ServiceSettings

    start_infra()
    base = ServiceSettings()
    dsn_admin = base.database_url.get_secret_value()
    pg_port = int(dsn_admin.rsplit(":", 1)[1].split("/", 1)[0])
    db = f"herald_whbench_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(dsn_admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    os.environ["HERALD_DATABASE_URL"] = dsn_admin.rsplit("/", 1)[0] + f"/{db}"
    receiver, base = start_receiver(args.webhook_stuck, args.webhook_receiver_ms)
    result: dict[str, Any] = {}
    try:
        overrides: dict[str, Any] = {"webhook_backoff_base_s": 60.0, "webhook_max_attempts": 100,
                                     "webhook_poll_interval_s": 0.05}
        if args.webhook_concurrency:
            overrides["webhook_concurrency"] = args.webhook_concurrency
        # one loopback receiver for everything: allowed explicitly, and no per-host or per-tenant
        # cap below the pool (the bench measures the outbox, not the fairness rules)
        concurrency = overrides.get("webhook_concurrency", ReportsSettings.model_fields["webhook_concurrency"].default)
        overrides.update(webhook_allowed_networks=["127.0.0.1/32"], webhook_require_https=False,
                         webhook_host_concurrency=concurrency, webhook_tenant_concurrency=concurrency,
                         webhook_circuit_failures=1_000_000)
        settings = ReportsSettings(**overrides)
        pool = await create_pool(settings)
        async with pool.acquire() as c:
            await migrate(c)
        url = f"{base}/hook"
        started = time.monotonic()
        per_message = await fill(pool, url, args.webhooks, args.webhook_events, "bench")
        total = sum(per_message.values())
        expected = sum(n for mid, n in per_message.items() if not stuck(mid, args.webhook_stuck))
        print(f"queued {total:,} rows for {len(per_message):,} messages in {time.monotonic() - started:.1f} s; "
              f"{total - expected:,} of them behind a receiver that keeps answering 503", flush=True)
        await pool.execute("ANALYZE webhook_outbox")
        worker = WebhookWorker(pool, settings)
        cpu = (cpu_seconds(os.getpid()), cpu_seconds(receiver.pid), postgres_cpu(pg_port))
        started = time.monotonic()
        task = asyncio.create_task(worker.run())
        async with httpx.AsyncClient() as client:
            while True:
                stats = (await client.get(f"{base}/stats")).json()
                if stats["ok"] >= expected:
                    break
                if task.done():
                    raise RuntimeError(f"the worker stopped: {task.exception()!r}")
                if time.monotonic() - started > args.webhook_timeout_s:
                    raise RuntimeError(f"not done after {args.webhook_timeout_s} s: {stats}")
                await asyncio.sleep(0.1)
            # posted is not recorded: wait for the last rows to be marked delivered
            while await pool.fetchval("SELECT count(*) FROM webhook_outbox WHERE state = 'delivered'") < expected:  # noqa: ASYNC110 - polls the database, not an in-process flag
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            stats = (await client.get(f"{base}/stats")).json()
        used = (cpu_seconds(os.getpid()) - cpu[0], cpu_seconds(receiver.pid) - cpu[1], postgres_cpu(pg_port) - cpu[2])
        worker.stop()
        await asyncio.wait_for(task, 30)
        await pool.close()
        result = {
            "rows": expected, "seconds": round(elapsed, 2), "rows_per_s": round(expected / elapsed),
            "messages_per_s": round(expected / args.webhook_events / elapsed),
            "cpu_s": {"worker": round(used[0], 1), "receiver": round(used[1], 1), "postgres": round(used[2], 1)},
            "refused_posts": stats["refused"], "out_of_order": stats["out_of_order"],
            "concurrency": settings.webhook_concurrency, "receiver_ms": args.webhook_receiver_ms,
        }
        print(f"webhooks: {expected:,} rows posted and recorded in {elapsed:.2f} s: {expected / elapsed:,.0f} rows/s "
              f"({expected / args.webhook_events / elapsed:,.0f} messages/s); CPU s: worker {used[0]:.1f}, "
              f"receiver {used[1]:.1f}, PostgreSQL {used[2]:.1f}; 503 answers {stats['refused']:,}; "
              f"out of order {stats['out_of_order']}", flush=True)
        return result
    finally:
        receiver.terminate()
        receiver.join(10)
        conn = await asyncpg.connect(dsn_admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--webhooks", type=int, default=0, metavar="ROWS",
                        help="instead: fill the status webhook outbox with ROWS rows and measure the worker alone")
    parser.add_argument("--webhook-events", type=int, default=3, choices=range(1, len(STATUSES) + 1),
                        help="with --webhooks: status changes (outbox rows) per message")
    parser.add_argument("--webhook-concurrency", type=int, default=0,
                        help="with --webhooks: HERALD_WEBHOOK_CONCURRENCY for the worker (default: the setting's)")
    parser.add_argument("--webhook-stuck", type=float, default=0.0, metavar="PCT",
                        help="with --webhooks: share of messages (%%) whose receiver answers 503 for ever")
    parser.add_argument("--webhook-receiver-ms", type=float, default=0.0, metavar="MS",
                        help="with --webhooks: the receiver waits this long before answering (a distant receiver)")
    parser.add_argument("--webhook-sends", type=int, default=0, metavar="N",
                        help="instead: start the stack, send N single messages with a status_callback_url, and "
                             "time the last final-status webhook")
    parser.add_argument("--webhook-timeout-s", type=float, default=600.0, help=argparse.SUPPRESS)


def start_receiver(stuck_pct: float = 0.0, delay_ms: float = 0.0) -> tuple[Any, str]:
    """The receiver in a process of its own; returns (process, its base URL)."""
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    receiver = ctx.Process(target=receiver_main, args=(port, stuck_pct, delay_ms, ready), daemon=True)
    receiver.start()
    ready.wait(30)
    return receiver, f"http://127.0.0.1:{port}"


async def end_to_end(ingest_url: str, key: str, dsn: str, sends: int, concurrency: int = 32) -> dict[str, Any]:
    """``herald bench --webhook-sends N`` (the whole stack running): N single sends to ingest,
    each with a status_callback_url; seconds from the first send to the last message final
    (recorded by reports) and to the last final-status webhook received."""
    import aiohttp

    receiver, base = start_receiver()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        counter = iter(range(sends))
        ids: list[str] = []
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def sender() -> None:
                for i in counter:
                    body = {"to": f"+346{i % 10**8:08d}", "body": "Your code is 123456", "type": "transactional",
                            "status_callback_url": f"{base}/hook"}
                    async with session.post(f"{ingest_url}/v1/messages", json=body) as r:
                        if r.status != 202:
                            raise RuntimeError(f"ingest answered {r.status}: {await r.text()}")
                        ids.append((await r.json())["message_id"])

            started = time.monotonic()
            await asyncio.gather(*(sender() for _ in range(concurrency)))
            sent_s = time.monotonic() - started
            conn = await asyncpg.connect(dsn)
            final_s = None
            try:
                while True:
                    if final_s is None and await conn.fetchval(
                            "SELECT count(*) FROM messages WHERE message_id = ANY($1::uuid[]) AND status_rank = 100",
                            ids) >= sends:
                        final_s = time.monotonic() - started
                    async with session.get(f"{base}/stats") as r:
                        stats = await r.json()
                    if stats["final"] >= sends and final_s is not None:
                        break
                    if time.monotonic() - started > max(600, sends / 10):
                        raise RuntimeError(f"not done: {stats}")
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            hooks_s = time.monotonic() - started
    finally:
        receiver.terminate()
        receiver.join(10)
    return {"sends": sends, "sent_s": round(sent_s, 1), "all_final_s": round(final_s, 1),
            "last_final_webhook_s": round(hooks_s, 1), "msg_per_s_to_last_webhook": round(sends / hooks_s),
            "webhooks_ok": stats["ok"], "out_of_order": stats["out_of_order"]}
