"""What every fault scenario does: send in batches while a fault happens, then check that every
accepted message ended in exactly one final state, that the simulator got each message id at
most once (exactly once when Herald recorded a submission) and that no consumer group is
left behind (lag back to zero)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from shared.statuses import FINAL
from tests.conftest import Tenant, make_tenant
from tests.helpers import group_lag, wait_for

MESSAGES = 20_000
FINAL_NAMES = [s.value for s in FINAL]


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


