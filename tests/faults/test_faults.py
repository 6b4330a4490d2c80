"""Fault tests: 20,000 messages while a process, the broker, the database or the gateway fails
(a few thousand for the dispatcher's claim scenarios at the end); the checks after each fault
are in tests/faults/scenario.py, the outage longer than the retry budget in
test_long_outage.py. Bounded: each scenario gives up after a few minutes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from herald_tools.stack import SERVICES, Stack, free_port, infra
from tests.faults.scenario import run_scenario
from tests.helpers import new_stack, running, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
CLAIM_MESSAGES = 3_000  # the dispatcher's claim scenarios: enough for batches in flight, short for CI
#: The stack's retry budget: longer than every outage here (the longer one is test_long_outage.py's).
RETRY_BUDGET_S = 100


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("fault-logs"), gateway_rate=4000,
                           HERALD_CLAIM_LEASE_S="6", HERALD_RECONCILE_INTERVAL_S="1",
                           HERALD_RETRY_BUDGET_S=str(RETRY_BUDGET_S), HERALD_RETRY_MAX_ATTEMPTS="60",
                           HERALD_RETRY_CAP_S="3", HERALD_SIM_RECEIPT_DELAY_MAX_MS="300")) as s:
        yield s


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
