"""reports' replies lane: ``replies.v1`` events of tenants with a reply webhook become outbox
rows (docs/replies.md)."""

from __future__ import annotations

import asyncpg

from services.reports import metrics
from services.reports.webhooks.repository import enqueue_replies
from shared.contracts import ReplyForwardedEvent
from shared.kafka import Incoming, Outgoing


class ReplyWebhookHandler:
    """reports' replies lane: each batch of ``replies.v1`` events → outbox rows, one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        events = [i.event for i in batch if isinstance(i.event, ReplyForwardedEvent)]
        if not events:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            queued = await enqueue_replies(conn, events)
        if queued:
            metrics.REPLY_WEBHOOKS_QUEUED.inc(queued)
        return []
