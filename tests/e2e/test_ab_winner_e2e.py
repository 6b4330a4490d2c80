"""An A/B campaign through all four services and the simulator: the test share goes out, the
campaign waits in ``testing``; once its wait is over reports judges the variants and publishes
the winner (herald.campaigns.winners.v1), ingest's campaign-winners lane starts the winner phase,
and the launcher sends the rest of the audience. reports never writes ``campaigns``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from herald_tools.demo import demo_numbers, marketing_countries
from herald_tools.stack import Stack
from services.ingest.campaigns.domain import BUCKETS, _buckets, message_id_for
from tests.conftest import make_tenant
from tests.e2e.test_campaigns_e2e import contact_ids, simulator_refs
from tests.e2e.test_tenant_disable_e2e import ab_campaign
from tests.helpers import new_stack, running, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(new_stack(env, tmp_path_factory.mktemp("logs"), HERALD_AB_WINNER_INTERVAL_S="0.5")) as s:
        yield s


async def test_the_winner_reports_picks_is_sent_to_the_rest_of_the_audience(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    numbers = list(dict.fromkeys(demo_numbers(60, seed=71, countries=marketing_countries(True))))
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=60) as client:
        cid = await ab_campaign(client, numbers, "abwin")  # test share half the audience, wait an hour
        ids = await contact_ids(pool, tenant, numbers)
        assert (await client.post(f"/v1/campaigns/{cid}/launch")).status_code == 200
        campaign = uuid.UUID(cid)
        every = {str(message_id_for(campaign, c)) for c in ids.values()}
        # the test share (50 %: ab_campaign), by the launcher's own assignment
        test_share = {str(message_id_for(campaign, c)) for c in ids.values() if _buckets(campaign, c)[0] < BUCKETS // 2}

        async def testing():
            state = await pool.fetchval("SELECT state FROM campaigns WHERE campaign_id = $1", campaign)
            return state == "testing" and test_share <= set(simulator_refs(stack))

        await wait_for(testing, timeout_s=90)
        assert 0 < len(test_share) < len(every)
        assert not (every - test_share) & set(simulator_refs(stack)), "only the test share went out before the winner"
        # The hour passes: the test stands in for the clock.
        await pool.execute("UPDATE campaigns SET decide_at = now() WHERE campaign_id = $1", campaign)

        async def all_sent():
            return every <= set(simulator_refs(stack))

        await wait_for(all_sent, timeout_s=120)
        row = await pool.fetchrow("SELECT state, phase, winner, winner_detail FROM campaigns WHERE campaign_id = $1",
                                  campaign)
        assert row["phase"] == "winner" and row["state"] in ("running", "completed"), dict(row)
        assert row["winner_detail"]["picked_by"] in ("significant", "best_rate", "no_data")
        assert row["winner"] == row["winner_detail"]["winner"]
        assert await pool.fetchval("SELECT count(*) FROM ab_winner_decisions WHERE campaign_id = $1", campaign) == 1
        rest = [uuid.UUID(m) for m in every - test_share]
        variants = {r["variant"] for r in await pool.fetch(
            "SELECT variant FROM messages WHERE message_id = ANY($1::uuid[])", rest)}
        if row["winner"] is not None:  # the rest of the audience got the winner
            assert variants == {row["winner"]}, variants
