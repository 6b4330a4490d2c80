"""The A/B auto-winner: for campaigns in state ``testing`` whose ``decide_at`` has passed,
test the variants on the campaign's metric and record the winner.

It writes ``winner``, ``winner_detail`` (the test's numbers and how the winner was picked),
``phase = 'winner'`` and ``state = 'running'``; ingest's launcher then sends the winner to
the rest of the audience. Every reports instance runs it; ``FOR UPDATE SKIP LOCKED`` makes
one instance judge each campaign, once (the update only applies while still ``testing``).
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
from shared.contracts import utcnow

log = logging.getLogger(__name__)

_DUE = """
SELECT campaign_id, tenant_id, variants, ab_test FROM campaigns
WHERE state = 'testing' AND decide_at <= now()
ORDER BY decide_at LIMIT $1 FOR UPDATE SKIP LOCKED
"""
_DECIDE = """
UPDATE campaigns SET winner = $2, winner_detail = $3, phase = 'winner', state = 'running', updated_at = now()
WHERE campaign_id = $1 AND state = 'testing'
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
    def __init__(self, pool: asyncpg.Pool, interval_s: float, alpha: float, batch: int = 20) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.alpha = alpha
        self.batch = batch
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def decide_once(self) -> list[tuple[uuid.UUID, str | None]]:
        decided = []
        async with self.pool.acquire() as conn, conn.transaction():
            for row in await conn.fetch(_DUE, self.batch):
                campaign = dict(row)
                winner, detail = judge(campaign, await ab_rows(conn, row["campaign_id"], None), self.alpha)
                await conn.execute(_DECIDE, row["campaign_id"], winner, detail)
                decided.append((row["campaign_id"], winner))
                metrics.AB_WINNERS.labels(detail.get("picked_by", "none")).inc()
                log.info(
                    "A/B winner picked",
                    extra={"campaign_id": str(row["campaign_id"]), "tenant": row["tenant_id"], "winner": winner,
                           "picked_by": detail.get("picked_by"), "reason": detail.get("reason")},
                )
        return decided

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.decide_once()
            except Exception:
                log.exception("A/B winner pass failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except TimeoutError:
                pass
