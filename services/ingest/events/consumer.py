"""The ``contact-events.v1`` consumer: bad events go to the rejected topic with their reason."""

from __future__ import annotations

from services.ingest.domain import Rejection
from services.ingest.events.service import EventAccepted, EventAcceptor
from services.ingest.kafka_input import SignatureMode, by_known_tenant, reject
from services.ingest.repository import IngestRepository
from shared.contracts import ContactEventRequest, ContactEventRequestEvent, derived_event_id, utcnow
from shared.kafka import Incoming, Outgoing


class ContactEventsHandler:
    def __init__(self, acceptor: EventAcceptor, repository: IngestRepository, signatures: SignatureMode = "required") -> None:
        self.acceptor = acceptor
        self.repository = repository
        self.signatures = signatures

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        by_tenant, outgoing = await by_known_tenant(batch, self.repository, signatures=self.signatures)
        now = utcnow()
        for tenant, items in by_tenant.items():
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
                    outgoing.append(reject(item, result.code, result.message, result.details))
        return outgoing
