"""Every gateway refusing for longer than the retry budget: messages are parked, not failed, and
once the gateway listens again each is sent exactly once. A stack of its own with a short retry
budget (20 s) and quick parking resends, so the outage (60 s; HERALD_FAULT_OUTAGE_S, e.g. 600
for ten minutes) clearly outlasts the budget without costing CI minutes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest

from herald_tools.stack import Stack
from tests.faults.scenario import run_scenario
from tests.helpers import new_stack, running

pytestmark = [pytest.mark.faults]
#: The stack's retry budget: a batch refused for longer than this is parked.
RETRY_BUDGET_S = 20
#: How long every gateway is down.
OUTAGE_S = float(os.environ.get("HERALD_FAULT_OUTAGE_S", "60"))


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("outage-logs"), gateway_rate=4000,
                           HERALD_CLAIM_LEASE_S="6", HERALD_RECONCILE_INTERVAL_S="1",
                           HERALD_RETRY_BUDGET_S=str(RETRY_BUDGET_S), HERALD_RETRY_MAX_ATTEMPTS="60",
                           HERALD_RETRY_CAP_S="3", HERALD_SIM_RECEIPT_DELAY_MAX_MS="300",
                           HERALD_PARKING_INTERVAL_S="1", HERALD_PARKING_RETRY_BASE_S="3",
                           HERALD_PARKING_RETRY_CAP_S="6")) as s:
        yield s


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
