"""PostgreSQL: the asyncpg pool and the SQL migrations (``herald migrate``)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
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


# The packages whose ``migrations/`` folder holds SQL migrations: the library's own tables
# (shared) and each service's (docs/data-map.md, "owner"). Names, not imports: shared imports no
# service; importlib.resources finds each folder in the installed package.
MIGRATION_PACKAGES = ("shared", "services.ingest", "services.scheduler", "services.dispatcher", "services.reports")
REPLACES = re.compile(r"\A--\s*replaces:\s*(\S+\.sql)\s*$", re.M)


def migration_files() -> list[tuple[str, str]]:
    """Every migration of every package, ``(file name, sql)``, in one global order: by file name
    (``NNNN_name.sql``; the parts of a split file, ``NNNN_name.<owner>.sql``, sort together)."""
    found: dict[str, str] = {}
    for package in MIGRATION_PACKAGES:
        folder = resources.files(package) / "migrations"
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.name.endswith(".sql"):
                if f.name in found:
                    raise RuntimeError(f"migration {f.name} is in two packages")
                found[f.name] = f.read_text()
    return sorted(found.items())


def replaces(sql: str) -> str | None:
    """The original file a part of a split migration replaces (its first line ``-- replaces: X.sql``)."""
    m = REPLACES.match(sql)
    return m.group(1) if m else None


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not applied yet, in order, each in its own transaction. A part of a
    split file whose original is recorded as applied is only recorded (an existing database
    upgrades without running anything)."""
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
            original = replaces(sql)
            if original is not None and original in done:
                # a database migrated before the file was split: the original ran these statements
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                log.info("migration recorded, its original was applied", extra={"migration": name, "replaces": original})
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
            log.info("migration applied", extra={"migration": name})
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
