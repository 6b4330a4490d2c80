"""The webhook outbox in PostgreSQL: rows queued in the transaction that records the states
(:func:`enqueue`) or the replies (:func:`enqueue_replies`), and :class:`WebhookStore`, which the
worker uses to claim due heads, write results back, read signing secrets and prune.
"""

from __future__ import annotations

import json
import secrets as secrets_module
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from services.reports.webhooks.rules import (
    Notification,
    Result,
    build_payload,
    build_reply_payload,
    conversation_key,
    finish_columns,
    head_flags,
    reply_events,
)
from shared.contracts import ReplyForwardedEvent

SECRET_PREFIX = "whsec_"



async def enqueue(conn: asyncpg.Connection, notes: Sequence[Notification]) -> int:
    """Insert one outbox row per notification, seq continuing each message's last one.
    Inside ``record()``'s transaction, with the messages' rows locked."""
    if not notes:
        return 0
    ids = sorted({n.message_id for n in notes})
    rows = await conn.fetch(
        "SELECT message_id, max(seq) AS seq, bool_or(state = 'pending') AS pending FROM webhook_outbox"
        " WHERE message_id = ANY($1::uuid[]) GROUP BY message_id",
        ids,
    )
    last = {r["message_id"]: r["seq"] for r in rows}
    pending = await _lock_pending(conn, [r["message_id"] for r in rows if r["pending"]])
    columns: dict[str, list[Any]] = {k: [] for k in ("m", "s", "t", "e", "u", "p")}
    for note in notes:
        seq = last.get(note.message_id, 0) + 1
        last[note.message_id] = seq
        payload = build_payload(note, seq)
        columns["m"].append(note.message_id)
        columns["s"].append(seq)
        columns["t"].append(note.tenant_id)
        columns["e"].append(uuid.UUID(payload["event_id"]))
        columns["u"].append(note.url)
        columns["p"].append(json.dumps(payload))
    inserted = await conn.fetch(
        "INSERT INTO webhook_outbox (message_id, seq, tenant_id, event_id, url, payload, head)"
        " SELECT m, s, t, e, u, p::jsonb, h"
        " FROM unnest($1::uuid[], $2::int[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::bool[])"
        " AS x(m, s, t, e, u, p, h) ON CONFLICT DO NOTHING RETURNING message_id, head",
        *columns.values(), head_flags(columns["m"], pending),
    )
    await _headless(conn, inserted, pending)
    return len(notes)


