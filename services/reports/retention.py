"""reports' retention job (docs/operations.md, "Retention"): message history, clicks,
conversions and webhook rows (shared/retention_store.py runs it).

``message_events``, the largest table, is partitioned by day (migration 0035): the job creates
the partitions of the coming days and drops whole days once past the longest age any tenant
keeps messages, so expiring a day costs no delete scan. ``messages`` is not partitioned: its
primary key (message_id) is what makes every status event an idempotent upsert and every read
by id one index probe, and a partitioned table's unique keys must hold the partition key. Its
rows go in batches along the (accepted_at) index instead, each batch with the message's status
webhook rows, and its timeline rows when the tenant keeps less than the partitions do.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from services.reports.settings import ReportsSettings
from shared.retention import Cutoffs
from shared.retention_store import Run, Task, maintain_day_partitions

# Timeline rows of a message occur from its acceptance to at most this long after (send_at is
# at most 35 days ahead, then validity, parking and late receipts): where to look for them.
TIMELINE_SPAN = timedelta(days=40)
TIMELINE_SKEW = timedelta(days=1)

_PICK = ("DELETE FROM messages WHERE message_id IN (SELECT message_id FROM messages WHERE accepted_at < $2 AND {tenant}"
         " ORDER BY accepted_at LIMIT $1) RETURNING message_id, accepted_at")
_PLACEHOLDERS = ("DELETE FROM messages WHERE message_id IN (SELECT message_id FROM messages WHERE accepted_at IS NULL"
                 " AND updated_at < $2 LIMIT $1) RETURNING message_id, updated_at AS accepted_at")


async def _expire_messages(run: Run, sql: str, cutoff: datetime, tenant_arg: object, with_timeline: bool) -> None:
    """Batches of messages with their webhook rows (and timeline rows, while partitions keep them)."""
    while True:
        run.check_budget()
        async with run.pool.acquire() as conn, conn.transaction():
            gone = await conn.fetch(sql, run.batch_rows, cutoff, *([tenant_arg] if tenant_arg is not None else []))
            ids = [r["message_id"] for r in gone]
            if ids:
                outbox = await conn.fetchval(
                    "WITH d AS (DELETE FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) RETURNING 1)"
                    " SELECT count(*) FROM d", ids)
                sequences = await conn.fetchval(
                    "WITH d AS (DELETE FROM webhook_sequences WHERE message_id = ANY($1::uuid[]) RETURNING 1)"
                    " SELECT count(*) FROM d", ids)
                events = 0
                if with_timeline:
                    times = [r["accepted_at"] for r in gone]
                    events = await conn.fetchval(
                        "WITH d AS (DELETE FROM message_events WHERE message_id = ANY($1::uuid[])"
                        " AND occurred_at >= $2 AND occurred_at < $3 RETURNING 1) SELECT count(*) FROM d",
                        ids, min(times) - TIMELINE_SKEW, max(times) + TIMELINE_SPAN)
        run.add("messages", len(ids))
        if ids:
            run.add("webhook_outbox", outbox)
            run.add("webhook_sequences", sequences)
            run.add("message_events", events)
        if len(ids) < run.batch_rows:
            return


async def expire_messages(run: Run, limits: Cutoffs) -> None:
    floor = limits.oldest_kept  # the timeline partitions older than this are dropped
    own = list(limits.tenants)
    await _expire_messages(run, _PICK.format(tenant="tenant_id <> ALL($3::text[])"), limits.default, own,
                           limits.default > floor)
    for tenant_id, cutoff in sorted(limits.tenants.items()):
        await _expire_messages(run, _PICK.format(tenant="tenant_id = $3"), cutoff, tenant_id, cutoff > floor)
    # Rows made by a status event for a message never accepted here (no acceptance time).
    await _expire_messages(run, _PLACEHOLDERS, limits.default, None, False)


def tasks(settings: ReportsSettings) -> list[Task]:
    async def history(run: Run) -> None:
        limits = await run.cutoffs("messages", settings.retention_messages_days)
        await maintain_day_partitions(run, "message_events", "occurred_at", settings.retention_partitions_ahead_days,
                                      limits.oldest_kept)
        await expire_messages(run, limits)
        # gateway id -> message: matches receipts; kept as long as any tenant keeps messages.
        await run.expire_older_than("gateway_refs", "submitted_at", limits.oldest_kept)

    async def webhooks(run: Run) -> None:
        await run.expire_older_than("webhook_outbox", "finished_at",
                                    run.now - timedelta(days=settings.retention_dead_webhooks_days), "state = 'dead'")

    async def results(run: Run) -> None:
        limits = await run.cutoffs("clicks", settings.retention_clicks_days)
        await run.expire_by_age("clicks", "clicked_at", limits)
        await run.expire_by_age("conversions", "occurred_at", limits)

    return [history, webhooks, results]
