"""The migrations split by owner (services/<owner>/migrations, shared/migrations) build the same
schema as the files they replace, and a database migrated before the split upgrades as a no-op.

Database A runs the files as ``herald migrate`` does on a fresh database. Database B runs them as
the database of an earlier release did: each split file's parts concatenated in one transaction
under the original name (what was recorded then), the other files as they are. Their catalogs
(tables, columns, indexes, constraints, views, triggers, functions, extensions, sequences) must
be the same, and ``migrate`` on B must run nothing and record the parts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from shared.db import migrate, migration_files, replaces

pytestmark = pytest.mark.integration

CATALOG = {
    "relations": "SELECT c.relname, c.relkind::text, c.relpersistence::text, pg_get_expr(c.relpartbound, c.oid) AS bound,"
                 " (SELECT pg_get_partkeydef(c.oid)) AS partkey FROM pg_class c"
                 " WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1",
    "columns": "SELECT table_name, ordinal_position, column_name, data_type, udt_name, character_maximum_length,"
               " numeric_precision, numeric_scale, column_default, is_nullable, is_identity, identity_generation,"
               " is_generated, generation_expression FROM information_schema.columns WHERE table_schema = 'public'"
               " ORDER BY 1, 2",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    "constraints": "SELECT conrelid::regclass::text AS rel, conname, contype::text, pg_get_constraintdef(oid) AS def"
                   " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
    "triggers": "SELECT tgrelid::regclass::text AS rel, tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger"
                " WHERE NOT tgisinternal ORDER BY 1, 2",
    "functions": "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, pg_get_functiondef(p.oid) AS def"
                 " FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')"
                 " ORDER BY 1, 2",
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
}


async def catalog(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    """The schema's catalog, comparable between two databases (no oids, no data)."""
    return {name: [tuple(r.values()) for r in await conn.fetch(sql)] for name, sql in CATALOG.items()}


@asynccontextmanager
async def database(admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    name = f"herald_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(admin_dsn.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def as_before_the_split() -> list[tuple[str, str]]:
    """(name, sql) as an earlier release ran them: a split file's parts joined under its name."""
    out: list[tuple[str, str]] = []
    for name, sql in migration_files():
        original = replaces(sql)
        if original is not None and out and out[-1][0] == original:
            out[-1] = (original, out[-1][1] + "\n" + sql)
        else:
            out.append((original or name, sql))
    return out


async def migrate_as_before_the_split(conn: asyncpg.Connection, until: Callable[[str], bool] = lambda _: True) -> list[str]:
    await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    done = []
    for name, sql in as_before_the_split():
        if not until(name):
            break
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        done.append(name)
    return done


async def recorded(conn: asyncpg.Connection) -> set[str]:
    return {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}


def test_the_split_files_are_grouped_under_their_originals() -> None:
    before = [name for name, _ in as_before_the_split()]
    assert len(before) == len(set(before))
    assert "0001_init.sql" in before and "0001_init.ingest.sql" not in before
    assert {replaces(sql) for _, sql in migration_files()} - {None} <= set(before)


async def test_a_fresh_database_has_the_schema_of_the_files_before_the_split(infra_env: dict[str, str]) -> None:
    async with database(infra_env["dsn"]) as a, database(infra_env["dsn"]) as b:
        applied = await migrate(a)
        assert applied == [name for name, _ in migration_files()]
        assert await recorded(a) == set(applied)
        await migrate_as_before_the_split(b)
        got, expected = await catalog(a), await catalog(b)
        assert expected["relations"] and expected["triggers"] and expected["views"] and expected["functions"]
        for part in CATALOG:
            assert got[part] == expected[part], part


async def test_a_database_migrated_before_the_split_upgrades_without_running_anything(infra_env: dict[str, str]) -> None:
    async with database(infra_env["dsn"]) as b:
        before_names = await migrate_as_before_the_split(b)
        before = await catalog(b)
        assert await migrate(b) == []
        assert await recorded(b) == set(before_names) | {name for name, _ in migration_files()}
        assert await catalog(b) == before
        assert await migrate(b) == []


async def test_a_database_migrated_part_way_before_the_split_runs_the_rest(infra_env: dict[str, str]) -> None:
    async with database(infra_env["dsn"]) as a, database(infra_env["dsn"]) as b:
        await migrate(a)
        await migrate_as_before_the_split(b, until=lambda name: name < "0020")
        applied = await migrate(b)
        assert applied == [name for name, _ in migration_files() if name >= "0020"]
        assert "0021_tenant_disable.ingest.sql" in applied and "0010_results.reports.sql" not in applied
        assert await catalog(b) == await catalog(a)
