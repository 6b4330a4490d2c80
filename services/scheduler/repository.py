"""The scheduler's own table of held messages (``scheduled_messages``): the SQL the timer and
the command handler run, each statement for a whole batch, inside the caller's transaction.

(``FactsRepository`` in handlers.py holds the rest: the facts a decision reads, holding a
message and waking held messages.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg


async def take_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Lock up to ``limit`` held messages due by ``now``, the most overdue first; rows another
    instance holds are skipped."""
    return await conn.fetch(
        "SELECT message_id, tenant_id, accepted, trace_id, due_at FROM scheduled_messages"
        " WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )


async def release(conn: asyncpg.Connection, message_ids: Sequence[uuid.UUID]) -> None:
    """Forget the held messages that were released."""
    await conn.execute("DELETE FROM scheduled_messages WHERE message_id = ANY($1::uuid[])", message_ids)


async def cancel(conn: asyncpg.Connection, cancels: Sequence[tuple[uuid.UUID, str]]) -> list[asyncpg.Record]:
    """Delete the held messages of (message id, tenant); return those that were held."""
    if not cancels:
        return []
    return await conn.fetch(
        "DELETE FROM scheduled_messages s USING unnest($1::uuid[], $2::text[]) AS c(id, tenant)"
        " WHERE s.message_id = c.id AND s.tenant_id = c.tenant RETURNING s.message_id, s.tenant_id, s.accepted",
        [m for m, _ in cancels], [t for _, t in cancels],
    )


async def reschedule(conn: asyncpg.Connection, moves: Sequence[tuple[uuid.UUID, str, datetime]]) -> list[asyncpg.Record]:
    """Move held messages of (message id, tenant, new time) to their new time (the stored
    ``send_at`` too); return those that were held."""
    if not moves:
        return []
    return await conn.fetch(
        "UPDATE scheduled_messages s SET due_at = c.due, reason_code = 'scheduled',"
        " accepted = jsonb_set(s.accepted, '{send_at}', to_jsonb(c.due_text))"
        " FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) AS c(id, tenant, due, due_text)"
        " WHERE s.message_id = c.id AND s.tenant_id = c.tenant RETURNING s.message_id, s.tenant_id, s.accepted",
        [m for m, _, _ in moves], [t for _, t, _ in moves], [d for *_, d in moves],
        [d.astimezone(UTC).isoformat() for *_, d in moves],
    )
