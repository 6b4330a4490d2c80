"""HTTP tests of the gateway simulator.

The first part drives the API and control apps in process (aiohttp test utilities); the second
runs the whole service on free loopback ports with a small receipt receiver that records every
post, to check receipts end to end, retries, refuse mode and shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from herald_tools.stack import free_port
from services.simulator.app import SimulatorService
from services.simulator.core import OutcomeRates, Simulator
from services.simulator.http import build_registry, create_api_app, create_control_app
from services.simulator.settings import SimulatorSettings
from shared.signatures import HEADER, SignatureError, verify

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECEIPT_SECRET = "test-receipt-secret"


def msg(ref: str, to: str = "+34600000001", **extra) -> dict:
    return {"to": to, "body": "hello", "client_ref": ref, **extra}


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# =================================================================================================
# In-process API and control apps


@dataclass
class Apps:
    sim: Simulator
    api: TestClient
    control: TestClient


@pytest.fixture
async def apps() -> AsyncIterator[Apps]:
    sim = Simulator(rates=OutcomeRates(0.9, 0.07, 0.03), receipt_delay_ms=(50, 500), rng=random.Random(1))
    registry = build_registry(sim)
    api = TestClient(TestServer(create_api_app(sim, api_token=TOKEN, registry=registry)))
    control = TestClient(TestServer(create_control_app(sim, registry=registry)))
    await api.start_server()
    await control.start_server()
    try:
        yield Apps(sim, api, control)
    finally:
        await api.close()
        await control.close()


async def stats(apps: Apps) -> dict:
    resp = await apps.control.get("/stats")
    assert resp.status == 200
    return await resp.json()


async def test_submission_needs_the_bearer_token(apps: Apps) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = await apps.api.post("/v1/sms", json=msg("m"), headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await apps.api.get("/v1/sms", params={"client_ref": "m"})
    assert resp.status == 401
    assert (await stats(apps))["submissions"] == 0


async def test_accepted_submission(apps: Apps) -> None:
    resp = await apps.api.post("/v1/sms", json=msg("m-1", **{"from": "Herald", "segments": 2}), headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "accepted"
    assert body["client_ref"] == "m-1"
    assert body["id"].startswith("sim-") and len(body["id"]) == 4 + 32
    s = await stats(apps)
    assert (s["submissions"], s["unique_client_refs"], s["duplicates"]) == (1, 1, {})
    assert s["receipts_pending"] == 1


async def test_duplicates_are_counted_not_deduplicated(apps: Apps) -> None:
    ids = []
    for ref in ["a", "b", "a", "c", "a", "b"]:
        resp = await apps.api.post("/v1/sms", json=msg(ref), headers=AUTH)
        assert resp.status == 200
        ids.append((await resp.json())["id"])
    assert len(set(ids)) == 6
    s = await stats(apps)
    assert s["submissions"] == 6
    assert s["unique_client_refs"] == 3
    assert s["duplicates"] == {"a": 3, "b": 2}
    resp = await apps.control.get("/stats/client_refs")
    assert await resp.json() == {"client_refs": {"a": 3, "b": 2, "c": 1}}

    resp = await apps.api.get("/v1/sms", params={"client_ref": "a"}, headers=AUTH)
    found = (await resp.json())["messages"]
    assert [m["id"] for m in found] == [ids[0], ids[2], ids[4]]
    assert all(m["client_ref"] == "a" and m["to"] == "+34600000001" and m["status"] == "accepted" for m in found)
    assert all(m["submitted_at"].endswith("Z") for m in found)

    resp = await apps.api.get("/v1/sms", params={"client_ref": "nope"}, headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"messages": []})
    resp = await apps.api.get("/v1/sms", headers=AUTH)
    assert resp.status == 400


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "invalid_request"),
        (json.dumps({"to": "+34600000001", "body": "x"}).encode(), "invalid_request"),
        (json.dumps({"to": "nope", "body": "x", "client_ref": "m"}).encode(), "invalid_request"),
        (json.dumps(msg("m", to="+99912345678")).encode(), "invalid_destination"),
    ],
)
async def test_invalid_submissions_are_400_and_not_recorded(apps: Apps, payload: bytes, code: str) -> None:
    resp = await apps.api.post("/v1/sms", data=payload, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code
    s = await stats(apps)
    assert s["submissions"] == 0
    assert s["rejected"] == {code: 1}


async def test_batch_keeps_request_order_and_counts_each_message(apps: Apps) -> None:
    messages = [
        msg("b-1"),
        msg("b-2", to="+99900000002"),
        {"to": "+34600000003", "body": "no ref"},
        msg("b-1"),
        msg("b-4", segments=3),
        "garbage",
    ]
    resp = await apps.api.post("/v1/sms/batch", json={"messages": messages}, headers=AUTH)
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [r["client_ref"] for r in results] == ["b-1", "b-2", None, "b-1", "b-4", None]
    assert [r.get("status") for r in results] == ["accepted", None, None, "accepted", "accepted", None]
    assert [r.get("error", {}).get("code") for r in results] == [
        None,
        "invalid_destination",
        "invalid_request",
        None,
        None,
        "invalid_request",
    ]
    assert len({r["id"] for r in results if "id" in r}) == 3
    s = await stats(apps)
    assert s["submissions"] == 3
    assert s["duplicates"] == {"b-1": 2}
    assert s["rejected"] == {"invalid_destination": 1, "invalid_request": 2}


async def test_batch_size_limit(apps: Apps) -> None:
    resp = await apps.api.post("/v1/sms/batch", json={"messages": [msg(f"m{i}") for i in range(1000)]}, headers=AUTH)
    assert resp.status == 200
    assert len((await resp.json())["results"]) == 1000
    resp = await apps.api.post("/v1/sms/batch", json={"messages": [msg(f"x{i}") for i in range(1001)]}, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    assert (await stats(apps))["submissions"] == 1000


async def control(apps: Apps, body: dict, expect: int = 200) -> dict:
    resp = await apps.control.post("/control", json=body)
    assert resp.status == expect, await resp.text()
    return await resp.json()


@pytest.mark.parametrize(
    ("status", "code"), [(503, "unavailable"), (429, "throttled"), (500, "unavailable"), (400, "rejected")]
)
async def test_fail_mode_answers_every_submission_with_the_status(apps: Apps, status: int, code: str) -> None:
    assert (await control(apps, {"mode": "fail", "status": status}))["mode"] == "fail"
    for _ in range(3):
        resp = await apps.api.post("/v1/sms", json=msg("m"), headers=AUTH)
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code
    resp = await apps.api.post("/v1/sms/batch", json={"messages": [msg("m")]}, headers=AUTH)
    assert resp.status == status
    s = await stats(apps)
    assert s["submissions"] == 0 and s["rejected"] == {code: 4}

    await control(apps, {"mode": "normal"})
    resp = await apps.api.post("/v1/sms", json=msg("m"), headers=AUTH)
    assert resp.status == 200


async def test_slow_mode_delays_answers(apps: Apps) -> None:
    await control(apps, {"mode": "slow", "delay_ms": 300})
    started = time.monotonic()
    resp = await apps.api.post("/v1/sms", json=msg("m"), headers=AUTH)
    assert resp.status == 200
    assert time.monotonic() - started >= 0.29
    await control(apps, {"mode": "normal"})
    started = time.monotonic()
    await apps.api.post("/v1/sms", json=msg("m"), headers=AUTH)
    assert time.monotonic() - started < 0.2


async def test_partial_fail_mode(apps: Apps) -> None:
    await control(apps, {"mode": "partial_fail", "fail_rate": 0.5, "status": 503})
    codes = []
    for i in range(200):
        resp = await apps.api.post("/v1/sms", json=msg(f"m{i}"), headers=AUTH)
        codes.append(resp.status)
    assert set(codes) == {200, 503}
    s = await stats(apps)
    assert s["submissions"] == codes.count(200)
    assert s["rejected"] == {"unavailable": codes.count(503)}
    assert 60 < codes.count(503) < 140

    await control(apps, {"mode": "partial_fail", "fail_rate": 1.0, "status": 503})
    resp = await apps.api.post("/v1/sms/batch", json={"messages": [msg("x"), msg("y")]}, headers=AUTH)
    results = (await resp.json())["results"]
    assert resp.status == 200
    assert [r["error"]["code"] for r in results] == ["unavailable", "unavailable"]
    assert (await stats(apps))["submissions"] == codes.count(200)


async def test_control_get_and_validation(apps: Apps) -> None:
    resp = await apps.control.get("/control")
    assert await resp.json() == {
        "mode": "normal",
        "outcome_rates": {"delivered": 0.9, "undelivered": 0.07, "failed": 0.03},
        "receipt_delay_ms": [50, 500],
        "listening": None,
    }
    conf = await control(
        apps, {"outcome_rates": {"delivered": 0.0, "undelivered": 1.0, "failed": 0.0}, "receipt_delay_ms": [1, 2]}
    )
    assert conf["outcome_rates"] == {"delivered": 0.0, "undelivered": 1.0, "failed": 0.0}
    assert conf["receipt_delay_ms"] == [1, 2]
    err = await control(apps, {"outcome_rates": {"delivered": 0.5, "undelivered": 0.1, "failed": 0.1}}, 400)
    assert err["error"]["code"] == "invalid_control"
    assert (await control(apps, {"mode": "slow"}, 400))["error"]["code"] == "invalid_control"
    resp = await apps.control.post("/control", data=b"{")
    assert resp.status == 400
    assert (await apps.control.get("/control")).status == 200
    assert (await (await apps.control.get("/control")).json())["receipt_delay_ms"] == [1, 2]


async def test_stats_reset(apps: Apps) -> None:
    for ref in ["a", "a", "b"]:
        await apps.api.post("/v1/sms", json=msg(ref), headers=AUTH)
    await apps.api.post("/v1/sms", json=msg("c", to="+9991"), headers=AUTH)
    resp = await apps.control.post("/stats/reset")
    assert resp.status == 200
    s = await stats(apps)
    assert (s["submissions"], s["unique_client_refs"], s["duplicates"], s["rejected"], s["receipts_pending"]) == (
        0,
        0,
        {},
        {},
        0,
    )
    assert await (await apps.control.get("/stats/client_refs")).json() == {"client_refs": {}}
    resp = await apps.api.get("/v1/sms", params={"client_ref": "a"}, headers=AUTH)
    assert (await resp.json())["messages"] == []


async def test_metrics_and_healthz_on_both_ports(apps: Apps) -> None:
    for _ in range(3):
        await apps.api.post("/v1/sms", json=msg("dup"), headers=AUTH)
    await apps.api.post("/v1/sms", json=msg("x", to="+99911111111"), headers=AUTH)
    for client in (apps.api, apps.control):
        resp = await client.get("/healthz")
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        resp = await client.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
        assert "herald_sim_submissions_total 3.0" in text
        assert 'herald_sim_client_refs{kind="duplicated"} 1.0' in text
        assert 'herald_sim_rejected_total{code="invalid_destination"} 1.0' in text
        assert "herald_sim_receipts_pending 3.0" in text
        assert 'herald_sim_mode{mode="normal"} 1.0' in text


# =================================================================================================
# The whole service on real loopback ports


@dataclass
class Receiver:
    """A receipt endpoint that records every POST and answers from a script of statuses."""

    statuses: list[int] = field(default_factory=list)  # consumed first; then 200
    posts: list[tuple[int, bytes, str | None]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        self.posts.append((status, body, request.headers.get(HEADER)))
        self.times.append(time.monotonic())
        return web.Response(status=status, text="ok" if status < 300 else f"refused with {status}")

    def accepted_receipts(self) -> list[dict]:
        return [r for status, body, _ in self.posts if 200 <= status < 300 for r in json.loads(body)["receipts"]]


async def start_receiver(receiver: Receiver, port: int = 0) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/v1/receipts/sim", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/receipts/sim"
    return runner


@dataclass
class Running:
    service: SimulatorService
    receiver: Receiver
    session: aiohttp.ClientSession

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.service.api_port}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.service.control_port}"

    async def submit(self, ref: str, **extra) -> aiohttp.ClientResponse:
        async with self.session.post(f"{self.api}/v1/sms", json=msg(ref, **extra), headers=AUTH) as resp:
            await resp.read()
            return resp

    async def set(self, body: dict) -> dict:
        async with self.session.post(f"{self.control}/control", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def stats(self) -> dict:
        async with self.session.get(f"{self.control}/stats") as resp:
            return await resp.json()


def settings(receipt_url: str, **overrides) -> SimulatorSettings:
    values = {
        "host": "127.0.0.1",
        "port": 0,
        "control_port": 0,
        "api_token": TOKEN,
        "receipt_url": receipt_url,
        "receipt_secret": RECEIPT_SECRET,
        "receipt_delay_min_ms": 10,
        "receipt_delay_max_ms": 60,
        "receipt_batch_max": 500,
        "receipt_linger_ms": 5,
        "seed": 11,
    }
    values.update(overrides)
    return SimulatorSettings(**values)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    runner = await start_receiver(rec)
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def running(receiver: Receiver, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    overrides = getattr(request, "param", {})
    service = SimulatorService(settings(receiver.url, **overrides))
    await service.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        yield Running(service, receiver, session)
    finally:
        await session.close()
        await service.stop()


def check_signatures(receiver: Receiver) -> None:
    assert receiver.posts
    for _, body, header in receiver.posts:
        # Signed for the gateway its URL names (/v1/receipts/sim), and only for it.
        verify(RECEIPT_SECRET.encode(), body, header, time.time(), context="sim")
        with pytest.raises(SignatureError):
            verify(b"another secret", body, header, time.time(), context="sim")
        with pytest.raises(SignatureError):
            verify(RECEIPT_SECRET.encode(), body, header, time.time(), context="other")


async def test_every_accepted_submission_gets_exactly_one_signed_receipt(running: Running) -> None:
    ids: dict[str, str] = {}
    for i in range(40):
        resp = await running.submit(f"m{i}")
        assert resp.status == 200
    async with running.session.post(
        f"{running.api}/v1/sms/batch",
        json={"messages": [msg(f"b{i}") for i in range(60)] + [msg("m0")]},
        headers=AUTH,
    ) as resp:
        assert resp.status == 200
    await wait_for(lambda: len(running.receiver.accepted_receipts()) >= 101)
    await asyncio.sleep(0.2)  # nothing more may arrive

    receipts = running.receiver.accepted_receipts()
    assert len(receipts) == 101
    assert len({r["id"] for r in receipts}) == 101
    refs = [r["client_ref"] for r in receipts]
    assert refs.count("m0") == 2 and len(set(refs)) == 100
    for r in receipts:
        assert set(r) == {"id", "client_ref", "status", "error_code", "done_at"}
        assert (r["status"], r["error_code"]) in {("delivered", "000"), ("undelivered", "001"), ("failed", "002")}
        assert r["done_at"].endswith("Z")
        ids[r["id"]] = r["status"]
    check_signatures(running.receiver)

    s = await running.stats()
    assert s["submissions"] == 101
    assert s["receipts_sent"] == 101
    assert s["receipts_pending"] == 0
    assert s["receipts_failed_posts"] == 0
    assert s["duplicates"] == {"m0": 2}
    assert s["sent_by_outcome"] == s["by_outcome"]
    assert s["receipt_posts"] == len(running.receiver.posts) < 101  # batched

    # The lookup now shows the final status of each submission.
    async with running.session.get(f"{running.api}/v1/sms", params={"client_ref": "m0"}, headers=AUTH) as resp:
        found = (await resp.json())["messages"]
    assert len(found) == 2
    assert all(m["status"] == ids[m["id"]] for m in found)


@pytest.mark.parametrize(
    "running", [{"receipt_batch_max": 7, "receipt_delay_min_ms": 0, "receipt_delay_max_ms": 0}], indirect=True
)
async def test_receipts_are_split_into_batches_of_at_most_batch_max(running: Running) -> None:
    async with running.session.post(
        f"{running.api}/v1/sms/batch", json={"messages": [msg(f"m{i}") for i in range(50)]}, headers=AUTH
    ) as resp:
        assert resp.status == 200
    await wait_for(lambda: len(running.receiver.accepted_receipts()) == 50)
    sizes = [len(json.loads(body)["receipts"]) for _, body, _ in running.receiver.posts]
    assert max(sizes) == 7 and sum(sizes) == 50


async def test_failed_posts_are_retried_with_backoff_without_loss_or_duplicates(running: Running) -> None:
    running.receiver.statuses = [503, 500]
    for i in range(5):
        assert (await running.submit(f"m{i}")).status == 200
    await wait_for(lambda: len(running.receiver.posts) == 2)
    # Submissions are still accepted, and fast, while the sender waits 1 s before its third try.
    started = time.monotonic()
    for i in range(5, 10):
        assert (await running.submit(f"m{i}")).status == 200
    assert time.monotonic() - started < 0.8
    assert len(running.receiver.posts) == 2

    await wait_for(lambda: len(running.receiver.accepted_receipts()) == 10, timeout=6)
    await asyncio.sleep(0.2)
    receipts = running.receiver.accepted_receipts()
    assert sorted(r["client_ref"] for r in receipts) == sorted(f"m{i}" for i in range(10))
    # the retried body is byte-for-byte the first one, freshly signed
    (s1, b1, _), (s2, b2, _), (s3, b3, _) = running.receiver.posts[:3]
    assert (s1, s2, s3) == (503, 500, 200)
    assert b1 == b2 == b3
    check_signatures(running.receiver)
    t = running.receiver.times
    assert 0.45 <= t[1] - t[0] < 2.0  # 0.5 s
    assert 0.95 <= t[2] - t[1] < 3.0  # then 1 s

    s = await running.stats()
    assert (s["receipts_sent"], s["receipts_pending"], s["receipts_failed_posts"]) == (10, 0, 0)
    assert s["receipt_post_retries"] == 2


async def test_a_4xx_answer_is_counted_and_not_retried(running: Running, caplog) -> None:
    running.receiver.statuses = [422]
    await running.set({"receipt_delay_ms": [0, 0]})
    with caplog.at_level(logging.ERROR, logger="herald.simulator"):
        for i in range(3):
            await running.submit(f"m{i}")
        await wait_for(lambda: len(running.receiver.posts) >= 1)
        await wait_for(lambda: running.service.sim.receipts_pending == 0)
        await asyncio.sleep(0.7)  # past the first backoff: no retry
    statuses = [p[0] for p in running.receiver.posts]
    assert statuses[0] == 422 and statuses.count(422) == 1
    s = await running.stats()
    assert s["receipts_failed_posts"] == 1
    assert s["receipts_sent"] + s["receipts_rejected"] == 3
    assert s["receipt_post_retries"] == 0
    assert "refused with 422" in caplog.text


async def test_receiver_down_then_up(receiver: Receiver) -> None:
    port = free_port()
    service = SimulatorService(settings(f"http://127.0.0.1:{port}/v1/receipts/sim"))
    await service.start()
    runner = None
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{service.api_port}/v1/sms", json=msg("m"), headers=AUTH) as resp:
                assert resp.status == 200
            await wait_for(lambda: service.sim.c.receipt_post_retries >= 1)
            assert service.sim.receipts_pending == 1
            runner = await start_receiver(receiver, port)
            await wait_for(lambda: len(receiver.accepted_receipts()) == 1, timeout=5)
            assert service.sim.stats()["receipts_sent"] == 1
            assert service.sim.receipts_pending == 0
    finally:
        await service.stop()
        if runner is not None:
            await runner.cleanup()


async def test_reset_during_retries_abandons_the_batch(running: Running) -> None:
    running.receiver.statuses = [503] * 100
    await running.submit("m")
    await wait_for(lambda: len(running.receiver.posts) == 1)
    async with running.session.post(f"{running.control}/stats/reset") as resp:
        assert resp.status == 200
    running.receiver.statuses.clear()
    await asyncio.sleep(0.8)
    assert len(running.receiver.posts) == 1  # not posted again
    s = await running.stats()
    assert (s["submissions"], s["receipts_sent"], s["receipts_pending"]) == (0, 0, 0)


async def test_refuse_mode_closes_the_port_and_normal_reopens_it(running: Running) -> None:
    assert (await running.submit("before")).status == 200  # a keep-alive connection is now pooled
    conf = await running.set({"mode": "refuse"})
    assert (conf["mode"], conf["listening"]) == ("refuse", False)

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.service.api_port), timeout=2).close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await running.submit("during")
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.post(f"{running.api}/v1/sms", json=msg("during"), headers=AUTH)

    # The control port stays up.
    async with running.session.get(f"{running.control}/healthz") as resp:
        assert resp.status == 200
    conf = await running.set({"mode": "normal"})
    assert (conf["mode"], conf["listening"]) == ("normal", True)
    assert (await running.submit("after")).status == 200

    s = await running.stats()
    assert s["submissions"] == 2
    assert await (await running.session.get(f"{running.control}/stats/client_refs")).json() == {
        "client_refs": {"before": 1, "after": 1}
    }


async def test_refuse_answers_a_request_in_progress_before_closing(running: Running) -> None:
    await running.set({"mode": "slow", "delay_ms": 300})
    in_progress = asyncio.create_task(running.submit("slow-one"))
    await asyncio.sleep(0.1)
    async with (
        aiohttp.ClientSession() as other,
        other.post(f"{running.control}/control", json={"mode": "refuse"}) as resp,
    ):
        assert resp.status == 200
    assert (await in_progress).status == 200  # accepted and answered: Herald knows its outcome
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.service.api_port), timeout=2).close()
    await running.set({"mode": "normal"})
    assert (await running.stats())["submissions"] == 1


@pytest.mark.parametrize("running", [{"receipt_delay_min_ms": 60_000, "receipt_delay_max_ms": 60_000}], indirect=True)
async def test_shutdown_drops_pending_receipts_and_says_how_many(running: Running, caplog) -> None:
    for i in range(4):
        await running.submit(f"m{i}")
    with caplog.at_level(logging.INFO, logger="herald.simulator"):
        await running.service.stop()
    assert "dropped 4 pending receipts" in caplog.text
    assert running.receiver.posts == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.service.api_port), timeout=2).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.service.control_port), timeout=2).close()
    # the fixture's stop() afterwards must be harmless
