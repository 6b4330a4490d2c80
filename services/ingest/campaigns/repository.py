"""Campaigns' SQL: definitions, state changes, and the launcher's lease and cursor.

A launcher owns a campaign through a lease (``launcher``, ``lease_until``) taken with
FOR UPDATE SKIP LOCKED and renewed with every page it publishes; a page's cursor is stored
only after the page is published, so a launcher that dies is followed by another from the
last stored cursor (re-publishing at most one page, with the same message ids).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

COLUMNS = (
    "campaign_id, name, segment_id, segment_filter, sender, sender_pool, variants, frequency_caps, test_numbers, send_at, state,"
    " ab_test, phase, decide_at, winner, winner_detail, cursor, fanned_out_at, published, created_at, updated_at,"
    " launched_at, paused_at, paused_from, pause_reason, cancelled_at, cancel_reason, attempts, next_attempt_at, last_error,"
    " failed_at"
)


def campaign_dict(r: asyncpg.Record) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return v.isoformat() if v else None

    return {
        "campaign_id": str(r["campaign_id"]),
        "name": r["name"],
        "segment_id": str(r["segment_id"]) if r["segment_id"] else None,
        "segment_filter": r["segment_filter"],
        "sender": r["sender"],
        "sender_pool": r["sender_pool"],
        "variants": r["variants"],
        "frequency_caps": r["frequency_caps"],
        "test_numbers": list(r["test_numbers"]),
        "send_at": iso(r["send_at"]),
        "state": r["state"],
        "ab_test": r["ab_test"],
        "phase": r["phase"],
        "decide_at": iso(r["decide_at"]),
        "winner": r["winner"],
        "winner_detail": r["winner_detail"],
        "progress": {"published": r["published"], "fanned_out_at": iso(r["fanned_out_at"])},
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r["updated_at"]),
        "launched_at": iso(r["launched_at"]),
        "paused_at": iso(r["paused_at"]),
        # Why Herald paused it (null when the tenant did): the sender it names can no longer send
        "pause_reason": r["pause_reason"],
        "cancelled_at": iso(r["cancelled_at"]),
        "cancel_reason": r["cancel_reason"],
        # Why fanning it out failed (null: it never did): the last reason, failed attempts in a
        # row, when the next one is due (null once it succeeded or gave up), when it gave up.
        "failure": None if r["last_error"] is None else {
            "reason": r["last_error"], "attempts": r["attempts"], "next_attempt_at": iso(r["next_attempt_at"]),
            "failed_at": iso(r["failed_at"]),
        },
    }


class CampaignRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, tenant_id: str, body: dict[str, Any]) -> asyncpg.Record:
        return await self.pool.fetchrow(
            "INSERT INTO campaigns (tenant_id, name, segment_id, segment_filter, sender, variants, frequency_caps,"
            " test_numbers, send_at, ab_test, sender_pool) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            f" RETURNING {COLUMNS}",
            tenant_id, body["name"], body.get("segment_id"), body["segment_filter"], body.get("sender"),
            body["variants"], body.get("frequency_caps") or [], body.get("test_numbers") or [], body.get("send_at"),
            body.get("ab_test"), body.get("sender_pool"),
        )

    async def get(self, tenant_id: str, campaign_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {COLUMNS} FROM campaigns WHERE tenant_id = $1 AND campaign_id = $2", tenant_id, campaign_id
        )

    async def list(self, tenant_id: str, *, after: uuid.UUID | None, limit: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"SELECT {COLUMNS} FROM campaigns WHERE tenant_id = $1 AND campaign_id > $2 ORDER BY campaign_id LIMIT $3",
            tenant_id, after or uuid.UUID(int=0), limit,
        )

    async def change_state(self, tenant_id: str, campaign_id: uuid.UUID, expected: str, new: str) -> asyncpg.Record | None:
        """Move from ``expected`` to ``new`` (None if the state changed meanwhile)."""
        return await self.pool.fetchrow(
            "UPDATE campaigns SET state = $4, updated_at = now(), pause_reason = NULL,"
            " launched_at = CASE WHEN $3 = 'draft' THEN now() ELSE launched_at END,"
            " paused_at = CASE WHEN $4 = 'paused' THEN now() ELSE paused_at END,"
            " paused_from = CASE WHEN $4 = 'paused' THEN $3 ELSE paused_from END,"
            " cancelled_at = CASE WHEN $4 = 'cancelled' THEN now() ELSE cancelled_at END,"
            # A paused launcher lets go at once, so a resume on any instance picks it up.
            " lease_until = CASE WHEN $4 IN ('paused', 'cancelled') THEN NULL ELSE lease_until END"
            f" WHERE tenant_id = $1 AND campaign_id = $2 AND state = $3 RETURNING {COLUMNS}",
            tenant_id, campaign_id, expected, new,
        )

    # launcher -----------------------------------------------------------------------------------

    async def claim(self, owner: str, lease_s: float, now: datetime) -> asyncpg.Record | None:
        """Take one campaign to fan out: a running one not fanned out, or a scheduled one now due,
        not waiting for a retry. Fair across tenants: the tenant whose last claim is oldest goes
        first, then that tenant's campaign claimed longest ago, then the earliest due."""
        return await self.pool.fetchrow(
            "UPDATE campaigns c SET launcher = $1, lease_until = $2::timestamptz + make_interval(secs => $3),"
            " claimed_at = $2, state = 'running',"
            " updated_at = CASE WHEN c.state = 'scheduled' THEN now() ELSE c.updated_at END"
            " FROM (SELECT d.tenant_id, d.campaign_id FROM campaigns d"
            "       WHERE ((d.state = 'running' AND d.fanned_out_at IS NULL) OR (d.state = 'scheduled' AND d.send_at <= $2))"
            "         AND (d.lease_until IS NULL OR d.lease_until < $2)"
            "         AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $2)"
            "       ORDER BY (SELECT max(t.claimed_at) FROM campaigns t WHERE t.tenant_id = d.tenant_id) NULLS FIRST,"
            "                d.claimed_at NULLS FIRST, coalesce(d.send_at, d.launched_at)"
            "       LIMIT 1 FOR UPDATE SKIP LOCKED) due"
            " WHERE c.tenant_id = due.tenant_id AND c.campaign_id = due.campaign_id RETURNING c.*",
            owner, now, lease_s,
        )

    async def failed_attempt(self, tenant_id: str, campaign_id: uuid.UUID, owner: str, reason: str,
                             next_attempt_at: datetime | None) -> str | None:
        """Record a failed attempt: retry at ``next_attempt_at``, or (None) give up: state failed.
        The campaign's state after it, or None when this launcher no longer holds it."""
        return await self.pool.fetchval(
            "UPDATE campaigns SET attempts = attempts + 1, last_error = $4, next_attempt_at = $5, lease_until = NULL,"
            " state = CASE WHEN $5::timestamptz IS NULL THEN 'failed' ELSE state END,"
            " failed_at = CASE WHEN $5::timestamptz IS NULL THEN now() ELSE failed_at END, updated_at = now()"
            " WHERE tenant_id = $1 AND campaign_id = $2 AND launcher = $3 AND state = 'running' RETURNING state",
            tenant_id, campaign_id, owner, reason[:1000], next_attempt_at,
        )

    async def advance(self, tenant_id: str, campaign_id: uuid.UUID, owner: str, cursor: uuid.UUID,
                      published: int, lease_s: float, now: datetime) -> str | None:
        """Store a published page's cursor and renew the lease; the campaign's state, or None
        when this launcher lost it (paused, cancelled, lease taken over)."""
        return await self.pool.fetchval(
            "UPDATE campaigns SET cursor = $4, published = published + $5, attempts = 0, next_attempt_at = NULL,"
            " lease_until = $7::timestamptz + make_interval(secs => $6)"
            " WHERE tenant_id = $1 AND campaign_id = $2 AND launcher = $3 AND state = 'running' RETURNING state",
            tenant_id, campaign_id, owner, cursor, published, lease_s, now,
        )

    async def finish_phase(self, tenant_id: str, campaign_id: uuid.UUID, owner: str, *, testing_until: datetime | None) -> bool:
        """Every page of this phase is published: wait for the A/B result, or complete."""
        if testing_until is not None:
            # The winner phase starts from the first contact again (reports sets the winner).
            sql = ("UPDATE campaigns SET state = 'testing', decide_at = $4, cursor = NULL, lease_until = NULL,"
                   " updated_at = now()")
            args: tuple[Any, ...] = (testing_until,)
        else:
            sql = ("UPDATE campaigns SET state = 'completed', fanned_out_at = now(), lease_until = NULL, updated_at = now(),"
                   " attempts = 0, next_attempt_at = NULL")
            args = ()
        done = await self.pool.fetchval(
            sql + " WHERE tenant_id = $1 AND campaign_id = $2 AND launcher = $3 AND state = 'running' RETURNING 1",
            tenant_id, campaign_id, owner, *args,
        )
        return bool(done)

    async def pause_for(self, tenant_id: str, campaign_id: uuid.UUID, owner: str, reason: str) -> bool:
        """The launcher pauses a running campaign it holds, saying why (``pause_reason``); the
        tenant resumes it as after its own pause. False when it no longer holds a running one."""
        return bool(await self.pool.fetchval(
            "UPDATE campaigns SET state = 'paused', paused_at = now(), paused_from = 'running', pause_reason = $4,"
            " lease_until = NULL, updated_at = now()"
            " WHERE tenant_id = $1 AND campaign_id = $2 AND launcher = $3 AND state = 'running' RETURNING true",
            tenant_id, campaign_id, owner, reason,
        ))

    async def release(self, tenant_id: str, campaign_id: uuid.UUID, owner: str) -> None:
        await self.pool.execute(
            "UPDATE campaigns SET lease_until = NULL WHERE tenant_id = $1 AND campaign_id = $2 AND launcher = $3",
            tenant_id, campaign_id, owner,
        )

    async def templates(
        self, tenant_id: str, ids: list[uuid.UUID], versions: Mapping[uuid.UUID, int | None] | None = None
    ) -> dict[uuid.UUID, asyncpg.Record]:
        """The templates by id, each at the version ``versions`` pins (a campaign's, from its
        creation) or its current one, with ``version`` and ``archived``; one round trip."""
        ids = list(dict.fromkeys(ids))
        pinned = [(versions or {}).get(i) for i in ids]
        rows = await self.pool.fetch(
            "SELECT t.template_id, v.version, v.purpose, v.sender, v.default_language, v.variants,"
            " t.archived_at IS NOT NULL AS archived"
            " FROM unnest($2::uuid[], $3::int[]) AS k(id, ver)"
            " JOIN templates t ON t.tenant_id = $1 AND t.template_id = k.id"
            " JOIN template_versions v ON v.tenant_id = $1 AND v.template_id = k.id AND v.version = coalesce(k.ver, t.version)",
            tenant_id, ids, pinned,
        )
        return {r["template_id"]: r for r in rows}

    async def contacts_by_phone(self, tenant_id: str, phones: list[str]) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            "SELECT contact_id, phone_e164, first_name, last_name, language, country, time_zone, attributes,"
            " consent_marketing FROM contacts WHERE tenant_id = $1 AND phone_e164 = ANY($2::text[])",
            tenant_id, phones,
        )
        return {r["phone_e164"]: r for r in rows}


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)
