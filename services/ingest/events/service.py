"""Contact events in: one validation path for HTTP and the ``contact-events.v1`` topic."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from services.ingest.domain import Rejection
from services.ingest.events.domain import KnownContact, accept_event, normalise_phone
from shared.contracts import ContactEventAccepted, ContactEventAcceptedEvent, ContactEventRequest
from shared.kafka import Outgoing
from shared.topics import CONTACT_EVENTS


@dataclass(frozen=True, slots=True)
class EventAccepted:
    event: ContactEventAccepted


EventResult = EventAccepted | Rejection


class ContactsLookup:
    """The SQL: contacts by id and by number (tenant-scoped), and their last activity."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def find(
        self, tenant: str, ids: set[uuid.UUID], phones: set[str]
    ) -> tuple[dict[uuid.UUID, KnownContact], dict[str, KnownContact]]:
        if not ids and not phones:
            return {}, {}
        rows = await self.pool.fetch(
            "SELECT contact_id, phone_e164 FROM contacts WHERE tenant_id = $1"
            " AND (contact_id = ANY($2::uuid[]) OR phone_e164 = ANY($3::text[]))",
            tenant,
            list(ids),
            list(phones),
        )
        found = [KnownContact(r["contact_id"], r["phone_e164"]) for r in rows]
        return {c.contact_id: c for c in found if c.contact_id in ids}, {c.phone: c for c in found if c.phone in phones}

    async def touch(self, tenant: str, activity: dict[uuid.UUID, datetime]) -> None:
        """last_activity_at moves forward only (events may arrive out of order), one statement."""
        if not activity:
            return
        await self.pool.execute(
            "UPDATE contacts c SET last_activity_at = greatest(c.last_activity_at, u.at)"
            " FROM unnest($2::uuid[], $3::timestamptz[]) AS u(id, at)"
            " WHERE c.tenant_id = $1 AND c.contact_id = u.id"
            " AND (c.last_activity_at IS NULL OR c.last_activity_at < u.at)",
            tenant,
            list(activity),
            list(activity.values()),
        )


def accepted_event(tenant: str, event: ContactEventAccepted, trace_id: str) -> Outgoing:
    envelope = ContactEventAcceptedEvent(
        event_id=event.event_id, occurred_at=event.received_at, tenant=tenant, trace_id=trace_id, payload=event
    )
    return Outgoing(CONTACT_EVENTS, event.phone, envelope)


class EventAcceptor:
    def __init__(self, contacts: ContactsLookup) -> None:
        self.contacts = contacts

    async def prepare(
        self,
        tenant: str,
        requests: list[ContactEventRequest | Rejection],
        *,
        source: Literal["api", "kafka"],
        now: datetime,
        trace_id: str,
        fallback_ids: list[uuid.UUID] | None = None,
    ) -> tuple[list[EventResult], list[Outgoing]]:
        """Validate and resolve a batch (two queries whatever its size); events to publish in order.

        ``fallback_ids``: the id of an event without ``event_key`` (the trigger consumer
        derives it from the envelope, so a redelivered record keeps its id).
        """
        phones: list[str | None | Rejection] = []
        for request in requests:
            if isinstance(request, Rejection):
                phones.append(request)
                continue
            try:
                phones.append(normalise_phone(request))
            except Rejection as rejection:
                phones.append(rejection)
        ids = {r.contact_id for r in requests if isinstance(r, ContactEventRequest) and r.contact_id is not None}
        by_id, by_phone = await self.contacts.find(tenant, ids, {p for p in phones if isinstance(p, str)})
        results: list[EventResult] = []
        outgoing: list[Outgoing] = []
        activity: dict[uuid.UUID, datetime] = {}
        for index, (request, phone) in enumerate(zip(requests, phones, strict=True)):
            if isinstance(phone, Rejection):
                results.append(phone)
                continue
            assert isinstance(request, ContactEventRequest)
            try:
                event = accept_event(
                    request,
                    tenant=tenant,
                    phone=phone,
                    by_id=by_id.get(request.contact_id) if request.contact_id else None,
                    by_phone=by_phone.get(phone) if phone else None,
                    fallback_id=fallback_ids[index] if fallback_ids else uuid.uuid4(),
                    now=now,
                    source=source,
                )
            except Rejection as rejection:
                results.append(rejection)
                continue
            results.append(EventAccepted(event))
            outgoing.append(accepted_event(tenant, event, trace_id))
            if event.contact_id is not None:
                activity[event.contact_id] = max(activity.get(event.contact_id, event.occurred_at), event.occurred_at)
        await self.contacts.touch(tenant, activity)
        return results, outgoing
