"""Tenant policy, reply webhook and sender registry: what ingest's API (``/v1/policy``,
``/v1/senders``) changes, and the operator's ``herald admin`` (herald_tools/admin.py) too.

Every change writes a row to ``audit_log`` (who, what, when, details) in the same transaction.
Operator-only actions (verifying or suspending a sender, its carrier registrations) stay in
herald_tools/admin.py. Imports no service and no tooling (tests/repo/test_import_rules.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import asyncpg

from shared.geo import country_code, country_codes
from shared.retention import KINDS as RETENTION_KINDS
from shared.retention import parse_tenant_retention
from shared.senders import CAPABILITIES as SENDER_CAPABILITIES
from shared.senders import KINDS as SENDER_KINDS
from shared.senders import POOL_NAME_RE, SENDER_RE, check_registrations, infer_kind
from shared.senders import STATES as SENDER_STATES
from shared.senders import normalise as normalise_sender


async def audit(conn: asyncpg.Connection, actor: str, action: str, target: str, **detail: Any) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        actor, action, target, json.loads(json.dumps(detail, default=str)),
    )



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
        link_domain = check_link_domain(link_domain).lower()
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


_LINK_DOMAIN = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)*")


def check_link_domain(value: str) -> str:
    """A link domain as configured: a host name, optionally with :port and a path, no scheme
    (ValueError otherwise); trailing slashes dropped."""
    value = value.strip().rstrip("/")
    if not _LINK_DOMAIN.fullmatch(value):
        raise ValueError("a link domain is a host name, optionally with :port and a path, without scheme")
    return value


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



def check_scope(scope: str | None) -> str | None:
    scope = scope.strip().lower() if scope and scope.strip() else None
    if scope is not None and (len(scope) > 64 or not scope.replace("-", "").replace("_", "").isalnum()):
        raise ValueError("a scope is one word of letters, digits, - or _ (up to 64)")
    return scope



# --- the sender registry (shared/senders.py, docs/senders.md) ---------------------------------

SENDER_COLUMNS = ("sender, tenant_id, kind, countries, capabilities, state, scope, registrations::text AS registrations,"
                   " rate_per_s, burst, note, created_at, updated_at")


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
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT DO NOTHING RETURNING " + SENDER_COLUMNS,
            text, tenant_id, kind, codes, caps, state, check_scope(scope), regs,
        )
        if row is None:
            raise ValueError(f"sender {text} is already registered")
        await audit(conn, actor, "sender.add", text, tenant_id=tenant_id, kind=kind, countries=codes,
                    capabilities=caps, state=state, registrations=regs)
    return sender_view(row)


async def sender_list(conn: asyncpg.Connection, tenant_id: str | None = None,
                      state: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {SENDER_COLUMNS} FROM senders WHERE ($1::text IS NULL OR tenant_id = $1)"
        " AND ($2::text IS NULL OR state = $2) ORDER BY tenant_id, sender",
        tenant_id, state,
    )
    return [sender_view(r) for r in rows]


async def sender_get(conn: asyncpg.Connection, tenant_id: str, sender: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {SENDER_COLUMNS} FROM senders WHERE tenant_id = $1 AND sender = $2",
                              tenant_id, normalise_sender(sender))
    return sender_view(row) if row is not None else None


async def sender_remove(conn: asyncpg.Connection, actor: str, tenant_id: str, sender: str) -> bool:
    text = normalise_sender(sender)
    async with conn.transaction():
        status = await conn.execute("DELETE FROM senders WHERE tenant_id = $1 AND sender = $2", tenant_id, text)
        if status.endswith(" 0"):
            return False
        await audit(conn, actor, "sender.remove", text, tenant_id=tenant_id)
    return True


# --- sender pools (shared/senders.py, docs/senders.md "Pools and sticky senders") ---------------

_POOL_COLUMNS = "tenant_id, name, senders, geo_match, created_at, updated_at"


async def pool_set(conn: asyncpg.Connection, actor: str, tenant_id: str, name: str, senders: Iterable[str],
                   geo_match: bool = False) -> dict[str, Any]:
    """Create or replace a tenant's sender pool: its senders in order of preference, each one of
    the tenant's registered senders. Recipients keep their sticky sender while it stays in the pool."""
    if not POOL_NAME_RE.match(name):
        raise ValueError("a pool name is 1 to 64 letters, digits, . _ -")
    members = list(dict.fromkeys(normalise_sender(s) for s in senders))
    if not members:
        raise ValueError("a pool has at least one sender")
    if len(members) > 100:
        raise ValueError("a pool has at most 100 senders")
    async with conn.transaction():
        known = {r["sender"] for r in await conn.fetch(
            "SELECT sender FROM senders WHERE tenant_id = $1 AND sender = ANY($2::text[])", tenant_id, members)}
        missing = [m for m in members if m not in known]
        if missing:
            raise LookupError(f"not one of this tenant's senders: {', '.join(missing)}")
        row = await conn.fetchrow(
            "INSERT INTO sender_pools (tenant_id, name, senders, geo_match) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, name) DO UPDATE SET senders = excluded.senders, geo_match = excluded.geo_match,"
            f" updated_at = now() RETURNING {_POOL_COLUMNS}",
            tenant_id, name, members, geo_match,
        )
        await audit(conn, actor, "sender_pool.set", name, tenant_id=tenant_id, senders=members, geo_match=geo_match)
    return dict(row)


async def pool_list(conn: asyncpg.Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_POOL_COLUMNS} FROM sender_pools WHERE ($1::text IS NULL OR tenant_id = $1)"
                            " ORDER BY tenant_id, name", tenant_id)
    return [dict(r) for r in rows]


async def pool_get(conn: asyncpg.Connection, tenant_id: str, name: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_POOL_COLUMNS} FROM sender_pools WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    return dict(row) if row is not None else None


async def pool_remove(conn: asyncpg.Connection, actor: str, tenant_id: str, name: str) -> bool:
    """Delete a pool and its recipients' sticky senders (messages naming it are refused from the next request on)."""
    async with conn.transaction():
        status = await conn.execute("DELETE FROM sender_pools WHERE tenant_id = $1 AND name = $2", tenant_id, name)
        if status.endswith(" 0"):
            return False
        await conn.execute("DELETE FROM sender_assignments WHERE tenant_id = $1 AND pool = $2", tenant_id, name)
        await audit(conn, actor, "sender_pool.remove", name, tenant_id=tenant_id)
    return True
