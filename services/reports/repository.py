"""reports' SQL: all of one batch in one transaction, a handful of statements per batch."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.reports.domain import DESCRIPTIVE, Change, MessageState
from shared.statuses import RECEIPT_TO_STATUS, Status

# A message's timeline rows occur after its acceptance; a gateway clock may put a receipt a
# little before it. Reads of a timeline start this long before the acceptance.
TIMELINE_MARGIN = timedelta(days=2)
# Rows that change nothing (a receipt repeated or contradicting a final one) come within the
# receipt matching window (7 days by default) after the message's last change.
TIMELINE_AFTER = timedelta(days=40)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_COLUMNS = (
    "message_id, tenant_id, status, status_rank, reason_code, reason, gateway, gateway_message_id,"
    " accepted_at, submitted_at, final_at, part_ids, part_status, " + ", ".join(DESCRIPTIVE)
)


def _state(row: asyncpg.Record) -> MessageState:
    return MessageState(
        message_id=row["message_id"],
        tenant_id=row["tenant_id"],
        status=Status(row["status"]),
        rank=row["status_rank"],
        fields={k: row[k] for k in DESCRIPTIVE},
        reason_code=row["reason_code"],
        reason=row["reason"],
        gateway=row["gateway"],
        gateway_message_id=row["gateway_message_id"],
        accepted_at=row["accepted_at"],
        submitted_at=row["submitted_at"],
        final_at=row["final_at"],
        part_ids=tuple(row["part_ids"] or ()),
        part_status=dict(row["part_status"] or {}),
    )


#: receipt statuses that settle a submission: once one of them is applied to a submission of a
#: gateway id, another receipt for that id (another event) belongs to a later submission of it
FINAL_RECEIPTS = [r.value for r, status in RECEIPT_TO_STATUS.items() if status is not None]

DEFAULT_WINDOW = timedelta(hours=168)
DEFAULT_SKEW = timedelta(seconds=10)
DEFAULT_SETTLED_WAIT = timedelta(seconds=60)
DEFAULT_PARKED_MAX = 100_000


@dataclass(frozen=True, slots=True)
class ReceiptKey:
    """What places a receipt among the submissions of its gateway id."""

    event_id: uuid.UUID
    gateway: str
    gateway_message_id: str
    at: datetime  # when the gateway reported it (the event's time)
    late: bool = False  # parked longer than the settled wait: a settled submission may take it


# The submission a receipt belongs to, among those of its (gateway, id): gateways reuse ids (an
# SMSC restarting or wrapping its counter), so not the first one. Candidates are the submissions
# made at most ``window`` before the receipt; one that already has a final receipt of another
# event is settled and skipped (that receipt is for a later submission, maybe not recorded yet).
# Preferred: the most recent submission made before the receipt (``skew`` allowing for clocks and
# publish delays); failing that, the earliest one recorded after it (a submission's event can be
# published well after the submit_sm_resp). None: park the receipt. A receipt parked longer than
# the settled wait (``late``) may go to a settled submission when no other is there: a second,
# contradicting final receipt for one message is then kept in its timeline.
_CANDIDATE = """
    SELECT g.message_id FROM gateway_refs g
    CROSS JOIN LATERAL (SELECT EXISTS (
        SELECT 1 FROM message_events e
        WHERE e.message_id = g.message_id AND e.event_id <> {ev}
          AND e.occurred_at >= g.submitted_at - interval '2 days'  -- the timeline's recent day partitions only
          AND e.detail->>'receipt' = ANY($f::text[])
          AND e.detail->>'gateway' = {gw} AND e.detail->>'gateway_message_id' = {id}) AS settled) st
    WHERE g.gateway = {gw} AND g.gateway_message_id = {id} AND g.submitted_at >= {at} - $w::interval
      AND ({late} OR NOT st.settled)
    ORDER BY st.settled, (g.submitted_at <= {at} + $s::interval) DESC,
             CASE WHEN g.submitted_at <= {at} + $s::interval THEN g.submitted_at END DESC NULLS LAST,
             g.submitted_at, g.message_id
    LIMIT 1"""


def _sql(text: str, **names: str) -> str:
    """Fill the candidate subquery's column names and the $w / $s / $f parameter numbers."""
    return text.replace("{CANDIDATE}", _CANDIDATE.format(**{k: v for k, v in names.items() if len(k) > 1}))\
        .replace("$w", names["w"]).replace("$s", names["s"]).replace("$f", names["f"])


