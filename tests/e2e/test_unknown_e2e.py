"""Status ``unknown`` through all services: a provider without a lookup (a ``webhook`` gateway
without ``lookup_url``) takes the messages but answers 504. Herald does not resend them and,
unable to ask, ends them ``unknown`` (not ``failed``): in GET /v1/messages/{id}, the status
webhooks and reports' metrics. A receipt that comes for such a message (it carries Herald's id)
still moves it on to its final status."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from herald_tools.stack import Ports, Stack
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import scrape, send_batches
from tests.helpers import http_receiver, running, wait_for, webhook_hit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory) -> Iterator[Stack]:
    ports = Ports.random()
    base = f"http://127.0.0.1:{ports.simulator}"
    gateways = [{
        "name": "sim", "kind": "webhook", "url": f"{base}/v1/sms", "bearer_token": "sim-token",
        "template": {"reference": "client_ref"}, "id_path": "id", "rate_per_s": 2000,
    }]
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_CONSUMER_POLL_MS": "100",
             "HERALD_GATEWAYS": json.dumps(gateways), "HERALD_RECONCILE_INTERVAL_S": "1",
             "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200"},
        ports=ports,
        log_dir=Path(tmp_path_factory.mktemp("unknown-logs")),
    )
    with running(s):
        yield s


def control(stack: Stack, body: dict) -> None:
    httpx.post(f"http://127.0.0.1:{stack.ports.simulator_control}/control", json=body, timeout=60).raise_for_status()


def unknown_total(stack: Stack) -> float:
    return sum(v for (name, labels), v in scrape(f"{stack.ops_url('reports')}/metrics").items()
               if name == "herald_messages_final_total" and dict(labels)["status"] == "unknown")


async def test_504_without_lookup_ends_unknown_and_a_receipt_still_moves_it_on(stack: Stack, pool) -> None:
    hits: dict[str, list[dict]] = defaultdict(list)

    async def hook(request: web.Request) -> web.Response:
        hit = await webhook_hit(request)
        hits[hit["payload"]["message_id"]].append(hit["payload"])
        return web.Response(status=200)

    unknown_before = unknown_total(stack)
    async with http_receiver("/hook", hook) as url:
        tenant = await make_tenant(pool)

        def batch(tag: str, n: int) -> list[dict]:
            return [{"to": f"+346002{i:05d}", "body": f"{tag} {i}", "type": "transactional", "status_callback_url": url}
                    for i in range(n)]

        control(stack, {"mode": "fail_after_accept", "status": 504})
        try:
            # receipts of the first messages are due long after the test: they stay unknown
            control(stack, {"receipt_delay_ms": [3_600_000, 3_600_000]})
            stays = await send_batches(stack, tenant, batch("stays", 4))
            await wait_for(lambda: _taken(stack, stays), timeout_s=60)
            # every receipt of these says delivered (the simulator's default draws 10 % other outcomes)
            control(stack, {"receipt_delay_ms": [50, 200], "outcome_rates": {"delivered": 1.0, "undelivered": 0.0, "failed": 0.0}})
            moves_on = await send_batches(stack, tenant, batch("moves", 4))
            await wait_for(lambda: _taken(stack, moves_on), timeout_s=60)
        finally:
            control(stack, {"mode": "normal", "outcome_rates": {"delivered": 0.9, "undelivered": 0.07, "failed": 0.03}})
        ids = stays + moves_on

        async def settled():
            rows = await pool.fetch("SELECT message_id::text AS id, status, reason_code FROM messages"
                                    " WHERE message_id = ANY($1::uuid[])", ids)
            got = {r["id"]: (r["status"], r["reason_code"]) for r in rows}
            ok = all(got.get(i) == ("unknown", "submit_outcome_unknown") for i in stays) and all(
                got.get(i, ("",))[0] == "delivered" for i in moves_on)
            return got if ok else None

        await wait_for(settled, timeout_s=120, interval_s=0.5)
        refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]
        assert [refs.get(i) for i in ids] == [1] * len(ids), "a message was sent again"

        async with httpx.AsyncClient(base_url=stack.url("reports"), headers=tenant.headers) as client:
            view = (await client.get(f"/v1/messages/{stays[0]}")).json()
            assert (view["status"], view["reason_code"]) == ("unknown", "submit_outcome_unknown")
            moved = (await client.get(f"/v1/messages/{moves_on[0]}")).json()
            assert moved["status"] == "delivered"
            # the receipt's time is when the handset got it, before Herald gave up asking
            assert {"unknown", "delivered"} <= {e["status"] for e in moved["timeline"]}

        async def called_back():
            return all(hits[i] and hits[i][-1]["status"] == "unknown" for i in stays) and all(
                hits[i] and hits[i][-1]["status"] == "delivered" for i in moves_on) or None

        await wait_for(called_back, timeout_s=60, interval_s=0.2)
    for i in stays:
        assert [p["status"] for p in hits[i]] == ["accepted", "unknown"]
        assert hits[i][-1]["reason_code"] == "submit_outcome_unknown"
    for i in moves_on:
        assert [p["status"] for p in hits[i]] == ["accepted", "unknown", "delivered"]
        assert hits[i][-1]["previous_status"] == "unknown"
    assert unknown_total(stack) - unknown_before >= len(ids)
    assert await pool.fetchval("SELECT count(*) FROM dispatch_claims WHERE message_id = ANY($1::uuid[])"
                               " AND state = 'unknown'", ids) == len(ids)


async def _taken(stack: Stack, ids: list[str]) -> bool | None:
    refs = httpx.get(f"http://127.0.0.1:{stack.ports.simulator_control}/stats/client_refs", timeout=30).json()["client_refs"]
    return all(refs.get(i) for i in ids) or None
