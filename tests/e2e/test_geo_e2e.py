"""Geo permissions through ingest as a process: single and batch sends get 422
destination_not_allowed, trigger-topic input goes to the rejected topic with that reason,
high-cost destinations only when named, managed with PUT /v1/policy and `herald admin tenant
policy`, each change seen by the very next request (the key cache drops the tenant's keys)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from herald_tools.stack import Stack
from shared.auth import DEFAULT_SCOPES
from shared.contracts import MessageRequest, TriggerEvent
from shared.topics import REJECTED, TRIGGERS
from tests.conftest import make_tenant
from tests.helpers import produce_raw, read_topic, rejected_events, signed, wait_for

pytestmark = pytest.mark.e2e

ES = "+34612345678"
FR = "+33612345678"
CU = "+5351234567"  # Cuba: in the default high-cost list


def refused(r: httpx.Response) -> bool:
    return r.status_code == 422 and r.json()["error"]["code"] == "destination_not_allowed"


async def test_geo_permissions_on_single_batch_and_trigger_input(stack: Stack, pool, env) -> None:
    # geo permissions are tenant policy: the key needs policy:write besides the default scopes
    tenant = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "policy:write"))
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30) as c:

        async def send(to: str) -> httpx.Response:
            return await c.post("/v1/messages", json={"to": to, "body": "Your code is 123456"})

        # A tenant with neither country nor allowed_countries: HERALD_GEO_DEFAULT (all), high-cost excepted.
        assert (await send(FR)).status_code == 202
        r = await send(CU)
        assert refused(r), r.text
        assert "high-cost" in r.json()["error"]["message"]

        r = await c.put("/v1/policy", json={"country": "es", "allowed_countries": ["ES"]})
        assert r.status_code == 200, r.text
        assert (r.json()["country"], r.json()["allowed_countries"]) == ("ES", ["ES"])
        assert (await c.get("/v1/policy")).json()["allowed_countries"] == ["ES"]

        # single
        r = await send(FR)
        assert refused(r), r.text
        assert r.json()["error"]["details"][0]["loc"] == "to"
        assert (await send(ES)).status_code == 202

        # batch: the FR item is refused with the reason, the ES one accepted
        r = await c.post("/v1/messages/batch", json={"messages": [{"to": ES, "body": "a"}, {"to": FR, "body": "b"}]})
        assert r.status_code == 202, r.text
        assert (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
        assert r.json()["results"][1]["error"]["code"] == "destination_not_allowed"
        r = await c.post("/v1/messages/batch", json={"messages": [{"to": FR, "body": "b"}]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "all_rejected", r.text
        assert r.json()["error"]["details"][0]["code"] == "destination_not_allowed"

        # trigger topic: the FR request lands on the rejected topic with the reason, the ES one is accepted
        marker = uuid.uuid4().hex[:10]

        def trigger(to: str) -> bytes:
            request = MessageRequest(to=to, body="Your order has shipped", metadata={"marker": marker})
            return TriggerEvent(tenant=tenant.tenant_id, payload=request).model_dump_json().encode()

        await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), await signed(pool, tenant.tenant_id, [
            (marker.encode(), trigger(FR)), (marker.encode(), trigger(ES))]))
        rejected = await read_topic(
            env.bootstrap, REJECTED.name(env.prefix),
            lambda rs: any(e.payload.key == marker for e in rejected_events(rs)),
        )
        (mine,) = [e for e in rejected_events(rejected) if e.payload.key == marker]
        assert mine.payload.reason_code == "destination_not_allowed"
        assert mine.tenant == tenant.tenant_id

        async def accepted_es() -> list:
            return await pool.fetch("SELECT to_e164 FROM messages WHERE tenant_id = $1 AND metadata->>'marker' = $2",
                                    tenant.tenant_id, marker)

        rows = await wait_for(accepted_es, timeout_s=60)
        assert [r["to_e164"] for r in rows] == [ES]

        # high-cost: refused while not named, even for a tenant whose list would otherwise allow much
        assert refused(await send(CU))
        r = await c.put("/v1/policy", json={"allowed_countries": ["ES", "CU"]})
        assert r.status_code == 200, r.text
        assert (await send(CU)).status_code == 202
        assert refused(await send(FR))

        # only the country: that country alone
        r = await c.put("/v1/policy", json={"allowed_countries": None})
        assert r.json()["allowed_countries"] is None and r.json()["country"] == "ES"
        assert refused(await send(FR))
        assert (await send(ES)).status_code == 202

        # bad codes are a 422 on the policy itself
        r = await c.put("/v1/policy", json={"allowed_countries": ["XX"]})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "body.allowed_countries", r.text

        # the CLI, from another process: the next request already sees it
        cli = subprocess.run(
            [sys.executable, "-m", "herald_tools.cli", "admin", "tenant", "policy", tenant.tenant_id,
             "--allowed-countries", "ES,FR", "--country", "ES"],
            env={**os.environ, **env.vars()}, capture_output=True, text=True, timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert '"allowed_countries"' in cli.stdout and "FR" in cli.stdout
        assert (await send(FR)).status_code == 202
        assert refused(await send(CU))


async def test_a_tenant_without_policy_keeps_sending_everywhere_but_high_cost(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30) as c:
        results = await asyncio.gather(*(c.post("/v1/messages", json={"to": to, "body": "hi"}) for to in (ES, FR)))
        assert [r.status_code for r in results] == [202, 202]
        r = await c.post("/v1/messages/batch", json={"messages": [{"to": CU, "body": "x"}, {"to": FR, "body": "y"}]})
        assert r.status_code == 202
        assert [x.get("error", {}).get("code") for x in r.json()["results"]] == ["destination_not_allowed", None]
