"""Fair share of the campaign lanes between tenants.

Kafka partitions are first in, first out: whatever a launcher publishes for one tenant's large
campaign sits in the campaign lanes ahead of everything published after it, so another tenant's
campaign launched a minute later waits until the first one has gone through the gateway. No
consumer can reorder that backlog without holding it (and with it the partition's offsets).
The backlog therefore must not be in Kafka: the launcher keeps each tenant's campaign messages
*in flight* (published, not yet handled by the dispatcher) below a bound, and leaves the rest
of the audience in PostgreSQL, where claims already take turns across tenants. A second
tenant's campaign then waits behind at most the first tenant's bound, not its whole audience.

``in_flight`` is read from two small tables: the pages launchers published (one row per page,
all its messages share the page's ``accepted_at``) and, per tenant, the newest ``accepted_at``
of its campaign messages that left the lanes (``handled_up_to``, services/ingest/campaigns/progress.py:
ingest moves it from the statuses the dispatcher publishes, and the scheduler's for what it
suppresses or holds). A page newer than that is in flight. Pages older than ``expiry_s`` stop
counting, so nothing stalls a tenant for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class InFlightBound:
    """Campaign messages a tenant may have in the lanes at once; ``tenants`` overrides
    ``default`` for named tenants (its weight). 0 means no bound."""

    default: int
    tenants: dict[str, int] = field(default_factory=dict)

    def limit(self, tenant: str) -> int:
        return self.tenants.get(tenant, self.default)

    def has_room(self, tenant: str, in_flight: int) -> bool:
        """Whether the next page of ``tenant`` may be published now (a page may take it past the
        bound by less than a page: the bound is checked before each page, not per message)."""
        limit = self.limit(tenant)
        return limit <= 0 or in_flight < limit


UNBOUNDED = InFlightBound(0)


class InFlightRepository:
    """The launcher's side: record published pages, read a tenant's messages in flight."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, tenant_id: str, accepted_at: datetime, messages: int) -> None:
        if messages > 0:
            await self.pool.execute("INSERT INTO campaign_pages (tenant_id, accepted_at, messages) VALUES ($1, $2, $3)",
                                     tenant_id, accepted_at, messages)

    async def in_flight(self, tenant_id: str, since: datetime) -> int:
        """The tenant's published campaign messages the dispatcher has not handled (pages older
        than ``since`` no longer count); pages that no longer count are deleted on the way."""
        return await self.pool.fetchval(
            "WITH mark AS (SELECT coalesce((SELECT handled_up_to FROM campaign_lane_progress WHERE tenant_id = $1),"
            "                              '-infinity'::timestamptz) AS up_to),"
            " gone AS (DELETE FROM campaign_pages p USING mark WHERE p.tenant_id = $1"
            "          AND (p.accepted_at < $2 OR p.accepted_at <= mark.up_to) RETURNING 1)"
            " SELECT coalesce(sum(p.messages), 0)::bigint FROM campaign_pages p, mark"
            " WHERE p.tenant_id = $1 AND p.accepted_at >= $2 AND p.accepted_at > mark.up_to",
            tenant_id, since,
        )
