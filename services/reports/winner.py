"""The A/B auto-winner: for campaigns in state ``testing`` whose ``decide_at`` has passed,
test the variants on the campaign's metric and publish the winner.

ingest owns ``campaigns``: reports does not write it. It publishes
``herald.campaigns.winners.v1`` (the winner and ``winner_detail``: the test's numbers and how the
winner was picked); ingest's campaign-winners lane stores them and sets ``phase = 'winner'`` and
``state = 'running'`` while the campaign is still ``testing``; ingest's launcher then sends the
winner to the rest of the audience. Every reports instance runs the worker; the decision's row in
``ab_winner_decisions`` (reports' own), taken and published in one transaction, makes one
instance judge each campaign, once. A campaign still ``testing`` ``republish_s`` after its
decision (the event was not applied yet) is judged and published again; ingest applies the first.
When no variant wins significantly, the best by the metric is picked and the detail says so;
when no variant has any trials, none is picked (``picked_by: no_data``) and the launcher sends
the rest of the audience the variants' split.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg

from services.reports import metrics
from services.reports.abtest import decide
from services.reports.campaign_report import METRICS, ab_rows, samples
from shared.contracts import CampaignWinnerDecided, CampaignWinnerEvent, utcnow
from shared.kafka import Outgoing, Publisher
from shared.periodic import run_periodically
from shared.topics import CAMPAIGN_WINNERS

log = logging.getLogger(__name__)

_DUE = """
SELECT c.campaign_id, c.tenant_id, c.variants, c.ab_test FROM shared_campaign_reports c
WHERE c.state = 'testing' AND c.decide_at <= now()
  AND NOT EXISTS (SELECT 1 FROM ab_winner_decisions d
                  WHERE d.campaign_id = c.campaign_id AND d.decided_at > now() - make_interval(secs => $2))
ORDER BY c.decide_at LIMIT $1
"""
# Take the decision: a row no other instance holds (its insert waits for ours to commit, then
# finds the row fresh and does nothing), or one older than the republish time.
_TAKE = """
INSERT INTO ab_winner_decisions AS d (campaign_id, decided_at) SELECT unnest($1::uuid[]), now()
ON CONFLICT (campaign_id) DO UPDATE SET decided_at = now()
WHERE d.decided_at <= now() - make_interval(secs => $2)
RETURNING campaign_id
"""


def judge(campaign: dict[str, Any], rows: list[Any], alpha: float) -> tuple[str | None, dict[str, Any]]:
    """The winner's name and the detail to store. Pure."""
    ab_test = campaign.get("ab_test") if isinstance(campaign.get("ab_test"), dict) else {}
    metric = ab_test.get("metric") if ab_test.get("metric") in METRICS else "click_rate"
    planned = [v["name"] for v in campaign.get("variants") or [] if isinstance(v, dict) and v.get("name")]
    found = samples(rows, metric, planned)  # a variant that sent nothing is a zero sample
    decision = decide(found, alpha=alpha, min_sample=int(ab_test.get("min_sample") or 0), metric=metric)
    detail = dict(decision.detail)
    detail["decided_at"] = utcnow().isoformat()
    if decision.significant:
        detail["picked_by"] = "significant"
        detail["note"] = f"{decision.winner} is significantly better on {metric}"
    elif decision.winner is not None:
        detail["picked_by"] = "best_rate"
        detail["note"] = f"no variant won significantly ({decision.reason}); {decision.winner} has the best {metric}"
    else:
        detail["picked_by"] = "no_data"
        detail["note"] = f"no variant has any {metric} trials yet; the rest of the audience gets the split"
    return decision.winner, detail


class WinnerWorker:
    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, interval_s: float, alpha: float,
                 batch: int = 20, republish_s: float = 60.0) -> None:
        self.pool = pool
        self.publisher = publisher
        self.interval_s = interval_s
        self.alpha = alpha
        self.batch = batch
        self.republish_s = republish_s
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def decide_once(self) -> list[tuple[uuid.UUID, str | None]]:
        """Judge the due campaigns this instance takes and publish their winners (one batch)."""
        async with self.pool.acquire() as conn, conn.transaction():
            due = {r["campaign_id"]: dict(r) for r in await conn.fetch(_DUE, self.batch, self.republish_s)}
            if not due:
                return []
            taken = [r["campaign_id"] for r in await conn.fetch(_TAKE, list(due), self.republish_s)]
            decided, events = [], []
            for campaign_id in taken:
                campaign = due[campaign_id]
                winner, detail = judge(campaign, await ab_rows(conn, campaign_id, None), self.alpha)
                decision = CampaignWinnerDecided(campaign_id=campaign_id, winner=winner, detail=detail,
                                                 decided_at=utcnow())
                events.append(Outgoing(CAMPAIGN_WINNERS, str(campaign_id),
                                       CampaignWinnerEvent(tenant=campaign["tenant_id"], payload=decision)))
                decided.append((campaign_id, winner, campaign["tenant_id"], detail))
            # Published before the rows commit: a broker that cannot take them rolls the decisions back.
            await self.publisher.publish(events)
        for campaign_id, winner, tenant, detail in decided:
            metrics.AB_WINNERS.labels(detail.get("picked_by", "none")).inc()
            log.info(
                "A/B winner picked",
                extra={"campaign_id": str(campaign_id), "tenant": tenant, "winner": winner,
                       "picked_by": detail.get("picked_by"), "reason": detail.get("reason")},
            )
        return [(c, w) for c, w, _, _ in decided]

    async def run(self) -> None:
        await run_periodically("ab_winner", self.decide_once, self.interval_s, self._stop, logger=log,
                               error_message="A/B winner pass failed")
