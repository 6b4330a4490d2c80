"""reports' SQL: all of one batch in one transaction, a handful of statements per batch."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from services.reports.domain import DESCRIPTIVE, Change, MessageState
from shared.statuses import Status

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


class ReportsRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add_refs(self, refs: list[tuple[str, str, uuid.UUID]]) -> None:
        if refs:
            gateways, ids, messages = (list(x) for x in zip(*refs, strict=True))
            await self.conn.execute(
                "INSERT INTO gateway_refs (gateway, gateway_message_id, message_id)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
                gateways, ids, messages,
            )

    async def resolve_refs(self, refs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[uuid.UUID, str]]:
        """(gateway, gateway message id) → (message id, tenant)."""
        if not refs:
            return {}
        gateways, ids = (list(x) for x in zip(*refs, strict=True))
        rows = await self.conn.fetch(
            "SELECT g.gateway, g.gateway_message_id, g.message_id, m.tenant_id FROM gateway_refs g"
            " JOIN unnest($1::text[], $2::text[]) AS k(gw, id) ON g.gateway = k.gw AND g.gateway_message_id = k.id"
            " JOIN messages m ON m.message_id = g.message_id",
            gateways, ids,
        )
        return {(r["gateway"], r["gateway_message_id"]): (r["message_id"], r["tenant_id"]) for r in rows}

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
            " RETURNING p.event_id, p.receipt, p.received_at, m.message_id, m.tenant_id, p.gateway, p.gateway_message_id",
            [str(i) for i in message_ids],
        )

    async def park_receipts(self, parked: list[tuple[uuid.UUID, str, str, str]]) -> None:
        """Keep receipts whose submission is not recorded yet: (event id, gateway, id, receipt JSON)."""
        if parked:
            ids, gateways, gw_ids, bodies = (list(x) for x in zip(*parked, strict=True))
            await self.conn.execute(
                "INSERT INTO pending_receipts (event_id, gateway, gateway_message_id, receipt)"
                " SELECT e, g, i, r::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS t(e, g, i, r)"
                " ON CONFLICT DO NOTHING",
                ids, gateways, gw_ids, bodies,
            )

    async def take_matched_receipts(
        self, refs: list[tuple[str, str]] | None, limit: int = 5000
    ) -> list[asyncpg.Record]:
        """Remove and return parked receipts whose gateway id is now known (all, or among ``refs``)."""
        if refs is not None:
            if not refs:
                return []
            gateways, ids = (list(x) for x in zip(*refs, strict=True))
            return await self.conn.fetch(
                "DELETE FROM pending_receipts p USING gateway_refs g, messages m,"
                " unnest($1::text[], $2::text[]) AS k(gw, id)"
                " WHERE p.gateway = k.gw AND p.gateway_message_id = k.id"
                " AND g.gateway = p.gateway AND g.gateway_message_id = p.gateway_message_id"
                " AND m.message_id = g.message_id"
                " RETURNING p.event_id, p.receipt, p.received_at, g.message_id, m.tenant_id",
                gateways, ids,
            )
        return await self.conn.fetch(
            "DELETE FROM pending_receipts p USING gateway_refs g, messages m"
            " WHERE p.event_id IN (SELECT p2.event_id FROM pending_receipts p2 JOIN gateway_refs g2"
            "   ON g2.gateway = p2.gateway AND g2.gateway_message_id = p2.gateway_message_id"
            "   LIMIT $1 FOR UPDATE OF p2 SKIP LOCKED)"
            " AND g.gateway = p.gateway AND g.gateway_message_id = p.gateway_message_id"
            " AND m.message_id = g.message_id"
            " RETURNING p.event_id, p.receipt, p.received_at, g.message_id, m.tenant_id",
            limit,
        )

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
                " AS t(e, m, s, o, d) ON CONFLICT (event_id) DO NOTHING",
                [c.event_id for c in changes],
                [c.message_id for c in changes],
                [c.timeline_status for c in changes],
                [c.occurred_at for c in changes],
                [json.dumps(c.detail) for c in changes],
            )


async def fetch_message(pool: asyncpg.Pool, tenant_id: str, message_id: uuid.UUID) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM messages WHERE message_id = $1 AND tenant_id = $2 AND status_rank > 0",
            message_id, tenant_id,
        )
        if row is None:
            return None
        events = await conn.fetch(
            "SELECT status, occurred_at, detail FROM message_events WHERE message_id = $1 ORDER BY occurred_at, recorded_at",
            message_id,
        )
    result = dict(row)
    result.pop("status_rank")
    result["timeline"] = [dict(e) for e in events]
    return result
