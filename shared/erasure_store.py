"""Applying an erasure to one service's tables, once, with its audit row (docs/data-map.md).

Every service that holds numbers or texts registers an *eraser*: a function that, inside the
transaction it is given, deletes or redacts the number's rows in that service's own tables and
answers how many rows of each table it changed. :func:`apply_erasure` runs it in one
transaction together with the service's ``erasure_audit`` row (who, when, tenant, the keyed
hash, counts per table; never the number). The audit row is inserted first: when it exists
already the erasure was applied before (a redelivered event), and nothing else is done.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg

from shared import metrics
from shared.contracts import ErasureRequested, ErasureRequestedEvent
from shared.kafka import Incoming, Outgoing

Eraser = Callable[[asyncpg.Connection, str, ErasureRequested], Awaitable[dict[str, int]]]

log = logging.getLogger("herald.erasure")


def count(status: str) -> int:
    """Rows changed, from asyncpg's command tag ("DELETE 3", "UPDATE 1")."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def apply_erasure(conn: asyncpg.Connection, service: str, tenant_id: str, erasure: ErasureRequested,
                        eraser: Eraser) -> dict[str, int] | None:
    """Apply ``erasure`` with ``eraser`` in one transaction; None when it was applied before."""
    async with conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO erasure_audit (erasure_id, service, tenant_id, phone_hash, requested_by, requested_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (erasure_id, service) DO NOTHING RETURNING true",
            erasure.erasure_id, service, tenant_id, erasure.phone_hash, erasure.requested_by, erasure.requested_at,
        )
        if not fresh:
            return None
        counts = await eraser(conn, tenant_id, erasure)
        await conn.execute(
            "UPDATE erasure_audit SET counts = $3, applied_at = now() WHERE erasure_id = $1 AND service = $2",
            erasure.erasure_id, service, dict(sorted(counts.items())),
        )
    metrics.ERASURES.labels(service).inc()
    for table, rows in counts.items():
        metrics.ERASED_ROWS.labels(service, table).inc(rows)
    log.info("erasure applied", extra={"erasure_id": str(erasure.erasure_id), "tenant": tenant_id,
                                        "service": service, "counts": counts})
    return counts


class ErasureHandler:
    """The erasures lane of a service: each event applied once, one transaction per event
    (erasures are rare; each must stand or fall on its own)."""

    def __init__(self, pool: asyncpg.Pool, service: str, eraser: Eraser) -> None:
        self.pool = pool
        self.service = service
        self.eraser = eraser

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        seen: set[Any] = set()
        for item in batch:
            event = cast(ErasureRequestedEvent, item.event)
            if event.payload.erasure_id in seen:
                continue
            seen.add(event.payload.erasure_id)
            async with self.pool.acquire() as conn:
                await apply_erasure(conn, self.service, event.tenant, event.payload, self.eraser)
        return []
