"""Fault tests: 20,000 messages while a process, the broker, the database or the gateway fails.

After each fault: every accepted message ends in exactly one final state, the simulator got
each message id at most once (exactly once when Herald recorded a submission), no consumer
group is left behind (lag back to zero). Bounded: each scenario gives up after a few minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import timedelta
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from shared.devtools.demo import demo_numbers, marketing_countries
from shared.devtools.stack import SERVICES, Ports, Stack, infra
from shared.statuses import FINAL
from shared.topics import ALL
from tests.conftest import Tenant, make_tenant
from tests.helpers import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
MESSAGES = 20_000
#: The stack's retry budget: a batch refused for longer than this was given up on before parking.
RETRY_BUDGET_S = 100
#: How long every gateway is down in the long-outage scenario (run it once by hand with 600).
OUTAGE_S = float(os.environ.get("HERALD_FAULT_OUTAGE_S", "180"))
FINAL_NAMES = [s.value for s in FINAL]


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_CLAIM_LEASE_S": "6", "HERALD_RECONCILE_INTERVAL_S": "1", "HERALD_RETRY_BUDGET_S": str(RETRY_BUDGET_S),
             "HERALD_RETRY_MAX_ATTEMPTS": "60", "HERALD_RETRY_CAP_S": "3",
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "300"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("fault-logs")),
        gateway_rate=4000,
    )
    s.start_all()
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()


async def send_resilient(stack: Stack, tenant: Tenant, run: str, count: int, progress: list[int]) -> list[str]:
    """Send in batches of 500 with idempotency keys; retry a batch until ingest accepts it."""
    # Marketing messages go where quiet hours allow them now, so all can reach a final state.
    numbers = demo_numbers(count, seed=hash(run) % 1000, countries=marketing_countries(True, margin=timedelta(minutes=20)))
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30) as client:
        for start in range(0, count, 500):
            batch = [
                {"to": n, "body": f"{run} message {start + i}", "type": "marketing" if (start + i) % 2 else "transactional",
                 "idempotency_key": f"{run}-{start + i}"}
                for i, n in enumerate(numbers[start : start + 500])
            ]
            deadline = time.monotonic() + 240
            while True:
                try:
                    r = await client.post("/v1/messages/batch", json={"messages": batch})
                    if r.status_code == 202:
                        ids += [x["message_id"] for x in r.json()["results"] if x.get("message_id")]
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "ingest did not accept a batch within 240 s"
                await asyncio.sleep(0.5)
            progress[0] = len(ids)
    return ids


async def group_lag(env, group: str) -> int:
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


async def check_outcome(stack: Stack, pool, env, ids: list[str]) -> None:
    async def everything_final():
        n = await pool.fetchval(
            "SELECT count(*) FROM messages WHERE message_id = ANY($1::uuid[]) AND status = ANY($2::text[])", ids, FINAL_NAMES
        )
        return n == len(ids) or None

    await wait_for(everything_final, timeout_s=300, interval_s=1)
    per_message = await pool.fetch(
        "SELECT message_id::text AS id, count(*) AS n FROM message_events"
        " WHERE message_id = ANY($1::uuid[]) AND status = ANY($2::text[]) GROUP BY message_id",
        ids, FINAL_NAMES,
    )
    assert len(per_message) == len(ids) and all(r["n"] == 1 for r in per_message), "a message has two final states"
    refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]
    assert all(refs.get(i, 0) <= 1 for i in ids), "the gateway got a message twice"
    submitted = await pool.fetch(
        "SELECT message_id::text AS id FROM messages WHERE message_id = ANY($1::uuid[]) AND gateway_message_id IS NOT NULL", ids
    )
    assert all(refs.get(r["id"]) == 1 for r in submitted), "Herald recorded a submission the gateway never got"
    groups = [f"{env.prefix}{name}" for name in ("scheduler", "scheduler.bulk", "dispatcher", "dispatcher.bulk", "reports")]

    async def no_lag():
        lags = {g: await group_lag(env, g) for g in groups}
        return all(v == 0 for v in lags.values()) or None

    await wait_for(no_lag, timeout_s=60, interval_s=1)


async def run_scenario(stack: Stack, pool, env, name: str, fault: Callable[[], Awaitable[None]]) -> list[str]:
    tenant = await make_tenant(pool)
    run = f"{name}-{random.randrange(10**6)}"
    progress = [0]
    sender = asyncio.create_task(send_resilient(stack, tenant, run, MESSAGES, progress))
    await wait_for(lambda: asyncio.sleep(0, result=progress[0] >= MESSAGES // 4 or sender.done()), timeout_s=120)
    await fault()
    ids = await sender
    assert len(ids) == MESSAGES
    await check_outcome(stack, pool, env, ids)
    return ids


async def test_kill_each_service_in_turn(stack: Stack, pool, env) -> None:
    async def kill_each() -> None:
        for name in SERVICES:
            await asyncio.to_thread(stack.restart, stack.find(name), hard=True)
            await asyncio.sleep(1)

    await run_scenario(stack, pool, env, "kill", kill_each)


async def test_kafka_broker_restart(stack: Stack, pool, env) -> None:
    async def restart_kafka() -> None:
        await asyncio.to_thread(infra, "stop", "kafka")
        await asyncio.sleep(3)
        await asyncio.to_thread(infra, "start")

    await run_scenario(stack, pool, env, "kafka", restart_kafka)


async def test_postgres_down_for_30_seconds(stack: Stack, pool, env) -> None:
    async def stop_postgres() -> None:
        await asyncio.to_thread(infra, "stop", "postgres")
        await asyncio.sleep(30)
        await asyncio.to_thread(infra, "start")
        await pool.expire_connections()

    await run_scenario(stack, pool, env, "postgres", stop_postgres)


async def test_gateway_refuses_connections_for_60_seconds(stack: Stack, pool, env) -> None:
    control = f"http://127.0.0.1:{stack.ports.simulator_control}/control"

    async def refuse() -> None:
        # Refusing closes every open connection first: allow it time on a loaded machine.
        httpx.post(control, json={"mode": "refuse"}, timeout=60).raise_for_status()
        await asyncio.sleep(60)
        httpx.post(control, json={"mode": "normal"}, timeout=60).raise_for_status()

    await run_scenario(stack, pool, env, "gateway", refuse)


@pytest.mark.timeout(int(OUTAGE_S) + 900)
async def test_every_gateway_down_longer_than_the_retry_budget(stack: Stack, pool, env) -> None:
    """Refused for longer than the retry budget, messages are parked, not failed; once the
    gateway listens again each is sent exactly once. HERALD_FAULT_OUTAGE_S sets the outage."""
    assert OUTAGE_S > RETRY_BUDGET_S + 30, "the outage must clearly outlast the retry budget"
    control = f"http://127.0.0.1:{stack.ports.simulator_control}/control"

    async def refuse() -> None:
        httpx.post(control, json={"mode": "refuse"}, timeout=60).raise_for_status()
        await asyncio.sleep(OUTAGE_S)
        httpx.post(control, json={"mode": "normal"}, timeout=60).raise_for_status()

    ids = await run_scenario(stack, pool, env, "outage", refuse)
    gave_up = await pool.fetch(
        "SELECT reason_code, count(*) AS n FROM messages WHERE message_id = ANY($1::uuid[])"
        " AND (gateway_message_id IS NULL OR reason_code = ANY($2::text[])) GROUP BY reason_code",
        ids, ["retries_exhausted", "gateway_unavailable_max_age"],
    )
    assert not gave_up, f"messages were not sent after the gateway came back: {[dict(r) for r in gave_up]}"
    refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]
    assert all(refs.get(i) == 1 for i in ids), "the gateway did not get every message exactly once"
    parked = await pool.fetchval(
        "SELECT count(*) FROM dispatch_claims WHERE message_id = ANY($1::uuid[]) AND parked_at IS NOT NULL", ids
    )
    assert parked > 0, "no message waited past the retry budget: the outage did not test parking"
