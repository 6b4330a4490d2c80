"""Two tenants on one Herald, through all four services, real Kafka, PostgreSQL and the
simulator: tenant V (the victim) sends one-time codes at a steady rate; tenant H attacks V and
the service with the inputs of the trust-boundary review (issue 15). Every hostile input is
refused with its documented reason, and V's codes are still submitted within their normal
latency: p95 and p99 of API accept to submission at the gateway (messages.accepted_at to
submitted_at) during the attack stay within ``BOUND`` of the same measure without it.

The stack runs in the production layout of docs/operations.md (transactional and campaign lanes
in processes of their own, the campaign ones niced, the batch endpoint and campaign launches on
ingest-bulk): in one process per service, H's batches share ingest's event loop with V's codes.

The protections this leans on most: the fair share of the transactional lanes (H's
"transactional" flood goes on the campaign lanes), the priority lane at the dispatcher (H's
campaign waits for V's codes, and at the gateway's shared token bucket takes only the tokens it
holds, never booking ahead of them), the HTTP guard (bodies refused from their headers, before any key
check reads them), webhook egress rules and per-tenant webhook slots, signed Kafka input. With
``HERALD_PRIORITY_SHARE_PER_S=0`` (no share; ``HOSTILE_PRIORITY_SHARE_PER_S=0`` runs the suite so)
H's flood queues ahead of V's codes and this fails. ``HOSTILE_SKIP_ATTACKS`` (a comma-separated
list of the names in ``attack()``, and ``campaign``) leaves attacks out, to measure what each costs.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from herald_tools.bench import start_split
from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Ports, Process, Stack
from shared.auth import DEFAULT_SCOPES
from shared.contracts import MessageRequest, TriggerEvent
from shared.topics import REJECTED, TRIGGERS
from tests.conftest import Tenant, make_tenant
from tests.e2e.test_campaigns_e2e import setup_campaign
from tests.e2e.test_pipeline import scrape
from tests.helpers import http_receiver, produce_raw, read_topic, rejected_events, signed, wait_for
from tests.ingest.integration.test_http_guard import close, read_answer, request_head

pytestmark = pytest.mark.e2e

GATEWAY_RATE = 300.0  # messages a second through the one simulated gateway
SHARE_PER_S, SHARE_BURST = 20, 50  # each tenant's share of the transactional lanes
# HOSTILE_PRIORITY_SHARE_PER_S=0 runs the suite with the share off, to see it fail (docs/operations.md).
SHARE_PER_S = int(os.environ.get("HOSTILE_PRIORITY_SHARE_PER_S", SHARE_PER_S))
FLOOD = 3000  # H's "transactional" messages: 10 s of the gateway, were they on the priority lane
AUDIENCE = 1200  # H's campaign
OTP_INTERVAL_S = 0.2
BASELINE_S, ATTACK_S = 8.0, 20.0
BODY_TIMEOUT_S = 2
V_HOST, H_HOST = "127.0.0.3", "127.0.0.2"  # webhook receivers: loopback addresses the stack allows, nothing else


# Measurement only: a comma-separated list of attacks to leave out (names as in ``attack()``), to
# see which costs V most. Unset in CI; a run with any attack left out says so and asserts nothing
# of what was left out.
SKIP = frozenset(filter(None, os.environ.get("HOSTILE_SKIP_ATTACKS", "").split(",")))


def bound(baseline: float) -> float:
    """How much worse V's latency may get under attack: noise on a shared 2-core machine, not a queue.
    Before campaign chunks stopped booking gateway tokens ahead, V's p95 and p99 under attack went
    past this by 40-240 ms (docs/operations.md); at + 250 ms, 1 run in 5 of the fixed system failed."""
    return max(2 * baseline, baseline + 0.4)


@dataclass(frozen=True)
class Deployment:
    """The stack in its production layout (docs/operations.md): transactional and campaign lanes in
    processes of their own, the campaign ones niced; a balancer routes the batch endpoint and
    campaigns to ingest-bulk (``bulk_url``), everything else to ingest."""

    stack: Stack
    bulk: Process  # ingest-bulk


@pytest.fixture(scope="module")
def deployment(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    log_dir = Path(tmp_path_factory.mktemp("logs"))
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200",
             "HERALD_CONSUMER_POLL_MS": "100", "HERALD_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
             "HERALD_PRIORITY_SHARE_PER_S": str(SHARE_PER_S), "HERALD_PRIORITY_SHARE_BURST": str(SHARE_BURST),
             "HERALD_WEBHOOK_ALLOWED_NETWORKS": f'["{V_HOST}/32", "{H_HOST}/32"]', "HERALD_WEBHOOK_REQUIRE_HTTPS": "false",
             "HERALD_WEBHOOK_TIMEOUT_S": "2"},
        ports=Ports.random(), log_dir=log_dir, gateway_rate=GATEWAY_RATE,
    )
    try:
        start_split(s)
        s.wait_ready(120)
        [bulk] = [p for p in s.processes if p.name == "ingest" and p.instance == 2]
        yield Deployment(s, bulk)
    finally:
        s.stop()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Otps:
    """V's codes: one every OTP_INTERVAL_S, each to a number of its own, with a status webhook."""

    def __init__(self, client: httpx.AsyncClient, numbers: list[str], callback: str) -> None:
        self.client, self.numbers, self.callback = client, iter(numbers), callback
        self.refused: list[str] = []

    async def send_for(self, seconds: float) -> list[str]:
        ids: list[str] = []
        tick = time.monotonic()
        end = tick + seconds
        pending: set[asyncio.Task] = set()

        async def one() -> None:
            r = await self.client.post("/v1/messages", json={"to": next(self.numbers), "body": f"Your code is {secrets.randbelow(10**6):06d}",
                                                             "type": "transactional", "status_callback_url": self.callback})
            if r.status_code == 202:
                ids.append(r.json()["message_id"])
            else:
                self.refused.append(f"{r.status_code} {r.text[:200]}")

        while tick < end:  # at a steady rate, whatever each answer takes
            task = asyncio.ensure_future(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            tick += OTP_INTERVAL_S
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        if pending:
            await asyncio.gather(*pending)
        return ids


async def latencies(pool, ids: list[str]) -> list[float]:
    """API accept to submission at the gateway, in seconds, once every code is submitted."""

    async def submitted():
        rows = await pool.fetch("SELECT accepted_at, submitted_at, status FROM messages WHERE message_id = ANY($1::uuid[])", ids)
        done = [r for r in rows if r["submitted_at"] is not None or r["status"] in ("failed", "suppressed", "unknown")]
        return rows if len(done) == len(ids) else None

    rows = await wait_for(submitted, timeout_s=90, interval_s=0.5)
    values = [(r["submitted_at"] - r["accepted_at"]).total_seconds() for r in rows if r["submitted_at"] is not None]
    assert len(values) >= 0.9 * len(ids), f"only {len(values)} of V's {len(ids)} codes were submitted"
    return values


# --- the attacks ---------------------------------------------------------------------------------


async def oversized_and_slow_bodies(stack: Stack, h: Tenant) -> list[tuple[int, str]]:
    """150 MB declared without a key; a chunked body without a key; bodies trickled with a key."""
    port = stack.ports.ingest
    answers = []
    reader, writer = await request_head(port, "/v1/messages", {"Content-Type": "application/json",
                                                               "Content-Length": str(150 * 1024 * 1024)})
    status, body = await read_answer(reader, 10)
    answers.append((status, body["error"]["code"]))
    await close(writer)
    reader, writer = await request_head(port, "/v1/messages/batch", {"Content-Type": "application/json",
                                                                     "Transfer-Encoding": "chunked"})
    status, body = await read_answer(reader, 10)
    answers.append((status, body["error"]["code"]))
    chunk = b" " * (1024 * 1024)
    try:
        for _ in range(8):  # it goes on sending; nothing of it is read
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    await close(writer)

    async def trickle() -> tuple[int, str]:
        reader, writer = await request_head(port, "/v1/messages", {"Content-Type": "application/json",
                                                                   "Content-Length": "300", **h.headers})
        writer.write(b'{"to": "+3460')
        await writer.drain()
        status, body = await read_answer(reader, BODY_TIMEOUT_S + 15)
        await close(writer)
        return status, body["error"]["code"]

    answers += await asyncio.gather(*(trickle() for _ in range(6)))
    return answers


async def unknown_keys(client: httpx.AsyncClient) -> list[tuple[int, str]]:
    async def one(i: int) -> tuple[int, str]:
        r = await client.post("/v1/messages", json={"to": "+34600000001", "body": "x"},
                              headers={"Authorization": f"Bearer hk_{secrets.token_hex(6)}_{secrets.token_hex(16)}"})
        return r.status_code, r.json()["error"]["code"]

    answers = []
    for start in range(0, 200, 20):
        answers += await asyncio.gather(*(one(i) for i in range(start, start + 20)))
    return answers


SSRF = ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:28080/v1/messages", "http://10.0.0.5/x",
        "http://[::1]/x", "http://localhost./x", "http://metadata.google.internal/computeMetadata/v1/"]


