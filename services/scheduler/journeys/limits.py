"""The per-key message limit of journey sends, kept by the scheduler (``journey_rate_counters``,
migration 0042, its own table).

A journey sends under the key that last wrote it (``journeys.key_id``): its sends of a minute
stay within that key's ``messages_per_minute`` (else the scheduler's
``HERALD_RATE_LIMIT_MESSAGES_PER_MINUTE``), on the same sliding window over minute counters as
ingest's API limits (shared/ratelimit.py), counted in one statement per check. The API's requests
and messages count on ingest's own counters: each side holds the key to its limit, apart
(docs/journeys.md, "Rate limits").
"""

from __future__ import annotations

import random

import asyncpg

from shared.ratelimit import Verdict, judge_one

_COUNT = """
WITH cur AS (
    INSERT INTO journey_rate_counters (key_id, window_start, messages)
    VALUES ($1, date_trunc('minute', now()), $2)
    ON CONFLICT (key_id, window_start) DO UPDATE SET messages = journey_rate_counters.messages + $2
    RETURNING messages, window_start
)
SELECT cur.messages, coalesce(p.messages, 0) AS prev_messages,
       extract(epoch FROM now() - cur.window_start)::float8 AS elapsed, cur.window_start
FROM cur LEFT JOIN journey_rate_counters p ON p.key_id = $1 AND p.window_start = cur.window_start - interval '1 minute'
"""


class JourneyLimiter:
    def __init__(self, pool: asyncpg.Pool, default_mpm: int) -> None:
        self.pool = pool
        self.default_mpm = default_mpm

    async def check(self, key_id: str, messages: int, mpm: int | None) -> Verdict:
        """Count ``messages`` sends of the key now; refused ones are taken off again (they wait)."""
        mpm = mpm or self.default_mpm
        row = await self.pool.fetchrow(_COUNT, key_id, messages)
        verdict = judge_one(int(row["prev_messages"]), int(row["messages"]), float(row["elapsed"]), mpm, "messages")
        if not verdict.allowed:
            await self.pool.execute(
                "UPDATE journey_rate_counters SET messages = messages - $2 WHERE key_id = $1 AND window_start = $3",
                key_id, messages, row["window_start"],
            )
        if random.random() < 0.01:  # keep the table small: old minutes are never read again
            await self.pool.execute("DELETE FROM journey_rate_counters WHERE window_start < now() - interval '5 minutes'")
        return verdict
