"""SQL of the replies lane: number → tenant, keywords, opt-outs, consent, conversations."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.ingest.replies.keywords import Keyword
from shared.consent import becomes_current


@dataclass(frozen=True, slots=True)
class TenantNumber:
    number: str
    tenant_id: str
    tenant_name: str
    scope: str | None
    reply_webhook_url: str | None = None


def number_candidates(recipient: str) -> list[str]:
    """How a received address may be stored: as given, and with or without ``+`` for digits."""
    raw = "".join(recipient.split())
    digits = raw.lstrip("+")
    out = [raw]
    if digits.isdigit():
        out += [digits, f"+{digits}"]
    return list(dict.fromkeys(out))


class RepliesRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def numbers(self, recipients: Iterable[str]) -> dict[str, TenantNumber]:
        """Every stored form of the given recipients → its (enabled) tenant."""
        candidates = sorted({c for r in recipients for c in number_candidates(r)})
        rows = await self.pool.fetch(
            "SELECT n.number, n.tenant_id, t.name, n.scope, t.reply_webhook_url"
            " FROM tenant_numbers n JOIN tenants t USING (tenant_id)"
            " WHERE n.number = ANY($1::text[]) AND t.disabled_at IS NULL",
            candidates,
        )
        return {r["number"]: TenantNumber(r["number"], r["tenant_id"], r["name"], r["scope"], r["reply_webhook_url"])
                for r in rows}

    async def keywords_and_scopes(self, tenants: set[str]) -> tuple[dict[str, dict[str, Keyword]], dict[str, set[str]]]:
        rows = await self.pool.fetch(
            "SELECT tenant_id, keyword, grp, language FROM tenant_keywords WHERE tenant_id = ANY($1::text[])",
            list(tenants),
        )
        keywords: dict[str, dict[str, Keyword]] = {}
        for r in rows:
            keywords.setdefault(r["tenant_id"], {})[r["keyword"]] = Keyword(r["grp"], (r["language"],))
        rows = await self.pool.fetch(
            "SELECT DISTINCT tenant_id, scope FROM tenant_numbers WHERE tenant_id = ANY($1::text[]) AND scope IS NOT NULL",
            list(tenants),
        )
        scopes: dict[str, set[str]] = {}
        for r in rows:
            scopes.setdefault(r["tenant_id"], set()).add(r["scope"])
        return keywords, scopes

    async def contact_languages(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        if not pairs:
            return {}
        tenants, phones = zip(*pairs, strict=True)
        rows = await self.pool.fetch(
            "SELECT c.tenant_id, c.phone_e164, c.language FROM contacts c"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON c.tenant_id = k.t AND c.phone_e164 = k.p",
            list(tenants),
            list(phones),
        )
        return {(r["tenant_id"], r["phone_e164"]): r["language"] for r in rows}

    async def apply(
        self,
        *,
        event_id: uuid.UUID,
        tenant_id: str,
        phone: str,
        recipient: str,
        scope: str | None,
        body: str,
        group: str | None,
        opt_scope: str | None,
        received_at: datetime,
        proof: dict[str, Any],
    ) -> bool:
        """Record the inbound message and apply its consent change, once per event id.

        ``opt_scope`` None: a STOP/START of the tenant's global list; else of that scope only.
        Returns False when the event was already applied (a redelivery): nothing changes.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO inbound_messages (event_id, tenant_id, phone_e164, recipient, scope, body, keyword_group, received_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING RETURNING true",
                event_id, tenant_id, phone, recipient, scope, body, group, received_at,
            )
            if not fresh or group not in ("stop", "start"):
                return bool(fresh)
            source = "sms_keyword"
            reason = f"replied {proof.get('keyword', group.upper())}"
            if group == "stop" and opt_scope is None:
                await conn.execute(
                    "INSERT INTO suppressions (tenant_id, phone_e164, reason, source) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (tenant_id, phone_e164) DO UPDATE SET reason = excluded.reason, source = excluded.source",
                    tenant_id, phone, reason, source,
                )
            elif group == "stop":
                await conn.execute(
                    "INSERT INTO scoped_suppressions (tenant_id, phone_e164, scope, reason, source) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (tenant_id, phone_e164, scope) DO UPDATE SET reason = excluded.reason",
                    tenant_id, phone, opt_scope, reason, source,
                )
            elif opt_scope is None:  # START: back on every list of the tenant
                await conn.execute(
                    "DELETE FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
                )
                await conn.execute(
                    "DELETE FROM scoped_suppressions WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
                )
            else:
                await conn.execute(
                    "DELETE FROM scoped_suppressions WHERE tenant_id = $1 AND phone_e164 = $2 AND scope = $3",
                    tenant_id, phone, opt_scope,
                )
            if opt_scope is None:
                await _record_consent(conn, tenant_id, phone, granted=group == "start", at=received_at, proof=proof)
        return True

    async def conversation(self, tenant_id: str, phone: str, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` messages to and from ``phone``, newest first."""
        rows = await self.pool.fetch(
            "(SELECT 'outbound' AS direction, accepted_at AS at, NULL::text AS body, message_id,"
            "  NULL::uuid AS inbound_event_id, status, type, sender FROM shared_message_statuses"
            "  WHERE tenant_id = $1 AND to_e164 = $2 ORDER BY accepted_at DESC NULLS LAST LIMIT $3)"
            " UNION ALL"
            " (SELECT 'inbound', received_at, body, NULL, event_id, NULL, NULL, recipient FROM inbound_messages"
            "  WHERE tenant_id = $1 AND phone_e164 = $2 ORDER BY received_at DESC LIMIT $3)"
            " ORDER BY at DESC NULLS LAST LIMIT $3",
            tenant_id, phone, limit,
        )
        return [dict(r) for r in rows]


async def _record_consent(conn: asyncpg.Connection, tenant_id: str, phone: str, *, granted: bool, at: datetime,
                          proof: dict[str, Any]) -> None:
    """Marketing consent history of the audience contact with this number, if there is one."""
    contact = await conn.fetchrow(
        "SELECT contact_id, consent_marketing_at FROM contacts WHERE tenant_id = $1 AND phone_e164 = $2 FOR UPDATE",
        tenant_id, phone,
    )
    if contact is None:
        return
    await conn.execute(
        "INSERT INTO contact_consents (tenant_id, contact_id, purpose, granted, source, occurred_at, proof)"
        " VALUES ($1, $2, 'marketing', $3, 'sms_keyword', $4, $5)",
        tenant_id, contact["contact_id"], granted, at, json.loads(json.dumps(proof, default=str)),
    )
    if becomes_current(at, contact["consent_marketing_at"]):
        await conn.execute(
            "UPDATE contacts SET consent_marketing = $3, consent_marketing_at = $4, updated_at = now()"
            " WHERE tenant_id = $1 AND contact_id = $2",
            tenant_id, contact["contact_id"], granted, at,
        )
