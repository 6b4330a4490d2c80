"""The dispatcher's Sender with in-memory gateways: failover, retries, expiry, priority."""

import asyncio
import uuid
from datetime import timedelta

import pytest
from pydantic import SecretStr

from services.dispatcher.gateways.base import Outcome, Refused, Submitted
from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.handlers import Job, Sender, gateways_to_ask
from services.dispatcher.settings import DispatcherSettings, RouteConfig
from shared.contracts import MessageOutbound, utcnow


class FakeGateway:
    def __init__(self, name: str, refuse: bool = False) -> None:
        self.name = name
        self.refuse = refuse
        self.got: list[str] = []

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        if self.refuse:
            return [Refused("connection_error", "refused", True)] * len(messages)
        self.got += [str(m.message_id) for m in messages]
        return [Submitted(f"{self.name}-{m.message_id}") for m in messages]

    async def lookup(self, message: MessageOutbound) -> str | None:
        return None

    async def close(self) -> None:
        pass


def settings(**kw) -> DispatcherSettings:
    gateways = [HeraldHttpConfig(name=n, url="http://x", api_token=SecretStr("t"), rate_per_s=10_000) for n in ("a", "b")]
    return DispatcherSettings(gateways=gateways, retry_base_s=0.01, retry_cap_s=0.02, failover_min_samples=2, **kw)


def job(kind: str = "transactional", expires_in: float | None = None) -> Job:
    now = utcnow()
    m = MessageOutbound(message_id=uuid.uuid4(), to="+34600000001", country="ES", body="x", type=kind, encoding="GSM-7",
                        segments=1, source="api", accepted_at=now, released_at=now,
                        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None)
    return Job("acme", "t", m)


async def test_refused_jobs_fail_over_to_the_next_gateway() -> None:
    a, b = FakeGateway("a", refuse=True), FakeGateway("b")
    sender = Sender({"a": a, "b": b}, settings())
    finished, unknown = await sender.send([job() for _ in range(5)])
    assert not unknown and len(finished) == 5
    assert {f.gateway for _, f in finished} == {"b"}
    assert all(dict(f.detail) == {"route": "default", "failover_from": "a"} and f.attempts == 2 for _, f in finished)
    # a's breaker is open now: new traffic goes straight to b
    finished, _ = await sender.send([job()])
    assert finished[0][1].attempts == 1 and finished[0][1].gateway == "b"


async def test_routes_pick_the_gateway() -> None:
    a, b = FakeGateway("a"), FakeGateway("b")
    sender = Sender({"a": a, "b": b}, settings(routes=[RouteConfig(name="mk", gateways=["b"], types=["marketing"])]))
    finished, _ = await sender.send([job("marketing"), job("transactional")])
    assert [f.gateway for _, f in finished] == ["b", "a"]


async def test_expired_messages_are_not_sent() -> None:
    a, b = FakeGateway("a"), FakeGateway("b")
    sender = Sender({"a": a, "b": b}, settings())
    finished, _ = await sender.send([job(expires_in=-1), job(expires_in=60)])
    states = [(f.state, f.reason_code) for _, f in finished]
    assert states == [("expired", "validity_expired"), ("submitted", None)]
    assert len(a.got) == 1


async def test_bulk_waits_while_priority_is_sending() -> None:
    order: list[str] = []

    class Slow(FakeGateway):
        async def submit_many(self, messages):
            order.append(f"{messages[0].type.value} start")
            await asyncio.sleep(0.05)
            order.append(f"{messages[0].type.value} end")
            return await super().submit_many(messages)

    sender = Sender({"a": Slow("a"), "b": Slow("b")}, settings())
    priority = asyncio.create_task(sender.send([job()], priority=True))
    await asyncio.sleep(0)  # the priority send has started
    bulk = asyncio.create_task(sender.send([job("marketing")], priority=False))
    await asyncio.gather(priority, bulk)
    assert order == ["transactional start", "transactional end", "marketing start", "marketing end"]


class StuckGateway(FakeGateway):
    """Holds every submission until released; records which were cancelled."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = 0
        self.cancelled = 0
        self.release = asyncio.Event()

    async def submit_many(self, messages: list[MessageOutbound]) -> list[Outcome]:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().submit_many(messages)


class FailingThrottle:
    """Lets the first chunk through, then fails as an unreachable shared throttle (database) would."""

    def __init__(self) -> None:
        self.calls = 0

    async def reserve(self, gateway: str, segments: float) -> float:
        self.calls += 1
        if self.calls > 1:
            await asyncio.sleep(0.05)  # the first chunk is in flight by now
            raise ConnectionResetError("database connection lost")
        return 0.0

    async def take_free(self, gateway: str, segments: float) -> float:
        return await self.reserve(gateway, segments)


async def test_a_failing_batch_cancels_its_submissions_in_flight() -> None:
    a = StuckGateway("a")
    sender = Sender({"a": a, "b": FakeGateway("b")}, settings(), throttle=FailingThrottle())
    sender.chunk["a"] = 2
    with pytest.raises(ConnectionResetError):  # the error itself, for the consumer to classify
        await asyncio.wait_for(sender.send([job() for _ in range(4)]), 5)
    assert a.started == 1 and a.cancelled == 1  # nothing keeps submitting for a failed batch
    a.release.set()
    await asyncio.sleep(0.05)
    assert a.got == []


def test_reconciliation_asks_every_gateway_that_got_an_attempt() -> None:
    attempts = [{"gateway": "a", "outcome": "unknown"}, {"gateway": "b", "outcome": "refused:x"}, {"gateway": "a"}]
    assert gateways_to_ask(attempts, ["b", "c"]) == ["a", "b"]  # not the route's (health) choice
    assert gateways_to_ask([], ["a", "b"]) == []  # never attempted: nothing to ask, send it
    assert gateways_to_ask(None, ["a", "b"]) == ["a", "b"]  # no record (older claim): every gateway of its route
