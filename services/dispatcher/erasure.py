"""The dispatcher's part of an erasure (herald.erasures.v1, docs/data-map.md).

``dispatch_claims.outbound`` keeps each claimed message (number, text, metadata) to resolve a
stale claim. A claim row is kept (it is what stops a redelivered message from being sent
again), but its outbound is replaced by ``{"message_id", "erased": true}``. A claim still open
(claimed or parked) ends ``failed`` with reason code ``erased``: it is never resent.
"""

from __future__ import annotations

import asyncpg

from shared.contracts import ErasureRequested
from shared.erasure_store import count

ERASED_OUTBOUND = "jsonb_build_object('message_id', outbound -> 'message_id', 'erased', true)"


async def dispatcher_eraser(conn: asyncpg.Connection, tenant_id: str, e: ErasureRequested) -> dict[str, int]:
    status = await conn.execute(
        f"UPDATE dispatch_claims SET outbound = {ERASED_OUTBOUND},"
        " reason_code = CASE WHEN state IN ('claimed', 'parked') THEN 'erased' ELSE reason_code END,"
        " reason = CASE WHEN state IN ('claimed', 'parked') THEN 'the number was erased' ELSE reason END,"
        " state = CASE WHEN state IN ('claimed', 'parked') THEN 'failed' ELSE state END,"
        " updated_at = now()"
        " WHERE tenant_id = $1 AND outbound ->> 'to' = $2",
        tenant_id, e.phone,
    )
    return {"dispatch_claims": count(status)}
