"""reports' part of an erasure (herald.erasures.v1, docs/data-map.md).

reports keeps each message's state (number, metadata, callback URL), clicks (user agents),
conversions (number) and webhook rows (payloads with numbers and reply texts). One
transaction: the number's messages keep their status, timeline and campaign, variant and
journey (so reports' counts stay right) but lose the number, contact, metadata, idempotency
key and callback URL; their clicks lose the user agent and contact; the number's conversions
keep their value and attribution without number or contact; the webhook rows of its messages
and of its reply conversation are deleted (pending deliveries included: they would post the
number).
"""

from __future__ import annotations

import asyncpg

from services.reports.webhooks.rules import conversation_key
from shared.contracts import ErasureRequested
from shared.erasure_store import count


async def reports_eraser(conn: asyncpg.Connection, tenant_id: str, e: ErasureRequested) -> dict[str, int]:
    ids = [r["message_id"] for r in await conn.fetch(
        "SELECT message_id FROM messages WHERE tenant_id = $1 AND (to_e164 = $2 OR contact_id = $3) FOR UPDATE",
        tenant_id, e.phone, e.contact_id,
    )]
    counts = {"messages": count(await conn.execute(
        "UPDATE messages SET to_e164 = NULL, contact_id = NULL, metadata = NULL, idempotency_key = NULL,"
        " status_callback_url = NULL, updated_at = now() WHERE message_id = ANY($1::uuid[])", ids,
    ))}
    counts["clicks"] = count(await conn.execute(
        "UPDATE clicks SET user_agent = NULL, contact_id = NULL WHERE message_id = ANY($1::uuid[])", ids
    ))
    counts["conversions"] = count(await conn.execute(
        "UPDATE conversions SET phone_e164 = NULL, contact_id = NULL"
        " WHERE tenant_id = $1 AND (phone_e164 = $2 OR contact_id = $3)", tenant_id, e.phone, e.contact_id,
    ))
    keys = [*ids, conversation_key(tenant_id, e.phone)]
    counts["webhook_outbox"] = count(await conn.execute(
        "DELETE FROM webhook_outbox WHERE message_id = ANY($1::uuid[])", keys
    ))
    counts["webhook_sequences"] = count(await conn.execute(
        "DELETE FROM webhook_sequences WHERE message_id = ANY($1::uuid[])", keys
    ))
    return counts
