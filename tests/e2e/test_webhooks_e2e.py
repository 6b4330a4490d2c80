"""Status webhooks through all services: messages sent to ingest with a status_callback_url
reach a receiver in this test, signed, in order per message (accepted → submitted → final),
even when the receiver refuses the first try of some of them."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from aiohttp import web

from herald_tools.stack import Stack
from shared.signatures import verify
from shared.statuses import FINAL
from tests.conftest import make_tenant
from tests.e2e.test_pipeline import all_final, scrape, send_batches
from tests.helpers import http_receiver, wait_for, webhook_hit

pytestmark = pytest.mark.e2e
FINAL_NAMES = {s.value for s in FINAL}


async def test_each_message_gets_signed_callbacks_in_order(stack: Stack, pool) -> None:
    hits: list[dict] = []
    refused_once: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        hit = await webhook_hit(request)
        payload = hit["payload"]
        # the receiver is down for the first try of every other message's "submitted" callback
        if payload["status"] == "submitted" and int(payload["metadata"]["i"]) % 2 == 0 \
                and payload["event_id"] not in refused_once:
            refused_once.add(payload["event_id"])
            hit["status"] = 503
        hits.append(hit)
        return web.Response(status=hit["status"])

    async with http_receiver("/hook", hook) as url:
        tenant = await make_tenant(pool)
        messages = [{"to": f"+346001{i:05d}", "body": f"Your code is {i:06d}", "type": "transactional",
                     "status_callback_url": url, "metadata": {"i": str(i)}} for i in range(30)]
        ids = await send_batches(stack, tenant, messages)
        assert len(ids) == 30
        statuses = await all_final(pool, ids)

        def done_per_message() -> dict[str, list[dict]]:
            ok: dict[str, list[dict]] = defaultdict(list)
            for h in hits:
                if h["status"] == 200:
                    ok[h["payload"]["message_id"]].append(h)
            return ok

        async def all_final_called_back():
            ok = done_per_message()
            return all(ok.get(i) and ok[i][-1]["payload"]["status"] in FINAL_NAMES for i in ids)

        await wait_for(all_final_called_back, timeout_s=60, interval_s=0.2)
        # the worker keeps nothing pending for these messages
        pending = await pool.fetchval(
            "SELECT count(*) FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) AND state <> 'delivered'", ids)
        assert pending == 0

        secret = (await pool.fetchval("SELECT secret FROM webhook_secrets WHERE tenant_id = $1", tenant.tenant_id)).encode()
        ok = done_per_message()
        for i, mid in enumerate(ids):
            got = [h["payload"] for h in ok[mid]]
            path = [p["status"] for p in got]
            if statuses[mid] in ("delivered", "undelivered"):
                assert path == ["accepted", "submitted", statuses[mid]], (mid, path)
            else:
                assert path[0] == "accepted" and path[-1] == statuses[mid], (mid, path)
            assert [p["seq"] for p in got] == list(range(1, len(got) + 1))
            assert [p["previous_status"] for p in got] == [None, *path[:-1]]
            assert all(p["metadata"] == {"i": str(i)} and p["segments"] == 1 for p in got)
            # every request of this message (refused ones too) came in seq order
            seqs = [h["payload"]["seq"] for h in hits if h["payload"]["message_id"] == mid]
            assert seqs == sorted(seqs)
        for h in hits:
            verify(secret, h["body"], h["signature"], now=time.time())
            assert h["event_id"] == h["payload"]["event_id"]
        # the refused ones were tried again, with the same event id and a higher attempt number
        assert len(refused_once) >= 10
        for event in refused_once:
            tries = [(h["attempt"], h["status"]) for h in hits if h["payload"]["event_id"] == event]
            assert tries == [(1, 503), (2, 200)], tries

        metrics = scrape(f"{stack.ops_url('reports')}/metrics")
        delivered = sum(v for (name, _), v in metrics.items() if name == "herald_webhooks_delivered_total")
        assert delivered >= sum(len(v) for v in ok.values())
        failed = sum(v for (name, _), v in metrics.items() if name == "herald_webhooks_failed_attempts_total")
        assert failed >= len(refused_once)
