"""The SQL of journey definitions: ``journeys`` (current version, state) and ``journey_versions``."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from shared.journeys.definition import JourneyDefinition

_COLUMNS = (
    "j.journey_id, j.name, j.version, j.state, j.created_at, j.updated_at, j.archived_at, v.definition"
)


class VersionConflict(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"the journey is at version {current}")
        self.current = current


class Archived(Exception):
    pass


def _view(row: asyncpg.Record) -> dict[str, Any]:
    definition = row["definition"]
    return {
        "journey_id": str(row["journey_id"]),
        "name": row["name"],
        "version": row["version"],
        "state": row["state"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "archived_at": row["archived_at"].isoformat() if row["archived_at"] else None,
        "definition": json.loads(definition) if isinstance(definition, str) else definition,
    }


def _triggers(definition: JourneyDefinition) -> list[str]:
    return list(definition.trigger.names)


class JourneysRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def missing_templates(self, tenant: str, ids: set[uuid.UUID]) -> set[uuid.UUID]:
        if not ids:
            return set()
        rows = await self.pool.fetch(
            "SELECT template_id FROM templates WHERE tenant_id = $1 AND template_id = ANY($2::uuid[])", tenant, list(ids)
        )
        return ids - {r["template_id"] for r in rows}

    async def create(self, tenant: str, definition: JourneyDefinition, raw: dict[str, Any], key_id: str | None = None) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            journey_id = await conn.fetchval(
                "INSERT INTO journeys (tenant_id, name, trigger_events, key_id) VALUES ($1, $2, $3, $4) RETURNING journey_id",
                tenant, definition.name, _triggers(definition), key_id,
            )
            await conn.execute(
                "INSERT INTO journey_versions (journey_id, version, definition) VALUES ($1, 1, $2)", journey_id, raw
            )
            return await self._get(conn, tenant, journey_id, None)  # type: ignore[return-value]

    async def get(self, tenant: str, journey_id: uuid.UUID, version: int | None = None) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            return await self._get(conn, tenant, journey_id, version)

    async def _get(self, conn: asyncpg.Connection, tenant: str, journey_id: uuid.UUID, version: int | None) -> dict[str, Any] | None:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS}, v.version AS shown FROM journeys j JOIN journey_versions v"
            " ON v.journey_id = j.journey_id AND v.version = coalesce($3, j.version)"
            " WHERE j.tenant_id = $1 AND j.journey_id = $2",
            tenant, journey_id, version,
        )
        if row is None:
            return None
        view = _view(row)
        view["definition_version"] = row["shown"]
        return view

    async def list(self, tenant: str, state: str | None, limit: int, after: uuid.UUID | None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM journeys j JOIN journey_versions v ON v.journey_id = j.journey_id AND v.version = j.version"
            " WHERE j.tenant_id = $1 AND ($2::text IS NULL OR j.state = $2) AND ($3::uuid IS NULL OR j.journey_id > $3)"
            " ORDER BY j.journey_id LIMIT $4",
            tenant, state, after, limit,
        )
        return [_view(r) for r in rows]

    async def update(
        self, tenant: str, journey_id: uuid.UUID, definition: JourneyDefinition, raw: dict[str, Any], expected: int | None,
        key_id: str | None = None,
    ) -> dict[str, Any] | None:
        """A new version; runs already under way finish on theirs. ``expected``: If-Match."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT version, state FROM journeys WHERE tenant_id = $1 AND journey_id = $2 FOR UPDATE", tenant, journey_id
            )
            if row is None:
                return None
            if row["state"] == "archived":
                raise Archived()
            if expected is not None and expected != row["version"]:
                raise VersionConflict(row["version"])
            version = row["version"] + 1
            await conn.execute(
                "INSERT INTO journey_versions (journey_id, version, definition) VALUES ($1, $2, $3)", journey_id, version, raw
            )
            await conn.execute(
                "UPDATE journeys SET version = $3, name = $4, trigger_events = $5, key_id = $6, updated_at = now()"
                " WHERE tenant_id = $1 AND journey_id = $2",
                tenant, journey_id, version, definition.name, _triggers(definition), key_id,
            )
            return await self._get(conn, tenant, journey_id, None)

    async def archive(self, tenant: str, journey_id: uuid.UUID) -> dict[str, Any] | None:
        """No new entries; runs under way exit at their next step (the scheduler sees the state)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE journeys SET state = 'archived', archived_at = coalesce(archived_at, now()), updated_at = now()"
                " WHERE tenant_id = $1 AND journey_id = $2",
                tenant, journey_id,
            )
            return await self._get(conn, tenant, journey_id, None)

    async def run_counts(self, tenant: str, journey_id: uuid.UUID) -> dict[str, Any]:
        rows = await self.pool.fetch(
            "SELECT state, count(*) AS n, coalesce(sum(sends), 0) AS sends FROM shared_journey_runs"
            " WHERE tenant_id = $1 AND journey_id = $2 GROUP BY state",
            tenant, journey_id,
        )
        counts = {s: 0 for s in ("active", "completed", "exited")}
        counts.update({r["state"]: r["n"] for r in rows})
        return {"runs": counts, "sends": sum(r["sends"] for r in rows)}
