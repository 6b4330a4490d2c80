"""reports' results lane: clicks (``clicks.v1``) and conversions (``contact-events.accepted.v1``).

Its own consumer group, so a burst of clicks never delays statuses and receipts. Both are
idempotent: a click is stored once by its event id, a conversion once per (tenant, event id),
and counters move only for rows actually inserted. See docs/results.md.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services.reports import metrics
from services.reports.attribution import Candidate, attribute
from shared.contracts import ContactEventAccepted, LinkClicked
from shared.kafka import Incoming, Outgoing


def too_fast(click: LinkClicked, submitted_at: datetime | None, min_delay_s: float) -> bool:
    """A click within ``min_delay_s`` of the submission came before anyone could read the text."""
    return submitted_at is not None and (click.clicked_at - submitted_at).total_seconds() < min_delay_s


_INSERT_CLICKS = """
INSERT INTO clicks (event_id, tenant_id, code, message_id, link_index, url, contact_id, campaign_id, variant,
                    journey_id, clicked_at, bot, bot_reason, user_agent)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::smallint[], $6::text[], $7::uuid[],
                     $8::uuid[], $9::text[], $10::uuid[], $11::timestamptz[], $12::bool[], $13::text[], $14::text[])
ON CONFLICT (event_id) DO NOTHING
RETURNING bot
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
        clicks: list[tuple[uuid.UUID, str, LinkClicked]] = []
        conversions: dict[tuple[str, uuid.UUID], ContactEventAccepted] = {}
        for item in batch:
            payload = item.event.payload
            if isinstance(payload, LinkClicked):
                clicks.append((item.event.event_id, item.event.tenant, payload))
            elif isinstance(payload, ContactEventAccepted) and payload.value is not None:
                conversions.setdefault((item.event.tenant, payload.event_id), payload)
        if not clicks and not conversions:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            inserted_clicks = await self._store_clicks(conn, clicks) if clicks else []
            inserted_conversions = await self._store_conversions(conn, conversions) if conversions else []
        for row in inserted_clicks:
            metrics.CLICKS_RECORDED.labels("bot" if row["bot"] else "human").inc()
        for row in inserted_conversions:
            metrics.CONVERSIONS.labels(row["attribution"]).inc()
            if row["attribution"] != "none":
                metrics.REVENUE.labels(row["currency"] or "none").inc(float(row["value"]))
        return []

    async def _store_clicks(
        self, conn: asyncpg.Connection, clicks: list[tuple[uuid.UUID, str, LinkClicked]]
    ) -> list[asyncpg.Record]:
        message_ids = list({c.message_id for _, _, c in clicks})
        rows = await conn.fetch(
            "SELECT message_id, submitted_at FROM messages WHERE message_id = ANY($1::uuid[])", message_ids
        )
        submitted = {r["message_id"]: r["submitted_at"] for r in rows}
        columns: list[list[Any]] = [[] for _ in range(14)]
        for event_id, tenant, c in clicks:
            bot, reason = c.bot, c.bot_reason
            if not bot and too_fast(c, submitted.get(c.message_id), self.bot_min_delay_s):
                bot, reason = True, "too_fast"
            values = (event_id, tenant, c.code, c.message_id, c.link_index, c.url, c.contact_id, c.campaign_id,
                      c.variant, c.journey_id, c.clicked_at, bot, reason, c.user_agent)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        return await conn.fetch(_INSERT_CLICKS, *columns)

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
