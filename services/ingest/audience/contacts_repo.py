"""The audience's SQL: contacts, consent, erasure, segments, templates.

Batch calls are one round trip per batch (``unnest``). Besides ingest's API, a campaign
launch streams a segment's audience with :meth:`AudienceRepository.iter_audience` (keyset
pages on the primary key, one short query per page, resumable from a contact id). The
scheduler reads consent and suppressions with its own batch query
(``services/scheduler/handlers.py``, ``FactsRepository``), not through this module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.ingest.audience.importer import BIT, TAG_SEPARATOR, ContactInput
from services.ingest.audience.segments import Node, compile_sql
from shared.consent import becomes_current
from shared.erasure import NO_KEYS, ErasureKeys

PURPOSES = ("marketing", "transactional")
_CONSENT_COLUMNS = {p: (f"consent_{p}", f"consent_{p}_at") for p in PURPOSES}  # SQL names from a fixed table

CONTACT_COLUMNS = (
    "contact_id, phone_e164, first_name, last_name, attributes, tags, language, country, time_zone, last_activity_at,"
    " consent_marketing, consent_marketing_at, consent_transactional, consent_transactional_at, created_at, updated_at"
)


def contact_dict(r: Mapping[str, Any]) -> dict[str, Any]:
    """A contact row as the API shows it."""
    return {
        "contact_id": str(r["contact_id"]),
        "phone": r["phone_e164"],
        "first_name": r["first_name"],
        "last_name": r["last_name"],
        "attributes": r["attributes"],
        "tags": list(r["tags"]),
        "language": r["language"],
        "country": r["country"],
        "time_zone": r["time_zone"],
        "last_activity_at": _iso(r["last_activity_at"]),
        "consent": {
            "marketing": r["consent_marketing"],
            "marketing_at": _iso(r["consent_marketing_at"]),
            "transactional": r["consent_transactional"],
            "transactional_at": _iso(r["consent_transactional_at"]),
        },
        "created_at": _iso(r["created_at"]),
        "updated_at": _iso(r["updated_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True, slots=True)
class AudienceMember:
    """One contact of a campaign's audience: what rendering and sending need."""

    contact_id: uuid.UUID
    phone: str
    first_name: str | None
    last_name: str | None
    language: str | None
    country: str
    time_zone: str | None
    attributes: dict[str, Any]
    consent_marketing: bool | None

    def template_fields(self) -> dict[str, Any]:
        return {
            "first_name": self.first_name,
            "last_name": self.last_name,
            "language": self.language,
            "country": self.country,
            "time_zone": self.time_zone,
            "attributes": self.attributes,
        }


_UPSERT = f"""
WITH input AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::timestamptz[], $11::int[], $12::text[])
        AS i(phone, first_name, last_name, attributes, tags, language, country, time_zone, last_activity_at, mask, phone_country)
), upd AS (
    UPDATE contacts c SET
        first_name = CASE WHEN i.mask & {BIT['first_name']} <> 0 THEN i.first_name ELSE c.first_name END,
        last_name = CASE WHEN i.mask & {BIT['last_name']} <> 0 THEN i.last_name ELSE c.last_name END,
        attributes = CASE WHEN i.mask & {BIT['attributes']} <> 0
                          THEN jsonb_strip_nulls(c.attributes || coalesce(i.attributes::jsonb, '{{}}')) ELSE c.attributes END,
        tags = CASE WHEN i.mask & {BIT['tags']} <> 0 THEN coalesce(string_to_array(i.tags, chr(31)), '{{}}') ELSE c.tags END,
        language = CASE WHEN i.mask & {BIT['language']} <> 0 THEN i.language ELSE c.language END,
        country = CASE WHEN i.mask & {BIT['country']} <> 0 THEN coalesce(i.country, i.phone_country) ELSE c.country END,
        time_zone = CASE WHEN i.mask & {BIT['time_zone']} <> 0 THEN i.time_zone ELSE c.time_zone END,
        last_activity_at = CASE WHEN i.mask & {BIT['last_activity_at']} <> 0 THEN i.last_activity_at ELSE c.last_activity_at END,
        updated_at = now()
    FROM input i
    WHERE c.tenant_id = $1 AND c.phone_e164 = i.phone
    RETURNING c.phone_e164
), ins AS (
    INSERT INTO contacts (tenant_id, phone_e164, first_name, last_name, attributes, tags, language, country, time_zone, last_activity_at)
    SELECT $1, i.phone, i.first_name, i.last_name, jsonb_strip_nulls(coalesce(i.attributes::jsonb, '{{}}')),
           coalesce(string_to_array(i.tags, chr(31)), '{{}}'), i.language, coalesce(i.country, i.phone_country),
           i.time_zone, i.last_activity_at
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.phone_e164 = i.phone)
    ON CONFLICT (tenant_id, phone_e164) DO NOTHING
    RETURNING phone_e164
)
SELECT 'updated' AS kind, phone_e164 FROM upd
UNION ALL
SELECT 'created', phone_e164 FROM ins
"""

