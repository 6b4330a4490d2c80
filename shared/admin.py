"""Administration: tenants, API keys (rotation with overlap), suppression lists, audit.

Every action writes a row to ``audit_log`` (who, what, when, details) in the same
transaction as the change. Used by ``herald admin``.
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
from shared.geo import country_code, country_codes
from shared.kafka_signing import new_kafka_key
from shared.phones import PhoneError, parse_e164
from shared.retention import KINDS as RETENTION_KINDS
from shared.retention import parse_tenant_retention
from shared.senders import CAPABILITIES as SENDER_CAPABILITIES
from shared.senders import KINDS as SENDER_KINDS
from shared.senders import SENDER_RE, check_registrations, infer_kind
from shared.senders import STATES as SENDER_STATES
from shared.senders import normalise as normalise_sender


def default_actor() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser() or "unknown"


async def audit(conn: asyncpg.Connection, actor: str, action: str, target: str, **detail: Any) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        actor, action, target, json.loads(json.dumps(detail, default=str)),
    )


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


async def tenant_policy(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT marketing_consent, frequency_caps, reply_webhook_url, country, allowed_countries, marketing_opt_out,"
        " link_domain, link_ttl_s, retention FROM tenants WHERE tenant_id = $1", tenant_id
    )
    if row is None:
        return None
    return {"tenant_id": tenant_id, "marketing_consent": row["marketing_consent"], "frequency_caps": row["frequency_caps"],
            "reply_webhook_url": row["reply_webhook_url"], "country": row["country"],
            "allowed_countries": row["allowed_countries"], "marketing_opt_out": row["marketing_opt_out"],
            "link_domain": row["link_domain"], "link_ttl_s": row["link_ttl_s"], "retention": row["retention"]}


class _Keep:
    """The value of an argument left out: the field keeps what it had."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


async def tenant_policy_set(conn: asyncpg.Connection, actor: str, tenant_id: str, *,
                            marketing_consent: str | None = None, caps: list[dict[str, int]] | None = None,
                            country: str | None = KEEP, allowed_countries: list[str] | None = KEEP,
                            marketing_opt_out: str | None = None, link_domain: str | None = KEEP,
                            link_ttl_s: int | None = KEEP,
                            retention: dict[str, int | None] | None = None) -> dict[str, Any] | None:
    """Change a tenant's consent mode and/or frequency caps (None leaves a field as it is), and its
    geo permissions (shared/geo.py): ``country`` / ``allowed_countries`` left out keep their value,
    None clears them, ISO 3166-1 alpha-2 codes set them (checked; ValueError otherwise). Likewise
    its own short-link domain (``link_domain``, no two tenants share one) and link lifetime
    (``link_ttl_s``, 60 s to 10 years): left out, kept; None, back to the service's. ``retention``:
    days per kind (shared/retention.py) the tenant keeps instead of the services' defaults; None for
    a kind goes back to the default; kinds left out keep their value."""
    if marketing_consent not in (None, "required", "opt_out"):
        raise ValueError("marketing_consent is 'required' or 'opt_out'")
    if marketing_opt_out not in (None, "append", "refuse"):
        raise ValueError("marketing_opt_out is 'append' or 'refuse'")
    retention = retention or {}
    own = parse_tenant_retention({k: v for k, v in retention.items() if v is not None})
    dropped = [k for k, v in retention.items() if v is None and k in RETENTION_KINDS]
    if unknown := [k for k in retention if k not in RETENTION_KINDS]:
        raise ValueError(f"unknown retention kind {unknown[0]!r} (kinds: {', '.join(RETENTION_KINDS)})")
    set_country, set_allowed = country is not KEEP, allowed_countries is not KEEP
    if set_country and country is not None:
        country = country_code(country)
    if set_allowed and allowed_countries is not None:
        allowed_countries = country_codes(allowed_countries)
    set_domain, set_ttl = link_domain is not KEEP, link_ttl_s is not KEEP
    if set_domain and link_domain is not None:
        from services.ingest.links import check_domain

        link_domain = check_domain(link_domain).lower()
    if set_ttl and link_ttl_s is not None and not 60 <= link_ttl_s <= LINK_TTL_MAX_S:
        raise ValueError("a link lifetime is between 1 minute and 3650 days")
    if set_domain and link_domain is not None and await conn.fetchval(
        "SELECT tenant_id FROM tenants WHERE lower(link_domain) = $1 AND tenant_id <> $2", link_domain, tenant_id
    ):
        raise ValueError(f"link domain {link_domain} belongs to another tenant")
    async with conn.transaction():
        try:
            done = await conn.fetchval(
                "UPDATE tenants SET marketing_consent = coalesce($2, marketing_consent),"
                " frequency_caps = coalesce($3::jsonb, frequency_caps),"
                " country = CASE WHEN $4 THEN $5 ELSE country END,"
                " allowed_countries = CASE WHEN $6 THEN $7::text[] ELSE allowed_countries END,"
                " marketing_opt_out = coalesce($8, marketing_opt_out),"
                " link_domain = CASE WHEN $9 THEN $10 ELSE link_domain END,"
                " link_ttl_s = CASE WHEN $11 THEN $12::integer ELSE link_ttl_s END,"
                " retention = (retention || $13::jsonb) - $14::text[]"
                " WHERE tenant_id = $1 RETURNING tenant_id",
                tenant_id, marketing_consent, caps, set_country, country if set_country else None,
                set_allowed, allowed_countries if set_allowed else None, marketing_opt_out,
                set_domain, link_domain if set_domain else None, set_ttl, link_ttl_s if set_ttl else None,
                own, dropped,
            )
        except asyncpg.UniqueViolationError:  # another tenant took the domain meanwhile
            raise ValueError(f"link domain {link_domain} belongs to another tenant") from None
        if done is None:
            return None
        changes: dict[str, Any] = {"marketing_consent": marketing_consent, "frequency_caps": caps,
                                   "marketing_opt_out": marketing_opt_out}
        if retention:
            changes["retention"] = retention
        if set_country:
            changes["country"] = country
        if set_allowed:
            changes["allowed_countries"] = allowed_countries
        if set_domain:
            changes["link_domain"] = link_domain
        if set_ttl:
            changes["link_ttl_s"] = link_ttl_s
        await audit(conn, actor, "tenant.policy", tenant_id, **changes)
    return await tenant_policy(conn, tenant_id)


