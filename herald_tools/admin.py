"""Administration: tenants, API keys (rotation with overlap), suppression lists, audit.

Every action writes a row to ``audit_log`` (who, what, when, details) in the same
transaction as the change. Used by ``herald admin``. What ingest's API changes too (tenant
policy, reply webhook, the sender registry) lives in shared/tenant_admin.py, re-exported here.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import asyncpg

from shared.auth import DEFAULT_SCOPES, SCOPES, create_key, create_tenant, revoke_key
from shared.kafka_signing import new_kafka_key
from shared.phones import PhoneError, parse_e164
from shared.senders import STATES as SENDER_STATES
from shared.senders import check_registrations, infer_kind
from shared.senders import normalise as normalise_sender
from shared.tenant_admin import (  # noqa: F401  (re-exported: `admin.X` for the CLI and tests)
    KEEP,
    LINK_TTL_MAX_S,
    MAX_URL_LENGTH,
    WebhookRefused,
    audit,
    checked_webhook_url,
    pool_get,
    pool_list,
    pool_remove,
    pool_set,
    reply_webhook_set,
    sender_add,
    sender_fields,
    sender_get,
    sender_list,
    sender_remove,
    sender_view,
    tenant_policy,
    tenant_policy_set,
    webhook_url,
)
from shared.tenant_admin import SENDER_COLUMNS as _SENDER_COLUMNS
from shared.tenant_admin import check_scope as _scope


def default_actor() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser() or "unknown"


async def tenant_create(conn: asyncpg.Connection, actor: str, tenant_id: str, name: str,
                        scopes: Iterable[str] = DEFAULT_SCOPES) -> str:
    async with conn.transaction():
        await create_tenant(conn, tenant_id, name)
        key = await create_key(conn, tenant_id, tuple(scopes), name="first key")
        await audit(conn, actor, "tenant.create", tenant_id, name=name, key_id=key.split("_")[1])
    return key


def parse_cap(text: str) -> dict[str, int]:
    """'1/24h', '4/7d', '2/90m' → {"max": 1, "window_s": 86400}. Windows up to 31 days."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*([mhd])\s*", text)
    if not m:
        raise ValueError(f"a cap is COUNT/WINDOW with m, h or d, such as 1/24h or 4/7d: {text!r}")
    window_s = int(m[2]) * {"m": 60, "h": 3600, "d": 86400}[m[3]]
    if not 60 <= window_s <= 31 * 86400:
        raise ValueError(f"a cap window is between 1 minute and 31 days: {text!r}")
    return {"max": int(m[1]), "window_s": window_s}


