"""ingest's SQL. Every call is one round trip for a whole batch."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.ingest.template_sends import StoredTemplate
from shared.coalesce import Coalescer
from shared.geo import GeoPolicy
from shared.senders import SenderBook
from shared.templates import CONTACT_FIELDS, Template


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


# The same for entries of several tenants (the single requests in flight), in one statement.
_RESERVE_MANY = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[]) AS t(tn, k, h, m)
), ins AS (
    INSERT INTO idempotency_keys (tenant_id, idempotency_key, message_id, request_hash)
    SELECT tn, k, m, h FROM input
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING tenant_id, idempotency_key, message_id, request_hash
)
SELECT tenant_id, idempotency_key, message_id, request_hash, true AS fresh FROM ins
UNION ALL
SELECT i.tenant_id, i.idempotency_key, i.message_id, i.request_hash, false
FROM idempotency_keys i JOIN input ON i.tenant_id = input.tn AND i.idempotency_key = input.k
"""

Entry = tuple[str, str, str, uuid.UUID]  # tenant, key, request hash, message id


class IngestRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Single requests in flight reserve their keys together: one statement for all of them.
        self._singles: Coalescer[Entry, KeyRecord] = Coalescer(self._reserve_many, max_batch=1000)

    async def message_status(self, tenant_id: str, message_id: uuid.UUID) -> str | None:
        """The status reports has for one of the tenant's messages (read only; reports owns the
        table), or None when it has none (yet)."""
        return await self.pool.fetchval(
            "SELECT status FROM shared_message_statuses WHERE message_id = $1 AND tenant_id = $2", message_id, tenant_id
        )

    async def reserve_keys(
        self, tenant_id: str, entries: list[tuple[str, str, uuid.UUID]]
    ) -> dict[str, KeyRecord]:
        """Insert (key, request hash, message id) rows; return what each key maps to now."""
        if not entries:
            return {}
        if len(entries) == 1:
            key, digest, message_id = entries[0]
            return {key: await self._singles.submit((tenant_id, key, digest, message_id))}
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

    async def _reserve_many(self, entries: list[Entry]) -> list[KeyRecord]:
        """reserve_keys for single entries of any tenants: the first entry of a (tenant, key) is
        inserted; a later one of the same flush gets the first one's row, as not fresh."""
        unique: dict[tuple[str, str], Entry] = {}
        for entry in entries:
            unique.setdefault((entry[0], entry[1]), entry)
        # In key order, so two instances' statements take the index entries in one order (no deadlock).
        rows_in = [unique[k] for k in sorted(unique)]
        rows = await self.pool.fetch(
            _RESERVE_MANY, [e[0] for e in rows_in], [e[1] for e in rows_in], [e[2] for e in rows_in],
            [e[3] for e in rows_in],
        )
        found = {
            (r["tenant_id"], r["idempotency_key"]): KeyRecord(r["message_id"], r["request_hash"], r["fresh"])
            for r in rows
        }
        missing = [k for k in unique if k not in found]
        if missing:  # inserted by a concurrent statement after our snapshot: read them now
            rows = await self.pool.fetch(
                "SELECT i.tenant_id, i.idempotency_key, i.message_id, i.request_hash FROM idempotency_keys i"
                " JOIN unnest($1::text[], $2::text[]) AS t(tn, k) ON i.tenant_id = t.tn AND i.idempotency_key = t.k",
                [k[0] for k in missing], [k[1] for k in missing],
            )
            found.update({(r["tenant_id"], r["idempotency_key"]): KeyRecord(r["message_id"], r["request_hash"], False)
                          for r in rows})
        results = []
        for entry in entries:
            record = found[(entry[0], entry[1])]
            if record.fresh and record.message_id != entry[3]:
                record = KeyRecord(record.message_id, record.request_hash, False)  # a later entry of the same key
            results.append(record)
        return results

    async def kafka_input_keys(self, key_ids: set[str]) -> dict[str, tuple[str, str]]:
        """key id -> (tenant, secret) of these Kafka input keys that are live (not revoked)."""
        rows = await self.pool.fetch(
            "SELECT key_id, tenant_id, secret FROM kafka_input_keys WHERE key_id = ANY($1::text[]) AND revoked_at IS NULL",
            sorted(key_ids),
        )
        return {r["key_id"]: (r["tenant_id"], r["secret"]) for r in rows}

    async def active_tenants(self, tenant_ids: set[str], *, with_disabled: bool = False) -> dict[str, GeoPolicy]:
        """The tenants that exist and are not disabled (``with_disabled``: disabled ones too), each
        with its geo permissions."""
        rows = await self.pool.fetch(
            "SELECT tenant_id, country, allowed_countries FROM tenants"
            " WHERE tenant_id = ANY($1::text[]) AND (disabled_at IS NULL OR $2)",
            list(tenant_ids), with_disabled,
        )
        return {r["tenant_id"]: GeoPolicy.of(r["country"], r["allowed_countries"]) for r in rows}

    async def sender_books(self, tenant_ids: set[str]) -> dict[str, SenderBook]:
        """Each tenant's sender registry (shared/senders.py), one query for them all."""
        rows = await self.pool.fetch(
            "SELECT tenant_id, sender, kind, state, countries, capabilities, registrations::text AS registrations,"
            " rate_per_s, burst, NULL::text[] AS members, false AS geo_match"
            " FROM senders WHERE tenant_id = ANY($1::text[])"
            " UNION ALL SELECT tenant_id, name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, senders, geo_match"
            " FROM sender_pools WHERE tenant_id = ANY($1::text[])",
            sorted(tenant_ids),
        )
        grouped: dict[str, list[Any]] = {}
        pools: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["members"] is not None:  # a pool (its name in the sender column)
                pools.setdefault(r["tenant_id"], []).append({"name": r["sender"], "senders": r["members"],
                                                              "geo_match": r["geo_match"]})
            else:
                grouped.setdefault(r["tenant_id"], []).append(r)
        return {t: SenderBook.of(grouped.get(t, []), pools.get(t, [])) for t in set(grouped) | set(pools)}

    async def sender_assignments(self, tenant_id: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The sticky senders of these (pool, recipient) pairs: one query for a batch."""
        if not keys:
            return {}
        rows = await self.pool.fetch(
            "SELECT a.pool, a.phone_e164, a.sender FROM sender_assignments a"
            " JOIN unnest($2::text[], $3::text[]) AS k(pool, phone) ON a.pool = k.pool AND a.phone_e164 = k.phone"
            " WHERE a.tenant_id = $1",
            tenant_id, [k[0] for k in keys], [k[1] for k in keys],
        )
        return {(r["pool"], r["phone_e164"]): r["sender"] for r in rows}

    async def assign_senders(
        self, tenant_id: str, first: dict[tuple[str, str], str], fallbacks: dict[tuple[str, str], str]
    ) -> dict[tuple[str, str], str]:
        """Store recipients' senders: ``fallbacks`` replace what was stored; ``first`` assignments
        keep one another instance stored meanwhile. Returns the stored sender of each ``first``
        key (another's where it won the race). Two statements at most, for the whole batch."""
        async with self.pool.acquire() as conn:
            if fallbacks:
                await conn.execute(
                    "INSERT INTO sender_assignments (tenant_id, pool, phone_e164, sender)"
                    " SELECT $1, p, n, s FROM unnest($2::text[], $3::text[], $4::text[]) AS t(p, n, s)"
                    " ON CONFLICT (tenant_id, pool, phone_e164) DO UPDATE SET sender = excluded.sender, assigned_at = now()",
                    tenant_id, [k[0] for k in fallbacks], [k[1] for k in fallbacks], list(fallbacks.values()),
                )
            if not first:
                return {}
            rows = await conn.fetch(
                "INSERT INTO sender_assignments (tenant_id, pool, phone_e164, sender)"
                " SELECT $1, p, n, s FROM unnest($2::text[], $3::text[], $4::text[]) AS t(p, n, s)"
                " ON CONFLICT (tenant_id, pool, phone_e164) DO UPDATE SET sender = sender_assignments.sender"
                " RETURNING pool, phone_e164, sender",
                tenant_id, [k[0] for k in first], [k[1] for k in first], list(first.values()),
            )
        return {(r["pool"], r["phone_e164"]): r["sender"] for r in rows}

    async def marketing_context(
        self, tenant_id: str, phones: list[str]
    ) -> tuple[str, dict[str, str], tuple[str | None, int | None]]:
        """The tenant's opt-out mode ('append' or 'refuse'), the language of each of these numbers
        that is a contact with one, and the tenant's short-link policy (its own link domain and
        link lifetime, None: the service's), in one round trip."""
        rows = await self.pool.fetch(
            "SELECT t.marketing_opt_out, t.link_domain, t.link_ttl_s, c.phone_e164, c.language FROM tenants t"
            " LEFT JOIN contacts c ON c.tenant_id = t.tenant_id AND c.phone_e164 = ANY($2::text[]) AND c.language IS NOT NULL"
            " WHERE t.tenant_id = $1",
            tenant_id, phones,
        )
        mode = rows[0]["marketing_opt_out"] if rows else "append"
        links = (rows[0]["link_domain"], rows[0]["link_ttl_s"]) if rows else (None, None)
        return mode, {r["phone_e164"]: r["language"] for r in rows if r["phone_e164"] is not None}, links

    async def templates_for_send(
        self, tenant_id: str, keys: list[tuple[uuid.UUID, int | None]]
    ) -> dict[tuple[uuid.UUID, int | None], StoredTemplate]:
        """The templates (template id, version or None for the current one) a batch sends, in one
        round trip. A key without an answer is a template this tenant does not have."""
        if not keys:
            return {}
        rows = await self.pool.fetch(
            "SELECT k.id, k.ver, t.version AS current_version, t.archived_at IS NOT NULL AS archived, v.version,"
            " v.purpose, v.sender, v.default_language, v.variants, v.dlt_template_id"
            " FROM unnest($2::uuid[], $3::int[]) AS k(id, ver)"
            " JOIN templates t ON t.tenant_id = $1 AND t.template_id = k.id"
            " LEFT JOIN template_versions v ON v.tenant_id = $1 AND v.template_id = k.id"
            " AND v.version = coalesce(k.ver, t.version)",
            tenant_id, [k[0] for k in keys], [k[1] for k in keys],
        )
        return {
            (r["id"], r["ver"]): StoredTemplate(
                r["id"], r["current_version"], r["archived"], r["version"],
                Template(r["purpose"], r["default_language"], r["variants"], r["sender"]) if r["version"] else None,
                r["dlt_template_id"],
            )
            for r in rows
        }

    async def contacts_for_send(self, tenant_id: str, phones: list[str]) -> dict[str, dict[str, Any]]:
        """The fields templates read of each of these numbers that is a contact, in one round trip."""
        if not phones:
            return {}
        rows = await self.pool.fetch(
            "SELECT phone_e164, first_name, last_name, language, country, time_zone, attributes FROM contacts"
            " WHERE tenant_id = $1 AND phone_e164 = ANY($2::text[])",
            tenant_id, phones,
        )
        return {r["phone_e164"]: {k: r[k] for k in CONTACT_FIELDS + ("attributes",)} for r in rows}

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