async def ssrf(client: httpx.AsyncClient) -> list[tuple[int, str]]:
    answers = []
    for url in SSRF:
        r = await client.post("/v1/messages", json={"to": "+34600000001", "body": "hi", "status_callback_url": url})
        answers.append((r.status_code, r.json()["error"]["code"]))
        r = await client.put("/v1/policy", json={"reply_webhook_url": url})
        answers.append((r.status_code, r.json()["error"]["code"]))
    return answers


async def slow_webhooks(client: httpx.AsyncClient, url: str, numbers: list[str]) -> list[int]:
    """Messages whose status webhooks go to a receiver that answers after a minute."""
    r = await client.post("/v1/messages/batch", json={"messages": [
        {"to": n, "body": "Your parcel is on its way", "status_callback_url": url} for n in numbers]})
    return [r.status_code]


async def bad_campaigns(client: httpx.AsyncClient) -> list[tuple[int, str, str]]:
    r = await client.post("/v1/templates", json={"name": "h-bad", "purpose": "marketing", "default_language": "en",
                                                 "variants": {"en": "Hi"}})
    assert r.status_code == 201, r.text
    variants = [{"name": "A", "template_id": r.json()["template_id"], "percent": 100}]
    answers = []
    r = await client.post("/v1/campaigns", json={"name": "stuck", "variants": variants,
                                                 "segment": "last_activity_at < now() - interval '9999 years'"})
    answers.append((r.status_code, r.json()["error"]["code"], r.json()["error"]["details"][0]["code"]))
    r = await client.post("/v1/campaigns", json={"name": "past", "variants": variants, "segment": "all",
                                                 "send_at": "2020-01-01T00:00:00Z"})
    answers.append((r.status_code, r.json()["error"]["code"], r.json()["error"]["details"][0]["loc"]))
    return answers


