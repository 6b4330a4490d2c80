"""ingest's per-key rate limits, shared by every ingest instance, kept in PostgreSQL (``rate_counters``, ingest's).

A sliding window over minute counters: the estimate for "the last 60 seconds" is the
current minute's count plus the previous minute's count weighted by how much of it is
still inside the window. One statement per request counts and reads both minutes.

Single sends (one message per request) of a key with a high limit do not pay that round trip
each: an instance leases a chunk of the budget (``lease_size``: 0.5 % of the limit, at most 100)
with one statement that counts the whole chunk, hands it out locally, and nets what it did not
use into its next lease. Across N instances a key can thus be refused at most N chunks early
(N × 0.5 % of its limit), never let past it; keys with limits under 400 a minute are counted
request by request as before. A refusal is reused for DENIAL_S before the database is asked
again, so a key hammering past its limit costs two statements a second, not one per request.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.ratelimit import DENIAL_S, LEASE_S, Verdict, grant, judge, lease_size

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


# Leases a chunk of ``$2`` requests and messages; ``$4`` units of the lease on ``$3`` (the
# minute it was taken in) were not used and are given back if that minute is still current.
_LEASE = """
WITH cur AS (
    INSERT INTO rate_counters (key_id, window_start, requests, messages)
    VALUES ($1, date_trunc('minute', now()), $2, $2)
    ON CONFLICT (key_id, window_start) DO UPDATE
        SET requests = greatest(0, rate_counters.requests + $2
                                   - CASE WHEN rate_counters.window_start = $3 THEN $4 ELSE 0 END),
            messages = greatest(0, rate_counters.messages + $2
                                   - CASE WHEN rate_counters.window_start = $3 THEN $4 ELSE 0 END)
    RETURNING requests, messages, window_start
)
SELECT cur.requests, cur.messages, coalesce(p.requests, 0) AS prev_requests, coalesce(p.messages, 0) AS prev_messages,
       extract(epoch FROM now() - cur.window_start)::float8 AS elapsed, cur.window_start
FROM cur LEFT JOIN rate_counters p ON p.key_id = $1 AND p.window_start = cur.window_start - interval '1 minute'
"""

@dataclass(slots=True)
class _Lease:
    window_start: datetime | None = None
    left: int = 0  # units not handed out yet
    expires: float = 0.0  # monotonic
    denied: Verdict | None = None
    denied_until: float = 0.0


class RateLimiter:
    def __init__(self, pool: asyncpg.Pool, default_rpm: int, default_mpm: int, *, lease: bool = True) -> None:
        self.pool = pool
        self.default_rpm = default_rpm
        self.default_mpm = default_mpm
        self.lease = lease
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def check(self, key_id: str, messages: int, rpm: int | None, mpm: int | None) -> Verdict:
        rpm, mpm = rpm or self.default_rpm, mpm or self.default_mpm
        if self.lease and messages == 1 and lease_size(min(rpm, mpm)) > 1:
            return await self._check_leased(key_id, rpm, mpm)
        row = await self.pool.fetchrow(_COUNT, key_id, messages)
        verdict = judge(dict(row), messages, rpm, mpm)
        if not verdict.allowed and messages:
            # Refused messages do not use up the budget (the request itself still counts).
            await self.pool.execute(
                "UPDATE rate_counters SET messages = messages - $2 WHERE key_id = $1 AND window_start = $3",
                key_id, messages, row["window_start"],
            )
        await self._sweep()
        return verdict

    async def _check_leased(self, key_id: str, rpm: int, mpm: int) -> Verdict:
        while True:
            lease = self._leases.get(key_id)
            now = time.monotonic()
            if lease is not None:
                if lease.denied is not None and lease.denied_until > now:
                    return lease.denied
                if lease.left > 0 and lease.expires > now:
                    lease.left -= 1
                    return Verdict(True)
            lock = self._locks.setdefault(key_id, asyncio.Lock())
            if lock.locked():  # another request is leasing for this key: wait for it, then look again
                async with lock:
                    pass
                continue
            async with lock:
                return await self._renew(key_id, rpm, mpm)

    async def _renew(self, key_id: str, rpm: int, mpm: int) -> Verdict:
        lease = self._leases.setdefault(key_id, _Lease())
        chunk = lease_size(min(rpm, mpm))
        unused = lease.left if lease.window_start is not None else 0
        lease.left = 0
        row = await self.pool.fetchrow(_LEASE, key_id, chunk, lease.window_start, unused)
        granted = grant(dict(row), chunk, rpm, mpm)
        lease.window_start = row["window_start"]
        if granted < chunk:  # near the limit: give back what does not fit
            back = chunk - granted - (0 if granted else 1)  # a refused request still counts, as unleased
            if back:
                await self.pool.execute(
                    "UPDATE rate_counters SET requests = requests - $2, messages = messages - $3"
                    " WHERE key_id = $1 AND window_start = $4",
                    key_id, back, chunk - granted, row["window_start"],
                )
        await self._sweep()
        if granted == 0:
            counted = {**dict(row), "requests": int(row["requests"]) - chunk + 1,
                       "messages": int(row["messages"]) - chunk + 1}
            verdict = judge(counted, 1, rpm, mpm)
            if verdict.allowed:  # rounding at the edge: the estimate is exactly at the limit
                verdict = Verdict(False, 1, "requests")
            lease.denied, lease.denied_until = verdict, time.monotonic() + DENIAL_S
            return verdict
        lease.denied = None
        lease.left = granted - 1
        lease.expires = time.monotonic() + min(LEASE_S, max(0.0, 60 - float(row["elapsed"])))
        return Verdict(True)

    async def _sweep(self) -> None:
        if random.random() < 0.01:  # keep the table small: old minutes are never read again
            await self.pool.execute("DELETE FROM rate_counters WHERE window_start < now() - interval '5 minutes'")
