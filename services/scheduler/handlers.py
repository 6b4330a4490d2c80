"""The scheduler's batch handler: load facts once per batch, decide, emit events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from services.scheduler import metrics
from services.scheduler.domain import Facts, Verdict, decide
from shared.contracts import (
    MessageAccepted,
    MessageOutbound,
    MessageOutboundEvent,
    MessageStatusChanged,
    MessageStatusEvent,
    derived_event_id,
    utcnow,
)
from shared.kafka import Incoming, Outgoing
from shared.statuses import MessageType, Status
from shared.topics import OUTBOUND, OUTBOUND_BULK, STATUS


class FactsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load(self, keys: set[tuple[str, str]]) -> Facts:
        if not keys:
            return Facts()
        tenants, phones = zip(*keys, strict=True)
        rows = await self.pool.fetch(
            "SELECT s.tenant_id, s.phone_e164, s.reason FROM suppressions s"
            " JOIN unnest($1::text[], $2::text[]) AS k(t, p) ON s.tenant_id = k.t AND s.phone_e164 = k.p",
            list(tenants),
            list(phones),
        )
        return Facts(suppressions={(r["tenant_id"], r["phone_e164"]): r["reason"] for r in rows})


class AcceptedHandler:
    def __init__(self, facts: FactsRepository, clock: Callable[[], datetime] = utcnow) -> None:
        self.facts = facts
        self.clock = clock

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        now = self.clock()
        marketing = {
            (i.event.tenant, i.event.payload.to) for i in batch if i.event.payload.type is MessageType.MARKETING
        }
        facts = await self.facts.load(marketing)
        outgoing: list[Outgoing] = []
        for item in batch:
            tenant, trace, message = item.event.tenant, item.event.trace_id, item.event.payload
            assert isinstance(message, MessageAccepted)
            decision = decide(tenant, message, facts, now)
            metrics.DECISIONS.labels(decision.verdict.value, decision.reason_code or "", message.type.value).inc()
            if decision.verdict is Verdict.RELEASE:
                outbound = MessageOutbound(**message.model_dump(), released_at=now)
                event = MessageOutboundEvent(
                    event_id=derived_event_id(message.message_id, "outbound"),
                    tenant=tenant,
                    trace_id=trace,
                    payload=outbound,
                )
                lane = OUTBOUND_BULK if message.type is MessageType.MARKETING else OUTBOUND
                outgoing.append(Outgoing(lane, message.to, event))
            else:
                status = MessageStatusChanged(
                    message_id=message.message_id,
                    status=Status.SUPPRESSED,
                    reason_code=decision.reason_code,
                    reason=decision.reason,
                    type=message.type,
                    segments=message.segments,
                )
                event = MessageStatusEvent(
                    event_id=derived_event_id(message.message_id, Status.SUPPRESSED),
                    tenant=tenant,
                    trace_id=trace,
                    occurred_at=now,
                    payload=status,
                )
                outgoing.append(Outgoing(STATUS, str(message.message_id), event))
        return outgoing
