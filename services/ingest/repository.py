"""ingest's SQL. Every call is one round trip for a whole batch."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class KeyRecord:
    message_id: uuid.UUID
    request_hash: str
    fresh: bool  # inserted by this call


_RESERVE = """
WITH input AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::uuid[]) AS t(k, h, m)
), ins AS (
    INSERT INTO idempotency_keys (tenant_id, idempotency_key, message_id, request_hash)
    SELECT $1, k, m, h FROM input
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING idempotency_key, message_id, request_hash
)
SELECT idempotency_key, message_id, request_hash, true AS fresh FROM ins
UNION ALL
SELECT i.idempotency_key, i.message_id, i.request_hash, false
FROM idempotency_keys i JOIN input ON i.tenant_id = $1 AND i.idempotency_key = input.k
"""


class IngestRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def reserve_keys(
        self, tenant_id: str, entries: list[tuple[str, str, uuid.UUID]]
    ) -> dict[str, KeyRecord]:
        """Insert (key, request hash, message id) rows; return what each key maps to now."""
        if not entries:
            return {}
        keys = [e[0] for e in entries]
        rows = await self.pool.fetch(_RESERVE, tenant_id, keys, [e[1] for e in entries], [e[2] for e in entries])
        found = {r["idempotency_key"]: KeyRecord(r["message_id"], r["request_hash"], r["fresh"]) for r in rows}
        missing = [k for k in keys if k not in found]
        if missing:  # inserted by a concurrent request after our snapshot: read them now
            rows = await self.pool.fetch(
                "SELECT idempotency_key, message_id, request_hash FROM idempotency_keys"
                " WHERE tenant_id = $1 AND idempotency_key = ANY($2::text[])",
                tenant_id,
                missing,
            )
            found.update({r["idempotency_key"]: KeyRecord(r["message_id"], r["request_hash"], False) for r in rows})
        return found

    async def active_tenants(self, tenant_ids: set[str]) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT tenant_id FROM tenants WHERE tenant_id = ANY($1::text[]) AND disabled_at IS NULL",
            list(tenant_ids),
        )
        return {r["tenant_id"] for r in rows}

    async def suppress(self, tenant_id: str, phone: str, reason: str, source: str) -> None:
        await self.pool.execute(
            "INSERT INTO suppressions (tenant_id, phone_e164, reason, source) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, phone_e164) DO UPDATE SET reason = excluded.reason, source = excluded.source",
            tenant_id,
            phone,
            reason,
            source,
        )

    async def unsuppress(self, tenant_id: str, phone: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
        )
        return status.endswith(" 1")
