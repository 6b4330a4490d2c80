"""Gateways end to end: shared throttle accuracy with two dispatchers, an OTP overtaking a
draining campaign, failover to a second gateway and back, expiry of a stale OTP."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import SERVICES, Ports, Stack, free_port
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, send_batches

pytestmark = pytest.mark.e2e
RATE = 150  # segments per second on gateway "a"


@pytest.fixture(scope="module")
def two_gateways(env, tmp_path_factory) -> Iterator[tuple[Stack, int]]:
    ports = Ports.random()
    b_port, b_control = free_port(), free_port()
    secret = secrets.token_urlsafe(24)  # both simulators sign with it; receipts are bound to their gateway
    gateways = [
        {"name": "a", "kind": "herald-http", "url": f"http://127.0.0.1:{ports.simulator}", "api_token": "sim-token",
         "rate_per_s": RATE, "batch_size": 20},
        {"name": "b", "kind": "herald-http", "url": f"http://127.0.0.1:{b_port}", "api_token": "sim-token",
         "rate_per_s": 1000, "batch_size": 20},
    ]
    stack = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways),
             "HERALD_SIM_RECEIPT_SECRET": secret,
             "HERALD_RECEIPT_SECRETS": json.dumps({"a": secret, "b": secret}),
             "HERALD_FAILOVER_COOLDOWN_S": "2", "HERALD_FAILOVER_MIN_SAMPLES": "5",
             "HERALD_RETRY_BASE_S": "0.2", "HERALD_RETRY_CAP_S": "0.5",
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200"},
        ports=ports,
        log_dir=Path(tmp_path_factory.mktemp("gw-logs")),
    )
    stack.start("simulator", extra_env={"HERALD_SIM_RECEIPT_URL": f"http://127.0.0.1:{ports.ingest}/v1/receipts/a"})
    stack.start("simulator", port=b_port, extra_env={
        "HERALD_SIM_PORT": str(b_port), "HERALD_SIM_CONTROL_PORT": str(b_control),
        "HERALD_SIM_RECEIPT_URL": f"http://127.0.0.1:{ports.ingest}/v1/receipts/b"})
    for name in SERVICES:
        stack.start(name)
    stack.start("dispatcher")  # a second instance: the throttle must hold across both
    try:
        stack.wait_ready(90)
        yield stack, b_control
    finally:
        stack.stop()


def control(port: int, body: dict) -> None:
    httpx.post(f"http://127.0.0.1:{port}/control", json=body).raise_for_status()


def timeline(port: int) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{port}/stats/timeline").json()["seconds"]


async def measure_throttle(stack: Stack, pool, seed: int) -> None:
    a_control = stack.ports.simulator_control
    httpx.post(f"http://127.0.0.1:{a_control}/stats/reset").raise_for_status()
    tenant = await make_tenant(pool)
    body = "Two segments, reply STOP to opt out: " + "x" * 157  # 194 GSM-7 characters (with its opt-out: none appended)
    ids = await send_batches(stack, tenant, [{"to": n, "body": body, "type": "marketing"} for n in demo_numbers(1000, seed=seed, countries=marketing_countries(True))])
    await all_final(pool, ids, timeout_s=120)
    refs = httpx.get(f"http://127.0.0.1:{a_control}/stats/client_refs", timeout=30).json()["client_refs"]
    ours = {i: refs.get(i, 0) for i in ids}
    assert {i: n for i, n in ours.items() if n != 1} == {}, "each message submitted once"
    seconds = timeline(a_control)
    segments = sum(s["segments"] for s in seconds)
    assert segments == 2000, f"{len(refs) - len(ours)} other messages reached the gateway"
    # Steady state: leave out the first second (the bucket starts full) and the last (partial).
    steady = seconds[1:-1]
    span = steady[-1]["second"] - steady[0]["second"] + 1
    assert span >= 10, f"measured over {span}s only"
    rate = sum(s["segments"] for s in steady) / span
    assert abs(rate - RATE) / RATE <= 0.10, f"{rate:.1f} segments/s against a limit of {RATE}"


async def test_throttle_holds_across_two_dispatchers(two_gateways, pool) -> None:
    await measure_throttle(two_gateways[0], pool, seed=5)


async def test_throttle_holds_with_one_dispatcher(two_gateways, pool) -> None:
    stack, _ = two_gateways
    second = stack.find("dispatcher", 2)
    assert await asyncio.to_thread(stack.stop_process, second, 30) == 0
    stack.processes.remove(second)
    await measure_throttle(stack, pool, seed=6)


async def test_otp_overtakes_a_draining_campaign(two_gateways, pool) -> None:
    stack, _ = two_gateways
    tenant = await make_tenant(pool)
    campaign = await send_batches(
        stack, tenant, [{"to": n, "body": "Sale!", "type": "marketing"} for n in demo_numbers(1200, seed=11, countries=marketing_countries(True))]
    )
    await asyncio.sleep(1.5)  # the campaign is draining at 150/s: about 8 s to go
    latencies = []
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers) as client, \
            httpx.AsyncClient(base_url=stack.url("simulator"), headers={"Authorization": "Bearer sim-token"}) as sim:
        for i in range(5):
            started = time.time()
            r = await client.post("/v1/messages", json={"to": f"+3469900{i:04d}", "body": f"Code {i}", "validity_s": 300})
            mid = r.json()["message_id"]
            while True:
                found = (await sim.get("/v1/sms", params={"client_ref": mid})).json()["messages"]
                if found:
                    latencies.append(time.time() - started)
                    break
                assert time.time() - started < 10, "OTP not submitted within 10 s"
                await asyncio.sleep(0.02)
    remaining = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE message_id = ANY($1::uuid[]) AND submitted_at IS NULL", campaign
    )
    assert remaining > 100, "the campaign should still be draining while the OTPs went out"
    assert max(latencies) < 1.5, latencies
    await all_final(pool, campaign, timeout_s=120)


async def test_failover_to_the_second_gateway_and_back(two_gateways, pool) -> None:
    stack, b_control = two_gateways
    a_control = stack.ports.simulator_control
    tenant = await make_tenant(pool)
    control(a_control, {"mode": "refuse"})
    try:
        first = await send_batches(stack, tenant, [{"to": f"+3463100{i:04d}", "body": "failover"} for i in range(40)])
        await all_final(pool, first, timeout_s=60)
    finally:
        control(a_control, {"mode": "normal"})
    rows = await pool.fetch("SELECT gateway FROM messages WHERE message_id = ANY($1::uuid[])", first)
    assert {r["gateway"] for r in rows} == {"b"}
    details = await pool.fetch(
        "SELECT detail FROM message_events WHERE message_id = ANY($1::uuid[]) AND status = 'submitted'", first
    )
    assert any(d["detail"].get("failover_from") == "a" for d in details)
    assert all(d["detail"].get("route") == "default" for d in details)
    await asyncio.sleep(2.5)  # the cooldown passes; a is tried again and takes the traffic back
    second = await send_batches(stack, tenant, [{"to": f"+3463200{i:04d}", "body": "back"} for i in range(40)])
    await all_final(pool, second, timeout_s=60)
    rows = await pool.fetch("SELECT gateway FROM messages WHERE message_id = ANY($1::uuid[])", second)
    assert {r["gateway"] for r in rows} == {"a"}


async def test_stale_otp_expires_instead_of_arriving_late(two_gateways, pool) -> None:
    stack, b_control = two_gateways
    a_control = stack.ports.simulator_control
    tenant = await make_tenant(pool)
    for port in (a_control, b_control):
        control(port, {"mode": "fail", "status": 503})
    try:
        ids = await send_batches(stack, tenant, [{"to": "+34699000999", "body": "Code 1234", "validity_s": 2}])
        statuses = await all_final(pool, ids, timeout_s=30)
    finally:
        for port in (a_control, b_control):
            control(port, {"mode": "normal"})
    assert statuses[ids[0]] == "expired"
    row = await pool.fetchrow("SELECT reason_code FROM messages WHERE message_id = $1::uuid", ids[0])
    assert row["reason_code"] == "validity_expired"
