"""Throttles: how long to wait before sending N segments through a gateway.

A sender with a contracted rate (docs/senders.md, "Throughput per sender") has a bucket of its
own, keyed ``sender:<tenant>:<sender>`` beside the gateways' (``ensure`` makes it when first
seen), taken the same way before the gateway's.

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
        """Take ``segments`` tokens; return the seconds to wait before sending them (priority lanes)."""
        ...

    async def take_free(self, gateway: str, segments: float) -> float:
        """Take ``segments`` tokens if the bucket holds them and return 0; otherwise take nothing and
        return the seconds to wait before asking again (campaign lanes: never booked ahead of a code)."""
        ...


    async def ensure(self, key: str, rate: float, burst: float | None) -> None:
        """Make sure bucket ``key`` exists with this rate (a sender's: made when first seen, updated
        when its contracted rate changes; keeps its tokens)."""
        ...


def sender_key(tenant: str, sender: str) -> str:
    """The bucket of a tenant's sender (beside the gateways' buckets, by name)."""
    return f"sender:{tenant}:{sender}"


class LocalThrottle:
    def __init__(self, limits: dict[str, tuple[float, float | None]], clock: Callable[[], float] = time.monotonic) -> None:
        now = clock()
        self.clock = clock
        self.buckets = {name: TokenBucket.start(rate, now, burst) for name, (rate, burst) in limits.items()}

    async def ensure(self, key: str, rate: float, burst: float | None) -> None:
        bucket = self.buckets.get(key)
        capacity = burst or max(1.0, rate)
        if bucket is None:
            self.buckets[key] = TokenBucket.start(rate, self.clock(), capacity)
        elif (bucket.rate, bucket.capacity) != (rate, capacity):
            bucket.rate, bucket.capacity = rate, capacity

    async def reserve(self, gateway: str, segments: float) -> float:
        return self.buckets[gateway].reserve(segments, self.clock())

    async def take_free(self, gateway: str, segments: float) -> float:
        return self.buckets[gateway].take_free(segments, self.clock())


_RESERVE = """
UPDATE throttle_buckets SET
    tokens = LEAST(capacity, tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - updated_at)) * rate) - $2,
    updated_at = clock_timestamp()
WHERE gateway = $1
RETURNING tokens, rate
"""

# TokenBucket.take_free in one statement: the row is locked by the first part, so two campaign
# lanes never both take the same tokens.
_TAKE_FREE = """
WITH b AS (
    SELECT clock_timestamp() AS now, rate,
           LEAST(capacity, tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - updated_at)) * rate) AS tokens,
           LEAST($2, capacity) AS need
    FROM throttle_buckets WHERE gateway = $1 FOR UPDATE
)
UPDATE throttle_buckets t SET
    tokens = b.tokens - CASE WHEN b.tokens >= b.need THEN $2 ELSE 0 END,
    updated_at = b.now
FROM b WHERE t.gateway = $1
RETURNING CASE WHEN b.tokens >= b.need THEN 0 ELSE (b.need - b.tokens) / b.rate END AS wait
"""


class PostgresThrottle:
    def __init__(self, pool: asyncpg.Pool, limits: dict[str, tuple[float, float | None]]) -> None:
        self.pool = pool
        self.limits = limits
        self.known: dict[str, tuple[float, float]] = {}  # sender buckets this process wrote: key -> (rate, capacity)

    async def ensure(self, key: str, rate: float, burst: float | None) -> None:
        """One round trip the first time this process sees a sender (or its rate changed), none after."""
        capacity = burst or max(1.0, rate)
        if self.known.get(key) == (rate, capacity):
            return
        await self.pool.execute(
            "INSERT INTO throttle_buckets (gateway, rate, capacity, tokens, updated_at)"
            " VALUES ($1, $2, $3, $3, clock_timestamp())"
            " ON CONFLICT (gateway) DO UPDATE SET rate = excluded.rate, capacity = excluded.capacity",
            key, rate, capacity,
        )
        if len(self.known) > 100_000:
            self.known.clear()
        self.known[key] = (rate, capacity)

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

    async def take_free(self, gateway: str, segments: float) -> float:
        wait = await self.pool.fetchval(_TAKE_FREE, gateway, float(segments))
        if wait is None:
            raise KeyError(f"no throttle row for gateway {gateway!r}: was setup() called?")
        return float(wait)