LINK_TTL_MAX_S = 3650 * 86400


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


MAX_URL_LENGTH = 2083


def webhook_url(url: str) -> str:
    """A reply webhook URL, checked and normalised like a message's status_callback_url (http or
    https with a host; ``http:x.com`` becomes ``http://x.com/``), at most 2083 characters."""
    from pydantic import AnyHttpUrl, TypeAdapter, ValidationError

    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"a webhook URL is at most {MAX_URL_LENGTH} characters")
    try:
        normalised = str(TypeAdapter(AnyHttpUrl).validate_python(url.strip()))
    except ValidationError:
        raise ValueError(f"not an http or https URL: {url[:80]!r}") from None
    if len(normalised) > MAX_URL_LENGTH:
        raise ValueError(f"a webhook URL is at most {MAX_URL_LENGTH} characters")
    return normalised


async def reply_webhook(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT reply_webhook_url FROM tenants WHERE tenant_id = $1", tenant_id)
    return None if row is None else {"tenant_id": tenant_id, "reply_webhook_url": row["reply_webhook_url"]}


class WebhookRefused(ValueError):
    """A reply webhook URL that may not be posted to (shared/egress.py); ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def checked_webhook_url(url: str, policy: Any = None) -> str:
    """:func:`webhook_url`, then refused unless its destination is allowed (public, https by
    default: shared/egress.py). ``policy``: an ``EgressPolicy``; default: from the environment."""
    from shared.egress import MESSAGES, URL_INVALID, EgressPolicy, check_url
    from shared.settings import WebhookEgressSettings

    try:
        normalised = webhook_url(url)
    except ValueError as exc:
        raise WebhookRefused(URL_INVALID, str(exc)) from None
    policy = policy if policy is not None else EgressPolicy.of(WebhookEgressSettings())
    reason = await check_url(normalised, policy)
    if reason is not None:
        raise WebhookRefused(reason, f"reply webhook URL refused: {MESSAGES.get(reason, reason)}")
    return normalised


async def reply_webhook_set(conn: asyncpg.Connection, actor: str, tenant_id: str, url: str | None,
                            policy: Any = None) -> dict[str, Any] | None:
    """Where the tenant's ordinary replies are posted (docs/replies.md); None stops posting them.
    Raises :class:`WebhookRefused` (a ValueError) for a URL that may not be posted to."""
    url = await checked_webhook_url(url, policy) if url is not None else None
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE tenants SET reply_webhook_url = $2 WHERE tenant_id = $1 RETURNING tenant_id", tenant_id, url
        )
        if done is None:
            return None
        await audit(conn, actor, "tenant.reply_webhook", tenant_id, reply_webhook_url=url)
    return {"tenant_id": tenant_id, "reply_webhook_url": url}


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


def _scope(scope: str | None) -> str | None:
    scope = scope.strip().lower() if scope and scope.strip() else None
    if scope is not None and (len(scope) > 64 or not scope.replace("-", "").replace("_", "").isalnum()):
        raise ValueError("a scope is one word of letters, digits, - or _ (up to 64)")
    return scope


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


# --- the sender registry (shared/senders.py, docs/senders.md) ---------------------------------

_SENDER_COLUMNS = ("sender, tenant_id, kind, countries, capabilities, state, scope, registrations::text AS registrations,"
                   " note, created_at, updated_at")


def sender_view(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["registrations"] = json.loads(out["registrations"]) if isinstance(out["registrations"], str) else out["registrations"]
    return out


def sender_fields(sender: str, kind: str | None, countries: Iterable[str] | None,
                  capabilities: Iterable[str] | None) -> tuple[str, str, list[str] | None, list[str]]:
    """A sender as given, checked: (registry form, kind, countries or None, capabilities)."""
    text = sender.strip()
    if not SENDER_RE.match(text):
        raise ValueError("a sender is a name of up to 11 letters, digits, spaces, . _ - or a number")
    text = normalise_sender(text)
    kind = kind or infer_kind(text)
    if kind not in SENDER_KINDS:
        raise ValueError(f"kind is one of {', '.join(SENDER_KINDS)}")
    inferred = infer_kind(text)
    if (kind == "alphanumeric") != (inferred == "alphanumeric") or (kind == "short_code") != (inferred == "short_code"):
        raise ValueError(f"{text!r} is not a {kind.replace('_', ' ')}")
    codes = country_codes(countries) if countries is not None else None
    if kind == "short_code" and not codes:
        raise ValueError("a short code sends only in its country: give its countries")
    caps = sorted(set(capabilities if capabilities is not None else ("sms",)))
    if not caps or set(caps) - set(SENDER_CAPABILITIES):
        raise ValueError(f"capabilities are some of {', '.join(SENDER_CAPABILITIES)}")
    if "mo" in caps and kind == "alphanumeric":
        raise ValueError("an alphanumeric sender id cannot take replies (no mo capability)")
    return text, kind, codes, caps


async def sender_add(conn: asyncpg.Connection, actor: str, tenant_id: str, sender: str, *, kind: str | None = None,
                     countries: Iterable[str] | None = None, capabilities: Iterable[str] | None = None,
                     state: str = "pending", scope: str | None = None,
                     registrations: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register a sender for a tenant (an operator may register it verified at once)."""
    text, kind, codes, caps = sender_fields(sender, kind, countries, capabilities)
    if state not in SENDER_STATES:
        raise ValueError(f"state is one of {', '.join(SENDER_STATES)}")
    regs = check_registrations(registrations or {})
    async with conn.transaction():
        if not await conn.fetchval("SELECT true FROM tenants WHERE tenant_id = $1", tenant_id):
            raise LookupError(f"no tenant {tenant_id}")
        row = await conn.fetchrow(
            "INSERT INTO senders (sender, tenant_id, kind, countries, capabilities, state, scope, registrations)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT DO NOTHING RETURNING " + _SENDER_COLUMNS,
            text, tenant_id, kind, codes, caps, state, _scope(scope), regs,
        )
        if row is None:
            raise ValueError(f"sender {text} is already registered")
        await audit(conn, actor, "sender.add", text, tenant_id=tenant_id, kind=kind, countries=codes,
                    capabilities=caps, state=state, registrations=regs)
    return sender_view(row)


async def sender_list(conn: asyncpg.Connection, tenant_id: str | None = None,
                      state: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {_SENDER_COLUMNS} FROM senders WHERE ($1::text IS NULL OR tenant_id = $1)"
        " AND ($2::text IS NULL OR state = $2) ORDER BY tenant_id, sender",
        tenant_id, state,
    )
    return [sender_view(r) for r in rows]


async def sender_get(conn: asyncpg.Connection, tenant_id: str, sender: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_SENDER_COLUMNS} FROM senders WHERE tenant_id = $1 AND sender = $2",
                              tenant_id, normalise_sender(sender))
    return sender_view(row) if row is not None else None


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
                        capabilities: Iterable[str] | None = None, scope: str | None | object = KEEP) -> dict[str, Any]:
    """Change a sender's kind, countries (None: any the rules allow), capabilities or scope;
    what is left out keeps its value. The state is unchanged (verify, suspend)."""
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
        try:
            updated = await conn.fetchrow(
                "UPDATE senders SET kind = $3, countries = $4, capabilities = $5, scope = $6, updated_at = now()"
                f" WHERE tenant_id = $1 AND sender = $2 RETURNING {_SENDER_COLUMNS}",
                tenant_id, text, new_kind, codes, caps, new_scope,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"{text} takes replies for another tenant") from None
        await audit(conn, actor, "sender.update", text, tenant_id=tenant_id, kind=new_kind, countries=codes,
                    capabilities=caps, scope=new_scope)
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


async def sender_remove(conn: asyncpg.Connection, actor: str, tenant_id: str, sender: str) -> bool:
    text = normalise_sender(sender)
    async with conn.transaction():
        status = await conn.execute("DELETE FROM senders WHERE tenant_id = $1 AND sender = $2", tenant_id, text)
        if status.endswith(" 0"):
            return False
        await audit(conn, actor, "sender.remove", text, tenant_id=tenant_id)
    return True


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