class ReportsRepository:
    def __init__(
        self, conn: asyncpg.Connection, window: timedelta = DEFAULT_WINDOW, skew: timedelta = DEFAULT_SKEW,
        settled_wait: timedelta = DEFAULT_SETTLED_WAIT, parked_max: int = DEFAULT_PARKED_MAX,
    ) -> None:
        self.conn = conn
        self.window = window
        self.skew = skew
        self.settled_wait = settled_wait
        self.parked_max = parked_max

    async def add_refs(self, refs: list[tuple[str, str, uuid.UUID, datetime]]) -> None:
        """Record submissions: (gateway, gateway message id, message id, submitted at). Every
        submission of a reused id is kept; the same one recorded again keeps its first time."""
        if refs:
            gateways, ids, messages, times = (list(x) for x in zip(*refs, strict=True))
            await self.conn.execute(
                "INSERT INTO gateway_refs (gateway, gateway_message_id, message_id, submitted_at)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[]) ON CONFLICT DO NOTHING",
                gateways, ids, messages, times,
            )

    async def match_receipts(self, keys: list[ReceiptKey]) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
        """Receipt event id -> (message id, tenant) of the submission it belongs to; receipts
        with none are left out (to be parked)."""
        if not keys:
            return {}
        sql = _sql(
            "SELECT k.ev, c.message_id, m.tenant_id"
            " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $8::bool[]) AS k(ev, gw, id, at, late)"
            " CROSS JOIN LATERAL ({CANDIDATE}) c"
            " JOIN messages m ON m.message_id = c.message_id",
            ev="k.ev", gw="k.gw", id="k.id", at="k.at", late="k.late", w="$5", s="$6", f="$7",
        )
        rows = await self.conn.fetch(
            sql,
            [k.event_id for k in keys], [k.gateway for k in keys], [k.gateway_message_id for k in keys],
            [k.at for k in keys], self.window, self.skew, FINAL_RECEIPTS, [k.late for k in keys],
        )
        return {r["ev"]: (r["message_id"], r["tenant_id"]) for r in rows}

    async def resolve_unknown(self, items: list[tuple[str, uuid.UUID]]) -> dict[uuid.UUID, str]:
        """(gateway, Herald's message id echoed in a receipt) of messages whose outcome is
        unknown and that were sent on that gateway → their tenant."""
        if not items:
            return {}
        gateways, ids = (list(x) for x in zip(*items, strict=True))
        rows = await self.conn.fetch(
            "SELECT m.message_id, m.tenant_id FROM messages m JOIN unnest($1::text[], $2::uuid[]) AS k(gw, id)"
            " ON m.message_id = k.id AND m.gateway = k.gw WHERE m.status = 'unknown'",
            gateways, ids,
        )
        return {r["message_id"]: r["tenant_id"] for r in rows}

    async def take_parked_for_unknown(self, message_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
        """Remove and return parked receipts that echo the id of one of these messages, now
        unknown (the receipt came before the dispatcher gave up asking)."""
        if not message_ids:
            return []
        return await self.conn.fetch(
            "DELETE FROM pending_receipts p USING messages m"
            " WHERE p.receipt->>'client_ref' = ANY($1::text[]) AND m.message_id::text = p.receipt->>'client_ref'"
            " AND m.gateway = p.gateway AND m.status = 'unknown'"
            " RETURNING p.event_id, p.receipt, p.received_at, p.occurred_at, m.message_id, m.tenant_id, p.gateway,"
            " p.gateway_message_id",
            [str(i) for i in message_ids],
        )

    async def match_locked(self, keys: list[ReceiptKey]) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
        """:meth:`match_receipts`, decided with the candidate messages locked: whether a
        submission already has its final receipt is then read after any transaction applying
        one to it has committed. A match whose message changed meanwhile is left out (parked)."""
        first = await self.match_receipts(keys)
        if not first:
            return {}
        await self.lock_states(dict(first.values()))
        again = await self.match_receipts([k for k in keys if k.event_id in first])
        return {ev: found for ev, found in again.items() if first.get(ev) == found}

    async def park_receipts(self, parked: list[tuple[uuid.UUID, str, str, datetime, str]]) -> dict[str, int]:
        """Keep receipts that belong to no recorded submission yet: (event id, gateway, id, when
        the gateway reported it, receipt JSON), at most ``parked_max`` per gateway unless the
        dispatcher submitted the receipt's id (:meth:`submitted_ids`). Returns how many were dropped
        per gateway for want of room (a receipt parked already is no new one)."""
        if not parked:
            return {}
        gateways = sorted({p[1] for p in parked})
        rows = await self.conn.fetch(
            "SELECT gateway, count(*) AS n FROM pending_receipts WHERE gateway = ANY($1::text[]) GROUP BY gateway",
            gateways,
        )
        already = {r["event_id"] for r in await self.conn.fetch(
            "SELECT event_id FROM pending_receipts WHERE event_id = ANY($1::uuid[])", [p[0] for p in parked])}
        room = {g: self.parked_max for g in gateways}
        for r in rows:
            room[r["gateway"]] = max(0, self.parked_max - r["n"])
        kept: list[tuple[uuid.UUID, str, str, datetime, str]] = []
        over: list[tuple[uuid.UUID, str, str, datetime, str]] = []
        for item in parked:
            gateway = item[1]
            if item[0] in already:
                continue
            if room[gateway] > 0:
                room[gateway] -= 1
                kept.append(item)
            else:
                over.append(item)
        dropped: dict[str, int] = {}
        if over:
            # Past the cap, a receipt for an id the dispatcher submitted is kept all the same:
            # reports is behind on its status events, the gateway is not sending garbage.
            vouched = await self.submitted_ids([(g, i, at) for _, g, i, at, _ in over])
            for item in over:
                if (item[1], item[2]) in vouched:
                    kept.append(item)
                else:
                    dropped[item[1]] = dropped.get(item[1], 0) + 1
        if kept:
            ids, gws, gw_ids, times, bodies = (list(x) for x in zip(*kept, strict=True))
            await self.conn.execute(
                "INSERT INTO pending_receipts (event_id, gateway, gateway_message_id, occurred_at, receipt)"
                " SELECT e, g, i, o, r::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])"
                " AS t(e, g, i, o, r) ON CONFLICT DO NOTHING",
                ids, gws, gw_ids, times, bodies,
            )
        return dropped

    async def submitted_ids(self, keys: list[tuple[str, str, datetime]]) -> set[tuple[str, str]]:
        """Of these (gateway, gateway id, when the gateway reported it), the ids the dispatcher
        submitted (its claims, through ``shared_submissions``) at most the window before the
        receipt, as a message's id or one of its parts'. One query for the batch; evidence that a
        receipt is no stray, never a match (reports matches from its own refs)."""
        earliest: dict[tuple[str, str], datetime] = {}
        for gateway, gateway_id, at in keys:
            earliest[(gateway, gateway_id)] = min(at, earliest.get((gateway, gateway_id), at))
        if not earliest:
            return set()
        gateways, ids, times = [g for g, _ in earliest], [i for _, i in earliest], list(earliest.values())
        # index look-ups only (dispatch_claims_gateway_ref, dispatch_claims_gateway_parts), but the
        # parts index's pessimistic estimate would have PostgreSQL JIT-compile the query
        await self.conn.execute("SET LOCAL jit = off")
        rows = await self.conn.fetch(
            "SELECT k.gw, k.id FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(gw, id, at)"
            " WHERE EXISTS (SELECT 1 FROM shared_submissions s WHERE s.gateway = k.gw AND s.gateway_message_id = k.id"
            "   AND s.state = 'submitted' AND s.updated_at >= k.at - $4::interval)"
            " OR EXISTS (SELECT 1 FROM shared_submissions s WHERE s.gateway = k.gw AND cardinality(s.gateway_part_ids) > 1"
            "   AND s.gateway_part_ids @> ARRAY[k.id] AND s.state = 'submitted' AND s.updated_at >= k.at - $4::interval)",
            gateways, ids, times, self.window,
        )
        return {(r["gw"], r["id"]) for r in rows}

    async def take_matched_receipts(
        self, refs: list[tuple[str, str]] | None, limit: int = 5000
    ) -> list[dict[str, Any]]:
        """Remove and return parked receipts that now belong to a recorded submission (all, or
        those of ``refs``): event_id, receipt, received_at, occurred_at, message_id, tenant_id."""
        if refs is not None and not refs:
            return []
        where = ""
        args: list[Any] = [limit, self.window, self.skew, FINAL_RECEIPTS, self.settled_wait]
        if refs is not None:
            gateways, ids = (list(x) for x in zip(*refs, strict=True))
            where = " AND (p.gateway, p.gateway_message_id) IN (SELECT * FROM unnest($6::text[], $7::text[]))"
            args += [gateways, ids]
        late = "(p.received_at < now() - $5::interval)"
        sql = _sql(
            "SELECT p.event_id, p.gateway, p.gateway_message_id, coalesce(p.occurred_at, p.received_at) AS at,"
            f" {late} AS late FROM pending_receipts p WHERE EXISTS ({{CANDIDATE}})" + where +
            " ORDER BY p.received_at LIMIT $1 FOR UPDATE OF p SKIP LOCKED",
            ev="p.event_id", gw="p.gateway", id="p.gateway_message_id",
            at="coalesce(p.occurred_at, p.received_at)", late=late, w="$2", s="$3", f="$4",
        )
        rows = await self.conn.fetch(sql, *args)
        if not rows:
            return []
        found = await self.match_locked(
            [ReceiptKey(r["event_id"], r["gateway"], r["gateway_message_id"], r["at"], r["late"]) for r in rows]
        )
        if not found:
            return []
        taken = await self.conn.fetch(
            "DELETE FROM pending_receipts WHERE event_id = ANY($1::uuid[])"
            " RETURNING event_id, receipt, received_at, occurred_at",
            list(found),
        )
        return [
            {**dict(r), "message_id": found[r["event_id"]][0], "tenant_id": found[r["event_id"]][1]} for r in taken
        ]

    async def expire_parked(self) -> int:
        """Drop receipts parked longer than the matching window: no submission can take them."""
        status = await self.conn.execute(
            "DELETE FROM pending_receipts WHERE received_at < now() - $1::interval", self.window
        )
        return int(status.split()[-1])

    async def lock_states(self, owners: dict[uuid.UUID, str]) -> dict[uuid.UUID, MessageState]:
        """Create missing rows as placeholders, then lock and read all (in id order: no deadlocks)."""
        ids = sorted(owners)
        tenants = [owners[i] for i in ids]
        await self.conn.execute(
            "INSERT INTO messages (message_id, tenant_id, status, status_rank)"
            " SELECT m, t, 'accepted', 0 FROM unnest($1::uuid[], $2::text[]) AS x(m, t)"
            " ORDER BY m ON CONFLICT DO NOTHING",
            ids, tenants,
        )
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE message_id = ANY($1::uuid[]) ORDER BY message_id FOR UPDATE",
            ids,
        )
        return {r["message_id"]: _state(r) for r in rows}

    async def save_states(self, states: list[MessageState]) -> None:
        if not states:
            return
        columns: dict[str, list[Any]] = {
            "message_id": [s.message_id for s in states],
            "status": [s.status.value for s in states],
            "status_rank": [s.rank for s in states],
            "reason_code": [s.reason_code for s in states],
            "reason": [s.reason for s in states],
            "gateway": [s.gateway for s in states],
            "gateway_message_id": [s.gateway_message_id for s in states],
            "accepted_at": [s.accepted_at for s in states],
            "submitted_at": [s.submitted_at for s in states],
            "final_at": [s.final_at for s in states],
            "part_ids": [json.dumps(list(s.part_ids)) if s.part_ids else None for s in states],
            "part_status": [json.dumps(s.part_status) if s.part_status else None for s in states],
        }
        for key in DESCRIPTIVE:
            values = [s.fields.get(key) for s in states]
            columns[key] = [json.dumps(v) if key == "metadata" and v is not None else v for v in values]
        types = {
            "message_id": "uuid", "status_rank": "smallint", "accepted_at": "timestamptz",
            "submitted_at": "timestamptz", "final_at": "timestamptz", "segments": "int", "metadata": "text",
            "contact_id": "uuid", "campaign_id": "uuid", "journey_id": "uuid",
            "template_id": "uuid", "template_version": "int",
        }
        jsonb = ("metadata", "part_status")
        names = list(columns)
        unnest = ", ".join(f"${i + 1}::{types.get(n, 'text')}[]" for i, n in enumerate(names))
        sets = ", ".join(
            f"{n} = u.{n}::jsonb" if n in jsonb
            else f"{n} = ARRAY(SELECT jsonb_array_elements_text(u.{n}::jsonb))" if n == "part_ids"
            else f"{n} = u.{n}"
            for n in names if n != "message_id"
        )
        await self.conn.execute(
            f"UPDATE messages m SET {sets}, updated_at = now()"
            f" FROM unnest({unnest}) AS u({', '.join(names)}) WHERE m.message_id = u.message_id",
            *columns.values(),
        )

    async def add_timeline(self, changes: list[Change]) -> None:
        if changes:
            await self.conn.execute(
                "INSERT INTO message_events (event_id, message_id, status, occurred_at, detail)"
                " SELECT e, m, s, o, d::jsonb FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[])"
                " AS t(e, m, s, o, d) ON CONFLICT (event_id, occurred_at) DO NOTHING",
                [c.event_id for c in changes],
                [c.message_id for c in changes],
                [c.timeline_status for c in changes],
                [c.occurred_at for c in changes],
                [json.dumps(c.detail) for c in changes],
            )


