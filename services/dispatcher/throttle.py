"""Throttles: how long to wait before sending N segments through a gateway.

``LocalThrottle`` keeps the token buckets in this process (one dispatcher instance, or
tests). ``PostgresThrottle`` keeps them in one row per gateway, updated atomically with
the database clock, so the limit holds across every dispatcher instance: one round trip
per chunk of messages (a chunk is up to ``batch_size`` messages), never per message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import asyncpg

from services.dispatcher.domain.throttle import TokenBucket


class Throttle(Protocol):
    async def reserve(self, gateway: str, segments: float) -> float:
        """Take ``segments`` tokens; return the seconds to wait before sending them."""
        ...


class LocalThrottle:
    def __init__(self, limits: dict[str, tuple[float, float | None]], clock: Callable[[], float] = time.monotonic) -> None:
        now = clock()
        self.clock = clock
        self.buckets = {name: TokenBucket.start(rate, now, burst) for name, (rate, burst) in limits.items()}

    async def reserve(self, gateway: str, segments: float) -> float:
        return self.buckets[gateway].reserve(segments, self.clock())


_RESERVE = """
UPDATE throttle_buckets SET
    tokens = LEAST(capacity, tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - updated_at)) * rate) - $2,
    updated_at = clock_timestamp()
WHERE gateway = $1
RETURNING tokens, rate
"""


class PostgresThrottle:
    def __init__(self, pool: asyncpg.Pool, limits: dict[str, tuple[float, float | None]]) -> None:
        self.pool = pool
        self.limits = limits

    async def setup(self) -> None:
        """Create or update each gateway's row with the configured rate (keeps its tokens)."""
        names = list(self.limits)
        rates = [self.limits[n][0] for n in names]
        capacities = [self.limits[n][1] or max(1.0, self.limits[n][0]) for n in names]
        await self.pool.execute(
            "INSERT INTO throttle_buckets (gateway, rate, capacity, tokens, updated_at)"
            " SELECT g, r, c, c, clock_timestamp() FROM unnest($1::text[], $2::float8[], $3::float8[]) AS t(g, r, c)"
            " ON CONFLICT (gateway) DO UPDATE SET rate = excluded.rate, capacity = excluded.capacity",
            names, rates, capacities,
        )

    async def reserve(self, gateway: str, segments: float) -> float:
        row = await self.pool.fetchrow(_RESERVE, gateway, float(segments))
        if row is None:
            raise KeyError(f"no throttle row for gateway {gateway!r}: was setup() called?")
        tokens, rate = row["tokens"], row["rate"]
        return 0.0 if tokens >= 0 else -tokens / rate
