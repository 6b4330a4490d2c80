"""Claims: the dispatcher's record that makes every submission happen at most once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

HELD_CAMPAIGN_STATES = frozenset({"paused", "cancelled"})


class CampaignStates:
    """Which campaigns are paused or cancelled, cached for ``ttl_s`` (a pause acts within seconds)."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 1.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[uuid.UUID, tuple[float, str]] = {}

    async def held(self, campaign_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        now = time.monotonic()
        ids = set(campaign_ids)
        stale = [c for c in ids if c not in self._cache or self._cache[c][0] < now]
        if stale:
            rows = await self.pool.fetch("SELECT campaign_id, state FROM shared_campaign_states WHERE campaign_id = ANY($1::uuid[])", stale)
            found = {r["campaign_id"]: r["state"] for r in rows}
            if len(self._cache) > 10_000:
                self._cache.clear()
            for c in stale:
                self._cache[c] = (now + self.ttl_s, found.get(c, "unknown"))
        return {c for c in ids if self._cache[c][1] in HELD_CAMPAIGN_STATES}


class TenantStates:
    """Which tenants an operator disabled, cached for ``ttl_s`` (a disable acts within about a second)."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 1.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, bool]] = {}

    async def disabled(self, tenants: Iterable[str]) -> set[str]:
        now = time.monotonic()
        ids = set(tenants)
        stale = [t for t in ids if t not in self._cache or self._cache[t][0] < now]
        if stale:
            rows = await self.pool.fetch(
                "SELECT tenant_id FROM shared_tenant_settings WHERE tenant_id = ANY($1::text[]) AND disabled_at IS NOT NULL", stale
            )
            found = {r["tenant_id"] for r in rows}
            if len(self._cache) > 10_000:
                self._cache.clear()
            for t in stale:
                self._cache[t] = (now + self.ttl_s, t in found)
        return {t for t in ids if self._cache[t][1]}


@dataclass(frozen=True, slots=True)
class Claim:
    message_id: uuid.UUID
    fresh: bool  # this call took it
    state: str
    gateway: str | None = None
    gateway_message_id: str | None = None
    attempts: int = 0
    reason_code: str | None = None
    reason: str | None = None
    gateway_part_ids: list[str] | None = None
    owner: str | None = None  # who holds it (an unfinished claim)


@dataclass(frozen=True, slots=True)
class Finish:
    message_id: uuid.UUID
    state: str  # submitted | failed | expired
    gateway: str | None
    gateway_message_id: str | None
    attempts: int
    reason_code: str | None = None
    reason: str | None = None
    part_ids: tuple[str, ...] = ()
    detail: tuple[tuple[str, str], ...] = ()  # for the timeline: route, failover


_CLAIM = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(message_id, tenant_id, outbound)
), ins AS (
    INSERT INTO dispatch_claims (message_id, tenant_id, state, owner, lease_until, outbound)
    SELECT message_id, tenant_id, 'claimed', $4, now() + make_interval(secs => $5), outbound::jsonb FROM input
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
)
SELECT message_id, true AS fresh, 'claimed' AS state, NULL AS gateway, NULL AS gateway_message_id,
       0 AS attempts, NULL AS reason_code, NULL AS reason, NULL::text[] AS gateway_part_ids, $4 AS owner
FROM ins
UNION ALL
SELECT c.message_id, false, c.state, c.gateway, c.gateway_message_id, c.attempts, c.reason_code, c.reason,
       c.gateway_part_ids, c.owner
FROM dispatch_claims c JOIN input USING (message_id)
"""

_FINISH = """
UPDATE dispatch_claims c SET
    state = f.state, gateway = f.gateway, gateway_message_id = f.gateway_message_id,
    attempts = f.attempts, reason_code = f.reason_code, reason = f.reason,
    gateway_part_ids = CASE WHEN f.part_ids = '' THEN NULL ELSE string_to_array(f.part_ids, ' ') END,
    -- a secret text (an OTP) is redacted as soon as its message is finished (services/dispatcher/retention.py)
    outbound = CASE WHEN f.state IN ('submitted', 'failed', 'expired') AND c.outbound ->> 'secret' = 'true'
                    THEN c.outbound || '{"body": "", "body_redacted": true}'::jsonb ELSE c.outbound END,
    updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[])
    AS f(message_id, state, gateway, gateway_message_id, attempts, reason_code, reason, part_ids)
WHERE c.message_id = f.message_id AND c.state = 'claimed'
"""

_TAKE_STALE = """
UPDATE dispatch_claims c SET owner = $1, lease_until = now() + make_interval(secs => $2), updated_at = now()
WHERE c.message_id IN (
    SELECT message_id FROM dispatch_claims
    WHERE state = 'claimed' AND lease_until < now()
    ORDER BY lease_until LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING c.message_id, c.tenant_id, c.outbound, c.attempts, c.submit_attempts
"""

_RECORD_ATTEMPTS = """
UPDATE dispatch_claims SET submit_attempts = coalesce(submit_attempts, '[]'::jsonb)
    || jsonb_build_array(jsonb_build_object('gateway', $2::text, 'at', now(), 'outcome', 'sending')),
    updated_at = now()
WHERE message_id = ANY($1::uuid[]) AND state = 'claimed'
"""

_RECORD_OUTCOMES = """
UPDATE dispatch_claims c SET submit_attempts = jsonb_set(
    c.submit_attempts, ARRAY[(jsonb_array_length(c.submit_attempts) - 1)::text, 'outcome'], to_jsonb(o.outcome))
FROM unnest($1::uuid[], $3::text[]) AS o(message_id, outcome)
WHERE c.message_id = o.message_id AND c.state = 'claimed'
  AND jsonb_array_length(c.submit_attempts) > 0 AND c.submit_attempts -> -1 ->> 'gateway' = $2
"""


class ClaimRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(
        self, owner: str, lease_s: float, items: list[tuple[uuid.UUID, str, str]]
    ) -> dict[uuid.UUID, Claim]:
        """Claim (message id, tenant, outbound JSON) rows; report each message's claim."""
        if not items:
            return {}
        ids, tenants, payloads = (list(x) for x in zip(*items, strict=True))
        rows = await self.pool.fetch(_CLAIM, ids, tenants, payloads, owner, lease_s)
        claims: dict[uuid.UUID, Claim] = {}
        for r in rows:
            if r["message_id"] not in claims or r["fresh"]:
                claims[r["message_id"]] = Claim(**dict(r))
        return claims

    async def finish(self, rows: list[Finish]) -> None:
        if not rows:
            return
        await self.pool.execute(
            _FINISH,
            [r.message_id for r in rows],
            [r.state for r in rows],
            [r.gateway for r in rows],
            [r.gateway_message_id for r in rows],
            [r.attempts for r in rows],
            [r.reason_code for r in rows],
            [r.reason for r in rows],
            [" ".join(r.part_ids) for r in rows],  # gateway ids never contain spaces
        )

    async def release_for_reconcile(self, ids: list[uuid.UUID], after_s: float) -> None:
        """Outcome unknown: let the reconciler look at these claims after ``after_s``."""
        if ids:
            await self.pool.execute(
                "UPDATE dispatch_claims SET owner = 'reconciler', lease_until = now() + make_interval(secs => $2),"
                " updated_at = now() WHERE message_id = ANY($1::uuid[]) AND state = 'claimed'",
                ids,
                after_s,
            )

    async def renew(self, owner: str, lease_s: float, ids: list[uuid.UUID]) -> int:
        """Extend the leases of the claims this process is working on right now (``ids``), and only
        those: a claim it left open when a batch failed must expire and go to the reconciler."""
        if not ids:
            return 0
        # SKIP LOCKED: a row locked now is being written by this process's batch (its outcome,
        # its finish). Waiting for it while the batch waits for a row this statement locked is a
        # deadlock; the row is renewed on the next round instead (renewal runs every third of a lease).
        status = await self.pool.execute(
            "UPDATE dispatch_claims c SET lease_until = now() + make_interval(secs => $2)"
            " FROM (SELECT message_id FROM dispatch_claims WHERE owner = $1 AND state = 'claimed'"
            "       AND lease_until > now() AND message_id = ANY($3::uuid[])"
            "       ORDER BY message_id FOR UPDATE SKIP LOCKED) AS free"
            " WHERE c.message_id = free.message_id",
            owner,
            lease_s,
            ids,
        )
        return int(status.split()[-1])

    async def take_stale(self, owner: str, lease_s: float, limit: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(_TAKE_STALE, owner, lease_s, limit)

    async def record_attempts(self, gateway: str, ids: list[uuid.UUID]) -> None:
        """Before a submission: note on each claim that ``gateway`` is about to get it, so the
        reconciler knows every gateway that may have the message."""
        if ids:
            await self.pool.execute(_RECORD_ATTEMPTS, ids, gateway)

    async def record_outcomes(self, gateway: str, ids: list[uuid.UUID], outcomes: list[str]) -> None:
        """After a submission: the outcome of each claim's latest attempt (on ``gateway``)."""
        if ids:
            await self.pool.execute(_RECORD_OUTCOMES, ids, gateway, outcomes)

    async def oldest_open_age(self) -> float:
        """Seconds since the oldest unfinished claim was taken (0 when there is none)."""
        age = await self.pool.fetchval(
            "SELECT coalesce(extract(epoch FROM now() - min(claimed_at)), 0)::float8"
            " FROM dispatch_claims WHERE state = 'claimed'"
        )
        return float(age or 0.0)

@dataclass(frozen=True, slots=True)
class ParkItem:
    message_id: uuid.UUID
    retry_at: datetime
    gateway: str | None  # the gateway that refused last (None: keep the one recorded)
    attempts: int
    reason_code: str | None = None
    reason: str | None = None


_PARK = """
UPDATE dispatch_claims c SET
    state = 'parked', owner = 'parked', park_retry_at = f.retry_at, parked_at = coalesce(c.parked_at, now()),
    park_rounds = c.park_rounds + 1, attempts = f.attempts, gateway = coalesce(f.gateway, c.gateway),
    reason_code = coalesce(f.reason_code, c.reason_code), reason = coalesce(f.reason, c.reason), updated_at = now()
FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int[], $5::text[], $6::text[])
    AS f(message_id, retry_at, gateway, attempts, reason_code, reason)
WHERE c.message_id = f.message_id AND c.state = 'claimed' AND c.owner = $7
"""

_TAKE_PARKED = """
UPDATE dispatch_claims c SET state = 'claimed', owner = $1, lease_until = now() + make_interval(secs => $2),
    updated_at = now()
WHERE c.message_id IN (
    SELECT message_id FROM dispatch_claims
    WHERE state = 'parked' AND park_retry_at <= now()
    ORDER BY park_retry_at LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING c.message_id, c.tenant_id, c.outbound, c.attempts, c.park_rounds, c.gateway, c.reason_code, c.reason
"""


class ParkingRepository:
    """Parked messages: claim rows in state 'parked', waiting for their route to accept them.

    A parked row has no owner: taking it turns it back into a claim of the taker (state
    'claimed', with a lease), so a message is parked or in flight in one place, never both.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def park(self, owner: str, items: list[ParkItem]) -> int:
        """Park messages ``owner`` holds a claim on (state 'claimed' -> 'parked'); returns how
        many were parked. A claim another instance took over meanwhile is left alone."""
        if not items:
            return 0
        args = (
            [i.message_id for i in items],
            [i.retry_at for i in items],
            [i.gateway for i in items],
            [i.attempts for i in items],
            [i.reason_code for i in items],
            [i.reason for i in items],
            owner,
        )
        for attempt in range(3):
            try:
                status = await self.pool.execute(_PARK, *args)
                return int(status.split()[-1])
            except asyncpg.DeadlockDetectedError:
                # The lease renewal updates the same claims; the statement was rolled back whole.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def take_due(self, owner: str, lease_s: float, limit: int) -> list[asyncpg.Record]:
        """Claim parked messages whose resend is due (any instance; rows locked by another are skipped)."""
        return await self.pool.fetch(_TAKE_PARKED, owner, lease_s, limit)

    async def wake(self, gateways: list[str], limit: int | None = None) -> int:
        """Make the messages parked on these gateways due now (their circuit closed again), or
        only the ``limit`` next ones (a probe of a gateway that may be back)."""
        if not gateways:
            return 0
        status = await self.pool.execute(
            "UPDATE dispatch_claims SET park_retry_at = now() WHERE message_id IN ("
            " SELECT message_id FROM dispatch_claims"
            " WHERE state = 'parked' AND gateway = ANY($1::text[]) AND park_retry_at > now()"
            " ORDER BY park_retry_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            gateways,
            limit,
        )
        return int(status.split()[-1])

    async def stats(self) -> tuple[int, float]:
        """(parked messages, seconds since the oldest was first parked)."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(parked_at)), 0)::float8 AS oldest"
            " FROM dispatch_claims WHERE state = 'parked'"
        )
        return int(row["n"]), float(row["oldest"])
