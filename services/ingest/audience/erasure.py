"""Erasure by contact and by number: ingest's own tables, and the event for the others.

ingest owns contacts, consent history, clear and scoped suppressions, inbound messages, tracked
links and campaigns' test numbers (docs/data-map.md). An erasure publishes
``herald.erasures.v1`` first (the scheduler, dispatcher and reports erase their own tables from
it), then erases ingest's tables in one transaction with ingest's ``erasure_audit`` row; a failure
after the publish is retried by the client and lands once (the event is idempotent, the tables
are already clean or get cleaned). The number is replaced by its keyed hash in
``suppression_hashes``, so it stays suppressed for marketing; a legacy or older-version hash of
the same number is re-keyed on the way (we hold the number at that moment).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.ingest.audience.subject_access import erase_exports
from shared.contracts import ErasureRequested, ErasureRequestedEvent
from shared.erasure import ErasureKeys
from shared.erasure_store import Eraser, apply_erasure, count
from shared.kafka import Outgoing, Publisher
from shared.topics import ERASURES

SERVICE = "ingest"
ERASURE_SOURCE = "erasure"


def ingest_eraser(keys: ErasureKeys) -> Eraser:
    async def erase(conn: asyncpg.Connection, tenant_id: str, e: ErasureRequested) -> dict[str, int]:
        phone = e.phone
        counts: dict[str, int] = {}
        contact_ids = [r["contact_id"] for r in await conn.fetch(
            "SELECT contact_id FROM contacts WHERE tenant_id = $1 AND (phone_e164 = $2 OR contact_id = $3) FOR UPDATE",
            tenant_id, phone, e.contact_id,
        )]
        counts["contact_consents"] = count(await conn.execute(
            "DELETE FROM contact_consents WHERE tenant_id = $1 AND contact_id = ANY($2::uuid[])", tenant_id, contact_ids
        ))
        counts["contacts"] = count(await conn.execute(
            "DELETE FROM contacts WHERE tenant_id = $1 AND contact_id = ANY($2::uuid[])", tenant_id, contact_ids
        ))
        reason = await conn.fetchval(
            "DELETE FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2 RETURNING reason", tenant_id, phone
        )
        counts["suppressions"] = int(reason is not None)
        # the number's hashes under other versions (legacy sha256, older keys): re-keyed now
        new_hash = keys.hash(tenant_id, phone)
        old = await conn.fetch(
            "DELETE FROM suppression_hashes WHERE tenant_id = $1 AND phone_hash = ANY($2::text[]) AND phone_hash <> $3"
            " RETURNING reason",
            tenant_id, keys.candidates(tenant_id, phone), new_hash,
        )
        counts["suppression_hashes_rekeyed"] = len(old)
        await conn.execute(
            "INSERT INTO suppression_hashes (tenant_id, phone_hash, reason, source) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, phone_hash) DO NOTHING",
            tenant_id, new_hash, reason or (old[0]["reason"] if old else "erased"), ERASURE_SOURCE,
        )
        counts["scoped_suppressions"] = count(await conn.execute(
            "DELETE FROM scoped_suppressions WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
        ))
        counts["sender_assignments"] = count(await conn.execute(
            "DELETE FROM sender_assignments WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
        ))
        counts["inbound_messages"] = count(await conn.execute(
            "DELETE FROM inbound_messages WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
        ))
        counts["links"] = count(await conn.execute(
            "UPDATE links SET contact_id = NULL WHERE tenant_id = $1 AND contact_id = ANY($2::uuid[])", tenant_id, contact_ids
        )) if contact_ids else 0
        counts["campaigns"] = count(await conn.execute(
            "UPDATE campaigns SET test_numbers = array_remove(test_numbers, $2), updated_at = now()"
            " WHERE tenant_id = $1 AND $2 = ANY(test_numbers)", tenant_id, phone
        ))
        # subject-access exports of the number: the number and the gathered parts go, the audit row stays
        counts["subject_access_exports"] = await erase_exports(conn, tenant_id, phone)
        return counts

    return erase


# The services that erase their own tables from herald.erasures.v1 (ingest erases in the request).
ERASING_SERVICES = ("dispatcher", "reports", "scheduler")


class ErasureNotPublished(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the erasure could not be published")


@dataclass(frozen=True)
class ErasureAnswer:
    erasure_id: uuid.UUID
    counts: dict[str, int]


class Erasures:
    """Erase a number (or a contact, by its number) for a tenant."""

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, keys: ErasureKeys) -> None:
        self.pool = pool
        self.publisher = publisher
        self.keys = keys
        self.eraser = ingest_eraser(keys)

    async def contact_phone(self, tenant_id: str, contact_id: uuid.UUID) -> str | None:
        return await self.pool.fetchval(
            "SELECT phone_e164 FROM contacts WHERE tenant_id = $1 AND contact_id = $2", tenant_id, contact_id
        )

    async def erase(self, tenant_id: str, phone: str, *, requested_by: str, now: datetime,
                    contact_id: uuid.UUID | None = None, trace_id: str | None = None) -> ErasureAnswer:
        """Publish the erasure for the other services, then erase ingest's tables (ErasureKeyMissing
        when no key is configured: nothing is done)."""
        phone_hash = self.keys.hash(tenant_id, phone)
        payload = ErasureRequested(erasure_id=uuid.uuid4(), phone=phone, contact_id=contact_id, phone_hash=phone_hash,
                                   requested_by=requested_by, requested_at=now)
        event = ErasureRequestedEvent(tenant=tenant_id, occurred_at=now, payload=payload,
                                      **({"trace_id": trace_id} if trace_id else {}))
        try:
            await self.publisher.publish([Outgoing(ERASURES, f"{tenant_id}:{phone_hash}", event)])
        except Exception as exc:  # broker unreachable: nothing erased yet, a retry does it all
            raise ErasureNotPublished() from exc
        async with self.pool.acquire() as conn:
            counts = await apply_erasure(conn, SERVICE, tenant_id, payload, self.eraser)
        return ErasureAnswer(payload.erasure_id, counts or {})

    async def status(self, tenant_id: str, erasure_id: uuid.UUID) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT service, phone_hash, requested_by, requested_at, applied_at, counts FROM shared_erasure_audit"
            " WHERE erasure_id = $1 AND tenant_id = $2 ORDER BY service",
            erasure_id, tenant_id,
        )
