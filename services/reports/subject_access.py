"""reports' part of a subject-access export (herald.subject-access.v1, docs/data-map.md): the
number's messages with their statuses and timeline, the clicks on their links, its conversions,
and the webhook deliveries of its messages and reply conversation."""

from __future__ import annotations

import asyncpg

from services.reports.webhooks.rules import conversation_key
from shared.contracts import SubjectAccessRequested
from shared.subject_access import Rows, rows


async def reports_gatherer(conn: asyncpg.Connection, tenant_id: str, r: SubjectAccessRequested) -> Rows:
    messages = await conn.fetch(
        "SELECT * FROM messages WHERE tenant_id = $1 AND (to_e164 = $2 OR contact_id = $3) ORDER BY accepted_at",
        tenant_id, r.phone, r.contact_id,
    )
    ids = [m["message_id"] for m in messages]
    return {
        "messages": rows(messages),
        "message_events": rows(await conn.fetch(
            "SELECT message_id, status, occurred_at, recorded_at, detail FROM message_events"
            " WHERE message_id = ANY($1::uuid[]) ORDER BY message_id, occurred_at", ids,
        )),
        "clicks": rows(await conn.fetch(
            "SELECT event_id, code, message_id, link_index, url, campaign_id, variant, journey_id, clicked_at, bot,"
            " bot_reason, user_agent, recorded_at FROM clicks WHERE tenant_id = $1 AND message_id = ANY($2::uuid[])"
            " ORDER BY clicked_at", tenant_id, ids,
        )),
        "conversions": rows(await conn.fetch(
            "SELECT event_id, name, phone_e164, contact_id, occurred_at, value, currency, message_id, campaign_id, variant,"
            " journey_id, attribution, recorded_at FROM conversions"
            " WHERE tenant_id = $1 AND (phone_e164 = $2 OR contact_id = $3) ORDER BY occurred_at",
            tenant_id, r.phone, r.contact_id,
        )),
        "webhook_outbox": rows(await conn.fetch(
            "SELECT message_id, seq, kind, url, payload, state, attempts, last_status, created_at, finished_at"
            " FROM webhook_outbox WHERE tenant_id = $1 AND message_id = ANY($2::uuid[]) ORDER BY created_at, id",
            tenant_id, [*ids, conversation_key(tenant_id, r.phone)],
        )),
    }
