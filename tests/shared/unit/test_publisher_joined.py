"""Publisher.publish_joined: the records of concurrent single sends go to the producer together,
and each caller returns only once its own record is acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.kafka import Outgoing, Publisher
from shared.topics import ACCEPTED


class Event:
    def __init__(self, text: str) -> None:
        self.text = text

    def model_dump_json(self) -> str:
        return self.text


class Producer:
    """Hands out one ack future per record; the test decides when the broker acks."""

    def __init__(self) -> None:
        self.acks: dict[str, asyncio.Future[Any]] = {}
        self.sent: list[str] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append(value.decode())
        future = asyncio.get_running_loop().create_future()
        self.acks[value.decode()] = future
        return future


def item(text: str) -> Outgoing:
    return Outgoing(ACCEPTED, "+34600000001", Event(text))  # type: ignore[arg-type]


async def test_each_caller_waits_for_its_own_ack_and_gets_its_own_error() -> None:
    producer = Producer()
    publisher = Publisher(producer, "t.", "ingest")
    calls = [asyncio.ensure_future(publisher.publish_joined([item(f"m{i}")])) for i in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(producer.sent) == [f"m{i}" for i in range(5)], "all five handed over together"
    producer.acks["m0"].set_result(None)
    producer.acks["m1"].set_exception(ConnectionError("broker away"))
    await asyncio.sleep(0.01)
    assert not any(c.done() for c in calls), "no answer before every record of the group is settled"
    for i in (2, 3, 4):
        producer.acks[f"m{i}"].set_result(None)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] is None and results[2:] == [None, None, None]
    assert isinstance(results[1], ConnectionError)


async def test_a_record_not_acked_keeps_its_caller_waiting() -> None:
    producer = Producer()
    publisher = Publisher(producer, "t.", "ingest")
    call = asyncio.ensure_future(publisher.publish_joined([item("only")]))
    await asyncio.sleep(0.01)
    assert producer.sent == ["only"] and not call.done()
    producer.acks["only"].set_result(None)
    assert await call is None


async def test_nothing_to_publish_returns_at_once() -> None:
    publisher = Publisher(Producer(), "t.", "ingest")
    await publisher.publish_joined([])