class ContactExists(Exception):
    def __init__(self, contact_id: uuid.UUID | None) -> None:
        super().__init__("a contact with this phone number exists")
        self.contact_id = contact_id


class AudienceRepository:
    """``keys``: the erasure keys erased numbers' hashes are checked with (shared/erasure.py)."""

    def __init__(self, pool: asyncpg.Pool, keys: ErasureKeys = NO_KEYS) -> None:
        self.pool = pool
        self.keys = keys

    # contacts ---------------------------------------------------------------------------------

    async def upsert_contacts(self, tenant_id: str, rows: Sequence[ContactInput]) -> tuple[int, int]:
        """Insert or update contacts by phone (each phone once per call); answer (created, updated).

        Only the fields a row gives are written; attributes are merged (null removes a key).
        A row inserted by another transaction between our update and our insert is updated
        on a second pass; a deadlock with another import retries the batch.
        """
        pending = list(rows)
        created = updated = 0
        for attempt in range(4):
            if not pending:
                break
            try:
                records = await self.pool.fetch(_UPSERT, tenant_id, *_columns(pending))
            except asyncpg.DeadlockDetectedError:  # two imports updating the same numbers: the batch is idempotent
                if attempt == 3:
                    raise
                continue
            done = {r["phone_e164"] for r in records}
            created += sum(r["kind"] == "created" for r in records)
            updated += sum(r["kind"] == "updated" for r in records)
            pending = [row for row in pending if row.phone not in done]
        if pending:
            raise RuntimeError("contacts kept changing under a concurrent import; retry")
        return created, updated

    async def create_contact(self, tenant_id: str, row: ContactInput) -> dict[str, Any]:
        v = row.values
        record = await self.pool.fetchrow(
            f"INSERT INTO contacts (tenant_id, phone_e164, first_name, last_name, attributes, tags, language, country,"
            f" time_zone, last_activity_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            f" ON CONFLICT (tenant_id, phone_e164) DO NOTHING RETURNING {CONTACT_COLUMNS}",
            tenant_id,
            row.phone,
            v.get("first_name"),
            v.get("last_name"),
            {k: x for k, x in (v.get("attributes") or {}).items() if x is not None},
            v.get("tags") or [],
            v.get("language"),
            v.get("country") or row.country_of_phone,
            v.get("time_zone"),
            v.get("last_activity_at"),
        )
        if record is None:
            raise ContactExists(await self.contact_id_for(tenant_id, row.phone or ""))
        return contact_dict(record)

    async def contact_id_for(self, tenant_id: str, phone: str) -> uuid.UUID | None:
        return await self.pool.fetchval(
            "SELECT contact_id FROM contacts WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, phone
        )

    async def get_contact(self, tenant_id: str, contact_id: uuid.UUID) -> dict[str, Any] | None:
        record = await self.pool.fetchrow(
            f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1 AND contact_id = $2", tenant_id, contact_id
        )
        return contact_dict(record) if record else None

    async def update_contact(self, tenant_id: str, contact_id: uuid.UUID, row: ContactInput) -> dict[str, Any] | None:
        """Change the given fields. A new phone brings its country unless one is given; a country
        set to null is the phone's (``row.country_of_phone``, which the caller fills in)."""
        v = row.values
        mask = row.mask
        attributes = v.get("attributes")
        tags = v.get("tags")
        try:
            record = await self.pool.fetchrow(
                f"""
                UPDATE contacts c SET
                    phone_e164 = coalesce($3, c.phone_e164),
                    first_name = CASE WHEN $4::int & {BIT['first_name']} <> 0 THEN $5 ELSE c.first_name END,
                    last_name = CASE WHEN $4::int & {BIT['last_name']} <> 0 THEN $6 ELSE c.last_name END,
                    attributes = CASE WHEN $4::int & {BIT['attributes']} <> 0
                                      THEN jsonb_strip_nulls(c.attributes || coalesce($7::jsonb, '{{}}')) ELSE c.attributes END,
                    tags = CASE WHEN $4::int & {BIT['tags']} <> 0 THEN coalesce($8::text[], '{{}}') ELSE c.tags END,
                    language = CASE WHEN $4::int & {BIT['language']} <> 0 THEN $9 ELSE c.language END,
                    country = CASE WHEN $4::int & {BIT['country']} <> 0 THEN coalesce($10, $13, c.country)
                                   WHEN $3 IS NOT NULL THEN $13 ELSE c.country END,
                    time_zone = CASE WHEN $4::int & {BIT['time_zone']} <> 0 THEN $11 ELSE c.time_zone END,
                    last_activity_at = CASE WHEN $4::int & {BIT['last_activity_at']} <> 0 THEN $12 ELSE c.last_activity_at END,
                    updated_at = now()
                WHERE c.tenant_id = $1 AND c.contact_id = $2
                RETURNING {CONTACT_COLUMNS}
                """,
                tenant_id,
                contact_id,
                row.phone,
                mask,
                v.get("first_name"),
                v.get("last_name"),
                attributes,
                tags,
                v.get("language"),
                v.get("country"),
                v.get("time_zone"),
                v.get("last_activity_at"),
                row.country_of_phone,
            )
        except asyncpg.UniqueViolationError:
            raise ContactExists(await self.contact_id_for(tenant_id, row.phone or "")) from None
        return contact_dict(record) if record else None

    async def list_contacts(
        self, tenant_id: str, *, after: uuid.UUID | None, limit: int, phone: str | None = None
    ) -> list[dict[str, Any]]:
        """A page in contact id order, after ``after`` (keyset paging)."""
        records = await self.pool.fetch(
            f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1"
            " AND ($2::uuid IS NULL OR contact_id > $2) AND ($3::text IS NULL OR phone_e164 = $3)"
            " ORDER BY contact_id LIMIT $4",
            tenant_id,
            after,
            phone,
            limit,
        )
        return [contact_dict(r) for r in records]

    # consent ----------------------------------------------------------------------------------

    async def record_consent(
        self,
        tenant_id: str,
        contact_id: uuid.UUID,
        *,
        purpose: str,
        granted: bool,
        source: str,
        occurred_at: datetime,
        proof: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Append a consent record; make it current unless a newer one exists. None: no such contact.

        A current marketing revocation puts the number on the suppression list in the same
        transaction (the scheduler's gate stops marketing at once). A current marketing grant
        lifts the number's suppressions (clear or erased-hash) made before the grant.
        """
        state_col, at_col = _CONSENT_COLUMNS[purpose]
        async with self.pool.acquire() as conn, conn.transaction():
            contact = await conn.fetchrow(
                f"SELECT phone_e164, {at_col} AS current_at FROM contacts"
                " WHERE tenant_id = $1 AND contact_id = $2 FOR UPDATE",
                tenant_id,
                contact_id,
            )
            if contact is None:
                return None
            record = await conn.fetchrow(
                "INSERT INTO contact_consents (tenant_id, contact_id, purpose, granted, source, occurred_at, proof)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " RETURNING consent_id, purpose, granted, source, occurred_at, recorded_at, proof",
                tenant_id,
                contact_id,
                purpose,
                granted,
                source,
                occurred_at,
                proof,
            )
            current = becomes_current(occurred_at, contact["current_at"])
            if current:
                await conn.execute(
                    f"UPDATE contacts SET {state_col} = $3, {at_col} = $4, updated_at = now()"
                    " WHERE tenant_id = $1 AND contact_id = $2",
                    tenant_id,
                    contact_id,
                    granted,
                    occurred_at,
                )
                phone = contact["phone_e164"]
                if purpose == "marketing" and not granted:
                    await conn.execute(
                        "INSERT INTO suppressions (tenant_id, phone_e164, reason, source) VALUES ($1, $2, 'opt_out', $3)"
                        " ON CONFLICT (tenant_id, phone_e164) DO NOTHING",
                        tenant_id,
                        phone,
                        f"consent:{source}"[:64],
                    )
                elif purpose == "marketing":
                    await conn.execute(
                        "DELETE FROM suppressions WHERE tenant_id = $1 AND phone_e164 = $2 AND created_at <= $3",
                        tenant_id,
                        phone,
                        occurred_at,
                    )
                    await conn.execute(
                        "DELETE FROM suppression_hashes WHERE tenant_id = $1 AND phone_hash = ANY($2::text[]) AND created_at <= $3",
                        tenant_id,
                        self.keys.candidates(tenant_id, phone),
                        occurred_at,
                    )
        return _consent_dict(record) | {"current": current}

    async def consent_history(self, tenant_id: str, contact_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
        records = await self.pool.fetch(
            "SELECT consent_id, purpose, granted, source, occurred_at, recorded_at, proof FROM contact_consents"
            " WHERE tenant_id = $1 AND contact_id = $2 ORDER BY consent_id DESC LIMIT $3",
            tenant_id,
            contact_id,
            limit,
        )
        return [_consent_dict(r) for r in records]

    # segments -------------------------------------------------------------------------------

    async def preview(self, tenant_id: str, node: Node, sample: int = 10, timeout_ms: int = 10_000) -> tuple[int, list[dict[str, Any]]]:
        """How many contacts match, and the first ``sample`` of them, within ``timeout_ms``.

        Two queries: a count (index-only when the indexes allow) and a short sample in key
        order. One query with ``count(*) OVER ()`` would build every matching row in full:
        ten times slower on a million contacts.
        """
        compiled = compile_sql(node, first_param=2, keys=self.keys)
        where = f"FROM contacts c WHERE c.tenant_id = $1 AND {compiled.sql}"
        async with self.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            count = await conn.fetchval(f"SELECT count(*) {where}", tenant_id, *compiled.params)
            records = await conn.fetch(
                f"SELECT {CONTACT_COLUMNS} {where} ORDER BY c.contact_id LIMIT {int(sample)}", tenant_id, *compiled.params
            )
        return count, [contact_dict(r) for r in records]

    async def iter_audience(
        self, tenant_id: str, node: Node, *, batch_size: int = 1000, after: uuid.UUID | None = None,
        timeout_ms: int = 30_000,
    ) -> AsyncIterator[list[AudienceMember]]:
        """The contacts matching ``node``, in contact id order, a page at a time.

        Each page is one query (no transaction held between pages), so a campaign can stop
        after any page and resume later with ``after`` = the last contact id it handled.
        Contacts added while it runs are included when their id sorts after the cursor. Each
        page's query runs in a short transaction with ``statement_timeout`` = ``timeout_ms``.
        """
        compiled = compile_sql(node, first_param=4, keys=self.keys)
        query = (
            "SELECT contact_id, phone_e164, first_name, last_name, language, country, time_zone, attributes, consent_marketing"
            f" FROM contacts c WHERE c.tenant_id = $1 AND c.contact_id > $2 AND {compiled.sql}"
            " ORDER BY c.contact_id LIMIT $3"
        )
        cursor = after or uuid.UUID(int=0)
        while True:
            async with self.pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
                records = await conn.fetch(query, tenant_id, cursor, batch_size, *compiled.params)
            if not records:
                return
            yield [
                AudienceMember(
                    r["contact_id"], r["phone_e164"], r["first_name"], r["last_name"], r["language"], r["country"],
                    r["time_zone"], r["attributes"], r["consent_marketing"],
                )
                for r in records
            ]
            if len(records) < batch_size:
                return
            cursor = records[-1]["contact_id"]

    async def create_segment(self, tenant_id: str, name: str, text: str, normalized: str) -> dict[str, Any] | None:
        record = await self.pool.fetchrow(
            "INSERT INTO segments (tenant_id, name, filter, normalized) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, name) DO NOTHING RETURNING segment_id, name, filter, normalized, created_at, updated_at",
            tenant_id,
            name,
            text,
            normalized,
        )
        return _segment_dict(record) if record else None

    async def get_segment(self, tenant_id: str, segment_id: uuid.UUID) -> dict[str, Any] | None:
        record = await self.pool.fetchrow(
            "SELECT segment_id, name, filter, normalized, created_at, updated_at FROM segments"
            " WHERE tenant_id = $1 AND segment_id = $2",
            tenant_id,
            segment_id,
        )
        return _segment_dict(record) if record else None

    async def list_segments(self, tenant_id: str, *, after: uuid.UUID | None, limit: int) -> list[dict[str, Any]]:
        records = await self.pool.fetch(
            "SELECT segment_id, name, filter, normalized, created_at, updated_at FROM segments"
            " WHERE tenant_id = $1 AND ($2::uuid IS NULL OR segment_id > $2) ORDER BY segment_id LIMIT $3",
            tenant_id,
            after,
            limit,
        )
        return [_segment_dict(r) for r in records]

    # templates ------------------------------------------------------------------------------

    async def create_template(self, tenant_id: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Version 1 of a new template (None: the name is taken)."""
        record = await self.pool.fetchrow(
            f"WITH t AS (INSERT INTO templates (tenant_id, name, purpose, sender, default_language, variants, dlt_template_id)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, name) DO NOTHING RETURNING *),"
            f" v AS (INSERT INTO template_versions (tenant_id, template_id, version, name, purpose, sender, default_language,"
            f" variants, created_at, dlt_template_id) SELECT tenant_id, template_id, version, name, purpose, sender,"
            f" default_language, variants, created_at, dlt_template_id FROM t)"
            f" SELECT {_TEMPLATE_COLUMNS} FROM t",
            tenant_id,
            body["name"],
            body["purpose"],
            body.get("sender"),
            body["default_language"],
            dict(body["variants"]),
            body.get("dlt_template_id"),
        )
        return _template_dict(record) if record else None

    async def update_template(
        self, tenant_id: str, template_id: uuid.UUID, body: Mapping[str, Any], expected: int | None = None
    ) -> dict[str, Any] | None:
        """Write the next version (None: no such template). Raises :class:`TemplateArchived`,
        :class:`TemplateVersionConflict` (``expected`` is not the current version) and
        :class:`TemplateNameTaken`."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT version, archived_at FROM templates WHERE tenant_id = $1 AND template_id = $2 FOR UPDATE",
                tenant_id, template_id,
            )
            if current is None:
                return None
            if current["archived_at"] is not None:
                raise TemplateArchived()
            if expected is not None and expected != current["version"]:
                raise TemplateVersionConflict(current["version"])
            try:
                record = await conn.fetchrow(
                    f"UPDATE templates SET name = $3, purpose = $4, sender = $5, default_language = $6, variants = $7,"
                    f" dlt_template_id = $8, version = version + 1, updated_at = now()"
                    f" WHERE tenant_id = $1 AND template_id = $2 RETURNING {_TEMPLATE_COLUMNS}",
                    tenant_id, template_id, body["name"], body["purpose"], body.get("sender"), body["default_language"],
                    dict(body["variants"]), body.get("dlt_template_id"),
                )
            except asyncpg.UniqueViolationError:
                raise TemplateNameTaken() from None
            await conn.execute(
                "INSERT INTO template_versions (tenant_id, template_id, version, name, purpose, sender, default_language,"
                " variants, created_at, dlt_template_id) SELECT tenant_id, template_id, version, name, purpose, sender,"
                " default_language, variants, updated_at, dlt_template_id FROM templates WHERE tenant_id = $1 AND template_id = $2",
                tenant_id, template_id,
            )
        return _template_dict(record)

    async def archive_template(self, tenant_id: str, template_id: uuid.UUID) -> dict[str, Any] | None:
        """Archive the template (again: unchanged). None: no such template."""
        record = await self.pool.fetchrow(
            f"UPDATE templates SET archived_at = coalesce(archived_at, now()) WHERE tenant_id = $1 AND template_id = $2"
            f" RETURNING {_TEMPLATE_COLUMNS}",
            tenant_id, template_id,
        )
        return _template_dict(record) if record else None

    async def get_template(self, tenant_id: str, template_id: uuid.UUID, version: int | None = None) -> dict[str, Any] | None:
        """The template (``version``: as it was at that version; its ``archived_at`` is the template's)."""
        if version is None:
            record = await self.pool.fetchrow(
                f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE tenant_id = $1 AND template_id = $2", tenant_id, template_id
            )
        else:
            record = await self.pool.fetchrow(
                "SELECT v.template_id, v.version, v.name, v.purpose, v.sender, v.default_language, v.variants,"
                " v.dlt_template_id, t.created_at, v.created_at AS updated_at, t.archived_at"
                " FROM template_versions v JOIN templates t USING (tenant_id, template_id)"
                " WHERE v.tenant_id = $1 AND v.template_id = $2 AND v.version = $3",
                tenant_id, template_id, version,
            )
        return _template_dict(record) if record else None

    async def template_versions(self, tenant_id: str, template_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]] | None:
        """The template's versions, newest first (None: no such template)."""
        records = await self.pool.fetch(
            "SELECT v.version, v.name, v.purpose, v.sender, v.default_language, v.variants, v.dlt_template_id, v.created_at"
            " FROM templates t LEFT JOIN template_versions v USING (tenant_id, template_id)"
            " WHERE t.tenant_id = $1 AND t.template_id = $2 ORDER BY v.version DESC LIMIT $3",
            tenant_id, template_id, limit,
        )
        if not records:
            return None
        return [
            {"version": r["version"], "name": r["name"], "purpose": r["purpose"], "sender": r["sender"],
             "default_language": r["default_language"], "variants": r["variants"],
             "dlt_template_id": r["dlt_template_id"], "created_at": _iso(r["created_at"])}
            for r in records if r["version"] is not None
        ]

    async def list_templates(
        self, tenant_id: str, *, after: uuid.UUID | None, limit: int, archived: bool | None = None
    ) -> list[dict[str, Any]]:
        records = await self.pool.fetch(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE tenant_id = $1 AND ($2::uuid IS NULL OR template_id > $2)"
            " AND ($4::bool IS NULL OR (archived_at IS NOT NULL) = $4)"
            " ORDER BY template_id LIMIT $3",
            tenant_id,
            after,
            limit,
            archived,
        )
        return [_template_dict(r) for r in records]


class TemplateArchived(Exception):
    pass


class TemplateNameTaken(Exception):
    pass


class TemplateVersionConflict(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"the template is at version {current}")
        self.current = current


_TEMPLATE_COLUMNS = (
    "template_id, version, name, purpose, sender, default_language, variants, dlt_template_id, created_at, updated_at,"
    " archived_at"
)


def _columns(rows: Sequence[ContactInput]) -> list[list[Any]]:
    """The upsert's parameter arrays, one per column, in _UPSERT's order."""
    cols: list[list[Any]] = [[] for _ in range(11)]
    for row in rows:
        v = row.values
        tags = v.get("tags")
        attributes = v.get("attributes")
        for i, value in enumerate(
            (
                row.phone,
                v.get("first_name"),
                v.get("last_name"),
                json.dumps(attributes) if attributes is not None else None,
                TAG_SEPARATOR.join(tags) if tags is not None else None,
                v.get("language"),
                v.get("country"),
                v.get("time_zone"),
                v.get("last_activity_at"),
                row.mask,
                row.country_of_phone,
            )
        ):
            cols[i].append(value)
    return cols


def _consent_dict(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "consent_id": r["consent_id"],
        "purpose": r["purpose"],
        "granted": r["granted"],
        "source": r["source"],
        "occurred_at": _iso(r["occurred_at"]),
        "recorded_at": _iso(r["recorded_at"]),
        "proof": r["proof"],
    }


def _segment_dict(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "segment_id": str(r["segment_id"]),
        "name": r["name"],
        "filter": r["filter"],
        "normalized": r["normalized"],
        "created_at": _iso(r["created_at"]),
        "updated_at": _iso(r["updated_at"]),
    }


def _template_dict(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "template_id": str(r["template_id"]),
        "name": r["name"],
        "purpose": r["purpose"],
        "sender": r["sender"],
        "default_language": r["default_language"],
        "variants": r["variants"],
        "dlt_template_id": r["dlt_template_id"],
        "version": r["version"],
        "archived": r["archived_at"] is not None,
        "archived_at": _iso(r["archived_at"]),
        "created_at": _iso(r["created_at"]),
        "updated_at": _iso(r["updated_at"]),
    }
