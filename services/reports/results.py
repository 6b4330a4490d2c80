"""reports' results lane: clicks (``clicks.v1``) and conversions (``contact-events.accepted.v1``).

Its own consumer group, so a burst of clicks never delays statuses and receipts. Both are
idempotent: a person's click is stored once by its event id, a conversion once per (tenant,
event id), and counters move only for rows actually inserted. Bot clicks (previews, prefetches,
crawlers, too fast) are no rows: they are counted per link, day and reason in ``bot_clicks``,
and a per-partition offset mark, moved in the same transaction, keeps a redelivered record from
being counted twice. See docs/results.md.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services.reports import metrics
from services.reports.attribution import Candidate, attribute
from shared.contracts import ContactEventAccepted, LinkClicked
from shared.kafka import Incoming, Outgoing

#: where a record was read: (topic, partition, offset)
Position = tuple[str, int, int]


def too_fast(click: LinkClicked, submitted_at: datetime | None, min_delay_s: float) -> bool:
    """A click within ``min_delay_s`` of the submission came before anyone could read the text."""
    return submitted_at is not None and (click.clicked_at - submitted_at).total_seconds() < min_delay_s


# Bot clicks, summed per (message, link, day, reason) in the batch, added to the counters.
_ADD_BOT_CLICKS = """
INSERT INTO bot_clicks (message_id, link_index, day, reason, tenant_id, campaign_id, variant, journey_id, clicks, last_at)
SELECT * FROM unnest($1::uuid[], $2::smallint[], $3::date[], $4::text[], $5::text[], $6::uuid[], $7::text[],
                     $8::uuid[], $9::bigint[], $10::timestamptz[])
