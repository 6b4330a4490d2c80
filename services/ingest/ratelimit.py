"""Per-key rate limits shared by every ingest instance, kept in PostgreSQL.

A sliding window over minute counters: the estimate for "the last 60 seconds" is the
current minute's count plus the previous minute's count weighted by how much of it is
still inside the window. One statement per request counts and reads both minutes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import asyncpg

_COUNT = """
WITH cur AS (
    INSERT INTO rate_counters (key_id, window_start, requests, messages)
    VALUES ($1, date_trunc('minute', now()), 1, $2)
    ON CONFLICT (key_id, window_start) DO UPDATE
        SET requests = rate_counters.requests + 1, messages = rate_counters.messages + $2
    RETURNING requests, messages, window_start
)
SELECT cur.requests, cur.messages, coalesce(p.requests, 0) AS prev_requests, coalesce(p.messages, 0) AS prev_messages,
       extract(epoch FROM now() - cur.window_start)::float8 AS elapsed, cur.window_start
FROM cur LEFT JOIN rate_counters p ON p.key_id = $1 AND p.window_start = cur.window_start - interval '1 minute'
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0
    limit: str = ""  # which limit refused: "requests" or "messages"


def estimate(previous: int, current: int, elapsed_s: float) -> float:
    return previous * max(0.0, 1 - elapsed_s / 60) + current


def wait_until_below(previous: int, current: int, elapsed_s: float, limit: int) -> int:
    """Seconds until the sliding estimate drops to ``limit`` (the next minute resets current)."""
    over = estimate(previous, current, elapsed_s) - limit
    if over <= 0:
        return 0
    to_next_minute = 60 - elapsed_s
    if previous > 0:
        t = over * 60 / previous  # the previous minute's weight drains at previous/60 per second
        if t < to_next_minute:
            return max(1, math.ceil(t))
    # After the minute turns, current becomes previous and drains the same way.
    residual = current - limit
    return max(1, math.ceil(to_next_minute + max(0.0, residual) * 60 / max(current, 1)))


def judge(row: dict[str, float], messages: int, rpm: int, mpm: int) -> Verdict:
    elapsed = float(row["elapsed"])
    if estimate(int(row["prev_requests"]), int(row["requests"]), elapsed) > rpm:
        return Verdict(False, wait_until_below(int(row["prev_requests"]), int(row["requests"]), elapsed, rpm), "requests")
    if messages and estimate(int(row["prev_messages"]), int(row["messages"]), elapsed) > mpm:
        return Verdict(False, wait_until_below(int(row["prev_messages"]), int(row["messages"]), elapsed, mpm), "messages")
    return Verdict(True)


class RateLimiter:
    def __init__(self, pool: asyncpg.Pool, default_rpm: int, default_mpm: int) -> None:
        self.pool = pool
        self.default_rpm = default_rpm
        self.default_mpm = default_mpm

    async def check(self, key_id: str, messages: int, rpm: int | None, mpm: int | None) -> Verdict:
        row = await self.pool.fetchrow(_COUNT, key_id, messages)
        verdict = judge(dict(row), messages, rpm or self.default_rpm, mpm or self.default_mpm)
        if not verdict.allowed and messages:
            # Refused messages do not use up the budget (the request itself still counts).
            await self.pool.execute(
                "UPDATE rate_counters SET messages = messages - $2 WHERE key_id = $1 AND window_start = $3",
                key_id, messages, row["window_start"],
            )
        if random.random() < 0.01:  # keep the table small: old minutes are never read again
            await self.pool.execute("DELETE FROM rate_counters WHERE window_start < now() - interval '5 minutes'")
        return verdict
