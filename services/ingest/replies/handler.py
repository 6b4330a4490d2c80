"""The replies lane: inbound messages (MO) → tenant, consent change, confirmation, forward.

Consumes ``inbound.v1`` in its own consumer group. For each inbound message:

1. the tenant is the owner of the number it was sent to (``tenant_numbers``); an unknown
   number goes to the rejected topic (``unknown_recipient_number``), so nothing is lost;
2. STOP / START / HELP (keywords.py, with the tenant's own additions) change consent at once
   (global, or one scope) and send a confirmation as a *transactional* message through
   ``Acceptor.prepare``: never held by quiet hours, never suppressed; its idempotency key
   ``reply:<inbound event id>`` means a redelivered MO never sends two confirmations;
3. any other reply is forwarded on ``replies.v1`` with the latest messages of the conversation
   and the tenant's reply webhook URL, if it has one (reports posts it there, signed).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client import Counter

from services.ingest import metrics as ingest_metrics
from services.ingest.domain import Rejection
from services.ingest.replies.keywords import Match, classify, reply_language, reply_text
from services.ingest.replies.repository import RepliesRepository, TenantNumber, number_candidates
from services.ingest.service import Accepted, Acceptor
from shared.contracts import (
    ConversationEntry,
    InboundMessageEvent,
    MessageRequest,
    ReplyForwarded,
    ReplyForwardedEvent,
    derived_event_id,
    utcnow,
)
from shared.kafka import Incoming, Outgoing, rejection
from shared.phones import PhoneError, parse_e164
from shared.statuses import MessageType
from shared.topics import REPLIES

log = logging.getLogger("herald.ingest.replies")
REPLIES_HANDLED = Counter(
    "herald_ingest_replies_total", "Inbound replies handled, by outcome", ["outcome"]
)
_SENDER_OK = re.compile(r"^(\+?[0-9]{3,15}|[A-Za-z0-9 ._-]{1,11})$")


@dataclass(frozen=True, slots=True)
class _Confirmation:
    item: Incoming
    request: MessageRequest


def opt_scope(match: Match, number_scope: str | None, tenant_scopes: set[str]) -> str | None:
    """Which list a STOP/START changes: None (global) or one scope.

    STOPALL / "STOP ALL" → global; "STOP <scope>" (a scope of this tenant) → that scope;
    otherwise the scope of the number it was sent to, if it has one, else global.
    """
    if match.everything:
        return None
    if match.argument and match.argument.lower() in tenant_scopes:
        return match.argument.lower()
    return number_scope


class RepliesHandler:
    def __init__(self, acceptor: Acceptor, repository: RepliesRepository, conversation_size: int = 10) -> None:
        self.acceptor = acceptor
        self.repository = repository
        self.conversation_size = conversation_size

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        events: list[tuple[Incoming, InboundMessageEvent]] = [(i, i.event) for i in batch]  # type: ignore[misc]
        numbers = await self.repository.numbers({e.payload.recipient for _, e in events})
        outgoing: list[Outgoing] = []
        resolved: list[tuple[Incoming, InboundMessageEvent, TenantNumber, str]] = []
        for item, event in events:
            owner = next((numbers[c] for c in number_candidates(event.payload.recipient) if c in numbers), None)
            if owner is None:
                REPLIES_HANDLED.labels("unknown_recipient_number").inc()
                outgoing.append(_reject(item, "unknown_recipient_number",
                                        f"no tenant owns the number {event.payload.recipient!r}"))
                continue
            phone = _handset(event.payload.sender)
            if phone is None:
                REPLIES_HANDLED.labels("invalid_sender_number").inc()
                outgoing.append(_reject(item, "invalid_sender_number",
                                        "the sender is not a valid E.164 number", tenant=owner.tenant_id))
                continue
            resolved.append((item, event, owner, phone))
        if not resolved:
            return outgoing
        tenants = {owner.tenant_id for _, _, owner, _ in resolved}
        keywords, scopes = await self.repository.keywords_and_scopes(tenants)
        languages = await self.repository.contact_languages({(o.tenant_id, p) for _, _, o, p in resolved})
        confirmations: dict[str, list[_Confirmation]] = defaultdict(list)
        # In order: a STOP then a START from the same number in one batch end subscribed.
        for item, event, owner, phone in resolved:
            message = event.payload
            match = classify(message.body, keywords.get(owner.tenant_id))
            group = match.group if match else None
            scope = opt_scope(match, owner.scope, scopes.get(owner.tenant_id, set())) if match else None
            await self.repository.apply(
                event_id=event.event_id,
                tenant_id=owner.tenant_id,
                phone=phone,
                recipient=owner.number,
                scope=owner.scope,
                body=message.body,
                group=group,
                opt_scope=scope if group in ("stop", "start") else None,
                received_at=message.received_at,
                proof={"inbound_event_id": str(event.event_id), "keyword": match.keyword if match else None,
                       "body": message.body[:160], "recipient": owner.number, "gateway": message.gateway},
            )
            if match is None:
                REPLIES_HANDLED.labels("forwarded").inc()
                outgoing.append(await self._forward(event, owner, phone))
                continue
            REPLIES_HANDLED.labels(match.group).inc()
            language = reply_language(match, languages.get((owner.tenant_id, phone)))
            name = owner.tenant_name + (f" ({scope})" if scope and match.group != "help" else "")
            request = MessageRequest(
                to=phone,
                body=reply_text(match.group, language, name),
                sender=owner.number if _SENDER_OK.match(owner.number) else None,
                type=MessageType.TRANSACTIONAL,
                idempotency_key=f"reply:{event.event_id}",
                metadata={"inbound_event_id": str(event.event_id), "reply_to": match.group, "language": language},
            )
            confirmations[owner.tenant_id].append(_Confirmation(item, request))
        now = utcnow()
        for tenant, items in confirmations.items():
            results, accepted = await self.acceptor.prepare(
                tenant, [c.request for c in items], source="kafka", now=now, trace_id=items[0].item.event.trace_id
            )
            outgoing += accepted
            for confirmation, result in zip(items, results, strict=True):
                if isinstance(result, Rejection):  # e.g. a number type the tenant cannot send to
                    log.warning("confirmation not sent: %s", result.code)
                    outgoing.append(_reject(confirmation.item, f"confirmation_{result.code}", result.message,
                                            tenant=tenant))
                elif isinstance(result, Accepted) and not result.duplicate:
                    ingest_metrics.MESSAGES_ACCEPTED.labels(result.message.type.value, "kafka").inc()
        return outgoing

    async def _forward(self, event: InboundMessageEvent, owner: TenantNumber, phone: str) -> Outgoing:
        message = event.payload
        rows = await self.repository.conversation(owner.tenant_id, phone, self.conversation_size + 1)
        entries = [ConversationEntry(**r) for r in rows if r["inbound_event_id"] != event.event_id]
        payload = ReplyForwarded(
            inbound_event_id=event.event_id,
            gateway=message.gateway,
            gateway_message_id=message.gateway_message_id,
            phone=phone,
            recipient=owner.number,
            scope=owner.scope,
            body=message.body,
            received_at=message.received_at,
            conversation=entries[: self.conversation_size],
            webhook_url=owner.reply_webhook_url,
        )
        forwarded = ReplyForwardedEvent(
            event_id=derived_event_id("reply.forwarded", event.event_id),
            tenant=owner.tenant_id,
            trace_id=event.trace_id,
            payload=payload,
        )
        return Outgoing(REPLIES, phone, forwarded)


def _handset(sender: str) -> str | None:
    raw = "".join(sender.split())
    candidate = raw if raw.startswith("+") else f"+{raw}"
    try:
        return parse_e164(candidate, allowed_types=None).e164
    except PhoneError:
        return None


def _reject(item: Incoming, code: str, reason: str, *, tenant: str | None = None) -> Outgoing:
    r = item.record
    return rejection(
        r.topic, code, reason, r.value, tenant=tenant or item.event.tenant,
        key=r.key, partition=r.partition, offset=r.offset, trace_id=item.event.trace_id,
    )
