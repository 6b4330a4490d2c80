"""Gathering a service's part of a subject-access export (docs/data-map.md).

Every service that holds numbers or texts registers a *gatherer*: a function that, inside the
read-only snapshot it is given, reads the number's rows from that service's own tables (one
query per table) and answers them by table. :class:`GatherHandler` is the service's
``<group>.subject-access`` lane: for each request it gathers, splits the rows into chunks under
the byte budget and publishes them to ``herald.subject-access.parts.v1``, where ingest stores
them. A redelivered request gathers again under a new attempt id; ingest uses one complete
attempt per service, so nothing is duplicated in the document.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg

from shared import metrics
from shared.contracts import (
    SubjectAccessPart,
    SubjectAccessPartEvent,
    SubjectAccessRequested,
    SubjectAccessRequestedEvent,
    derived_event_id,
)
from shared.kafka import Incoming, Outgoing
from shared.subject_access import Rows, chunk_tables
from shared.topics import SUBJECT_ACCESS_PARTS

Gatherer = Callable[[asyncpg.Connection, str, SubjectAccessRequested], Awaitable[Rows]]

DEFAULT_PART_BYTES = 256 * 1024

log = logging.getLogger("herald.subject_access")


async def gather(pool: asyncpg.Pool, service: str, tenant_id: str, request: SubjectAccessRequested,
                 gatherer: Gatherer) -> Rows:
    """The service's rows about the number, read in one repeatable-read, read-only snapshot."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await gatherer(conn, tenant_id, request)


def part_events(service: str, tenant_id: str, trace_id: str, request: SubjectAccessRequested, tables: Rows,
                max_bytes: int, attempt: uuid.UUID | None = None) -> list[Outgoing]:
    """The chunks of one gathering as events, keyed by the export (one partition: in order)."""
    attempt = attempt or uuid.uuid4()
    chunks = chunk_tables(tables, max_bytes)
    return [
        Outgoing(SUBJECT_ACCESS_PARTS, str(request.export_id), SubjectAccessPartEvent(
            event_id=derived_event_id("subject-access", request.export_id, service, attempt, i),
            tenant=tenant_id, trace_id=trace_id,
            payload=SubjectAccessPart(export_id=request.export_id, service=service, attempt=attempt, chunk=i,
                                      chunks=len(chunks), tables=chunk),
        ))
        for i, chunk in enumerate(chunks)
    ]


class GatherHandler:
    """The subject-access lane of a service: each request gathered and answered with its part."""

    def __init__(self, pool: asyncpg.Pool, service: str, gatherer: Gatherer, max_bytes: int = DEFAULT_PART_BYTES) -> None:
        self.pool = pool
        self.service = service
        self.gatherer = gatherer
        self.max_bytes = max_bytes

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        out: list[Outgoing] = []
        seen: set[Any] = set()
        for item in batch:
            event = cast(SubjectAccessRequestedEvent, item.event)
            request = event.payload
            if request.export_id in seen:
                continue
            seen.add(request.export_id)
            tables = await gather(self.pool, self.service, event.tenant, request, self.gatherer)
            events = part_events(self.service, event.tenant, event.trace_id, request, tables, self.max_bytes)
            out += events
            metrics.SUBJECT_ACCESS_PARTS.labels(self.service).inc()
            for table, table_rows in tables.items():
                metrics.SUBJECT_ACCESS_ROWS.labels(self.service, table).inc(len(table_rows))
            log.info("subject-access part gathered", extra={
                "export_id": str(request.export_id), "tenant": event.tenant, "service": self.service,
                "chunks": len(events), "counts": {t: len(r) for t, r in tables.items()}})
        return out
