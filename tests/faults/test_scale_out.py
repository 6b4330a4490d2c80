"""Two instances of every consumer service; one of each is stopped mid-run (SIGTERM for
some, kill -9 for others). Every accepted message still ends in exactly one final state,
nothing is submitted twice, and the survivors take over every partition."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.stack import Ports, Stack
from tests.conftest import make_tenant
from tests.faults.scenario import MESSAGES, check_outcome, send_resilient
from tests.helpers import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]
CONSUMERS = ("scheduler", "dispatcher", "reports")


@pytest.fixture(scope="module")
def doubled(env, tmp_path_factory) -> Iterator[Stack]:
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_CLAIM_LEASE_S": "6", "HERALD_RECONCILE_INTERVAL_S": "1",
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "300", "HERALD_CONSUMER_SESSION_TIMEOUT_MS": "6000"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("scale-logs")),
        gateway_rate=4000,
    )
    s.start_all()
    for name in CONSUMERS:
        s.start(name)
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()


def assigned(ops_port: int | None) -> dict[str, int]:
    text = httpx.get(f"http://127.0.0.1:{ops_port}/metrics").text
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(r'herald_consumer_assigned_partitions\{[^}]*topic="([^"]+)"[^}]*\} (\S+)', text)}


async def test_stop_one_instance_of_each_mid_run(doubled: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    progress = [0]
    sender = asyncio.create_task(send_resilient(doubled, tenant, f"scale-{random.randrange(10**6)}", MESSAGES, progress))
    await wait_for(lambda: asyncio.sleep(0, result=progress[0] >= MESSAGES // 4), timeout_s=120)
    # Both instances share the work before the stop.
    for name in CONSUMERS:
        a, b = doubled.find(name, 1), doubled.find(name, 2)
        assert sum(assigned(a.ops_port).values()) > 0 and sum(assigned(b.ops_port).values()) > 0, name
    graceful = {"scheduler": True, "dispatcher": False, "reports": True}  # SIGTERM, kill -9, SIGTERM
    codes = {}
    for name in CONSUMERS:
        victim = doubled.find(name, 2)
        if graceful[name]:
            codes[name] = await asyncio.to_thread(doubled.stop_process, victim, 30)
        else:
            await asyncio.to_thread(doubled.kill_process, victim)
        doubled.processes.remove(victim)
    assert codes == {"scheduler": 0, "reports": 0}, "a SIGTERM'd service must finish its batch and exit 0"
    ids = await sender
    await check_outcome(doubled, pool, env, ids)
    partitions = {"scheduler": {"messages.accepted.v1": 6, "messages.accepted.bulk.v1": 6},
                  "dispatcher": {"messages.outbound.priority.v1": 6, "messages.outbound.bulk.v1": 6},
                  "reports": {"messages.accepted.v1": 6, "messages.accepted.bulk.v1": 6, "messages.status.v1": 6,
                              "receipts.v1": 6}}
    for name in CONSUMERS:
        survivor = doubled.find(name, 1)

        async def took_over(port=survivor.ops_port, want=partitions[name]):
            got = assigned(port)
            return {t: got.get(t) for t in want} == want or None

        await wait_for(took_over, timeout_s=30)
