"""Fault test over SMPP: the dispatcher is killed with -9 twice while messages flow to the
simulator's SMSC, which answers and sends receipts in milliseconds. The SMSC answers query_sm
for Herald's message id (``query_sm: true``), so the claims the dead dispatcher left are
resolved by asking it: every message ends in exactly one final status, none is ``unknown`` or
``failed`` for want of an answer, and the SMSC got each message at most once."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald_tools.stack import Ports, Stack, free_port
from tests.conftest import make_tenant
from tests.faults.scenario import check_outcome, send_resilient
from tests.helpers import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]
MESSAGES = 3000


@pytest.fixture(scope="module")
def smpp_stack(env, tmp_path_factory) -> Iterator[Stack]:
    smpp_port = free_port()
    gateways = [
        {"name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "herald",
         "password": "sim-pass", "binds": 2, "window": 50, "rate_per_s": 3000, "send_message_id_tlv": True,
         "query_sm": True, "reconnect_min_s": 0.2, "reconnect_max_s": 2, "timeout_s": 5}
    ]
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_SIM_SMPP_PORT": str(smpp_port),
             "HERALD_CLAIM_LEASE_S": "6", "HERALD_RECONCILE_INTERVAL_S": "1",
             "HERALD_SIM_RECEIPT_DELAY_MIN_MS": "1", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "20",
             "HERALD_SIM_SMPP_REDELIVER_MS": "500"},
        ports=Ports.random(),
        log_dir=Path(tmp_path_factory.mktemp("smpp-fault-logs")),
    )
    s.start_all()
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()


async def test_dispatcher_killed_twice_while_sending_over_smpp(smpp_stack: Stack, pool, env) -> None:
    tenant = await make_tenant(pool)
    run = f"smpp-kill-{random.randrange(10**6)}"
    progress = [0]
    sender = asyncio.create_task(send_resilient(smpp_stack, tenant, run, MESSAGES, progress))
    control = f"http://127.0.0.1:{smpp_stack.ports.simulator_control}/control"
    # The SMSC answers each submit_sm 300 ms late (it takes the message at once): every kill
    # then finds submissions in flight, whose claims only query_sm can settle.
    httpx.post(control, json={"mode": "slow", "delay_ms": 300}, timeout=30).raise_for_status()
    try:
        for share in (4, 2):
            await wait_for(lambda s=share: asyncio.sleep(0, result=progress[0] >= MESSAGES // s or sender.done()),
                           timeout_s=120)

            async def claims_in_flight():  # kill it while it holds claims, not between two batches
                return await pool.fetchval("SELECT count(*) FROM dispatch_claims WHERE state = 'claimed'") or None

            await wait_for(claims_in_flight, timeout_s=30, interval_s=0.01)
            await asyncio.to_thread(smpp_stack.restart, smpp_stack.find("dispatcher"), hard=True)
            await asyncio.sleep(1)
    finally:
        httpx.post(control, json={"mode": "normal"}, timeout=30).raise_for_status()
    ids = await sender
    assert len(ids) == MESSAGES
    await check_outcome(smpp_stack, pool, env, ids)
    not_told = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE message_id = ANY($1::uuid[]) AND reason_code = 'submit_outcome_unknown'", ids)
    assert not_told == 0, f"{not_told} messages ended without Herald learning their outcome"
    stats = httpx.get(f"http://127.0.0.1:{smpp_stack.ports.simulator_control}/stats", timeout=30).json()["smpp"]
    assert stats["query_sm"] > 0, "no claim was left to resolve: the kills came too late"
