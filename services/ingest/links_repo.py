"""SQL for tracked links (table ``links``, migrations 0010 and 0031). One round trip per batch."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg

from services.ingest.links import LinkRecord, new_code

log = logging.getLogger(__name__)

# Insert-or-get on (message id, link index): a retried accept or a resumed campaign page draws new
# codes, the stored ones come back (the no-op update makes RETURNING give the existing row, even
# one a concurrent accept is inserting right now).
_STORE = """
INSERT INTO links (code, tenant_id, message_id, link_index, url, contact_id, campaign_id, variant, journey_id,
                   created_at, expires_at, domain)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::smallint[], $5::text[], $6::uuid[], $7::uuid[],
                     $8::text[], $9::uuid[], $10::timestamptz[], $11::timestamptz[], $12::text[])
ON CONFLICT (message_id, link_index) DO UPDATE SET link_index = links.link_index
RETURNING message_id, link_index, code
"""

# Links of messages a gateway took: they start answering. One statement per consumed batch.
_ACTIVATE = """
UPDATE links l SET activated_at = v.at
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(message_id, at)
WHERE l.message_id = v.message_id AND l.activated_at IS NULL
"""

_RESOLVE = (
    "SELECT code, tenant_id, message_id, link_index, url, contact_id, campaign_id, variant, journey_id, created_at,"
    " activated_at, expires_at, domain, taken_down_at FROM links WHERE code = $1"
)

CODE_ATTEMPTS = 3  # a drawn code equal to another message's (p ≈ n / 8.4e17) is drawn again


class LinksRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def store_many(
        self, links: Sequence[LinkRecord], conn: asyncpg.Connection | None = None
    ) -> dict[str, str]:
        """Insert every link in one statement. Returns drawn code → stored code for each link whose
        (message id, link index) was already stored (a retried accept, a duplicate in the batch):
        the caller puts the stored code in the body (``links.swap_codes``). Empty almost always."""
        if not links:
            return {}
        replaced: dict[str, str] = {}
        first: dict[tuple[uuid.UUID, int], LinkRecord] = {}
        for link in links:  # one row per (message, index): a duplicate in the batch takes the first's code
            kept = first.setdefault((link.message_id, link.index), link)
            if kept is not link:
                replaced[link.code] = kept.code
        rows = list(first.values())
        for attempt in range(CODE_ATTEMPTS):
            try:
                stored = await self._insert(rows, conn)
                break
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "links_pkey" or attempt == CODE_ATTEMPTS - 1:
                    raise
                log.warning("a drawn short-link code was taken; drawing the batch's codes again")
                redrawn = [replace(r, code=new_code()) for r in rows]
                for old, new in zip(rows, redrawn, strict=True):
                    replaced[old.code] = new.code
                rows = redrawn
        for row in rows:
            code = stored[(row.message_id, row.index)]
            if code != row.code:
                replaced[row.code] = code
        # a duplicate's code maps to the first's, which may itself have been drawn again, then stored
        final: dict[str, str] = {}
        for drawn, code in replaced.items():
            while code in replaced and replaced[code] != code:
                code = replaced[code]
            if code != drawn:
                final[drawn] = code
        return final

    async def _insert(self, links: Sequence[LinkRecord], conn: asyncpg.Connection | None
                      ) -> dict[tuple[uuid.UUID, int], str]:
        args: list[list[Any]] = [
            [x.code for x in links], [x.tenant_id for x in links], [x.message_id for x in links],
            [x.index for x in links], [x.url for x in links], [x.contact_id for x in links],
            [x.campaign_id for x in links], [x.variant for x in links], [x.journey_id for x in links],
            [x.created_at for x in links], [x.expires_at for x in links], [x.domain for x in links],
        ]
        rows = await (conn or self.pool).fetch(_STORE, *args)
        return {(r["message_id"], r["link_index"]): r["code"] for r in rows}

    async def activate(self, submitted: Mapping[uuid.UUID, datetime]) -> int:
        """Links of these messages (id → submission time) start answering; already active ones keep
        their time. Returns how many were activated."""
        if not submitted:
            return 0
        status = await self.pool.execute(_ACTIVATE, list(submitted), list(submitted.values()))
        return int(status.rsplit(" ", 1)[1])

    async def resolve(self, code: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(_RESOLVE, code)

    async def recent_takedowns(self, window_s: float) -> list[asyncpg.Record]:
        """Links taken down in the last ``window_s`` seconds (code, when)."""
        return await self.pool.fetch(
            "SELECT code, taken_down_at FROM links WHERE taken_down_at > now() - make_interval(secs => $1)"
            " ORDER BY taken_down_at LIMIT 100000",
            window_s,
        )

    async def tenant_policy(self, tenant_id: str) -> tuple[str | None, int | None]:
        """The tenant's own link domain and link lifetime in seconds (None: the defaults)."""
        row = await self.pool.fetchrow("SELECT link_domain, link_ttl_s FROM tenants WHERE tenant_id = $1", tenant_id)
        return (row["link_domain"], row["link_ttl_s"]) if row else (None, None)