ON CONFLICT (message_id, link_index, day, reason)
DO UPDATE SET clicks = bot_clicks.clicks + excluded.clicks, last_at = greatest(bot_clicks.last_at, excluded.last_at)
"""

# The offset marks of the batch's partitions: created if missing, then (another statement, so
# that it sees rows another transaction just created) locked in key order and read.
_CREATE_MARKS = """
INSERT INTO bot_click_offsets (topic, partition, last_offset)
SELECT t, p, -1 FROM unnest($1::text[], $2::int[]) AS k(t, p) ORDER BY t, p ON CONFLICT DO NOTHING
"""
_LOCK_MARKS = """
SELECT o.topic, o.partition, o.last_offset FROM bot_click_offsets o
JOIN unnest($1::text[], $2::int[]) AS k(t, p) ON o.topic = k.t AND o.partition = k.p
ORDER BY o.topic, o.partition FOR UPDATE OF o
"""

_INSERT_CLICKS = """
INSERT INTO clicks (event_id, tenant_id, code, message_id, link_index, url, contact_id, campaign_id, variant,
                    journey_id, clicked_at, bot, bot_reason, user_agent)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::smallint[], $6::text[], $7::uuid[],
                     $8::uuid[], $9::text[], $10::uuid[], $11::timestamptz[], $12::bool[], $13::text[], $14::text[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# A contact's marketing messages that could have led to a conversion: by number or contact
# id, sent in the two windows before it (a click within the window may be on an older message).
_CANDIDATES = """
SELECT k.i, m.message_id, m.campaign_id, m.variant, m.journey_id,
       CASE WHEN m.status = 'delivered' THEN m.final_at END AS delivered_at,
       (SELECT max(c.clicked_at) FROM clicks c
         WHERE c.message_id = m.message_id AND NOT c.bot AND c.clicked_at <= k.o) AS clicked_at
FROM unnest($1::int[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[]) AS k(i, t, p, c, o)
CROSS JOIN LATERAL (
    SELECT message_id, campaign_id, variant, journey_id, status, final_at FROM messages
     WHERE tenant_id = k.t AND to_e164 = k.p AND type = 'marketing'
       AND coalesce(submitted_at, accepted_at) BETWEEN k.o - 2 * $6::interval AND k.o
    UNION
    SELECT message_id, campaign_id, variant, journey_id, status, final_at FROM messages
     WHERE k.c IS NOT NULL AND tenant_id = k.t AND contact_id = k.c AND type = 'marketing'
       AND coalesce(submitted_at, accepted_at) BETWEEN k.o - 2 * $6::interval AND k.o
) m
"""

_INSERT_CONVERSIONS = """
INSERT INTO conversions (tenant_id, event_id, name, phone_e164, contact_id, occurred_at, value, currency,
                         message_id, campaign_id, variant, journey_id, attribution)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::timestamptz[], $7::numeric[],
                     $8::text[], $9::uuid[], $10::uuid[], $11::text[], $12::uuid[], $13::text[])
ON CONFLICT (tenant_id, event_id) DO NOTHING
RETURNING attribution, value, currency
"""


class ResultsHandler:
    def __init__(self, pool: asyncpg.Pool, window: timedelta, bot_min_delay_s: float) -> None:
        self.pool = pool
        self.window = window
        self.bot_min_delay_s = bot_min_delay_s

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        clicks: list[tuple[uuid.UUID, str, LinkClicked, Position | None]] = []
        conversions: dict[tuple[str, uuid.UUID], ContactEventAccepted] = {}
        for item in batch:
            payload = item.event.payload
            if isinstance(payload, LinkClicked):
                record = item.record
                position = (record.topic, record.partition, record.offset) if record is not None else None
                clicks.append((item.event.event_id, item.event.tenant, payload, position))
            elif isinstance(payload, ContactEventAccepted) and payload.value is not None:
                conversions.setdefault((item.event.tenant, payload.event_id), payload)
        if not clicks and not conversions:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            inserted_clicks, bots = await self._store_clicks(conn, clicks) if clicks else ([], 0)
            inserted_conversions = await self._store_conversions(conn, conversions) if conversions else []
        if inserted_clicks:
            metrics.CLICKS_RECORDED.labels("human").inc(len(inserted_clicks))
        if bots:
            metrics.CLICKS_RECORDED.labels("bot").inc(bots)
        for row in inserted_conversions:
            metrics.CONVERSIONS.labels(row["attribution"]).inc()
            if row["attribution"] != "none":
                metrics.REVENUE.labels(row["currency"] or "none").inc(float(row["value"]))
        return []

    async def _store_clicks(
        self, conn: asyncpg.Connection, clicks: list[tuple[uuid.UUID, str, LinkClicked, Position | None]]
    ) -> tuple[list[asyncpg.Record], int]:
        """People's clicks as rows (once per event id), bots' as counters; returns the rows
        inserted and the bot clicks counted."""
        message_ids = list({c.message_id for _, _, c, _ in clicks})
        rows = await conn.fetch(
            "SELECT message_id, submitted_at FROM messages WHERE message_id = ANY($1::uuid[])", message_ids
        )
        submitted = {r["message_id"]: r["submitted_at"] for r in rows}
        columns: list[list[Any]] = [[] for _ in range(14)]
        bots: list[tuple[str, LinkClicked, str, Position | None]] = []
        for event_id, tenant, c, position in clicks:
            if c.bot:
                bots.append((tenant, c, c.bot_reason or "unknown", position))
                continue
            if too_fast(c, submitted.get(c.message_id), self.bot_min_delay_s):
                bots.append((tenant, c, "too_fast", position))
                continue
            values = (event_id, tenant, c.code, c.message_id, c.link_index, c.url, c.contact_id, c.campaign_id,
                      c.variant, c.journey_id, c.clicked_at, False, None, c.user_agent)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        inserted = await conn.fetch(_INSERT_CLICKS, *columns) if columns[0] else []
        return inserted, await self._count_bots(conn, bots) if bots else 0

    async def _count_bots(
        self, conn: asyncpg.Connection, bots: list[tuple[str, LinkClicked, str, Position | None]]
    ) -> int:
        """Add bot clicks to their counters, skipping records at or below their partition's mark
        (counted by an earlier delivery), then move the marks; returns the clicks counted."""
        marks: dict[tuple[str, int], int] = {}
        for *_, position in bots:
            if position is not None:
                topic, partition, offset = position
                marks[(topic, partition)] = max(offset, marks.get((topic, partition), -1))
        done: dict[tuple[str, int], int] = {}
        if marks:
            keys = sorted(marks)
            await conn.execute(_CREATE_MARKS, [t for t, _ in keys], [p for _, p in keys])
            rows = await conn.fetch(_LOCK_MARKS, [t for t, _ in keys], [p for _, p in keys])
            done = {(r["topic"], r["partition"]): r["last_offset"] for r in rows}
        counts: dict[tuple[uuid.UUID, int, date, str], list[Any]] = {}
        for tenant, c, reason, position in bots:
            if position is not None and position[2] <= done.get((position[0], position[1]), -1):
                continue  # counted already: the record came again
            day = c.clicked_at.astimezone(UTC).date()
            key = (c.message_id, c.link_index, day, reason)
            found = counts.get(key)
            if found is None:
                counts[key] = [tenant, c.campaign_id, c.variant, c.journey_id, c.count, c.clicked_at]
            else:
                found[4] += c.count
                found[5] = max(found[5], c.clicked_at)
        if counts:
            keys4 = sorted(counts)  # rows locked in one order by every writer
            await conn.execute(
                _ADD_BOT_CLICKS, [k[0] for k in keys4], [k[1] for k in keys4], [k[2] for k in keys4],
                [k[3] for k in keys4], *([counts[k][i] for k in keys4] for i in range(6)),
            )
        if marks:
            keys = sorted(marks)
            await conn.execute(
                "UPDATE bot_click_offsets o SET last_offset = greatest(o.last_offset, k.o)"
                " FROM unnest($1::text[], $2::int[], $3::bigint[]) AS k(t, p, o) WHERE o.topic = k.t AND o.partition = k.p",
                [t for t, _ in keys], [p for _, p in keys], [marks[k] for k in keys],
            )
        return sum(v[4] for v in counts.values())

    async def _store_conversions(
        self, conn: asyncpg.Connection, events: dict[tuple[str, uuid.UUID], ContactEventAccepted]
    ) -> list[asyncpg.Record]:
        keys = list(events)
        # already recorded: no need to attribute them again (the insert would keep the first anyway)
        seen = await conn.fetch(
            "SELECT tenant_id, event_id FROM conversions c"
            " JOIN unnest($1::text[], $2::uuid[]) AS k(t, e) ON c.tenant_id = k.t AND c.event_id = k.e",
            [t for t, _ in keys], [e for _, e in keys],
        )
        done = {(r["tenant_id"], r["event_id"]) for r in seen}
        keys = [k for k in keys if k not in done]
        if not keys:
            return []
        rows = await conn.fetch(
            _CANDIDATES,
            list(range(len(keys))), [t for t, _ in keys], [events[k].phone for k in keys],
            [events[k].contact_id for k in keys], [events[k].occurred_at for k in keys], self.window,
        )
        candidates: dict[int, list[Candidate]] = {}
        for r in rows:
            candidates.setdefault(r["i"], []).append(
                Candidate(r["message_id"], r["campaign_id"], r["variant"], r["journey_id"], r["clicked_at"],
                          r["delivered_at"])
            )
        columns: list[list[Any]] = [[] for _ in range(13)]
        for i, key in enumerate(keys):
            e = events[key]
            verdict = attribute(e.occurred_at, self.window, candidates.get(i, []))
            m = verdict.message
            values = (key[0], e.event_id, e.name, e.phone, e.contact_id, e.occurred_at, Decimal(e.value or 0),
                      e.currency, m.message_id if m else None, m.campaign_id if m else None,
                      m.variant if m else None, m.journey_id if m else None, verdict.attribution)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        return await conn.fetch(_INSERT_CONVERSIONS, *columns)
