"""Sender pools and per-sender throughput through the real services (docs/senders.md): a
recipient keeps its pool sender across a hard dispatcher restart, a suspended sticky sender falls
back with the reason in GET /v1/messages/{id}'s timeline, and one sender's contracted rate holds
within 10 % with two dispatcher instances sharing its bucket (priority and campaign lanes both).
Transactional messages to Spanish numbers from Spanish numbers: no quiet hours, any day."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from herald_tools import admin
from herald_tools.stack import Stack
from shared.senders import Pool, PoolChoice, Sender, SenderBook, choose_from_pool, load_rules
from tests.conftest import make_tenant, register_senders
from tests.helpers import new_stack, running, wait_for

pytestmark = pytest.mark.e2e

RATE = 20.0  # the rate-limited sender's contracted segments per second
MESSAGES = 200  # about 10 s at that rate


@pytest.fixture(scope="module")
def pools_stack(env, tmp_path_factory) -> Iterator[Stack]:
    # a small share of the transactional lanes, so a 200-message batch travels both lanes
    stack = new_stack(env, tmp_path_factory.mktemp("pools-logs"), HERALD_PRIORITY_SHARE_PER_S="1",
                      HERALD_PRIORITY_SHARE_BURST="100")
    with running(stack):
        yield stack


def madrid() -> str:
    return f"+3491{random.randrange(10**6, 10**7)}"


def handset() -> str:
    return f"+346{random.randrange(10**7, 10**8)}"


async def submissions(stack: Stack, message_ids: list[str], timeout_s: float = 120) -> dict[str, dict]:
    """What the simulator received for each message (sender as ``from``, ``submitted_at``)."""
    control = f"http://127.0.0.1:{stack.ports.simulator_control}"
    found: dict[str, dict] = {}
    async with httpx.AsyncClient(base_url=control, timeout=30) as c:
        async def one(mid: str) -> None:
            r = await c.get("/stats/submissions", params={"client_ref": mid})
            if r.status_code == 200 and r.json()["messages"]:
                found[mid] = r.json()["messages"][0]

        async def all_seen() -> bool:
            missing = [m for m in message_ids if m not in found]
            for start in range(0, len(missing), 50):
                await asyncio.gather(*(one(m) for m in missing[start:start + 50]))
            return len(found) == len(message_ids)

        await wait_for(all_seen, timeout_s=timeout_s, interval_s=1)
    return found


def recipients_for(pool: Pool, senders: list[str], wanted: str, n: int) -> list[str]:
    """Handsets a fresh pool assigns ``wanted`` (the choice is stable: the same pure function)."""
    book = SenderBook({s: Sender(s, "long_code", countries=frozenset({"ES"})) for s in senders}, {pool.name: pool})
    out: list[str] = []
    while len(out) < n:
        number = handset()
        choice = choose_from_pool(book, pool.name, number, "ES", load_rules())
        if isinstance(choice, PoolChoice) and choice.sender == wanted:
            out.append(number)
    return out


async def test_sticky_across_a_dispatcher_restart_fallback_in_the_timeline_and_rate_with_two_dispatchers(
    pools_stack: Stack, pool, env
) -> None:
    stack = pools_stack
    tenant = await make_tenant(pool)
    a, b = madrid(), madrid()
    await register_senders(pool, tenant.tenant_id, a, b, countries=["ES"])
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as api:
        r = await api.put("/v1/sender-pools/otp", json={"senders": [a, b]})
        assert r.status_code == 200, r.text
        people = recipients_for(Pool("otp", (a, b)), [a, b], a, 2) + recipients_for(Pool("otp", (a, b)), [a, b], b, 2)

        async def send_all(tag: str) -> list[str]:
            r = await api.post("/v1/messages/batch", json={"messages": [
                {"to": p, "body": f"Your code is {tag}", "sender_pool": "otp"} for p in people]})
            assert r.status_code == 202, r.text
            return [x["message_id"] for x in r.json()["results"]]

        first = await send_all("1111")
        seen = await submissions(stack, first)
        senders = [seen[m]["from"] for m in first]
        assert senders == [a, a, b, b]

        # kill -9 the dispatcher: the same recipients keep their senders
        await asyncio.to_thread(stack.restart, stack.find("dispatcher"), hard=True)
        second = await send_all("2222")
        seen = await submissions(stack, second)
        assert [seen[m]["from"] for m in second] == senders

        # b suspended: its recipients fall back to a, and the timeline says so
        async with pool.acquire() as conn:
            await admin.sender_set_state(conn, "e2e", tenant.tenant_id, b, "suspended", "complaints")
        third = await send_all("3333")
        seen = await submissions(stack, third)
        assert [seen[m]["from"] for m in third] == [a, a, a, a]

    async with httpx.AsyncClient(base_url=stack.url("reports"), headers=tenant.headers, timeout=30) as reports:
        async def timeline() -> list[dict] | None:
            r = await reports.get(f"/v1/messages/{third[2]}")
            return r.json()["timeline"] if r.status_code == 200 and r.json()["status"] != "accepted" else None

        entries = await wait_for(timeline, timeout_s=60)
        (accepted,) = [e for e in entries if e["status"] == "accepted"]
        assert {k: accepted["detail"][k] for k in ("sender_pool", "sender", "sender_choice", "fallback_from",
                                                    "fallback_reason")} == {
            "sender_pool": "otp", "sender": a, "sender_choice": "fallback", "fallback_from": b,
            "fallback_reason": "sender_not_verified"}
        r = await reports.get(f"/v1/messages/{third[0]}")
        (accepted,) = [e for e in r.json()["timeline"] if e["status"] == "accepted"]
        assert accepted["detail"]["sender_choice"] == "sticky"

    # throughput: a contracted 20 segments/s on a, a second dispatcher sharing its bucket
    async with pool.acquire() as conn:
        await admin.sender_update(conn, "e2e", tenant.tenant_id, a, rate_per_s=RATE, burst=2.0)
    second_dispatcher = stack.start("dispatcher")
    await asyncio.to_thread(stack.wait_ready, 90, [second_dispatcher])
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as api:
        r = await api.post("/v1/messages/batch", json={"messages": [
            {"to": handset(), "body": "Your code is 4444", "sender": a} for _ in range(MESSAGES)]})
        assert r.status_code == 202, r.text
        ids = [x["message_id"] for x in r.json()["results"]]
    seen = await submissions(stack, ids, timeout_s=180)
    times = sorted(datetime.fromisoformat(s["submitted_at"].replace("Z", "+00:00")).timestamp() for s in seen.values())
    # the steady rate: from the 20th to the 180th submission (the first burst and the tail left out)
    lo, hi = 20, MESSAGES - 20
    rate = (hi - lo) / (times[hi] - times[lo])
    print(f"one sender at {RATE}/s, two dispatchers: {rate:.2f}/s steady, {MESSAGES} in {times[-1] - times[0]:.1f}s")
    assert RATE * 0.9 <= rate <= RATE * 1.1, f"{rate:.2f}/s over {times[-1] - times[0]:.1f}s"
    # both instances sent (the recipients' partitions are shared between them), on both lanes
    owners = await pool.fetch("SELECT DISTINCT owner FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    assert len(owners) == 2, owners
    lanes = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE outbound->>'bulk_lane' = 'true') AS bulk,"
        " count(*) FILTER (WHERE outbound->>'bulk_lane' IS NULL) AS priority"
        " FROM dispatch_claims WHERE message_id = ANY($1::uuid[])", ids)
    assert lanes["bulk"] > 0 and lanes["priority"] > 0, dict(lanes)
    # the waits are visible per sender kind, and no number is in a label
    waits = 0.0
    for process in (stack.find("dispatcher", 1), stack.find("dispatcher", 2)):
        text = httpx.get(f"http://127.0.0.1:{process.ops_port}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("herald_dispatcher_sender_throttle_wait_seconds_sum"):
                assert 'kind="long_code"' in line and not re.search(r"\d{6,}", line.split("}")[0]), line
                waits += float(line.rsplit(" ", 1)[1])
    assert waits > 5, waits
