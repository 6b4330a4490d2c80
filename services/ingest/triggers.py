"""The trigger-topic consumer: upstream systems publish message requests to Kafka."""

from __future__ import annotations

from collections import defaultdict

from services.ingest import metrics
from services.ingest.domain import Rejection
from services.ingest.repository import IngestRepository
from services.ingest.service import Accepted, Acceptor
from shared.contracts import MessageRequest, TriggerEvent, utcnow
from shared.kafka import Incoming, Outgoing, rejection


class TriggerHandler:
    def __init__(self, acceptor: Acceptor, repository: IngestRepository) -> None:
        self.acceptor = acceptor
        self.repository = repository

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        by_tenant: dict[str, list[Incoming]] = defaultdict(list)
        for item in batch:
            by_tenant[item.event.tenant].append(item)
        known = await self.repository.active_tenants(set(by_tenant))
        outgoing: list[Outgoing] = []
        now = utcnow()
        for tenant, items in by_tenant.items():
            if tenant not in known:
                outgoing += [self._reject(i, "unknown_tenant", f"tenant {tenant!r} does not exist or is disabled") for i in items]
                continue
            events: list[TriggerEvent] = [i.event for i in items]  # type: ignore[misc]
            requests: list[MessageRequest | Rejection] = [e.payload for e in events]
            # Each trigger is its own idempotency scope: a redelivered event never sends twice.
            defaults: list[str | None] = [f"event:{e.event_id}" for e in events]
            results, accepted = await self.acceptor.prepare(
                tenant, requests, source="kafka", now=now, trace_id=events[0].trace_id, default_keys=defaults
            )
            outgoing += accepted
            for item, result in zip(items, results, strict=True):
                if isinstance(result, Rejection):
                    metrics.REQUESTS_REJECTED.labels(result.code).inc()
                    outgoing.append(self._reject(item, result.code, result.message, result.details))
                elif isinstance(result, Accepted):
                    metrics.MESSAGES_ACCEPTED.labels(result.message.type.value, "kafka").inc()
        return outgoing

    @staticmethod
    def _reject(item: Incoming, code: str, reason: str, details: list[dict[str, str]] | None = None) -> Outgoing:
        r = item.record
        return rejection(
            r.topic,
            code,
            reason,
            r.value,
            tenant=item.event.tenant,
            errors=[{k: str(v) for k, v in d.items()} for d in details or []],
            key=r.key,
            partition=r.partition,
            offset=r.offset,
            trace_id=item.event.trace_id,
        )
