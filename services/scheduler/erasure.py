"""The scheduler's part of an erasure (herald.erasures.v1, docs/data-map.md).

It owns held messages (``scheduled_messages``: the accepted message, number and text), journey
runs (number, trigger and seen events) and marketing releases (number, for frequency caps).
One transaction: held messages to the number are deleted, and each ends ``suppressed`` with
reason code ``erased`` (published before the commit, so a crash re-applies rather than loses
it); the number's journey runs and releases are deleted.
"""

from __future__ import annotations

import asyncpg

from services.scheduler.domain import Decision, Verdict
from services.scheduler.handlers import _status
from shared.contracts import ErasureRequested, MessageAccepted, utcnow
from shared.erasure_store import Eraser, count
from shared.kafka import Publisher
from shared.statuses import Status

ERASED = Decision(Verdict.SUPPRESS, "erased", "the number was erased (POST /v1/erasures)")


def scheduler_eraser(publisher: Publisher) -> Eraser:
    async def erase(conn: asyncpg.Connection, tenant_id: str, e: ErasureRequested) -> dict[str, int]:
        held = await conn.fetch(
            "DELETE FROM scheduled_messages WHERE tenant_id = $1 AND accepted ->> 'to' = $2 RETURNING accepted, trace_id",
            tenant_id, e.phone,
        )
        now = utcnow()
        await publisher.publish([
            _status(tenant_id, r["trace_id"], MessageAccepted.model_validate(r["accepted"]), Status.SUPPRESSED, ERASED, now)
            for r in held
        ])
        runs = await conn.execute(
            "DELETE FROM journey_runs WHERE tenant_id = $1 AND (phone_e164 = $2 OR contact_id = $3)",
            tenant_id, e.phone, e.contact_id,
        )
        releases = await conn.execute(
            "DELETE FROM marketing_releases WHERE tenant_id = $1 AND phone_e164 = $2", tenant_id, e.phone
        )
        return {"scheduled_messages": len(held), "journey_runs": count(runs), "marketing_releases": count(releases)}

    return erase
