"""The campaign-winners lane: ingest applies the A/B winners reports publishes.

Consumes ``campaigns.winners.v1`` in its own consumer group (``{prefix}ingest.campaign-winners``).
ingest owns ``campaigns``; reports judges the A/B test and publishes the winner. Each batch is
applied in one statement: the winner and its detail are stored and the winner phase starts
(``phase = 'winner'``, ``state = 'running'``), only for a campaign of the event's tenant that is
still ``testing``. So a redelivered or republished decision, or one for a campaign paused or
cancelled meanwhile, changes nothing (at-least-once is harmless). The launcher then sends the
winner to the rest of the audience.
"""

from __future__ import annotations

import json
import logging
import uuid

import asyncpg

from shared.contracts import CampaignWinnerEvent
from shared.kafka import Incoming, Outgoing

log = logging.getLogger("herald.ingest.campaigns")

_APPLY = """
UPDATE campaigns c SET winner = u.winner, winner_detail = u.detail::jsonb, phase = 'winner', state = 'running',
       updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS u(campaign_id, tenant_id, winner, detail)
WHERE c.campaign_id = u.campaign_id AND c.tenant_id = u.tenant_id AND c.state = 'testing'
RETURNING c.campaign_id, c.tenant_id, c.winner
"""


def decisions(batch: list[Incoming]) -> list[CampaignWinnerEvent]:
    """The batch's winner events, the first of each campaign (a later one is a republication). Pure."""
    seen: set[uuid.UUID] = set()
    out = []
    for event in (item.event for item in batch):
        if isinstance(event, CampaignWinnerEvent) and event.payload.campaign_id not in seen:
            seen.add(event.payload.campaign_id)
            out.append(event)
    return out


class CampaignWinnersHandler:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        events = decisions(batch)
        if not events:
            return []
        rows = await self.pool.fetch(
            _APPLY,
            [e.payload.campaign_id for e in events],
            [e.tenant for e in events],
            [e.payload.winner for e in events],
            [json.dumps(e.payload.detail) for e in events],
        )
        for row in rows:
            log.info("A/B winner phase started", extra={"campaign_id": str(row["campaign_id"]),
                                                        "tenant": row["tenant_id"], "winner": row["winner"]})
        return []
