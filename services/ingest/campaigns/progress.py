"""Where a tenant's campaign messages leave the lanes (docs/operations.md, fair share of the
campaign lanes): per tenant, the newest ``accepted_at`` of its campaign messages that a stage is
done with (``campaign_lane_progress``, owned by ingest). The campaign launcher counts what the
tenant published after that as still in flight (services/ingest/campaigns/pacing.py).

ingest derives the mark from ``messages.status.v1`` (its ``links`` lane, which reads the statuses
anyway): a status that takes a campaign message out of the lanes carries ``campaign_page_at``,
the message's ``accepted_at``. The dispatcher sets it on every status of a campaign message
(submitted, failed, expired, unknown); the scheduler on a campaign message it suppresses or
holds (quiet hours, a paused campaign), but only for a tenant none of whose campaign messages in
the batch went on to the dispatcher (services/scheduler/domain.py, ``marking_tenants``). Each Kafka
batch moves each tenant's mark once, in one statement, never back (``greatest``): a redelivered
batch changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg

from shared.contracts import MessageStatusEvent
from shared.kafka import Incoming, Outgoing


def newest_by_tenant(items: Iterable[tuple[str, datetime]]) -> dict[str, datetime]:
    """The newest ``accepted_at`` per tenant of (tenant, accepted_at) pairs."""
    out: dict[str, datetime] = {}
    for tenant, at in items:
        if tenant not in out or at > out[tenant]:
            out[tenant] = at
    return out


def lane_marks(events: Iterable[object]) -> dict[str, datetime]:
    """Each tenant's new mark from a batch of status events: the newest ``campaign_page_at``
    (statuses without one, and other events, do not move it)."""
    return newest_by_tenant(
        (e.tenant, e.payload.campaign_page_at) for e in events
        if isinstance(e, MessageStatusEvent) and e.payload.campaign_page_at is not None
    )


class CampaignProgress:
    """``campaign_lane_progress``: one row per tenant, moved forward only."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def handled(self, up_to: dict[str, datetime]) -> int:
        """Move each tenant's mark up to ``up_to`` (never back); returns how many marks moved."""
        if not up_to:
            return 0
        tenants = sorted(up_to)  # one row per tenant, locked in the same order by every instance
        status = await self.pool.execute(
            "INSERT INTO campaign_lane_progress (tenant_id, handled_up_to)"
            " SELECT * FROM unnest($1::text[], $2::timestamptz[])"
            " ON CONFLICT (tenant_id) DO UPDATE SET handled_up_to = excluded.handled_up_to, updated_at = now()"
            " WHERE excluded.handled_up_to > campaign_lane_progress.handled_up_to",
            tenants, [up_to[t] for t in tenants],
        )
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows written>": a mark already there is not


class LaneProgressHandler:
    """The statuses' part of the launcher's pacing: one statement per Kafka batch."""

    def __init__(self, progress: CampaignProgress) -> None:
        self.progress = progress

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        await self.progress.handled(lane_marks(item.event for item in batch))
        return []