async def previews(client: httpx.AsyncClient) -> list[tuple[int, str]]:
    body = {"filter": '("big" in tags or first_name = "Ana") and not suppressed and created_at > "2020-01-01"'}

    async def one() -> tuple[int, str]:
        r = await client.post("/v1/segments/preview", json=body)
        if r.status_code == 429:
            assert r.headers.get("Retry-After"), r.headers
            return 429, r.json()["error"]["code"]
        return r.status_code, "ok" if "count" in r.json() else r.text

    answers = []
    for _ in range(3):
        answers += await asyncio.gather(*(one() for _ in range(12)))
    return answers


async def flood(client: httpx.AsyncClient, numbers: list[str]) -> list[int]:
    """FLOOD transactional messages in batches of 500, all at once."""
    async def batch(part: list[str]) -> int:
        r = await client.post("/v1/messages/batch", json={"messages": [
            {"to": n, "body": "Your code is 000000", "type": "transactional"} for n in part]})
        return r.status_code

    return list(await asyncio.gather(*(batch(numbers[i:i + 500]) for i in range(0, len(numbers), 500))))


async def forged_triggers(env, pool, h: Tenant, v: Tenant, v_key_id: str, marker: str) -> list[str]:
    """Trigger events naming V: unsigned, signed by H's own key, and with V's key id but not its secret."""

    def trigger(to: str) -> bytes:
        request = MessageRequest(to=to, body="Your code is 999999 (forged)", metadata={"marker": marker})
        return TriggerEvent(tenant=v.tenant_id, payload=request).model_dump_json().encode()

    records = await signed(pool, h.tenant_id, [(marker.encode(), trigger("+34600000011"))])  # H's key, V's name
    records += [
        (marker.encode(), trigger("+34600000012")),  # unsigned
        (marker.encode(), trigger("+34600000013"), [("herald-key", v_key_id.encode()), ("herald-signature", b"v1=" + b"0" * 64)]),
        (marker.encode(), trigger("+34600000014"), [("herald-key", b"kk_guessed"), ("herald-signature", b"v1=00")]),
    ]
    await produce_raw(env.bootstrap, TRIGGERS.name(env.prefix), records)
    rejected = await read_topic(env.bootstrap, REJECTED.name(env.prefix),
                                lambda rs: len([e for e in rejected_events(rs) if e.payload.key == marker]) >= 4, timeout_s=60)
    return sorted(e.payload.reason_code for e in rejected_events(rejected) if e.payload.key == marker)


