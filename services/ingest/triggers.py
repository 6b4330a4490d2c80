"""The trigger-topic consumer: upstream systems publish message requests to Kafka."""

from __future__ import annotations

from services.ingest import metrics
from services.ingest.domain import Rejection
from services.ingest.kafka_input import SignatureMode, by_known_tenant, reject
from services.ingest.repository import IngestRepository
from services.ingest.service import Accepted, Acceptor
from shared.contracts import MessageRequest, TriggerEvent, utcnow
from shared.geo import GeoPolicy
from shared.kafka import Incoming, Outgoing
from shared.senders import SenderBook


class TriggerHandler:
    def __init__(self, acceptor: Acceptor, repository: IngestRepository, signatures: SignatureMode = "required") -> None:
        self.acceptor = acceptor
        self.repository = repository
        self.signatures = signatures

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        policies: dict[str, GeoPolicy] = {}
        by_tenant, outgoing = await by_known_tenant(batch, self.repository, policies, self.signatures)
        now = utcnow()
        # the batch's tenants' sender registries: one query for the batch
        books = await self.repository.sender_books(set(by_tenant)) if by_tenant else {}
        for tenant, items in by_tenant.items():
            events: list[TriggerEvent] = [i.event for i in items]  # type: ignore[misc]
            requests: list[MessageRequest | Rejection] = [e.payload for e in events]
            # Each trigger is its own idempotency scope: a redelivered event never sends twice.
            defaults: list[str | None] = [f"event:{e.event_id}" for e in events]
            results, accepted = await self.acceptor.prepare(
                tenant, requests, source="kafka", now=now, trace_id=events[0].trace_id, default_keys=defaults,
                geo=policies[tenant], senders=books.get(tenant, SenderBook()),
            )
            outgoing += accepted
            for item, result in zip(items, results, strict=True):
                if isinstance(result, Rejection):
                    metrics.REQUESTS_REJECTED.labels(result.code).inc()
                    outgoing.append(reject(item, result.code, result.message, result.details))
                elif isinstance(result, Accepted):
                    metrics.MESSAGES_ACCEPTED.labels(result.message.type.value, "kafka").inc()
        return outgoing
