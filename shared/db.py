"""PostgreSQL: the asyncpg pool and the SQL migrations (``herald migrate``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources

import asyncpg

from shared.settings import DatabaseSettings

log = logging.getLogger(__name__)
MIGRATION_LOCK = 0x4E52414C44  # pg_advisory_lock key: one migrator at a time


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(settings: DatabaseSettings, timeout_s: float = 30) -> asyncpg.Pool:
    """Open the pool, retrying while the database comes up (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await asyncpg.create_pool(
                settings.database_url.get_secret_value(),
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                init=_init_connection,
                command_timeout=60,
            )
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database not reachable yet, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(1)


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("shared") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text()) for f in files]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not applied yet, in order, each in its own transaction."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        applied = []
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
            log.info("migration applied", extra={"migration": name})
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
