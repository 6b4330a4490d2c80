"""Subject-access export: ingest's part, the request, and the assembled document (docs/data-map.md).

``POST /v1/subject-access`` stores an export row (the audit: who asked, when) and publishes
``herald.subject-access.v1``. Every service that holds numbers or texts (ingest included, in its
own lane) gathers its rows about the number and publishes them to
``herald.subject-access.parts.v1``; ingest's parts lane stores each chunk once in
``subject_access_parts``. ``GET /v1/subject-access/{id}`` lists the services still pending and,
once every part is in, answers the document. After ``HERALD_SUBJECT_ACCESS_EXPORT_DAYS`` (or
when the number is erased) the number and the parts are removed; the row stays as the audit.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import metrics
from shared.contracts import SubjectAccessPartEvent, SubjectAccessRequested, SubjectAccessRequestedEvent
from shared.erasure import ErasureKeys
from shared.kafka import Incoming, Outgoing, Publisher
from shared.subject_access import EXPORT_SERVICES, Assembly, Rows, StoredPart, assemble, rows
from shared.subject_access_store import Gatherer
from shared.topics import SUBJECT_ACCESS

log = logging.getLogger("herald.subject_access")


def ingest_gatherer(keys: ErasureKeys) -> Gatherer:
    """Contacts and consent history (with proof), suppressions (clear, scoped, and the number's
    kept hash), replies and other received messages, tracked links of the contact, campaigns that
    name the number as a test number."""

    async def gather(conn: asyncpg.Connection, tenant_id: str, r: SubjectAccessRequested) -> Rows:
        phone = r.phone
        contacts = await conn.fetch(
            "SELECT * FROM contacts WHERE tenant_id = $1 AND (phone_e164 = $2 OR contact_id = $3) ORDER BY created_at",
            tenant_id, phone, r.contact_id,
        )
        ids = [c["contact_id"] for c in contacts]
        out: Rows = {"contacts": rows(contacts)}
        out["contact_consents"] = rows(await conn.fetch(
            "SELECT contact_id, purpose, granted, source, occurred_at, recorded_at, proof FROM contact_consents"
            " WHERE tenant_id = $1 AND contact_id = ANY($2::uuid[]) ORDER BY occurred_at, consent_id", tenant_id, ids,
        ))
        out["suppressions"] = rows(await conn.fetch(
            "SELECT phone_e164, reason, source, created_at FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2",
            tenant_id, phone,
        ))
        out["scoped_suppressions"] = rows(await conn.fetch(
            "SELECT phone_e164, scope, reason, source, created_at FROM scoped_suppressions"
            " WHERE tenant_id = $1 AND phone_e164 = $2 ORDER BY scope", tenant_id, phone,
        ))
        out["sender_assignments"] = rows(await conn.fetch(
            "SELECT pool, phone_e164, sender, assigned_at FROM sender_assignments"
            " WHERE tenant_id = $1 AND phone_e164 = $2 ORDER BY pool", tenant_id, phone,
        ))
        out["suppression_hashes"] = rows(await conn.fetch(
            "SELECT phone_hash, reason, source, created_at FROM suppression_hashes"
            " WHERE tenant_id = $1 AND phone_hash = ANY($2::text[])", tenant_id, keys.candidates(tenant_id, phone),
        )) if keys.keys or keys.match_legacy else []
        out["inbound_messages"] = rows(await conn.fetch(
            "SELECT event_id, phone_e164, recipient, scope, body, keyword_group, received_at, recorded_at"
            " FROM inbound_messages WHERE tenant_id = $1 AND phone_e164 = $2 ORDER BY received_at", tenant_id, phone,
        ))
        out["links"] = rows(await conn.fetch(
            "SELECT code, message_id, link_index, url, contact_id, campaign_id, variant, journey_id, created_at FROM links"
            " WHERE tenant_id = $1 AND contact_id = ANY($2::uuid[]) ORDER BY created_at", tenant_id, ids,
        )) if ids else []
        out["campaigns"] = rows(await conn.fetch(
            "SELECT campaign_id, name, 'test number' AS role FROM campaigns WHERE tenant_id = $1 AND $2 = ANY(test_numbers)",
            tenant_id, phone,
        ))
        return out

    return gather


class ExportNotPublished(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the subject-access request could not be published")


@dataclass(frozen=True)
class ExportStatus:
    row: asyncpg.Record
    assembly: Assembly | None  # None once the number and parts were removed

    @property
    def state(self) -> str:
        if self.row["removed_why"]:
            return str(self.row["removed_why"])
        return "complete" if self.assembly and self.assembly.complete else "pending"


class Exports:
    """Subject-access exports of a tenant: request, status and document, expiry."""

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, keys: ErasureKeys, keep_days: int) -> None:
        self.pool = pool
        self.publisher = publisher
        self.keys = keys
        self.keep = timedelta(days=keep_days)

    async def contact_phone(self, tenant_id: str, contact_id: uuid.UUID) -> str | None:
        return await self.pool.fetchval(
            "SELECT phone_e164 FROM contacts WHERE tenant_id = $1 AND contact_id = $2", tenant_id, contact_id
        )

    async def contact_of(self, tenant_id: str, phone: str) -> uuid.UUID | None:
        return await self.pool.fetchval(
            "SELECT contact_id FROM contacts WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
        )

    async def request(self, tenant_id: str, phone: str, *, requested_by: str, now: datetime,
                      contact_id: uuid.UUID | None = None, trace_id: str | None = None) -> asyncpg.Record:
        """Store the export (the audit row), then publish the request; ExportNotPublished (and no
        row) when the broker cannot take it."""
        await expire(self.pool, now)
        payload = SubjectAccessRequested(export_id=uuid.uuid4(), phone=phone, contact_id=contact_id,
                                         requested_by=requested_by, requested_at=now)
        phone_hash = self.keys.hash(tenant_id, phone) if self.keys.enabled else None
        row = await self.pool.fetchrow(
            "INSERT INTO subject_access_exports (export_id, tenant_id, phone_e164, contact_id, phone_hash, requested_by,"
            " requested_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
            payload.export_id, tenant_id, phone, contact_id, phone_hash, requested_by, now, now + self.keep,
        )
        event = SubjectAccessRequestedEvent(tenant=tenant_id, occurred_at=now, payload=payload,
                                            **({"trace_id": trace_id} if trace_id else {}))
        try:
            await self.publisher.publish([Outgoing(SUBJECT_ACCESS, f"{tenant_id}:{payload.export_id}", event)])
        except Exception as exc:  # broker unreachable: no export; the client retries
            await self.pool.execute("DELETE FROM subject_access_exports WHERE export_id = $1", payload.export_id)
            raise ExportNotPublished() from exc
        metrics.SUBJECT_ACCESS_EXPORTS.inc()
        log.info("subject-access export requested", extra={"export_id": str(payload.export_id), "tenant": tenant_id,
                                                            "requested_by": requested_by})
        return row

    async def status(self, tenant_id: str, export_id: uuid.UUID, now: datetime) -> ExportStatus | None:
        await expire(self.pool, now)
        row = await self.pool.fetchrow(
            "SELECT * FROM subject_access_exports WHERE export_id = $1 AND tenant_id = $2", export_id, tenant_id
        )
        if row is None:
            return None
        if row["removed_why"]:
            return ExportStatus(row, None)
        parts = [StoredPart(p["service"], p["attempt"], p["chunk"], p["chunks"], p["tables"], p["received_at"])
                 for p in await self.pool.fetch(
                     "SELECT service, attempt, chunk, chunks, tables, received_at FROM subject_access_parts"
                     " WHERE export_id = $1", export_id)]
        header = {"export_id": str(export_id), "tenant": tenant_id, "phone": row["phone_e164"],
                  "contact_id": str(row["contact_id"]) if row["contact_id"] else None,
                  "requested_by": row["requested_by"], "requested_at": row["requested_at"].isoformat(),
                  "expires_at": row["expires_at"].isoformat()}
        assembly = assemble(parts, header)
        if assembly.complete and row["completed_at"] is None:
            row = await self.pool.fetchrow(
                "UPDATE subject_access_exports SET completed_at = now() WHERE export_id = $1 RETURNING *", export_id
            )
        return ExportStatus(row, assembly)


async def expire(pool: asyncpg.Pool | asyncpg.Connection, now: datetime) -> int:
    """Remove the number and parts of exports past their time (the rows stay as the audit)."""
    expired = await pool.fetch(
        "UPDATE subject_access_exports SET phone_e164 = NULL, contact_id = NULL, removed_at = $1, removed_why = 'expired'"
        " WHERE expires_at <= $1 AND phone_e164 IS NOT NULL RETURNING export_id", now,
    )
    if expired:
        await pool.execute("DELETE FROM subject_access_parts WHERE export_id = ANY($1::uuid[])",
                           [r["export_id"] for r in expired])
    return len(expired)


async def erase_exports(conn: asyncpg.Connection, tenant_id: str, phone: str) -> int:
    """An erased number's exports lose the number and their parts (ingest's eraser calls this)."""
    erased = await conn.fetch(
        "UPDATE subject_access_exports SET phone_e164 = NULL, contact_id = NULL, removed_at = now(), removed_why = 'erased'"
        " WHERE tenant_id = $1 AND phone_e164 = $2 RETURNING export_id", tenant_id, phone,
    )
    if erased:
        await conn.execute("DELETE FROM subject_access_parts WHERE export_id = ANY($1::uuid[])",
                           [r["export_id"] for r in erased])
    return len(erased)


class PartsHandler:
    """ingest's subject-access-parts lane: each chunk stored once, for a live export of the same
    tenant (a chunk for an expired, erased or unknown export is dropped)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        seen: set[tuple[Any, ...]] = set()
        cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for item in batch:
            event: SubjectAccessPartEvent = item.event
            p = event.payload
            key = (p.export_id, p.service, p.attempt, p.chunk)
            if key in seen:
                continue
            seen.add(key)
            for col, value in zip(cols, (p.export_id, event.tenant, p.service, p.attempt, p.chunk, p.chunks,
                                         json.dumps(p.tables)), strict=True):
                col.append(value)
        if cols[0]:
            await self.pool.execute(
                "INSERT INTO subject_access_parts (export_id, service, attempt, chunk, chunks, tables)"
                " SELECT p.export_id, p.service, p.attempt, p.chunk, p.chunks, p.tables::jsonb"
                " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::int[], $6::int[], $7::text[])"
                "   AS p(export_id, tenant_id, service, attempt, chunk, chunks, tables)"
                " JOIN subject_access_exports e ON e.export_id = p.export_id AND e.tenant_id = p.tenant_id"
                "  AND e.phone_e164 IS NOT NULL AND e.expires_at > now()"
                " ON CONFLICT (export_id, service, attempt, chunk) DO NOTHING",
                *cols,
            )
        return []


__all__ = ["EXPORT_SERVICES", "ExportNotPublished", "ExportStatus", "Exports", "PartsHandler", "erase_exports",
           "expire", "ingest_gatherer"]
