"""Tenant API keys: ``hk_<key id>_<secret>``. Only a SHA-256 of the secret is stored.

The secret is 256 random bits, so a fast hash is enough (no password stretching needed);
comparison is constant-time. ``authenticate`` checks a key against the database on every
call; ``KeyCache`` keeps the keys in memory and drops a key the moment PostgreSQL announces a
change to it or its tenant (LISTEN/NOTIFY, migration 0018), so a revoked key still stops
working at once on every instance, with one round trip shared by the requests in flight
instead of a pool query each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.coalesce import Coalescer
from shared.geo import GeoPolicy
from shared.senders import SenderBook

log = logging.getLogger(__name__)

PREFIX = "hk"
SCOPES = (
    "messages:write", "messages:read", "suppressions:write", "receipts:write", "contacts:write", "contacts:read",
    "campaigns:write", "campaigns:read", "policy:write", "contacts:export", "senders:write", "senders:read",
)
# policy:write (PUT /v1/policy: consent mode, frequency caps, reply webhook) is not a default:
# switching a tenant to opt_out consent is a decision a key must be given explicitly. contacts:export
# (POST/GET /v1/subject-access: everything Herald holds about a number, texts and codes included)
# is not a default either: a key that answers subject-access requests is given it on purpose.
DEFAULT_SCOPES = (
    "messages:write", "messages:read", "suppressions:write", "contacts:write", "contacts:read",
    "campaigns:write", "campaigns:read", "senders:write", "senders:read",
)
# senders:write only requests a sender: it stays pending until an operator verifies it.


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
    geo: GeoPolicy = GeoPolicy()  # the tenant's geo permissions (loaded with the key: no extra query)
    test: bool = False  # a test key: its messages go to the sandbox gateway, never to a carrier
    senders: SenderBook = SenderBook()  # the tenant's sender registry (loaded with the key: no extra query)

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
    conn: asyncpg.Connection, tenant_id: str, scopes: tuple[str, ...] = DEFAULT_SCOPES, name: str = "", *,
    test: bool = False,
) -> str:
    """A new key (printed once). ``test``: a test key, whose messages never reach a carrier."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {sorted(unknown)}")
    key_id, key, secret_hash = new_key()
    await conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, secret_hash, scopes, name, test) VALUES ($1, $2, $3, $4, $5, $6)",
        key_id,
        tenant_id,
        secret_hash,
        list(scopes),
        name,
        test,
    )
    return key


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")


_KEY_ROW = (
    "SELECT k.tenant_id, k.secret_hash, k.scopes, k.revoked_at, t.disabled_at, k.expires_at,"
    " k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired,"
    " k.requests_per_minute, k.messages_per_minute, t.country, t.allowed_countries, k.test,"
    " (SELECT json_agg(json_build_object('sender', s.sender, 'kind', s.kind, 'state', s.state,"
    "  'countries', s.countries, 'capabilities', s.capabilities, 'registrations', s.registrations,"
    "  'rate_per_s', s.rate_per_s, 'burst', s.burst))"
    "  FROM shared_senders s WHERE s.tenant_id = k.tenant_id) AS senders,"
    " (SELECT json_agg(json_build_object('name', p.name, 'senders', p.senders, 'geo_match', p.geo_match))"
    "  FROM shared_sender_pools p WHERE p.tenant_id = k.tenant_id) AS sender_pools"
    " FROM shared_api_keys k JOIN shared_tenant_settings t USING (tenant_id) WHERE k.key_id = $1"
)


def _check(row: Any, key_id: str, secret: str, expired: bool) -> Principal:
    """The verdict on one key row (None: no such key)."""
    if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
        raise AuthError(401, "invalid_api_key", "API key is not valid")
    if row["revoked_at"] is not None:
        raise AuthError(401, "revoked_api_key", "API key has been revoked")
    if expired:
        raise AuthError(401, "expired_api_key", "API key has expired (it was rotated)")
    if row["disabled_at"] is not None:
        raise AuthError(403, "tenant_disabled", "tenant is disabled")
    return Principal(
        row["tenant_id"], key_id, frozenset(row["scopes"]), row["requests_per_minute"], row["messages_per_minute"],
        GeoPolicy.of(row["country"], row["allowed_countries"]), bool(row["test"]), row["senders"],
    )


def _row(record: Any) -> dict[str, Any] | None:
    """A key row with its senders parsed once (the cache keeps it so)."""
    if record is None:
        return None
    row = dict(record)
    row["senders"] = SenderBook.from_json(row["senders"], row.pop("sender_pools", None))
    return row


async def authenticate(pool: asyncpg.Pool, key: str | None) -> Principal:
    if not key:
        raise AuthError(401, "missing_api_key", "send the API key as 'Authorization: Bearer <key>'")
    key_id, secret = split_key(key)
    row = _row(await pool.fetchrow(_KEY_ROW, key_id))
    return _check(row, key_id, secret, row is not None and row["expired"])


