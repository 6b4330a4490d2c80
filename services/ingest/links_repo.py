"""SQL for tracked links (table ``links``, migration 0010). One round trip per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from services.ingest.links import LinkRecord

_STORE = """
INSERT INTO links (code, tenant_id, message_id, link_index, url, contact_id, campaign_id, variant, journey_id, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::smallint[], $5::text[], $6::uuid[], $7::uuid[],
                     $8::text[], $9::uuid[], $10::timestamptz[])
ON CONFLICT DO NOTHING
"""


class LinksRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def store_many(self, links: Sequence[LinkRecord], conn: asyncpg.Connection | None = None) -> None:
        """Insert every link in one statement; rows already there (a retried accept) are kept."""
        if not links:
            return
        args: list[list[Any]] = [
            [x.code for x in links], [x.tenant_id for x in links], [x.message_id for x in links],
            [x.index for x in links], [x.url for x in links], [x.contact_id for x in links],
            [x.campaign_id for x in links], [x.variant for x in links], [x.journey_id for x in links],
            [x.created_at for x in links],
        ]
        await (conn or self.pool).execute(_STORE, *args)

    async def resolve(self, code: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT code, tenant_id, message_id, link_index, url, contact_id, campaign_id, variant, journey_id,"
            " created_at FROM links WHERE code = $1",
            code,
        )
