"""Fair share of the campaign lanes, through all four services and the simulator: tenant A
launches a campaign whose audience takes half a minute at the (throttled) gateway, then tenant B
launches a small one. B's messages are all submitted within seconds, long before A's backlog
drains, because the launcher keeps each tenant's campaign messages in flight below a bound
instead of queueing A's whole audience in Kafka ahead of B's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from services.ingest.campaigns.domain import message_id_for
from tests.conftest import make_tenant
from tests.e2e.test_campaigns_e2e import contact_ids, setup_campaign, simulator_refs
from tests.helpers import new_stack, running, wait_for

pytestmark = pytest.mark.e2e
GATEWAY_RATE = 40.0  # messages a second: A's 1,200 take 30 s
BIG, SMALL = 1200, 30
IN_FLIGHT = 100  # each tenant's bound of campaign messages in the lanes


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("logs"), gateway_rate=GATEWAY_RATE,
                            HERALD_CONSUMER_MAX_RECORDS="20", HERALD_CAMPAIGN_PAGE_SIZE="50",
                            HERALD_CAMPAIGN_TENANT_IN_FLIGHT=str(IN_FLIGHT))) as s:
        yield s


async def campaign_ids(pool, client: httpx.AsyncClient, tenant, numbers: list[str], tag: str) -> tuple[str, set[str]]:
    cid = await setup_campaign(client, numbers, tag)
    ids = await contact_ids(pool, tenant, numbers)
    assert len(ids) == len(numbers)
    return cid, {str(message_id_for(uuid.UUID(cid), c)) for c in ids.values()}


async def test_a_second_tenants_campaign_goes_out_while_the_first_ones_backlog_waits(stack: Stack, pool) -> None:
    a, b = await make_tenant(pool), await make_tenant(pool)
    numbers = demo_numbers(BIG + SMALL, seed=83, countries=marketing_countries(True), unique=True)
    ca = httpx.AsyncClient(base_url=stack.url("ingest"), headers=a.headers, timeout=60)
    cb = httpx.AsyncClient(base_url=stack.url("ingest"), headers=b.headers, timeout=60)
    async with ca, cb:
        a_cid, a_msgs = await campaign_ids(pool, ca, a, numbers[:BIG], "big")
        b_cid, b_msgs = await campaign_ids(pool, cb, b, numbers[BIG:BIG + SMALL], "small")
        assert (await ca.post(f"/v1/campaigns/{a_cid}/launch")).status_code == 200

        async def a_started() -> bool:
            return len(a_msgs & simulator_refs(stack).keys()) >= 40

        await wait_for(a_started, timeout_s=60)
        await asyncio.sleep(2)  # the old launcher has put all of A's audience in Kafka by now
        assert (await cb.post(f"/v1/campaigns/{b_cid}/launch")).status_code == 200
        launched = time.monotonic()

        async def b_done() -> set[str] | None:
            sent = simulator_refs(stack).keys()
            return set(a_msgs & sent) if b_msgs <= sent else None

        a_sent = await wait_for(b_done, timeout_s=120)
        took = time.monotonic() - launched
        a_waiting = BIG - len(a_sent)
        # Old code: B's messages sit behind every one of A's in the partitions, so B finishes when
        # A's backlog is about gone (~30 s after A started). Now B waits behind A's bound only.
        assert a_waiting >= 400, f"B's campaign finished {took:.1f} s after launch, when only {a_waiting} of A's were left"
        assert took < 20, f"B's {SMALL} messages took {took:.1f} s"

        async def a_done() -> bool:
            return a_msgs <= simulator_refs(stack).keys()

        await wait_for(a_done, timeout_s=120)  # A's campaign still goes out whole
        refs = simulator_refs(stack)
        assert all(refs[m] == 1 for m in a_msgs | b_msgs), "each message submitted once"
        rows = await pool.fetch("SELECT campaign_id::text, published FROM campaigns WHERE campaign_id = ANY($1::uuid[])",
                                [uuid.UUID(a_cid), uuid.UUID(b_cid)])
        assert {r["campaign_id"]: r["published"] for r in rows} == {a_cid: BIG, b_cid: SMALL}