CHANNEL = "herald_api_keys"
SYNC_TIMEOUT_S = 2.0  # a listening connection that does not answer this fast is given up


class KeyCache:
    """API keys (and unknown key ids) held in memory, dropped when PostgreSQL says they changed.

    A trigger (migration 0018) notifies ``herald_api_keys`` with the key id, or
    ``tenant:<id>``, on every change to a key or a tenant; a connection of its own listens and
    drops the entry at once. A request that finds its key cached first waits for one round trip
    on that connection (shared by every request in flight, see ``_synced``), so a change
    committed before the request began is always seen. Entries also live at most ``ttl_s`` (a
    safety net). While the listening connection is down nothing is cached: every call reads
    the database, as ``authenticate`` does, until it is back.
    """

    def __init__(self, pool: asyncpg.Pool, dsn: str, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._dsn = dsn
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Any]] = {}  # key id -> (expires, row or None: no such key)
        self._generation = 0  # bumped by every notification: a read that raced one is not cached
        self._listener: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._closed = False
        self._sync: Coalescer[None, None] = Coalescer(self._sync_flush, max_batch=100_000)

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthError(401, "missing_api_key", "send the API key as 'Authorization: Bearer <key>'")
        key_id, secret = split_key(key)
        entry = self._entries.get(key_id)
        if entry is not None and entry[0] > time.monotonic() and self.listening:
            # Barrier: a notification committed before this request began is in by now.
            await self._synced()
            entry = self._entries.get(key_id)
        if entry is not None and entry[0] > time.monotonic() and self.listening:
            row = entry[1]
        else:
            row = await self._load(key_id)
        expires_at = row["expires_at"] if row is not None else None
        return _check(row, key_id, secret, expires_at is not None and expires_at <= datetime.now(UTC))

    async def _synced(self) -> None:
        """Wait for a round trip on the listening connection that began after this call.

        PostgreSQL signals listeners when a change commits and sends a listening session its
        pending notifications before it answers that session's next query, and asyncpg runs
        the callbacks before the answer: once the round trip is back, every change committed
        before it began has dropped its entries. Concurrent requests share one round trip
        (one ``SELECT 1`` for all of them, on a connection outside the pool).
        """
        try:
            await self._sync.submit(None)
        except Exception as exc:  # noqa: BLE001 - any failure of the listening connection: read the database instead
            # (OSError and TimeoutError, PostgresError, InterfaceError, and asyncpg's
            # InternalClientError when the session was terminated mid-operation.)
            log.warning("API key cache off: the listening connection failed", extra={"error": repr(exc)})
            conn = self._listener
            self._lost(None)
            if conn is not None and not conn.is_closed():
                conn.terminate()

    async def _sync_flush(self, items: list[None]) -> list[None]:
        conn = self._listener
        if conn is None or conn.is_closed():
            self._lost(None)
            return [None] * len(items)
        await conn.fetchval("SELECT 1", timeout=SYNC_TIMEOUT_S)
        return [None] * len(items)

    async def _load(self, key_id: str) -> Any:
        if not self.listening:
            await self._listen()
        generation = self._generation
        row = _row(await self._pool.fetchrow(_KEY_ROW, key_id))
        if self.listening and generation == self._generation:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key_id] = (time.monotonic() + self._ttl_s, row)
        return row

    async def _listen(self) -> None:
        """Open the listening connection (at most one attempt a second while it fails)."""
        if self._closed or time.monotonic() < self._retry_at:
            return
        async with self._lock:
            if self.listening or time.monotonic() < self._retry_at:
                return
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn)
                conn.add_termination_listener(self._lost)
                await conn.add_listener(CHANNEL, self._notified)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if conn is not None:
                    conn.terminate()
                self._retry_at = time.monotonic() + 1.0
                log.warning("API key cache off: cannot listen for key changes", extra={"error": repr(exc)})
                return
            self._entries.clear()  # anything read before we listened may be stale
            self._generation += 1
            self._listener = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._generation += 1
        if payload.startswith("tenant:"):
            tenant = payload[len("tenant:"):]
            for key_id in [k for k, (_, row) in self._entries.items() if row is not None and row["tenant_id"] == tenant]:
                del self._entries[key_id]
        else:
            self._entries.pop(payload, None)

    def _lost(self, conn: Any) -> None:
        if conn is not None and conn is not self._listener:
            return  # an earlier listening connection, already replaced
        self._listener = None
        self._entries.clear()
        self._generation += 1

    async def close(self) -> None:
        self._closed = True
        conn, self._listener = self._listener, None
        self._entries.clear()
        if conn is not None and not conn.is_closed():
            await conn.close()