# --- the test ------------------------------------------------------------------------------------


async def test_a_hostile_tenant_is_refused_and_the_other_tenants_codes_keep_their_latency(deployment: Deployment, pool, env) -> None:
    from herald_tools import admin

    stack = deployment.stack
    bulk_url = f"http://127.0.0.1:{deployment.bulk.port}"
    bulk_metrics = f"http://127.0.0.1:{deployment.bulk.ops_port}/metrics"

    v = await make_tenant(pool)
    h = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "policy:write"))
    async with pool.acquire() as conn:
        v_key = await admin.kafka_key_create(conn, "test", v.tenant_id)  # V's own producer's key
    countries = marketing_countries(True)
    numbers = list(dict.fromkeys(demo_numbers(FLOOD + AUDIENCE + 700, seed=151, countries=countries)))
    otp_numbers = numbers[:300]
    audience = numbers[300:300 + AUDIENCE]
    flood_numbers = (numbers[300 + AUDIENCE:] * 4)[:FLOOD]
    v_hooks: dict[str, float] = {}

    async def v_hook(request: web.Request) -> web.Response:
        payload = await request.json()
        v_hooks.setdefault(payload.get("message_id", ""), time.monotonic())
        return web.Response(status=200)

    async def h_hook(request: web.Request) -> web.Response:
        await asyncio.sleep(60)  # holds the connection far past any sane bound
        return web.Response(status=200)

    vc = httpx.AsyncClient(base_url=stack.url("ingest"), headers=v.headers, timeout=60)
    hc = httpx.AsyncClient(base_url=stack.url("ingest"), headers=h.headers, timeout=120)
    hb = httpx.AsyncClient(base_url=bulk_url, headers=h.headers, timeout=120)  # batches and campaigns
    anon = httpx.AsyncClient(base_url=stack.url("ingest"), timeout=60)
    async with vc, hc, hb, anon, http_receiver("/v", v_hook, host=V_HOST) as v_url, http_receiver("/h", h_hook, host=H_HOST) as h_url:
        campaign = await setup_campaign(hc, audience, "big")
        otps = Otps(vc, otp_numbers, v_url)
        await otps.send_for(1.0)  # warm-up: connections, caches, the first batches of every lane

        baseline_ids = await otps.send_for(BASELINE_S)
        baseline = await latencies(pool, baseline_ids)
        share_before = scrape(bulk_metrics)

        marker = uuid.uuid4().hex[:10]

        async def attack() -> dict[str, list]:
            await asyncio.sleep(1.0)
            if "campaign" not in SKIP:
                r = await hb.post(f"/v1/campaigns/{campaign}/launch")
                assert r.status_code == 200, r.text
            attacks = {
                "flood": lambda: flood(hb, flood_numbers), "bodies": lambda: oversized_and_slow_bodies(stack, h),
                "unknown_keys": lambda: unknown_keys(anon), "ssrf": lambda: ssrf(hc),
                "slow_webhooks": lambda: slow_webhooks(hb, h_url, numbers[:40]), "bad_campaigns": lambda: bad_campaigns(hc),
                "previews": lambda: previews(hc), "forged": lambda: forged_triggers(env, pool, h, v, v_key["key_id"], marker),
            }
            names = [name for name in attacks if name not in SKIP]
            results = await asyncio.gather(*(attacks[name]() for name in names))
            return dict(zip(names, results, strict=True))

        started = time.monotonic()
        attack_ids, refused = await asyncio.gather(otps.send_for(ATTACK_S), attack())
        attack_took = time.monotonic() - started
        under_attack = await latencies(pool, attack_ids)

        # H's hostile inputs were refused, each with its documented reason.
        if "flood" in refused:
            assert refused["flood"] == [202] * (FLOOD // 500)
        if "bodies" in refused:
            assert refused["bodies"][:2] == [(413, "body_too_large"), (401, "missing_api_key")]
            assert refused["bodies"][2:] == [(408, "body_timeout")] * 6
        if "unknown_keys" in refused:
            assert set(refused["unknown_keys"]) == {(401, "invalid_api_key")}
        if "ssrf" in refused:
            assert set(refused["ssrf"]) == {(422, "webhook_host_not_public")}, refused["ssrf"]
        if "slow_webhooks" in refused:
            assert refused["slow_webhooks"] == [202]
        if "bad_campaigns" in refused:
            assert refused["bad_campaigns"] == [(422, "segment_invalid", "interval_out_of_range"),
                                                (422, "send_at_in_past", "body.send_at")]
        if "previews" in refused:
            assert set(refused["previews"]) <= {(200, "ok"), (429, "too_many_previews")}, refused["previews"]
        if "forged" in refused:
            assert refused["forged"] == ["bad_signature", "tenant_mismatch", "unknown_signing_key", "unsigned_event"]
        assert not await pool.fetchval("SELECT count(*) FROM messages WHERE tenant_id = $1 AND metadata->>'marker' = $2",
                                       v.tenant_id, marker), "a forged trigger sent as V"
        assert not otps.refused, otps.refused[:5]

        # V's codes: the same latency as without the attack, within noise.
        b95, b99 = quantile(baseline, 0.95), quantile(baseline, 0.99)
        a95, a99 = quantile(under_attack, 0.95), quantile(under_attack, 0.99)
        report = (f"{'left out ' + ','.join(sorted(SKIP)) + ': ' if SKIP else ''}V's codes, accept to submitted: baseline p95 {b95 * 1000:.0f} ms p99 {b99 * 1000:.0f} ms ({len(baseline)}); "
                  f"under attack p95 {a95 * 1000:.0f} ms p99 {a99 * 1000:.0f} ms ({len(under_attack)})")
        print(report)
        assert a95 <= bound(b95), report
        assert a99 <= bound(b99), report
        share_after = scrape(bulk_metrics)
        moved = sum(val for (name, labels), val in share_after.items() if name == "herald_ingest_priority_share_exceeded_total") - \
            sum(val for (name, labels), val in share_before.items() if name == "herald_ingest_priority_share_exceeded_total")
        assert "flood" in SKIP or moved >= FLOOD - SHARE_BURST - SHARE_PER_S * (attack_took + 5), f"only {moved} of H's flood left the priority lanes"

        # V's status webhooks still arrive while H's receiver holds its connections.
        async def v_hooks_arrived():
            return all(i in v_hooks for i in attack_ids) or None

        await wait_for(v_hooks_arrived, timeout_s=45, interval_s=0.5)
        # And H's campaign went on (in the campaign lanes, after V's codes).
        state = (await hc.get(f"/v1/campaigns/{campaign}")).json()
        assert "campaign" in SKIP or state["progress"]["published"] > 0 and state["state"] in ("running", "completed"), state
