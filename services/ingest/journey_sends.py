"""The journey-sends lane: a journey's send steps accepted like any other message.

Consumes ``journeys.sends.v1`` (``{prefix}ingest.journey-sends``). The scheduler renders a send
step for its contact and publishes it with the message id the journey chose; this lane runs
the API's and the trigger topic's acceptance on it (:class:`services.ingest.service.Acceptor`:
sender registry, sender pools and sticky senders, geo permissions, short links, the sender's
throughput) and publishes ``messages.accepted`` with ``source: journey``. The message id is kept
under the idempotency key ``journey:<message id>``, so a send published or delivered again is
accepted once (published again with the same event id, which every consumer drops as seen).

A refused send goes to ``rejected.v1`` with the reason, as refused trigger input does, and gets
a ``failed`` status with the reason code, so the message's timeline (and its journey's) says why.
A disabled tenant's sends are accepted: the scheduler's gate suppresses them (``tenant_disabled``)
as it does every message of a disabled tenant.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from services.ingest import metrics
from services.ingest.domain import Rejection, parse_request
from services.ingest.kafka_input import reject
from services.ingest.repository import IngestRepository
from services.ingest.service import Accepted, Acceptor, failed_status
from shared.contracts import JourneySendRequested, MessageRequest, utcnow
from shared.kafka import Incoming, Outgoing
from shared.senders import SenderBook

log = logging.getLogger(__name__)
CONFLICT = "idempotency_conflict"
UNKNOWN_TENANT = "unknown_tenant"  # as the trigger topic's (services/ingest/kafka_input.py): rejected.v1 only


def idempotency_key(send: JourneySendRequested) -> str:
    """The key a journey send's message id is kept under: one acceptance per message id."""
    return f"journey:{send.message_id}"


def as_request(send: JourneySendRequested) -> MessageRequest | Rejection:
    """The message request a send step makes, validated as the API validates one (a sender
    that is no sender id, say, is refused with the API's reason)."""
    item: dict[str, Any] = {"to": send.to, "body": send.body, "type": send.type.value, "metadata": send.metadata}
    if send.sender is not None:
        item["sender"] = send.sender
    if send.sender_pool is not None:
        item["sender_pool"] = send.sender_pool
    try:
        return parse_request(item)
    except Rejection as rejection:
        return rejection


def stamp(send: JourneySendRequested) -> dict[str, Any]:
    """What the accepted message carries that a request cannot: its contact, journey, template."""
    out: dict[str, Any] = {"contact_id": send.contact_id, "journey_id": send.journey_id}
    if send.template_id is not None:
        out["template_id"] = send.template_id
    return out


def refused_status(tenant: str, send: JourneySendRequested, rejection: Rejection, trace_id: str) -> Outgoing:
    """The ``failed`` status of a refused journey send: its timeline shows the reason."""
    return failed_status(
        tenant, send.message_id, rejection, fact="journey-send-refused", occurred_at=send.requested_at,
        trace_id=trace_id, type=send.type,
        detail={"source": "journey", "journey_id": str(send.journey_id),
                **{k: v for k, v in send.metadata.items() if k in ("journey_step", "journey_run")}},
    )


class JourneySendsHandler:
    def __init__(self, acceptor: Acceptor, repository: IngestRepository) -> None:
        self.acceptor = acceptor
        self.repository = repository

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        by_tenant: dict[str, list[Incoming]] = defaultdict(list)
        for item in batch:
            by_tenant[item.event.tenant].append(item)
        # the tenants' geo permissions and sender registries: two queries for the batch
        policies = await self.repository.active_tenants(set(by_tenant), with_disabled=True)
        books = await self.repository.sender_books(set(policies)) if policies else {}
        outgoing: list[Outgoing] = []
        now = utcnow()
        for tenant, items in by_tenant.items():
            sends: list[JourneySendRequested] = [i.event.payload for i in items]
            trace_id = items[0].event.trace_id
            if tenant not in policies:  # the scheduler only sends for tenants that exist
                gone = Rejection(UNKNOWN_TENANT, f"tenant {tenant!r} does not exist")
                for item, send in zip(items, sends, strict=True):
                    outgoing += [reject(item, gone.code, gone.message), refused_status(tenant, send, gone, trace_id)]
                continue
            results, accepted = await self.acceptor.prepare(
                tenant, [as_request(s) for s in sends], source="journey", now=now, trace_id=trace_id,
                default_keys=[idempotency_key(s) for s in sends], message_ids=[s.message_id for s in sends],
                geo=policies[tenant], senders=books.get(tenant, SenderBook()), stamps=[stamp(s) for s in sends],
                rendered=True,
            )
            outgoing += accepted
            for item, send, result in zip(items, sends, results, strict=True):
                if isinstance(result, Rejection) and result.code == CONFLICT:
                    # accepted before with another text (the run re-advanced after its contact
                    # changed): the first acceptance stands; this is no refusal of the message
                    log.info("journey send accepted before with another text; the first stands",
                             extra={"message_id": str(send.message_id)})
                elif isinstance(result, Rejection):
                    metrics.REQUESTS_REJECTED.labels(result.code).inc()
                    outgoing += [reject(item, result.code, result.message, result.details),
                                 refused_status(tenant, send, result, item.event.trace_id)]
                elif isinstance(result, Accepted) and not result.duplicate:
                    metrics.MESSAGES_ACCEPTED.labels(result.message.type.value, "journey").inc()
        return outgoing