def parse_duration(text: str) -> int:
    """'90d', '12h', '30m' → seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text)
    if not m:
        raise ValueError(f"a duration is a number with m, h or d, such as 30d or 12h: {text!r}")
    return int(m[1]) * {"m": 60, "h": 3600, "d": 86400}[m[2]]


# ---- short links (docs/results.md, "Link safety") ----

_LINK_COLUMNS = ("code, tenant_id, message_id, link_index, url, domain, created_at, activated_at, expires_at,"
                 " taken_down_at, taken_down_by, takedown_reason")
_PREFIX = re.compile(r"https?://[^/\s?#]+", re.I)


def link_filter(target: str, tenant_id: str | None) -> tuple[str, list[Any]]:
    """SQL condition and arguments for a code, or every link (of ``tenant_id``, if given) whose
    URL starts with an http(s) URL prefix naming at least a host (ValueError otherwise)."""
    from services.ingest.links import CODE_PATTERN

    target = target.strip()
    if CODE_PATTERN.match(target):
        return "code = $1 AND ($2::text IS NULL OR tenant_id = $2)", [target, tenant_id]
    if not _PREFIX.match(target):
        raise ValueError("give a link code (10 letters and digits) or a URL prefix with scheme and host,"
                         " such as https://bad.example/ (a trailing / keeps it to that host)")
    return "left(url, length($1)) = $1 AND ($2::text IS NULL OR tenant_id = $2)", [target, tenant_id]


async def link_show(conn: asyncpg.Connection, target: str, tenant_id: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
    """The links a code or URL prefix names, with their state."""
    where, args = link_filter(target, tenant_id)
    rows = await conn.fetch(f"SELECT {_LINK_COLUMNS} FROM links WHERE {where} ORDER BY created_at LIMIT {int(limit)}",
                            *args)
    return [dict(r) for r in rows]


async def link_takedown(conn: asyncpg.Connection, actor: str, target: str, reason: str,
                        tenant_id: str | None = None) -> dict[str, Any]:
    """Take down one link (by code) or every link to a destination (URL prefix), of one tenant or
    of all: the redirect answers 410 link_taken_down (within HERALD_LINK_TAKEDOWN_POLL_S on every
    instance). Who, when and why are kept on each row and in the audit log. Links already taken
    down keep their first takedown."""
    where, args = link_filter(target, tenant_id)
    async with conn.transaction():
        rows = await conn.fetch(
            f"UPDATE links SET taken_down_at = now(), taken_down_by = $3, takedown_reason = $4"
            f" WHERE {where} AND taken_down_at IS NULL RETURNING code, tenant_id",
            *args, actor, reason,
        )
        await audit(conn, actor, "link.takedown", target, reason=reason, tenant_id=tenant_id, links=len(rows),
                    tenants=sorted({r["tenant_id"] for r in rows}))
    return {"target": target, "tenant_id": tenant_id, "reason": reason, "taken_down": len(rows),
            "codes": [r["code"] for r in rows[:100]]}


async def link_restore(conn: asyncpg.Connection, actor: str, target: str, tenant_id: str | None = None
                       ) -> dict[str, Any]:
    """Undo a takedown (the links answer again if active and not expired)."""
    where, args = link_filter(target, tenant_id)
    async with conn.transaction():
        rows = await conn.fetch(
            f"UPDATE links SET taken_down_at = NULL, taken_down_by = NULL, takedown_reason = NULL"
            f" WHERE {where} AND taken_down_at IS NOT NULL RETURNING code",
            *args,
        )
        await audit(conn, actor, "link.restore", target, tenant_id=tenant_id, links=len(rows))
    return {"target": target, "tenant_id": tenant_id, "restored": len(rows), "codes": [r["code"] for r in rows[:100]]}


async def reply_webhook(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT reply_webhook_url FROM tenants WHERE tenant_id = $1", tenant_id)
    return None if row is None else {"tenant_id": tenant_id, "reply_webhook_url": row["reply_webhook_url"]}


async def tenant_list(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT t.tenant_id, t.name, t.created_at, t.disabled_at,"
        " count(k.key_id) FILTER (WHERE k.revoked_at IS NULL) AS active_keys"
        " FROM tenants t LEFT JOIN api_keys k USING (tenant_id) GROUP BY t.tenant_id ORDER BY t.tenant_id"
    )
    return [dict(r) for r in rows]


# Campaign states that may still send; disabling the tenant cancels them.
ACTIVE_CAMPAIGN_STATES = ("scheduled", "running", "testing", "paused")


async def tenant_set_disabled(conn: asyncpg.Connection, actor: str, tenant_id: str, disabled: bool) -> bool:
    """Disable (or enable) a tenant. Disabling refuses its keys and stops its traffic: its active
    campaigns are cancelled here (``cancel_reason`` ``tenant_disabled``); the scheduler and the
    dispatcher see ``disabled_at`` within about a second and suppress whatever of it is still on
    its way (``suppressed``, reason ``tenant_disabled``). Enabling lets new messages through;
    what was suppressed or cancelled stays so."""
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE tenants SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) ELSE NULL END"
            " WHERE tenant_id = $1",
            tenant_id, disabled,
        )
        if status.endswith(" 0"):
            return False
        cancelled: list[str] = []
        if disabled:
            rows = await conn.fetch(
                "UPDATE campaigns SET state = 'cancelled', cancel_reason = 'tenant_disabled', cancelled_at = now(),"
                " updated_at = now(), lease_until = NULL WHERE tenant_id = $1 AND state = ANY($2::text[])"
                " RETURNING campaign_id",
                tenant_id, list(ACTIVE_CAMPAIGN_STATES),
            )
            cancelled = [str(r["campaign_id"]) for r in rows]
        await audit(conn, actor, "tenant.disable" if disabled else "tenant.enable", tenant_id,
                    **({"cancelled_campaigns": cancelled} if disabled else {}))
    return True


async def key_create(conn: asyncpg.Connection, actor: str, tenant_id: str, scopes: Iterable[str], name: str,
                     requests_per_minute: int | None = None, messages_per_minute: int | None = None,
                     test: bool = False) -> str:
    scopes = tuple(scopes)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    async with conn.transaction():
        key = await create_key(conn, tenant_id, scopes, name=name, test=test)
        key_id = key.split("_")[1]
        await conn.execute(
            "UPDATE api_keys SET requests_per_minute = $2, messages_per_minute = $3 WHERE key_id = $1",
            key_id, requests_per_minute, messages_per_minute,
        )
        await audit(conn, actor, "key.create", key_id, tenant_id=tenant_id, scopes=list(scopes),
                    requests_per_minute=requests_per_minute, messages_per_minute=messages_per_minute, test=test)
    return key


async def key_list(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT key_id, name, scopes, created_at, revoked_at, expires_at, requests_per_minute, messages_per_minute"
        " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def key_revoke(conn: asyncpg.Connection, actor: str, key_id: str) -> bool:
    async with conn.transaction():
        if not await revoke_key(conn, key_id):
            return False
        await audit(conn, actor, "key.revoke", key_id)
    return True


async def kafka_key_create(conn: asyncpg.Connection, actor: str, tenant_id: str, name: str = "") -> dict[str, str]:
    """A Kafka input key for a tenant's producers (shared/kafka_signing.py): its id and secret,
    shown once. LookupError if the tenant does not exist."""
    key_id, secret = new_kafka_key()
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id) is None:
            raise LookupError(f"no tenant {tenant_id!r}")
        await conn.execute("INSERT INTO kafka_input_keys (key_id, tenant_id, secret, name) VALUES ($1, $2, $3, $4)",
                           key_id, tenant_id, secret, name)
        await audit(conn, actor, "kafka_key.create", key_id, tenant_id=tenant_id)
    return {"tenant_id": tenant_id, "key_id": key_id, "secret": secret}


async def kafka_key_list(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT key_id, name, created_at, revoked_at FROM kafka_input_keys WHERE tenant_id = $1"
                            " ORDER BY created_at", tenant_id)
    return [dict(r) for r in rows]


async def kafka_key_revoke(conn: asyncpg.Connection, actor: str, key_id: str) -> bool:
    """Events signed with this key are refused from now on (each batch reads the keys afresh)."""
    async with conn.transaction():
        done = await conn.fetchval("UPDATE kafka_input_keys SET revoked_at = now() WHERE key_id = $1"
                                   " AND revoked_at IS NULL RETURNING key_id", key_id)
        if done is None:
            return False
        await audit(conn, actor, "kafka_key.revoke", key_id)
    return True


async def key_rotate(conn: asyncpg.Connection, actor: str, key_id: str, overlap_s: int) -> str:
    """A new key with the same tenant, scopes and limits; the old one expires after ``overlap_s``."""
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT tenant_id, scopes, name, requests_per_minute, messages_per_minute FROM api_keys"
            " WHERE key_id = $1 AND revoked_at IS NULL FOR UPDATE",
            key_id,
        )
        if old is None:
            raise LookupError(f"no active key {key_id}")
        key = await create_key(conn, old["tenant_id"], tuple(old["scopes"]), name=f"{old['name']} (rotated)".strip())
        new_id = key.split("_")[1]
        await conn.execute(
            "UPDATE api_keys SET requests_per_minute = $2, messages_per_minute = $3 WHERE key_id = $1",
            new_id, old["requests_per_minute"], old["messages_per_minute"],
        )
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() + make_interval(secs => $2) WHERE key_id = $1", key_id, overlap_s
        )
        await audit(conn, actor, "key.rotate", key_id, new_key_id=new_id, overlap_s=overlap_s)
    return key


async def suppressions_import(conn: asyncpg.Connection, actor: str, tenant_id: str, rows: Iterable[dict[str, str]],
                              default_reason: str) -> dict[str, Any]:
    """Rows with a ``phone`` column (E.164) and an optional ``reason``; bad rows are reported, not fatal."""
    good: list[tuple[str, str]] = []
    errors: list[dict[str, Any]] = []
    for line, row in enumerate(rows, start=2):
        try:
            good.append((parse_e164(row.get("phone") or "", allowed_types=None).e164, row.get("reason") or default_reason))
        except PhoneError as exc:
            errors.append({"line": line, "code": exc.code, "message": str(exc)})
    async with conn.transaction():
        for i in range(0, len(good), 5000):
            chunk = good[i : i + 5000]
            await conn.execute(
                "INSERT INTO suppressions (tenant_id, phone_e164, reason, source)"
                " SELECT $1, p, r, 'import' FROM unnest($2::text[], $3::text[]) AS t(p, r)"
                " ON CONFLICT (tenant_id, phone_e164) DO UPDATE SET reason = excluded.reason",
                tenant_id, [p for p, _ in chunk], [r for _, r in chunk],
            )
        await audit(conn, actor, "suppressions.import", tenant_id, imported=len(good), errors=len(errors))
    return {"imported": len(good), "errors": errors}


async def suppressions_export(conn: asyncpg.Connection, actor: str, tenant_id: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["phone", "reason", "source", "created_at"])
    async with conn.transaction():
        async for r in conn.cursor(
            "SELECT phone_e164, reason, source, created_at FROM suppressions WHERE tenant_id = $1 ORDER BY phone_e164",
            tenant_id,
        ):
            writer.writerow([r["phone_e164"], r["reason"], r["source"], r["created_at"].isoformat()])
        await audit(conn, actor, "suppressions.export", tenant_id)
    return out.getvalue()


def _number(number: str) -> str:
    """A tenant number as handsets write to it: ``+`` and digits, a short code, or a sender id."""
    text = "".join(number.split())
    if not text or len(text) > 32:
        raise ValueError("a number is 1 to 32 characters")
    if text.startswith("+"):
        try:
            return parse_e164(text, allowed_types=None).e164
        except PhoneError as exc:
            raise ValueError(str(exc)) from None
    return text


async def number_add(conn: asyncpg.Connection, actor: str, tenant_id: str, number: str,
                     scope: str | None = None) -> dict[str, Any]:
    """Map a number, short code or sender id to a tenant (replies: docs/replies.md). It is a
    sender of the registry (docs/senders.md), verified, that sends and takes replies."""
    number = normalise_sender(_number(number))
    scope = _scope(scope)
    async with conn.transaction():
        owner = await conn.fetchval("SELECT tenant_id FROM senders WHERE sender = $1 AND tenant_id <> $2"
                                    " AND (kind <> 'alphanumeric' OR 'mo' = ANY (capabilities))", number, tenant_id)
        if owner is not None:
            raise ValueError(f"number {number} belongs to another tenant")
        if not await conn.fetchval("SELECT true FROM tenants WHERE tenant_id = $1", tenant_id):
            raise LookupError(f"no tenant {tenant_id}")
        try:
            await conn.execute(
                "INSERT INTO senders (sender, tenant_id, kind, capabilities, state, scope)"
                " VALUES ($1, $2, $3, '{sms,mo}', 'verified', $4)"
                " ON CONFLICT (tenant_id, sender) DO UPDATE SET scope = excluded.scope, updated_at = now(),"
                " capabilities = ARRAY(SELECT DISTINCT unnest(senders.capabilities || '{mo}'::text[]) ORDER BY 1)",
                number, tenant_id, infer_kind(number), scope,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"number {number} belongs to another tenant") from None
        await audit(conn, actor, "number.add", number, tenant_id=tenant_id, scope=scope)
    return {"number": number, "tenant_id": tenant_id, "scope": scope}


async def number_list(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT number, tenant_id, scope, created_at FROM tenant_numbers WHERE tenant_id = $1 ORDER BY number",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def number_remove(conn: asyncpg.Connection, actor: str, tenant_id: str, number: str) -> bool:
    """Remove a number the tenant takes replies on from the registry."""
    number = normalise_sender(_number(number))
    async with conn.transaction():
        status = await conn.execute(
            "DELETE FROM senders WHERE sender = $1 AND tenant_id = $2 AND 'mo' = ANY (capabilities)", number, tenant_id
        )
        if status.endswith(" 0"):
            return False
        await audit(conn, actor, "number.remove", number, tenant_id=tenant_id)
    return True


async def sender_set_state(conn: asyncpg.Connection, actor: str, tenant_id: str, sender: str, state: str,
                           note: str | None = None) -> dict[str, Any]:
    """Verify, suspend or reinstate a sender (``state``: verified, suspended or pending)."""
    if state not in SENDER_STATES:
        raise ValueError(f"state is one of {', '.join(SENDER_STATES)}")
    text = normalise_sender(sender)
    async with conn.transaction():
        before = await conn.fetchval("SELECT state FROM senders WHERE tenant_id = $1 AND sender = $2 FOR UPDATE",
                                     tenant_id, text)
        if before is None:
            raise LookupError(f"tenant {tenant_id} has no sender {text}")
        row = await conn.fetchrow(
            "UPDATE senders SET state = $3, note = $4, updated_at = now() WHERE tenant_id = $1 AND sender = $2"
            f" RETURNING {_SENDER_COLUMNS}", tenant_id, text, state, note,
        )
        action = {"verified": "sender.verify", "suspended": "sender.suspend", "pending": "sender.unverify"}[state]
        await audit(conn, actor, action, text, tenant_id=row["tenant_id"], before=before, note=note)
    return sender_view(row)


async def sender_update(conn: asyncpg.Connection, actor: str, tenant_id: str, sender: str, *,
                        kind: str | None = None, countries: Iterable[str] | None | object = KEEP,
                        capabilities: Iterable[str] | None = None, scope: str | None | object = KEEP,
                        rate_per_s: float | None | object = KEEP, burst: float | None | object = KEEP) -> dict[str, Any]:
    """Change a sender's kind, countries (None: any the rules allow), capabilities, scope or
    contracted throughput (``rate_per_s`` segments per second and ``burst``; None: no limit of
    its own); what is left out keeps its value. The state is unchanged (verify, suspend)."""
    text = normalise_sender(sender)
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {_SENDER_COLUMNS} FROM senders WHERE tenant_id = $1 AND sender = $2 FOR UPDATE",
                                  tenant_id, text)
        if row is None:
            raise LookupError(f"tenant {tenant_id} has no sender {text}")
        new_countries = row["countries"] if countries is KEEP else countries
        _, new_kind, codes, caps = sender_fields(text, kind or row["kind"], new_countries,  # type: ignore[arg-type]
                                                 capabilities if capabilities is not None else row["capabilities"])
        new_scope = row["scope"] if scope is KEEP else _scope(scope)  # type: ignore[arg-type]
        new_rate = row["rate_per_s"] if rate_per_s is KEEP else rate_per_s
        new_burst = row["burst"] if burst is KEEP else burst
        if new_rate is not None and not (isinstance(new_rate, (int, float)) and 0 < new_rate <= 100_000):
            raise ValueError("rate_per_s is a number of segments per second above 0 (at most 100000)")
        if new_burst is not None and not (isinstance(new_burst, (int, float)) and 1 <= new_burst <= 1_000_000):
            raise ValueError("burst is at least 1 segment")
        try:
            updated = await conn.fetchrow(
                "UPDATE senders SET kind = $3, countries = $4, capabilities = $5, scope = $6, rate_per_s = $7,"
                f" burst = $8, updated_at = now() WHERE tenant_id = $1 AND sender = $2 RETURNING {_SENDER_COLUMNS}",
                tenant_id, text, new_kind, codes, caps, new_scope, new_rate, new_burst,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"{text} takes replies for another tenant") from None
        await audit(conn, actor, "sender.update", text, tenant_id=tenant_id, kind=new_kind, countries=codes,
                    capabilities=caps, scope=new_scope, rate_per_s=new_rate, burst=new_burst)
    return sender_view(updated)


async def sender_register(conn: asyncpg.Connection, actor: str, tenant_id: str, sender: str,
                          registrations: dict[str, Any]) -> dict[str, Any]:
    """Record a sender's registrations (10DLC brand and campaign, toll-free verification, DLT
    entity): given names replace their record, an empty record removes it."""
    text = normalise_sender(sender)
    regs = check_registrations(registrations)
    async with conn.transaction():
        current = await conn.fetchval(
            "SELECT registrations::text FROM senders WHERE tenant_id = $1 AND sender = $2 FOR UPDATE", tenant_id, text)
        if current is None:
            raise LookupError(f"tenant {tenant_id} has no sender {text}")
        merged = {**json.loads(current), **regs}
        merged = {k: v for k, v in merged.items() if v}
        row = await conn.fetchrow(
            "UPDATE senders SET registrations = $3::jsonb, updated_at = now() WHERE tenant_id = $1 AND sender = $2"
            f" RETURNING {_SENDER_COLUMNS}", tenant_id, text, merged,
        )
        await audit(conn, actor, "sender.register", text, tenant_id=row["tenant_id"], registrations=regs)
    return sender_view(row)


async def audit_entries(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1", limit)
    return [dict(r) for r in rows]


async def gateways_view(conn: asyncpg.Connection) -> dict[str, Any]:
    """The dispatcher's gateways and routes as configured (secrets left out), with live state:
    the shared throttle bucket of each gateway and the submissions of the last hour."""
    from services.dispatcher.settings import DispatcherSettings

    settings = DispatcherSettings()
    buckets = {r["gateway"]: {"rate": float(r["rate"]), "capacity": float(r["capacity"]), "tokens": float(r["tokens"]),
                              "updated_at": r["updated_at"].isoformat()}
               for r in await conn.fetch("SELECT gateway, rate, capacity, tokens, updated_at FROM throttle_buckets")}
    recent = {r["gateway"]: r["n"] for r in await conn.fetch(
        "SELECT gateway, count(*) AS n FROM dispatch_claims WHERE updated_at > now() - interval '1 hour'"
        " AND gateway IS NOT NULL GROUP BY gateway")}
    gateways = []
    for g in settings.gateways:
        config = g.model_dump(mode="json")  # SecretStr fields dump as "**********"
        gateways.append({**config, "throttle": buckets.get(g.name), "submissions_last_hour": recent.get(g.name, 0)})
    routes = [r.model_dump(mode="json") for r in settings.routes]
    return {"gateways": gateways, "routes": routes or [{"name": "default", "gateways": [g.name for g in settings.gateways]}]}
