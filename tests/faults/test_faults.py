"""Fault tests: 20,000 messages while a process, the broker, the database or the gateway fails
(a few thousand for the dispatcher's claim scenarios at the end).

After each fault: every accepted message ends in exactly one final state, the simulator got
each message id at most once (exactly once when Herald recorded a submission), no consumer
group is left behind (lag back to zero). Bounded: each scenario gives up after a few minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from shared.devtools.demo import demo_numbers, marketing_countries
from shared.devtools.stack import SERVICES, Stack, free_port, infra
from shared.statuses import FINAL
from tests.conftest import Tenant, make_tenant
from tests.helpers import new_stack, running, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
MESSAGES = 20_000
CLAIM_MESSAGES = 3_000  # the dispatcher's claim scenarios: enough for batches in flight, short for CI
#: The stack's retry budget: a batch refused for longer than this was given up on before parking.
RETRY_BUDGET_S = 100
#: How long every gateway is down in the long-outage scenario (run it once by hand with 600).
OUTAGE_S = float(os.environ.get("HERALD_FAULT_OUTAGE_S", "180"))
FINAL_NAMES = [s.value for s in FINAL]


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("fault-logs"), gateway_rate=4000,
                           HERALD_CLAIM_LEASE_S="6", HERALD_RECONCILE_INTERVAL_S="1",
                           HERALD_RETRY_BUDGET_S=str(RETRY_BUDGET_S), HERALD_RETRY_MAX_ATTEMPTS="60",
                           HERALD_RETRY_CAP_S="3", HERALD_SIM_RECEIPT_DELAY_MAX_MS="300")) as s:
        yield s


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


def client_refs(control_port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{control_port}/stats/client_refs", timeout=30).json()["client_refs"]


async def check_outcome(stack: Stack, pool, env, ids: list[str], more_gateways: tuple[int, ...] = ()) -> None:
    """``more_gateways``: control ports of other simulators the dispatcher submits to; a message
    id counts once over all of them."""
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
    refs = client_refs(stack.ports.simulator_control)
    for port in more_gateways:
        for ref, n in client_refs(port).items():
            refs[ref] = refs.get(ref, 0) + n
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


async def run_scenario(stack: Stack, pool, env, name: str, fault: Callable[[], Awaitable[None]],
                       count: int = MESSAGES, more_gateways: tuple[int, ...] = ()) -> list[str]:
    tenant = await make_tenant(pool)
    run = f"{name}-{random.randrange(10**6)}"
    progress = [0]
    sender = asyncio.create_task(send_resilient(stack, tenant, run, count, progress))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=progress[0] >= count // 4 or sender.done()), timeout_s=120)
        await fault()
        ids = await sender
    finally:  # a scenario that failed leaves no sender behind to load the next one
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    assert len(ids) == count
    await check_outcome(stack, pool, env, ids, more_gateways)
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


async def test_provider_answers_504_after_accepting(stack: Stack, pool, env) -> None:
    """For 8 seconds the provider takes every batch but the answer is a 504 (a proxy that timed
    out): those messages are looked up (GET /v1/sms?client_ref=) and found, none sent again."""
    control = f"http://127.0.0.1:{stack.ports.simulator_control}/control"
    stats = f"http://127.0.0.1:{stack.ports.simulator_control}/stats"

    async def answer_504() -> None:
        httpx.post(control, json={"mode": "fail_after_accept", "status": 504}, timeout=60).raise_for_status()
        await asyncio.sleep(8)
        httpx.post(control, json={"mode": "normal"}, timeout=60).raise_for_status()

    ids = await run_scenario(stack, pool, env, "timeout504", answer_504, count=3000)
    assert httpx.get(stats, timeout=30).json()["rejected"].get("gateway_timeout", 0) > 0, "no batch was answered 504"
    looked_up = await pool.fetchval(
        "SELECT count(DISTINCT message_id) FROM message_events WHERE message_id = ANY($1::uuid[])"
        " AND status = 'submitted' AND detail->>'route' IS NULL", ids,
    )
    assert looked_up > 0, "no message went through the lookup"
    assert await pool.fetchval(
        "SELECT count(*) FROM messages WHERE message_id = ANY($1::uuid[]) AND status IN ('failed', 'unknown')"
        " AND reason_code IN ('retries_exhausted', 'submit_outcome_unknown')", ids,
    ) == 0


# --- The dispatcher's claims: stranded claims and reconciliation ------------------------------


def sim_control(port: int, body: dict) -> None:
    httpx.post(f"http://127.0.0.1:{port}/control", json=body, timeout=60).raise_for_status()


async def submissions_in_flight(stack: Stack) -> None:
    """Wait until the dispatcher is submitting (the simulator's count moves)."""
    url = f"http://127.0.0.1:{stack.ports.simulator_control}/stats"
    start = httpx.get(url, timeout=30).json()["submissions"]
    await wait_for(lambda: asyncio.sleep(0, result=httpx.get(url, timeout=30).json()["submissions"] > start),
                   timeout_s=60, interval_s=0.2)


async def test_dispatcher_restarted_under_the_same_instance_id_mid_batch(stack: Stack, pool, env) -> None:
    """kill -9 while batches are being submitted, restart under the same HERALD_INSTANCE_ID (as
    a container's `<host>-1` or a pod name): the new process must not keep the old claims alive
    nor skip them, and nothing is submitted twice."""
    control = stack.ports.simulator_control
    same = {"HERALD_INSTANCE_ID": "dispatcher-0", "HERALD_CLAIM_LEASE_S": "20"}

    async def restart_same_name() -> None:
        await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=True, extra_env=same)
        sim_control(control, {"mode": "slow", "delay_ms": 800})  # every batch is in flight for a while
        try:
            await submissions_in_flight(stack)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=True, extra_env=same)
        finally:
            sim_control(control, {"mode": "normal"})

    try:
        await run_scenario(stack, pool, env, "same-id", restart_same_name, CLAIM_MESSAGES)
    finally:
        await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=False)