async def _lock_pending(conn: asyncpg.Connection, keys: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Lock the pending rows of ``keys`` (in id order) and
    return the keys that still have one. A worker finishing one of them at the same time either
    commits first (the row is then not pending here) or skips the locked row and writes it once
    this transaction has committed, then sees its new rows when it picks the key's next head: a
    key is never left without a head."""
    if not keys:
        return set()
    rows = await conn.fetch(
        "SELECT message_id FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) AND state = 'pending'"
        " ORDER BY id FOR UPDATE", sorted(set(keys)))
    return {r["message_id"] for r in rows}


PROMOTE_SQL = (
    "UPDATE webhook_outbox o SET head = true FROM (SELECT DISTINCT ON (message_id) id, head"
    "  FROM webhook_outbox WHERE message_id = ANY($1::uuid[]) AND state = 'pending'"
    "  ORDER BY message_id, seq) h"
    " WHERE o.id = h.id AND NOT h.head"
)


async def _headless(conn: asyncpg.Connection, inserted: Sequence[asyncpg.Record], pending: set[uuid.UUID]) -> None:
    """A key's first new row was a conflict (already queued) and a later one went in without
    being head: make the key's lowest pending row its head (rare; normally nothing to do)."""
    keys = {r["message_id"] for r in inserted} - pending - {r["message_id"] for r in inserted if r["head"]}
    if keys:
        await conn.execute(PROMOTE_SQL, sorted(keys))


async def reply_urls(conn: asyncpg.Connection, tenants: set[str]) -> dict[str, str]:
    """The reply webhook URL on each tenant's record (tenants without one, or disabled, are absent)."""
    rows = await conn.fetch(
        "SELECT tenant_id, reply_webhook_url FROM shared_tenant_settings WHERE tenant_id = ANY($1::text[])"
        " AND reply_webhook_url IS NOT NULL AND disabled_at IS NULL", sorted(tenants))
    return {r["tenant_id"]: r["reply_webhook_url"] for r in rows}


async def enqueue_replies(conn: asyncpg.Connection, events: Sequence[ReplyForwardedEvent]) -> int:
    """Insert one outbox row per reply of a tenant with a reply webhook (the URL from its record,
    never from the event), in one statement, and return how many are new. A redelivered reply (its event id already queued) adds nothing.

    Seqs come from ``webhook_sequences`` (one upsert for the batch, conversations in sorted
    order): its row locks hold a conversation until this transaction commits, so two
    instances never give out the same seq, and the seq goes on growing after the outbox's
    delivered rows are pruned."""
    urls = await reply_urls(conn, {e.tenant for e in events})
    wanted = reply_events(events, urls)
    if not wanted:
        return 0
    queued = {r["event_id"] for r in await conn.fetch(
        "SELECT event_id FROM webhook_outbox WHERE event_id = ANY($1::uuid[])", [e.event_id for e in wanted])}
    fresh = [e for e in wanted if e.event_id not in queued]
    if not fresh:
        return 0
    keys = [conversation_key(e.tenant, e.payload.phone) for e in fresh]
    counts: dict[uuid.UUID, int] = defaultdict(int)
    for key in keys:
        counts[key] += 1
    order = sorted(counts)
    rows = await conn.fetch(
        "INSERT INTO webhook_sequences (message_id, seq) SELECT k, n FROM unnest($1::uuid[], $2::int[]) AS x(k, n)"
        " ON CONFLICT (message_id) DO UPDATE SET seq = webhook_sequences.seq + excluded.seq RETURNING message_id, seq",
        order, [counts[k] for k in order],
    )
    last = {r["message_id"]: r["seq"] - counts[r["message_id"]] for r in rows}  # the seq before this batch's
    pending = await _lock_pending(conn, order)
    columns: dict[str, list[Any]] = {k: [] for k in ("m", "s", "t", "e", "u", "p")}
    for event, key in zip(fresh, keys, strict=True):
        last[key] += 1
        columns["m"].append(key)
        columns["s"].append(last[key])
        columns["t"].append(event.tenant)
        columns["e"].append(event.event_id)
        columns["u"].append(urls[event.tenant])
        columns["p"].append(json.dumps(build_reply_payload(event, last[key])))
    inserted = await conn.fetch(
        "INSERT INTO webhook_outbox (message_id, seq, tenant_id, event_id, url, payload, kind, head)"
        " SELECT m, s, t, e, u, p::jsonb, 'reply', h"
        " FROM unnest($1::uuid[], $2::int[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::bool[])"
        " AS x(m, s, t, e, u, p, h) ON CONFLICT DO NOTHING RETURNING message_id, head",
        *columns.values(), head_flags(columns["m"], pending),
    )
    await _headless(conn, inserted, pending)
    return len(inserted)


def new_secret() -> str:
    return SECRET_PREFIX + secrets_module.token_urlsafe(32)


class WebhookStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, limit: int, lease_s: float) -> list[asyncpg.Record]:
        """Take up to ``limit`` due rows, each the lowest pending seq of its key, and push them
        one lease ahead (so no one else takes them while they are posted).

        Only heads are read (``webhook_outbox_head_due``: due heads in claim order), so the
        scan stops after about ``limit`` entries, whatever waits behind heads in flight or
        backing off; the NOT EXISTS probe (one index lookup per head) keeps the order even
        where a row is marked head too early (docs/webhooks.md)."""
        return await self.pool.fetch(
            "WITH due AS ("
            " SELECT o.id FROM webhook_outbox o"
            " WHERE o.state = 'pending' AND o.head AND o.next_attempt_at <= now()"
            "  AND NOT EXISTS (SELECT 1 FROM webhook_outbox p"
            "   WHERE p.message_id = o.message_id AND p.state = 'pending' AND p.seq < o.seq)"
            " ORDER BY o.next_attempt_at, o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED)"
            " UPDATE webhook_outbox o SET attempts = o.attempts + 1,"
            "  next_attempt_at = now() + make_interval(secs => $2)"
            " FROM due WHERE o.id = due.id"
            " RETURNING o.id, o.message_id, o.seq, o.tenant_id, o.event_id, o.url, o.payload, o.attempts, o.created_at,"
            " o.kind",
            limit, lease_s,
        )

    async def finish(self, results: Sequence[Result]) -> list[Result]:
        """Write a batch of results back in one transaction: delivered and dead rows finished,
        retries pushed to their next attempt (only if not claimed again meanwhile), then the
        next pending row of every finished key made its head.

        Rows locked elsewhere are skipped and returned, to be written again shortly: reports
        locks a key's pending rows while it queues more behind them (``enqueue()``, possibly
        in several statements of one transaction), and a worker that waited for those locks
        while holding others could deadlock with it. It never waits: once that transaction
        commits, the row is written and its key's next head chosen among the new rows."""
        if not results:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            locked = {r["id"] for r in await conn.fetch(
                "SELECT id FROM webhook_outbox WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED",
                [r.row["id"] for r in results])}
            now = [r for r in results if r.row["id"] in locked]
            if not now:
                return list(results)
            written = await conn.fetch(
                "UPDATE webhook_outbox o SET state = x.state, attempts = o.attempts - x.undo,"
                " last_status = CASE WHEN x.undo = 1 THEN o.last_status ELSE x.code END,"
                " last_error = CASE WHEN x.undo = 1 THEN o.last_error ELSE x.error END,"
                " finished_at = CASE WHEN x.state = 'pending' THEN NULL ELSE now() END,"
                " next_attempt_at = CASE WHEN x.state = 'pending' THEN now() + make_interval(secs => x.delay)"
                "  ELSE o.next_attempt_at END"
                " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::float8[], $7::int[])"
                "  AS x(id, attempts, state, code, error, delay, undo)"
                " WHERE o.id = x.id AND o.state = 'pending' AND (x.state <> 'pending' OR o.attempts = x.attempts)"
                " RETURNING o.message_id, o.state",
                *finish_columns(now),
            )
            finished = sorted({r["message_id"] for r in written if r["state"] != "pending"})
            if finished:
                await conn.execute(PROMOTE_SQL, finished)
        return [r for r in results if r.row["id"] not in locked]

    async def secrets(self, tenants: Iterable[str]) -> dict[str, str]:
        """Each tenant's signing secret, created on first use."""
        wanted = sorted(set(tenants))
        if not wanted:
            return {}
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO webhook_secrets (tenant_id, secret)"
                " SELECT t, s FROM unnest($1::text[], $2::text[]) AS x(t, s) ON CONFLICT DO NOTHING",
                wanted, [new_secret() for _ in wanted],
            )
            rows = await conn.fetch("SELECT tenant_id, secret FROM webhook_secrets WHERE tenant_id = ANY($1::text[])", wanted)
        return {r["tenant_id"]: r["secret"] for r in rows}

    async def depth(self) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM webhook_outbox WHERE state = 'pending'")

    async def prune(self, retention_h: float, limit: int = 10_000) -> int:
        result = await self.pool.execute(
            "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox WHERE state = 'delivered'"
            " AND finished_at < now() - make_interval(secs => $1) LIMIT $2)",
            retention_h * 3600, limit,
        )
        return int(result.split()[-1])
