"""Where a tenant's campaign messages leave the lanes (docs/operations.md, fair share of the
campaign lanes): per tenant, the newest ``accepted_at`` of its campaign messages that a stage is
done with. The campaign launcher counts what the tenant published after that as still in flight
(services/ingest/campaigns/pacing.py).

The dispatcher marks every campaign message it handles (sent, refused, sent back to the
scheduler, skipped as claimed). The scheduler marks those it does not pass on (suppressed, held
for quiet hours or a paused campaign), but only for a tenant none of whose campaign messages in
the batch went on to the dispatcher: those may still be queued there, behind the mark.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg


def newest_by_tenant(items: Iterable[tuple[str, datetime]]) -> dict[str, datetime]:
    """The newest ``accepted_at`` per tenant of (tenant, accepted_at) pairs."""
    out: dict[str, datetime] = {}
    for tenant, at in items:
        if tenant not in out or at > out[tenant]:
            out[tenant] = at
    return out


def gated_marks(items: Iterable[tuple[str, datetime, bool]]) -> dict[str, datetime]:
    """The scheduler's marks from (tenant, accepted_at, passed on to the dispatcher) of a batch's
    campaign messages: only tenants none of whose messages were passed on."""
    items = list(items)
    passed = {tenant for tenant, _, forwarded in items if forwarded}
    return newest_by_tenant((tenant, at) for tenant, at, forwarded in items if tenant not in passed and not forwarded)


class CampaignProgress:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def handled(self, up_to: dict[str, datetime]) -> None:
        if not up_to:
            return
        tenants = sorted(up_to)  # one row per tenant, locked in the same order by every instance
        await self.pool.execute(
            "INSERT INTO campaign_lane_progress (tenant_id, handled_up_to)"
            " SELECT * FROM unnest($1::text[], $2::timestamptz[])"
            " ON CONFLICT (tenant_id) DO UPDATE SET updated_at = now(),"
            "   handled_up_to = greatest(campaign_lane_progress.handled_up_to, excluded.handled_up_to)",
            tenants, [up_to[t] for t in tenants],
        )
