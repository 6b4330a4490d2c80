"""The scheduler's batch handler and its timer: load facts once per batch, decide, emit.

A held message (send_at, quiet hours) goes into ``scheduled_messages``; the timer takes due
rows with FOR UPDATE SKIP LOCKED, decides again (the number may have opted out meanwhile,
or the time may fall into quiet hours), publishes, and only then commits the removal: a
crash in between releases the row again and the dispatcher's claim drops the duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime

import asyncpg

from services.scheduler import metrics
from services.scheduler.domain import Decision, Facts, Verdict, decide
from shared.contracts import (
    MessageAccepted,
    MessageOutbound,
    MessageOutboundEvent,
    MessageStatusChanged,
    MessageStatusEvent,
    derived_event_id,
    utcnow,
)
from shared.kafka import Incoming, Outgoing, Publisher
from shared.statuses import MessageType, Status
from shared.topics import OUTBOUND, OUTBOUND_BULK, STATUS

log = logging.getLogger(__name__)


class FactsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load(self, keys: set[tuple[str, str]], conn: asyncpg.Connection | None = None) -> Facts:
        if not keys:
            return Facts()
        tenants, phones = zip(*keys, strict=True)
        # Global opt-outs (via NULL), and scoped ones (docs/replies.md) keyed by every sender of that scope.
        rows = await (conn or self.pool).fetch(
            "SELECT s.tenant_id, s.phone_e164, NULL::text AS via, s.reason FROM suppressions s"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON s.tenant_id = k.t AND s.phone_e164 = k.p"
            " UNION ALL SELECT s.tenant_id, s.phone_e164, n.number, s.reason FROM scoped_suppressions s"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON s.tenant_id = k.t AND s.phone_e164 = k.p"
            " JOIN tenant_numbers n ON n.tenant_id = s.tenant_id AND n.scope = s.scope"
            # Erased contacts stay suppressed by a hash of tenant and number (docs/audience.md).
            " UNION ALL SELECT k.t, k.p, NULL, h.reason FROM unnest($1::text[], $2::text[]) AS k(t, p)"
            " JOIN suppression_hashes h ON h.tenant_id = k.t AND h.phone_hash ="
            " encode(sha256(convert_to('herald-erasure-v1:' || k.t || ':' || k.p, 'UTF8')), 'hex')",
            list(tenants),
            list(phones),
        )
        return Facts(
            suppressions={(r["tenant_id"], r["phone_e164"]): r["reason"] for r in rows if r["via"] is None},
            scoped_suppressions={(r["tenant_id"], r["phone_e164"], r["via"]): r["reason"] for r in rows if r["via"]},
        )

    async def hold(self, conn: asyncpg.Connection | asyncpg.Pool, rows: list[tuple[MessageAccepted, str, str, Decision]]) -> None:
        """Store held messages: (message, tenant, trace id, DEFER decision). A row already held stays."""
        if not rows:
            return
        await conn.execute(
            "INSERT INTO scheduled_messages (message_id, tenant_id, due_at, accepted, trace_id, reason_code)"
            " SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::jsonb[], $5::text[], $6::text[])"
            " ON CONFLICT (message_id) DO UPDATE SET due_at = excluded.due_at, reason_code = excluded.reason_code",
            [m.message_id for m, *_ in rows],
            [t for _, t, _, _ in rows],
            [d.due_at for *_, d in rows],
            [json.loads(m.model_dump_json()) for m, *_ in rows],
            [tr for _, _, tr, _ in rows],
            [d.reason_code for *_, d in rows],
        )


def _status(tenant: str, trace: str, message: MessageAccepted, status: Status, decision: Decision, now: datetime) -> Outgoing:
    payload = MessageStatusChanged(
        message_id=message.message_id,
        status=status,
        reason_code=decision.reason_code,
        reason=decision.reason,
        type=message.type,
        segments=message.segments,
        detail={**decision.detail, **({"due_at": decision.due_at.isoformat()} if decision.due_at else {})},
    )
    # Each hold is its own fact (a message may be held twice: send_at, then quiet hours).
    key = decision.due_at.isoformat() if decision.due_at else ""
    event = MessageStatusEvent(
        event_id=derived_event_id(message.message_id, status, key),
        tenant=tenant,
        trace_id=trace,
        occurred_at=now,
        payload=payload,
    )
    return Outgoing(STATUS, str(message.message_id), event)


def route(tenant: str, trace: str, message: MessageAccepted, decision: Decision, now: datetime,
          held: list[tuple[MessageAccepted, str, str, Decision]]) -> list[Outgoing]:
    """Events for one decision; DEFER also appends to ``held`` for the caller to store."""
    metrics.DECISIONS.labels(decision.verdict.value, decision.reason_code or "", message.type.value).inc()
    if decision.verdict is Verdict.RELEASE:
        outbound = MessageOutbound(**message.model_dump(), released_at=now)
        event = MessageOutboundEvent(
            event_id=derived_event_id(message.message_id, "outbound"), tenant=tenant, trace_id=trace, payload=outbound
        )
        lane = OUTBOUND_BULK if message.type is MessageType.MARKETING else OUTBOUND
        return [Outgoing(lane, message.to, event)]
    if decision.verdict is Verdict.DEFER:
        held.append((message, tenant, trace, decision))
        return [_status(tenant, trace, message, Status.SCHEDULED, decision, now)]
    return [_status(tenant, trace, message, Status.SUPPRESSED, decision, now)]


def _fact_keys(items: list[tuple[str, MessageAccepted]]) -> set[tuple[str, str]]:
    return {(tenant, m.to) for tenant, m in items if m.type is MessageType.MARKETING}


class AcceptedHandler:
    def __init__(self, facts: FactsRepository, clock: Callable[[], datetime] = utcnow) -> None:
        self.facts = facts
        self.clock = clock

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        now = self.clock()
        facts = await self.facts.load(_fact_keys([(i.event.tenant, i.event.payload) for i in batch]))
        outgoing: list[Outgoing] = []
        held: list[tuple[MessageAccepted, str, str, Decision]] = []
        for item in batch:
            message = item.event.payload
            assert isinstance(message, MessageAccepted)
            decision = decide(item.event.tenant, message, facts, now)
            outgoing += route(item.event.tenant, item.event.trace_id, message, decision, now, held)
        # Held rows are written before the events are published and the offsets committed.
        await self.facts.hold(self.facts.pool, held)
        metrics.HELD.inc(len(held))
        return outgoing


class Timer:
    """Releases held messages when due; any number of scheduler instances can run it."""

    def __init__(
        self,
        facts: FactsRepository,
        publisher: Publisher,
        interval_s: float,
        batch: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.facts = facts
        self.publisher = publisher
        self.interval_s = interval_s
        self.batch = batch
        self.clock = clock
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                while await self.release_due() >= self.batch and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("releasing due messages failed; retrying")
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def release_due(self) -> int:
        now = self.clock()
        async with self.facts.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT message_id, tenant_id, accepted, trace_id, due_at FROM scheduled_messages"
                " WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                self.batch,
            )
            if not rows:
                return 0
            items = [(r["tenant_id"], MessageAccepted.model_validate(r["accepted"])) for r in rows]
            facts = await self.facts.load(_fact_keys(items), conn)
            outgoing: list[Outgoing] = []
            held: list[tuple[MessageAccepted, str, str, Decision]] = []
            for row, (tenant, message) in zip(rows, items, strict=True):
                decision = decide(tenant, message, facts, now)
                outgoing += route(tenant, row["trace_id"], message, decision, now, held)
            released = [r["message_id"] for r in rows if r["message_id"] not in {m.message_id for m, *_ in held}]
            await conn.execute("DELETE FROM scheduled_messages WHERE message_id = ANY($1::uuid[])", released)
            await self.facts.hold(conn, held)  # held again (e.g. due in quiet hours): new due time
            await self.publisher.publish(outgoing)  # before commit: a crash re-releases, never loses
        lateness = max((now - r["due_at"]).total_seconds() for r in rows)
        metrics.RELEASE_LATENESS.observe(lateness)
        metrics.RELEASED.inc(len(released))
        return len(rows)
