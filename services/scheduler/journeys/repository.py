"""The journeys' SQL: definitions (read), runs (read, lock, write), contacts and templates.

jsonb goes through the pool's codec (``shared.db``): Python objects in, Python objects out,
except lists inside a ``jsonb[]`` parameter (asyncpg reads them as array dimensions), which
are sent as JSON text and cast.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.scheduler.journeys.engine import Journey, Run
from shared.journeys.definition import JourneyDefinition
from shared.templates import Template

RUN_COLUMNS = (
    "run_id, tenant_id, journey_id, version, phone_e164, contact_id, state, step, step_since, armed, due_at,"
    " trigger, last_event, seen, sends, exit_reason, entered_at, ended_at"
)


def _run(row: asyncpg.Record) -> Run:
    return Run(
        run_id=row["run_id"],
        tenant=row["tenant_id"],
        journey_id=row["journey_id"],
        version=row["version"],
        phone=row["phone_e164"],
        contact_id=row["contact_id"],
        trigger=_json(row["trigger"]),
        entered_at=row["entered_at"],
        step=row["step"],
        step_since=row["step_since"],
        armed=row["armed"],
        due_at=row["due_at"],
        state=row["state"],
        last_event=_json(row["last_event"]),
        seen=_json(row["seen"]) or [],
        exit_reason=row["exit_reason"],
        ended_at=row["ended_at"],
        sends=row["sends"],
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class KeyLimits:
    key_id: str
    requests_per_minute: int | None
    messages_per_minute: int | None


class JourneyRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # Versions never change once written: cache their parsed definitions.
        self._definitions: dict[tuple[uuid.UUID, int], JourneyDefinition] = {}

    async def _definitions_for(self, conn: asyncpg.Connection, keys: set[tuple[uuid.UUID, int]]) -> None:
        missing = [k for k in keys if k not in self._definitions]
        if not missing:
            return
        rows = await conn.fetch(
            "SELECT v.journey_id, v.version, v.definition FROM shared_journey_versions v"
            " JOIN unnest($1::uuid[], $2::int[]) AS k(j, n) ON v.journey_id = k.j AND v.version = k.n",
            [j for j, _ in missing],
            [n for _, n in missing],
        )
        for r in rows:
            self._definitions[(r["journey_id"], r["version"])] = JourneyDefinition.model_validate(_json(r["definition"]))

    async def startable(self, conn: asyncpg.Connection, tenants: Iterable[str], names: Iterable[str]) -> dict[str, list[Journey]]:
        """Active journeys of these tenants that one of these event names triggers."""
        rows = await conn.fetch(
            "SELECT tenant_id, journey_id, version FROM shared_journeys"
            " WHERE tenant_id = ANY($1::text[]) AND state = 'active' AND trigger_events && $2::text[]",
            list(set(tenants)),
            list(set(names)),
        )
        await self._definitions_for(conn, {(r["journey_id"], r["version"]) for r in rows})
        out: dict[str, list[Journey]] = {}
        for r in rows:
            definition = self._definitions[(r["journey_id"], r["version"])]
            out.setdefault(r["tenant_id"], []).append(Journey(r["journey_id"], r["tenant_id"], r["version"], definition))
        return out

    async def running(self, conn: asyncpg.Connection, runs: Iterable[Run]) -> dict[tuple[uuid.UUID, int], Journey]:
        """The journey version of each run, with whether the journey is still active."""
        keys = {(r.journey_id, r.version) for r in runs}
        if not keys:
            return {}
        await self._definitions_for(conn, keys)
        rows = await conn.fetch(
            "SELECT journey_id, tenant_id, state FROM shared_journeys WHERE journey_id = ANY($1::uuid[])", list({j for j, _ in keys})
        )
        states = {r["journey_id"]: (r["tenant_id"], r["state"]) for r in rows}
        return {
            (j, n): Journey(j, states[j][0], n, self._definitions[(j, n)], active=states[j][1] == "active")
            for j, n in keys
            if j in states and (j, n) in self._definitions
        }

    async def sending_keys(self, conn: asyncpg.Connection, journey_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, KeyLimits]:
        """The API key that wrote each journey, with its own limits (None: the default); journeys
        written before keys were recorded have none and are not limited."""
        rows = await conn.fetch(
            "SELECT j.journey_id, k.key_id, k.requests_per_minute, k.messages_per_minute FROM shared_journeys j"
            " JOIN shared_key_limits k ON k.key_id = j.key_id WHERE j.journey_id = ANY($1::uuid[])",
            list(set(journey_ids)),
        )
        return {r["journey_id"]: KeyLimits(r["key_id"], r["requests_per_minute"], r["messages_per_minute"]) for r in rows}

    async def lock_active_runs(self, conn: asyncpg.Connection, contacts: set[tuple[str, str]]) -> list[Run]:
        """Active runs of these (tenant, phone) contacts, locked until the transaction ends."""
        if not contacts:
            return []
        tenants, phones = zip(*sorted(contacts), strict=True)
        # A contact's events arrive on one partition, so one instance handles them; during a
        # rebalance two may briefly hold the same batch. These locks (in one order, so never a
        # deadlock) serialise them, so a re-entry rule is decided on committed runs.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('herald-journeys:' || t || ':' || p, 0))"
            " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, p, n) ORDER BY n",
            list(tenants),
            list(phones),
        )
        rows = await conn.fetch(
            f"SELECT {RUN_COLUMNS} FROM journey_runs r"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON r.tenant_id = k.t AND r.phone_e164 = k.p"
            " WHERE r.state = 'active' ORDER BY r.run_id FOR UPDATE OF r",
            list(tenants),
            list(phones),
        )
        return [_run(r) for r in rows]

    async def last_entries(
        self, conn: asyncpg.Connection, journey_ids: set[uuid.UUID], phones: set[str]
    ) -> dict[tuple[uuid.UUID, str], datetime]:
        if not journey_ids or not phones:
            return {}
        rows = await conn.fetch(
            "SELECT journey_id, phone_e164, max(entered_at) AS last FROM journey_runs"
            " WHERE journey_id = ANY($1::uuid[]) AND phone_e164 = ANY($2::text[]) GROUP BY journey_id, phone_e164",
            list(journey_ids),
            list(phones),
        )
        return {(r["journey_id"], r["phone_e164"]): r["last"] for r in rows}

    async def insert_runs(self, conn: asyncpg.Connection, runs: list[Run]) -> set[uuid.UUID]:
        """New runs; one already there (the same trigger event again) is left alone. Returns the
        ids actually inserted."""
        if not runs:
            return set()
        rows = await conn.fetch(
            "INSERT INTO journey_runs (run_id, tenant_id, journey_id, version, phone_e164, contact_id, state, step,"
            " step_since, armed, due_at, trigger, seen, entered_at)"
            " SELECT r, t, j, v, p, c, st, sp, ss, a, d, tr, se::jsonb, e FROM unnest($1::uuid[], $2::text[], $3::uuid[],"
            " $4::int[], $5::text[], $6::uuid[], $7::text[], $8::int[], $9::timestamptz[], $10::bool[], $11::timestamptz[],"
            " $12::jsonb[], $13::text[], $14::timestamptz[]) AS u(r, t, j, v, p, c, st, sp, ss, a, d, tr, se, e)"
            " ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
            [r.run_id for r in runs],
            [r.tenant for r in runs],
            [r.journey_id for r in runs],
            [r.version for r in runs],
            [r.phone for r in runs],
            [r.contact_id for r in runs],
            [r.state for r in runs],
            [r.step for r in runs],
            [r.step_since for r in runs],
            [r.armed for r in runs],
            [r.due_at for r in runs],
            [r.trigger for r in runs],
            [json.dumps(r.seen) for r in runs],  # a list inside jsonb[] would read as an array dimension
            [r.entered_at for r in runs],
        )
        return {r["run_id"] for r in rows}

    async def update_runs(self, conn: asyncpg.Connection, runs: list[Run], now: datetime) -> None:
        if not runs:
            return
        await conn.execute(
            "UPDATE journey_runs r SET state = u.state, step = u.step, step_since = u.step_since, armed = u.armed,"
            " due_at = u.due_at, last_event = u.last_event, seen = u.seen::jsonb, sends = u.sends,"
            " exit_reason = u.exit_reason, ended_at = u.ended_at, updated_at = $12"
            " FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::bool[], $6::timestamptz[],"
            " $7::jsonb[], $8::text[], $9::int[], $10::text[], $11::timestamptz[])"
            " AS u(run_id, state, step, step_since, armed, due_at, last_event, seen, sends, exit_reason, ended_at)"
            " WHERE r.run_id = u.run_id",
            [r.run_id for r in runs],
            [r.state for r in runs],
            [r.step for r in runs],
            [r.step_since for r in runs],
            [r.armed for r in runs],
            [r.due_at for r in runs],
            [r.last_event for r in runs],
            [json.dumps(r.seen) for r in runs],
            [r.sends for r in runs],
            [r.exit_reason for r in runs],
            [r.ended_at for r in runs],
            now,
        )

    async def due_runs(self, conn: asyncpg.Connection, now: datetime, limit: int) -> list[Run]:
        """Due active runs, locked; another instance skips them (FOR UPDATE SKIP LOCKED)."""
        rows = await conn.fetch(
            f"SELECT {RUN_COLUMNS} FROM journey_runs WHERE state = 'active' AND due_at <= $1"
            " ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [_run(r) for r in rows]

    async def contacts(self, conn: asyncpg.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The contacts of these (tenant, phone) pairs, as the renderer and branches read them."""
        if not keys:
            return {}
        tenants, phones = zip(*keys, strict=True)
        rows = await conn.fetch(
            "SELECT c.tenant_id, c.phone_e164, c.contact_id, c.first_name, c.last_name, c.attributes, c.tags,"
            " c.language, c.country, c.time_zone, c.last_activity_at, c.consent_marketing, c.consent_transactional"
            " FROM shared_contacts c JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON c.tenant_id = k.t AND c.phone_e164 = k.p",
            list(tenants),
            list(phones),
        )
        out = {}
        for r in rows:
            contact = dict(r)
            contact["attributes"] = _json(contact["attributes"]) or {}
            contact["tags"] = list(contact["tags"] or [])
            if contact["last_activity_at"] is not None:
                contact["last_activity_at"] = contact["last_activity_at"].isoformat()
            out[(r["tenant_id"], r["phone_e164"])] = contact
        return out

    async def templates(self, conn: asyncpg.Connection, keys: set[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], Template]:
        if not keys:
            return {}
        tenants, ids = zip(*keys, strict=True)
        rows = await conn.fetch(
            "SELECT t.tenant_id, t.template_id, t.purpose, t.sender, t.default_language, t.variants FROM shared_templates t"
            " JOIN unnest($1::text[], $2::uuid[]) AS k(te, id) ON t.tenant_id = k.te AND t.template_id = k.id",
            list(tenants),
            list(ids),
        )
        return {
            (r["tenant_id"], r["template_id"]): Template(
                r["purpose"], r["default_language"], _json(r["variants"]), r["sender"]
            )
            for r in rows
        }
