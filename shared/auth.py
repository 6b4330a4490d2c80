"""Tenant API keys: ``hk_<key id>_<secret>``. Only a SHA-256 of the secret is stored.

The secret is 256 random bits, so a fast hash is enough (no password stretching needed);
comparison is constant-time. Keys are checked against the database on every request, so a
revoked key stops working at once on every instance.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

PREFIX = "hk"
SCOPES = (
    "messages:write", "messages:read", "suppressions:write", "receipts:write", "contacts:write", "contacts:read",
    "campaigns:write", "campaigns:read",
)
DEFAULT_SCOPES = (
    "messages:write", "messages:read", "suppressions:write", "contacts:write", "contacts:read",
    "campaigns:write", "campaigns:read",
)


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]
    requests_per_minute: int | None = None  # None: the service default
    messages_per_minute: int | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise AuthError(403, "insufficient_scope", f"this API key lacks the scope {scope!r}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """Return (key id, full key to hand out once, hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}_{key_id}_{secret}", hash_secret(secret)


def split_key(key: str) -> tuple[str, str]:
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise AuthError(401, "invalid_api_key", "API key is malformed")
    return parts[1], parts[2]


async def create_tenant(conn: asyncpg.Connection, tenant_id: str, name: str, marketing_consent: str = "required") -> None:
    """Create a tenant (no-op if it exists). ``marketing_consent``: 'required' (the default: marketing
    goes only to contacts with consent) or 'opt_out' (only a recorded refusal blocks it)."""
    await conn.execute(
        "INSERT INTO tenants (tenant_id, name, marketing_consent) VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING",
        tenant_id, name, marketing_consent,
    )


async def create_key(
    conn: asyncpg.Connection, tenant_id: str, scopes: tuple[str, ...] = DEFAULT_SCOPES, name: str = ""
) -> str:
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {sorted(unknown)}")
    key_id, key, secret_hash = new_key()
    await conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, secret_hash, scopes, name) VALUES ($1, $2, $3, $4, $5)",
        key_id,
        tenant_id,
        secret_hash,
        list(scopes),
        name,
    )
    return key


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")


async def authenticate(pool: asyncpg.Pool, key: str | None) -> Principal:
    if not key:
        raise AuthError(401, "missing_api_key", "send the API key as 'Authorization: Bearer <key>'")
    key_id, secret = split_key(key)
    row = await pool.fetchrow(
        "SELECT k.tenant_id, k.secret_hash, k.scopes, k.revoked_at, t.disabled_at,"
        " k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired,"
        " k.requests_per_minute, k.messages_per_minute"
        " FROM api_keys k JOIN tenants t USING (tenant_id) WHERE k.key_id = $1",
        key_id,
    )
    if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
        raise AuthError(401, "invalid_api_key", "API key is not valid")
    if row["revoked_at"] is not None:
        raise AuthError(401, "revoked_api_key", "API key has been revoked")
    if row["expired"]:
        raise AuthError(401, "expired_api_key", "API key has expired (it was rotated)")
    if row["disabled_at"] is not None:
        raise AuthError(403, "tenant_disabled", "tenant is disabled")
    return Principal(
        row["tenant_id"], key_id, frozenset(row["scopes"]), row["requests_per_minute"], row["messages_per_minute"]
    )
