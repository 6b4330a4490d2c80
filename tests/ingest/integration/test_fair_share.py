"""Fair share of the transactional lanes, through ingest's HTTP API on the real database and
broker: a tenant flooding "transactional" messages gets its burst on the priority topic and the
rest on the campaign topic, still transactional; another tenant's code stays on the priority topic."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.ingest.settings import IngestSettings
from shared.contracts import MessageAcceptedEvent
from shared.statuses import MessageType
from shared.topics import ACCEPTED, ACCEPTED_BULK
from tests.conftest import make_tenant
from tests.helpers import ingest_client, read_topic

pytestmark = pytest.mark.integration
BURST = 40


@pytest.fixture(scope="module")
async def client(env, pool) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(env, pool, IngestSettings(priority_share_per_s=1, priority_share_burst=BURST)) as c:
        yield c


def events(records) -> dict[str, MessageAcceptedEvent]:
    out = {}
    for r in records:
        e = MessageAcceptedEvent.model_validate_json(r.value)
        out[str(e.payload.message_id)] = e
    return out


async def test_a_flood_past_the_share_goes_on_the_campaign_lane_and_the_others_codes_do_not(client, env, pool) -> None:
    flood, other = await make_tenant(pool), await make_tenant(pool)
    batch = [{"to": f"+3460{i:07d}", "body": f"Your code is {i:06d}"} for i in range(300)]
    r = await client.post("/v1/messages/batch", json={"messages": batch}, headers=flood.headers)
    assert r.status_code == 202, r.text
    flood_ids = [x["message_id"] for x in r.json()["results"]]
    key = r.headers["Idempotency-Key"]
    r = await client.post("/v1/messages", json={"to": "+34699999999", "body": "Your code is 424242"}, headers=other.headers)
    assert r.status_code == 202, r.text
    code = r.json()["message_id"]
    # Replayed (same key): the same ids, and the replay does not get the priority lane back.
    again = await client.post("/v1/messages/batch", json={"messages": batch}, headers={**flood.headers, "Idempotency-Key": key})
    assert again.status_code == 202 and [x["message_id"] for x in again.json()["results"]] == flood_ids

    wanted = set(flood_ids) | {code}

    def seen(topic_records) -> set[str]:
        return set(events(topic_records)) & wanted

    priority = events(await read_topic(env.bootstrap, ACCEPTED.name(env.prefix), lambda rs: code in seen(rs), timeout_s=30))
    bulk = events(await read_topic(env.bootstrap, ACCEPTED_BULK.name(env.prefix),
                                   lambda rs: len(seen(rs)) >= len(flood_ids) - BURST, timeout_s=30))
    on_priority = [m for m in flood_ids if m in priority]
    on_bulk = [m for m in flood_ids if m in bulk]
    assert BURST <= len(on_priority) <= BURST + 2, len(on_priority)  # the burst (and a token or two of rate)
    assert set(on_priority) | set(on_bulk) == set(flood_ids)
    assert all(bulk[m].payload.type is MessageType.TRANSACTIONAL and bulk[m].payload.bulk_lane for m in on_bulk)
    assert not any(priority[m].payload.bulk_lane for m in on_priority)
    assert code in priority and not priority[code].payload.bulk_lane
