"""Builders for the events and messages tests construct over and over.

Each builder fills the fields a test does not care about with plain, valid values and takes any
field of the contract as a keyword, so a test names only what it is about:
``accepted(type="marketing", accepted_at=T0)``. Defaults: a Spanish mobile number, body "x"
(one GSM-7 segment), a transactional API message accepted now, tenant "acme"; every builder gives
a fresh message id unless one is passed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.contracts import (
    ContactEventAccepted,
    ContactEventAcceptedEvent,
    DeliveryReceipt,
    DeliveryReceiptEvent,
    InboundMessage,
    InboundMessageEvent,
    MessageAccepted,
    MessageAcceptedEvent,
    MessageOutbound,
    MessageOutboundEvent,
    MessageStatusChanged,
    MessageStatusEvent,
    utcnow,
)
from shared.statuses import ReceiptStatus, Status

PHONE = "+34600000001"
TENANT = "acme"


def _message_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_id": uuid.uuid4(), "to": PHONE, "country": "ES", "body": "x", "type": "transactional",
        "encoding": "GSM-7", "segments": 1, "source": "api", "accepted_at": utcnow(), **fields,
    }


def accepted(**fields: Any) -> MessageAccepted:
    """A MessageAccepted: ``accepted(type="marketing", campaign_id=cid)``."""
    return MessageAccepted(**_message_fields(fields))


def outbound(**fields: Any) -> MessageOutbound:
    """A MessageOutbound, released when it was accepted unless ``released_at`` says otherwise."""
    values = _message_fields(fields)
    values.setdefault("released_at", values["accepted_at"])
    return MessageOutbound(**values)


def status(message_id: uuid.UUID | None = None, status: Status = Status.SUBMITTED, **fields: Any) -> MessageStatusChanged:
    """A MessageStatusChanged (submitted unless ``status`` says otherwise)."""
    return MessageStatusChanged(message_id=message_id or uuid.uuid4(), status=status, **fields)


def receipt(status: ReceiptStatus = ReceiptStatus.DELIVERED, gateway: str = "sim", gateway_message_id: str = "g1",
            **fields: Any) -> DeliveryReceipt:
    """A DeliveryReceipt for gateway ``sim``'s message ``g1`` (delivered unless ``status`` says otherwise)."""
    return DeliveryReceipt(gateway=gateway, gateway_message_id=gateway_message_id, status=status, **fields)


def inbound(body: str, sender: str = PHONE, recipient: str = "Herald", *, gateway: str = "sim",
            received_at: datetime | None = None, **fields: Any) -> InboundMessage:
    """An InboundMessage: ``body`` sent by the handset ``sender`` to our ``recipient``."""
    return InboundMessage(gateway=gateway, sender=sender, recipient=recipient, body=body,
                          received_at=received_at or utcnow(), **fields)


def accepted_event(message: MessageAccepted | None = None, tenant: str = TENANT, **envelope: Any) -> MessageAcceptedEvent:
    """The event around ``message`` (``accepted()`` when none)."""
    return MessageAcceptedEvent(tenant=tenant, payload=message or accepted(), **envelope)


def outbound_event(message: MessageOutbound | None = None, tenant: str = TENANT, **envelope: Any) -> MessageOutboundEvent:
    """The event around ``message`` (``outbound()`` when none)."""
    return MessageOutboundEvent(tenant=tenant, payload=message or outbound(), **envelope)


def status_event(change: MessageStatusChanged | None = None, tenant: str = TENANT, **envelope: Any) -> MessageStatusEvent:
    """The event around ``change`` (``status()`` when none)."""
    return MessageStatusEvent(tenant=tenant, payload=change or status(), **envelope)


def receipt_event(r: DeliveryReceipt | None = None, tenant: str = TENANT, **envelope: Any) -> DeliveryReceiptEvent:
    """The event around ``r`` (``receipt()`` when none)."""
    return DeliveryReceiptEvent(tenant=tenant, payload=r or receipt(), **envelope)


def inbound_event(message: InboundMessage, tenant: str = TENANT, **envelope: Any) -> InboundMessageEvent:
    """The event around ``message``."""
    return InboundMessageEvent(tenant=tenant, payload=message, **envelope)


def contact_event(name: str, phone: str = PHONE, *, at: datetime | None = None, **fields: Any) -> ContactEventAccepted:
    """A ContactEventAccepted named ``name`` for ``phone``, occurred and received ``at`` (now when none)."""
    now = at or utcnow()
    values: dict[str, Any] = {"event_id": uuid.uuid4(), "occurred_at": now, "received_at": now, "source": "api", **fields}
    return ContactEventAccepted(name=name, phone=phone, **values)


def contact_event_event(event: ContactEventAccepted, tenant: str = TENANT, **envelope: Any) -> ContactEventAcceptedEvent:
    """The event around ``event``."""
    return ContactEventAcceptedEvent(tenant=tenant, payload=event, **envelope)