async def test_postgres_stopped_while_submissions_are_in_flight(stack: Stack, pool, env) -> None:
    """The database goes away after batches were claimed, while their submissions are in flight,
    for less than a lease (a blip): the batches fail after claiming and the consumer retries them
    in the same, living process; no message may be left claimed for ever."""
    control = stack.ports.simulator_control
    blip = {"HERALD_CLAIM_LEASE_S": "30"}  # the outage is shorter than a lease

    async def stop_postgres_mid_send() -> None:
        sim_control(control, {"mode": "slow", "delay_ms": 1500})
        try:
            await submissions_in_flight(stack)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(infra, "stop", "postgres")
            await asyncio.sleep(4)
        finally:
            sim_control(control, {"mode": "normal"})
            await asyncio.to_thread(infra, "start")
            await pool.expire_connections()

    await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=False, extra_env=blip)
    try:
        await run_scenario(stack, pool, env, "pg-mid-send", stop_postgres_mid_send, CLAIM_MESSAGES)
    finally:
        await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=False)


async def test_gateway_timing_out_until_its_breaker_opens_then_reconciliation(stack: Stack, pool, env) -> None:
    """The route has two gateways. Gateway a (the stack's simulator) answers too late (the client
    times out after sending: outcome unknown) until its breaker opens and traffic moves to b. The
    reconciler must ask a, which has those messages, not resend them to b."""
    a_control = stack.ports.simulator_control
    b_port, b_control = free_port(), free_port()
    b = stack.start("simulator", port=b_port, extra_env={
        "HERALD_SIM_PORT": str(b_port), "HERALD_SIM_CONTROL_PORT": str(b_control),
        "HERALD_SIM_RECEIPT_URL": f"http://127.0.0.1:{stack.ports.ingest}/v1/receipts/sim-b"})
    gateways = [
        {"name": "sim", "kind": "herald-http", "url": f"http://127.0.0.1:{stack.ports.simulator}",
         "api_token": "sim-token", "rate_per_s": stack.gateway_rate, "timeout_s": 1},
        {"name": "sim-b", "kind": "herald-http", "url": f"http://127.0.0.1:{b_port}", "api_token": "sim-token",
         "rate_per_s": stack.gateway_rate},
    ]
    two = {"HERALD_GATEWAYS": json.dumps(gateways), "HERALD_ROUTES": json.dumps([{"name": "all", "gateways": ["sim", "sim-b"]}]),
           "HERALD_FAILOVER_MIN_SAMPLES": "5", "HERALD_FAILOVER_COOLDOWN_S": "60"}
    # Both simulators sign with the stack's secret, each receipt bound to its own gateway name.
    secrets = {"HERALD_RECEIPT_SECRETS": json.dumps({"sim": stack.receipt_secret, "sim-b": stack.receipt_secret})}

    async def a_times_out() -> None:
        sim_control(a_control, {"mode": "slow", "delay_ms": 3000})
        try:
            async def a_is_open():
                r = httpx.get(f"{stack.ops_url('dispatcher')}/metrics", timeout=30).text
                return 'herald_dispatcher_gateway_open{gateway="sim"} 1.0' in r or None

            await wait_for(a_is_open, timeout_s=120, interval_s=0.5)
            await asyncio.sleep(5)
        finally:
            sim_control(a_control, {"mode": "normal"})

    try:
        await asyncio.to_thread(stack.wait_ready, 30, [b])
        await asyncio.to_thread(stack.restart, stack.find("ingest"), hard=False, extra_env=secrets)
        await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=False, extra_env=two)
        await run_scenario(stack, pool, env, "a-times-out", a_times_out, CLAIM_MESSAGES, more_gateways=(b_control,))
    finally:
        await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=False)
        await asyncio.to_thread(stack.restart, stack.find("ingest"), hard=False)
        stack.stop_process(b)
        stack.processes.remove(b)
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