async def fetch_message(pool: asyncpg.Pool, tenant_id: str, message_id: uuid.UUID) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS}, updated_at FROM messages WHERE message_id = $1 AND tenant_id = $2 AND status_rank > 0",
            message_id, tenant_id,
        )
        if row is None:
            return None
        # The timeline is partitioned by day (migration 0035): read only the days from the message's
        # acceptance (less a margin for clocks) to its last change (plus the span a late receipt or
        # a repeated one may still come in), so the partitions of other days are not even opened.
        since = row["accepted_at"] - TIMELINE_MARGIN if row["accepted_at"] is not None else EPOCH
        until = max(t for t in (row["accepted_at"], row["final_at"], row["updated_at"]) if t is not None) + TIMELINE_AFTER
        # One generic plan per connection, its partitions pruned when it runs: planning for each
        # message's bounds (PostgreSQL's choice here) costs more than the read with 400 partitions.
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            events = await conn.fetch(
                "SELECT status, occurred_at, detail FROM message_events WHERE message_id = $1 AND occurred_at >= $2"
                " AND occurred_at < $3 ORDER BY occurred_at, recorded_at",
                message_id, since, until,
            )
    result = dict(row)
    result.pop("status_rank")
    result.pop("updated_at")
    result["timeline"] = [dict(e) for e in events]
    return result


async def search_messages(pool: asyncpg.Pool, sql: str, args: list[Any], timeout_ms: int) -> list[dict[str, Any]]:
    """One page of a message search (services/reports/search.py), under a statement timeout."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        return [dict(r) for r in await conn.fetch(sql, *args)]
