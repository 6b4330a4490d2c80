"""The dispatcher's part of a subject-access export (herald.subject-access.v1, docs/data-map.md):
its claims of the number's messages (the outbound copy: number, text, metadata; the gateway,
state and attempts)."""

from __future__ import annotations

import asyncpg

from shared.contracts import SubjectAccessRequested
from shared.subject_access import Rows, rows


async def dispatcher_gatherer(conn: asyncpg.Connection, tenant_id: str, r: SubjectAccessRequested) -> Rows:
    return {"dispatch_claims": rows(await conn.fetch(
        "SELECT message_id, state, gateway, gateway_message_id, attempts, reason_code, reason, gateway_part_ids,"
        " submit_attempts, claimed_at, updated_at, outbound FROM dispatch_claims"
        " WHERE tenant_id = $1 AND outbound ->> 'to' = $2 ORDER BY claimed_at", tenant_id, r.phone,
    ))}
