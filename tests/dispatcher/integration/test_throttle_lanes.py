"""The shared gateway throttle (PostgresThrottle) between the dispatcher's lanes in processes of
their own: the campaign lane takes tokens only when the bucket holds them, so a one-time code
sent by the priority lane never waits behind a campaign chunk's reservation (up to ``batch_size``
segments booked ahead: a third of a second at 300/s, measured as the largest cost of a hostile
tenant's campaign to another tenant's codes, docs/operations.md#hostile-tenants-tested)."""

from __future__ import annotations

import asyncio
import time
import uuid

from pydantic import SecretStr

from services.dispatcher.gateways.herald_http import HeraldHttpConfig
from services.dispatcher.handlers import Sender
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.throttle import PostgresThrottle
from tests.dispatcher.unit.test_sender import FakeGateway, job

RATE = 300.0


async def test_a_priority_send_does_not_wait_behind_the_campaign_lanes_reservation(pool) -> None:
    name = f"g{uuid.uuid4().hex[:10]}"  # a bucket of its own
    settings = DispatcherSettings(gateways=[HeraldHttpConfig(name=name, url="http://x", api_token=SecretStr("t"),
                                                             rate_per_s=RATE, batch_size=100)])
    limits = {name: (RATE, None)}
    bulk_throttle, priority_throttle = PostgresThrottle(pool, limits), PostgresThrottle(pool, limits)
    await bulk_throttle.setup()
    bulk_gateway, priority_gateway = FakeGateway(name), FakeGateway(name)
    bulk = Sender({name: bulk_gateway}, settings, bulk_throttle)  # the campaign lane's process
    priority = Sender({name: priority_gateway}, settings, priority_throttle)  # the priority lane's

    campaign = asyncio.create_task(bulk.send([job("marketing") for _ in range(3000)], priority=False))  # 10 s of the gateway
    await asyncio.sleep(1.5)  # past the bucket's first 300: the campaign lane is paced now
    waits = []
    for _ in range(8):
        started = time.monotonic()
        finished, unknown = await priority.send([job()], priority=True)
        waits.append(round(time.monotonic() - started, 3))
        assert len(finished) == 1 and not unknown
        await asyncio.sleep(0.13)
    assert not campaign.done(), f"the campaign ended before the codes were timed: {waits}"
    await campaign
    # a code waits for one segment's token (3 ms at 300/s) and two round trips, not for a chunk
    assert max(waits) < 0.15, waits
    assert len(bulk_gateway.got) == 3000 and len(priority_gateway.got) == 8
