"""The scheduler's part of a subject-access export (herald.subject-access.v1, docs/data-map.md):
held messages to the number (the accepted message: number, text, metadata), its journey runs
(trigger and seen events) and its marketing releases (frequency caps)."""

from __future__ import annotations

import asyncpg

from shared.contracts import SubjectAccessRequested
from shared.subject_access import Rows, rows


async def scheduler_gatherer(conn: asyncpg.Connection, tenant_id: str, r: SubjectAccessRequested) -> Rows:
    return {
        "scheduled_messages": rows(await conn.fetch(
            "SELECT message_id, due_at, reason_code, campaign_id, created_at, accepted FROM scheduled_messages"
            " WHERE tenant_id = $1 AND accepted ->> 'to' = $2 ORDER BY due_at", tenant_id, r.phone,
        )),
        "journey_runs": rows(await conn.fetch(
            "SELECT run_id, journey_id, version, phone_e164, contact_id, state, step, due_at, trigger, last_event, seen,"
            " sends, exit_reason, entered_at, updated_at, ended_at FROM journey_runs"
            " WHERE tenant_id = $1 AND (phone_e164 = $2 OR contact_id = $3) ORDER BY entered_at",
            tenant_id, r.phone, r.contact_id,
        )),
        "marketing_releases": rows(await conn.fetch(
            "SELECT phone_e164, message_id, released_at FROM marketing_releases"
            " WHERE tenant_id = $1 AND phone_e164 = $2 ORDER BY released_at", tenant_id, r.phone,
        )),
    }
