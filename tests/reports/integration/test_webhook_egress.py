"""Webhooks reach public destinations only, and one bad receiver cannot hold everyone's webhooks.

Through the real ingest API (in-process, real PostgreSQL and Kafka) with the default, safe
settings: status callback and reply webhook URLs pointing at loopback, private, link-local or
metadata addresses (or names that resolve there) are refused with 422 and a reason code. The
reports webhook worker refuses them again when posting (rows queued before the rule), and caps
its posts per tenant and per receiver and breaks the circuit of a failing receiver (real
loopback receivers, explicitly allowed: tests.helpers.LOOPBACK_WEBHOOKS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from herald_tools.stack import free_port
from services.ingest.api import create_app
from services.ingest.repository import IngestRepository
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.reports import metrics
from services.reports.webhooks.worker import WebhookWorker
from shared.auth import DEFAULT_SCOPES
from shared.egress import HOST_NOT_PUBLIC, HTTPS_REQUIRED
from shared.kafka import Publisher, make_producer
from tests.conftest import make_tenant
from tests.helpers import http_receiver
from tests.reports.integration.test_webhooks import rows, sample, seed, settings, until_settled

pytestmark = pytest.mark.integration

HOSTNAME = socket.gethostname()  # resolves to this machine: a loopback or private address


@pytest.fixture(scope="module")
async def api(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    # the defaults, stated: no private network allowed, https only
    s = IngestSettings(webhook_allow_private=False, webhook_allowed_networks=[], webhook_require_https=True)
    producer = make_producer(s, "test-egress")
    await producer.start()
    repository = IngestRepository(pool)

    app = create_app(s, pool, Acceptor(repository, s), Publisher(producer, env.prefix, "ingest"), repository)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as c:
        yield c
    await producer.stop()


def resolves_privately(host: str) -> bool:
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    return bool(addresses) and not any(ipaddress.ip_address(a).is_global for a in addresses)


REFUSED = [
    "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data/", "https://10.1.2.3/x", "https://[::1]/x",
    "https://[::ffff:127.0.0.1]/x", "https://2130706433/x", "https://localhost./x", "https://0.0.0.0/x",
    "https://metadata.google.internal/computeMetadata/v1/", f"https://{HOSTNAME}/hook",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_a_status_callback_to_a_non_public_destination_is_refused(api, pool, url: str) -> None:
    assert resolves_privately(HOSTNAME), f"{HOSTNAME} should resolve to this machine"
    tenant = await make_tenant(pool)
    r = await api.post("/v1/messages", json={"to": "+34600000001", "body": "hi", "status_callback_url": url},
                       headers=tenant.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == HOST_NOT_PUBLIC
    assert error["details"] == [{"loc": "body.status_callback_url", "code": HOST_NOT_PUBLIC, "msg": error["details"][0]["msg"]}]


async def test_http_is_refused_and_public_https_accepted_and_a_batch_says_which(api, pool) -> None:
    tenant = await make_tenant(pool)
    r = await api.post("/v1/messages", json={"to": "+34600000001", "body": "hi",
                                             "status_callback_url": "http://crm.example.com/status"}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, HTTPS_REQUIRED)
    r = await api.post("/v1/messages", json={"to": "+34600000001", "body": "hi",
                                             "status_callback_url": "https://crm.example.com/status"}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    r = await api.post("/v1/messages/batch", headers=tenant.headers, json={"messages": [
        {"to": "+34600000001", "body": "a", "status_callback_url": "https://crm.example.com/status"},
        {"to": "+34600000002", "body": "b", "status_callback_url": "https://169.254.169.254/latest/"},
        {"to": "+34600000003", "body": "c"}]})
    assert r.status_code == 202, r.text
    answers = r.json()["results"] if "results" in r.json() else r.json()["messages"]
    assert ["message_id" in a for a in answers] == [True, False, True]
    assert answers[1]["error"]["code"] == HOST_NOT_PUBLIC


@pytest.mark.parametrize("url", ["https://169.254.169.254/latest/", "https://127.0.0.1:8443/replies",
                                 "https://10.0.0.5/replies", f"https://{HOSTNAME}/replies"])
async def test_a_reply_webhook_to_a_non_public_destination_is_refused(api, pool, url: str) -> None:
    tenant = await make_tenant(pool, scopes=(*DEFAULT_SCOPES, "policy:write"))  # PUT /v1/policy needs policy:write
    r = await api.put("/v1/policy", json={"reply_webhook_url": url}, headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == HOST_NOT_PUBLIC
    assert r.json()["error"]["details"][0]["loc"] == "body.reply_webhook_url"
    assert await pool.fetchval("SELECT reply_webhook_url FROM tenants WHERE tenant_id = $1", tenant.tenant_id) is None
    r = await api.put("/v1/policy", json={"reply_webhook_url": "http://crm.example.com/replies"}, headers=tenant.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (422, HTTPS_REQUIRED)


async def test_the_admin_command_refuses_a_non_public_reply_webhook(pool, capsys, monkeypatch) -> None:
    from herald_tools.cli import main

    for name in ("HERALD_WEBHOOK_ALLOW_PRIVATE", "HERALD_WEBHOOK_ALLOWED_NETWORKS", "HERALD_WEBHOOK_REQUIRE_HTTPS"):
        monkeypatch.delenv(name, raising=False)
    tenant = (await make_tenant(pool)).tenant_id
    assert await asyncio.to_thread(main, ["admin", "tenant", "reply-webhook", tenant, "https://169.254.169.254/x"]) == 1
    assert "not a public address" in capsys.readouterr().err
    assert await pool.fetchval("SELECT reply_webhook_url FROM tenants WHERE tenant_id = $1", tenant) is None


# --- when posting -------------------------------------------------------------------------------


async def test_rows_already_queued_for_a_non_public_destination_are_dead_lettered_unposted(pool, cleanup) -> None:
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.headers["Host"])
        await request.read()
        return web.Response(status=200)

    async with http_receiver("/hook", hook) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        by_name = f"http://{HOSTNAME}:{port}/hook"  # a name that resolves to the receiver's loopback address
        queued = {}
        for target in (url, by_name, "http://169.254.169.254/latest/meta-data/", "http://10.0.0.9:9/x"):
            _, ids = await seed(pool, target)
            cleanup += ids
            queued[target] = ids[0]
        # queued under other rules; posted now with only http allowed (no private network)
        worker = WebhookWorker(pool, settings(webhook_allowed_networks=[]))
        dead_before = sample(metrics.WEBHOOKS_DEAD_LETTERS, HOST_NOT_PUBLIC)
        for _ in range(4):  # each message's 3 rows: accepted, submitted, delivered
            await worker.run_once()
        found = await until_settled(pool, list(queued.values()), timeout_s=10)
        assert hits == [], "nothing may reach a non-public address"
        assert {r["state"] for r in found} == {"dead"}
        assert all(r["last_error"].startswith("destination refused") and HOST_NOT_PUBLIC in r["last_error"]
                   and r["last_status"] is None for r in found)
        assert sample(metrics.WEBHOOKS_DEAD_LETTERS, HOST_NOT_PUBLIC) - dead_before == 12
        # allowing the receiver's network lets the name through, posted to the checked address
        # with the name kept in the Host header
        _, ids = await seed(pool, by_name)
        cleanup += ids
        allowed = WebhookWorker(pool, settings())
        for _ in range(4):
            await allowed.run_once()
        assert {r["state"] for r in await until_settled(pool, ids, timeout_s=10)} == {"delivered"}
        assert hits == [f"{HOSTNAME}:{port}"] * 3


# --- fairness: a slow receiver, caps, circuits -----------------------------------------------------


class Trickler:
    """A raw HTTP server on loopback that answers one byte every ``every_s`` (a slow loris)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.port = free_port()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(self.every_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def cleanup(pool) -> AsyncIterator[list[uuid.UUID]]:
    # Rows earlier tests of the session left pending would come first in the workers' claims
    # (oldest first) and crowd out this test's own: put them off for the length of the test.
    await pool.execute("UPDATE webhook_outbox SET next_attempt_at = now() + interval '1 day' WHERE state = 'pending'")
    ids: list[uuid.UUID] = []
    yield ids
    await pool.execute("DELETE FROM webhook_outbox WHERE message_id = ANY($1::uuid[])", ids)


async def test_a_slow_loris_receiver_does_not_hold_other_tenants_webhooks(pool, cleanup) -> None:
    trickler = Trickler(every_s=1.0)
    server = await asyncio.start_server(trickler.handle, "127.0.0.1", trickler.port)
    arrived: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        arrived[json.loads(await request.read())["message_id"]] = time.monotonic()
        return web.Response(status=200)

    worker = WebhookWorker(pool, settings(webhook_timeout_s=4, webhook_concurrency=8, webhook_tenant_concurrency=2,
                                          webhook_host_concurrency=2, webhook_backoff_base_s=30))
    task = None
    try:
        async with http_receiver("/hook", hook) as healthy:
            slow_url = f"http://127.0.0.1:{trickler.port}/hook"
            for _ in range(2):  # two tenants whose receiver is the same slow loris
                _, ids = await seed(pool, slow_url, n=8)
                cleanup += ids
            task = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 10
            while trickler.open < 2:
                assert time.monotonic() < deadline, "the slow receiver was never posted to"
                await asyncio.sleep(0.05)
            latencies = []
            for _ in range(5):  # another tenant, its healthy receiver: posted at once, slow loris or not
                started = time.monotonic()
                _, ids = await seed(pool, healthy)
                cleanup += ids
                while ids[0].hex not in {uuid.UUID(m).hex for m in arrived}:
                    assert time.monotonic() - started < 10, "the healthy tenant's webhook never came"
                    await asyncio.sleep(0.01)
                latencies.append(arrived[str(ids[0])] - started)
                await asyncio.sleep(0.3)
            assert trickler.open >= 1, "the slow loris still holds posts while the others flow"
            assert max(latencies) < 1.5, latencies
            assert trickler.most_open <= 2, "at most webhook_host_concurrency posts to one receiver"
    finally:
        worker.stop()
        if task is not None:
            await asyncio.wait_for(task, 15)
        server.close()


async def test_the_circuit_of_a_failing_receiver_opens_and_closes_after_its_cooldown(pool, cleanup) -> None:
    answers = {"status": 503}
    hits: list[tuple[float, int]] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        hits.append((time.monotonic(), answers["status"]))
        return web.Response(status=answers["status"])

    opened_before = sample(metrics.WEBHOOK_CIRCUITS_OPENED)
    deferred_before = sample(metrics.WEBHOOKS_DEFERRED, "circuit_open")
    worker = WebhookWorker(pool, settings(webhook_circuit_failures=3, webhook_circuit_cooldown_s=2.5,
                                          webhook_host_concurrency=1, webhook_backoff_base_s=0.05,
                                          webhook_backoff_max_s=0.1, webhook_max_attempts=100))
    async with http_receiver("/hook", hook) as url:
        _, ids = await seed(pool, url, n=4)
        cleanup += ids
        task = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 10
            while len(hits) < 3:
                assert time.monotonic() < deadline, hits
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.5)  # open: nothing is posted to the receiver during the cooldown
            assert len(hits) == 3, [s for _, s in hits]
            assert sample(metrics.WEBHOOK_CIRCUITS_OPENED) - opened_before == 1
            assert sample(metrics.WEBHOOKS_DEFERRED, "circuit_open") - deferred_before >= 1
            assert metrics.WEBHOOK_CIRCUITS_OPEN._value.get() == 1
            pending = await rows(pool, ids)
            assert all(r["state"] == "pending" for r in pending)
            assert sum(r["attempts"] for r in pending) == 3, "held rows are not counted as attempts"
            answers["status"] = 200
            found = await until_settled(pool, ids, timeout_s=20)
            assert {r["state"] for r in found} == {"delivered"}
            assert hits[3][0] - hits[2][0] >= 2.0, "tried again only after the cooldown"
            assert metrics.WEBHOOK_CIRCUITS_OPEN._value.get() == 0
            assert sum(r["attempts"] for r in found) == len(hits)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
