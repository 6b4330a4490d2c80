"""The ``contact-events.v1`` consumer: bad events go to the rejected topic with their reason."""

from __future__ import annotations

from collections import defaultdict

from services.ingest.domain import Rejection
from services.ingest.events.service import EventAccepted, EventAcceptor
from services.ingest.repository import IngestRepository
from shared.contracts import ContactEventRequest, ContactEventRequestEvent, derived_event_id, utcnow
from shared.kafka import Incoming, Outgoing, rejection


class ContactEventsHandler:
    def __init__(self, acceptor: EventAcceptor, repository: IngestRepository) -> None:
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
                outgoing += [_reject(i, "unknown_tenant", f"tenant {tenant!r} does not exist or is disabled") for i in items]
                continue
            envelopes: list[ContactEventRequestEvent] = [i.event for i in items]  # type: ignore[misc]
            requests: list[ContactEventRequest | Rejection] = [e.payload for e in envelopes]
            # Without an event_key, the envelope's id names the event: a redelivery keeps it.
            fallback = [derived_event_id("contact-event", tenant, "envelope", e.event_id) for e in envelopes]
            results, accepted = await self.acceptor.prepare(
                tenant, requests, source="kafka", now=now, trace_id=envelopes[0].trace_id, fallback_ids=fallback
            )
            outgoing += accepted
            for item, result in zip(items, results, strict=True):
                if not isinstance(result, EventAccepted):
                    outgoing.append(_reject(item, result.code, result.message, result.details))
        return outgoing


def _reject(item: Incoming, code: str, reason: str, details: list[dict[str, str]] | None = None) -> Outgoing:
    r = item.record
    return rejection(
        r.topic, code, reason, r.value,
        tenant=item.event.tenant,
        errors=[{k: str(v) for k, v in d.items()} for d in details or []],
        key=r.key, partition=r.partition, offset=r.offset, trace_id=item.event.trace_id,
    )
