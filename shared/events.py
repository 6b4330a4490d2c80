"""Events built the same way wherever they come from (HTTP callbacks, SMPP binds).

The ids are derived from the facts, so the same receipt or incoming message published twice
(a gateway retrying its callback, an SMSC redelivering a deliver_sm) is one event downstream.
"""

from __future__ import annotations

from shared.contracts import (
    SYSTEM_TENANT,
    DeliveryReceipt,
    DeliveryReceiptEvent,
    InboundMessage,
    InboundMessageEvent,
    derived_event_id,
)
from shared.kafka import Outgoing
from shared.topics import INBOUND, RECEIPTS


def receipt_event(receipt: DeliveryReceipt, trace_id: str | None = None) -> Outgoing:
    event = DeliveryReceiptEvent(
        event_id=derived_event_id(
            receipt.gateway, receipt.gateway_message_id, receipt.status, receipt.error_code,
            *((receipt.fingerprint,) if receipt.fingerprint else ()),
        ),
        tenant=SYSTEM_TENANT,
        payload=receipt,
        **({"trace_id": trace_id} if trace_id else {}),
    )
    return Outgoing(RECEIPTS, receipt.gateway_message_id, event)


def inbound_event(message: InboundMessage, trace_id: str | None = None) -> Outgoing:
    fact = (message.gateway_message_id,) if message.gateway_message_id else (message.sender, message.received_at.isoformat())
    event = InboundMessageEvent(
        event_id=derived_event_id(message.gateway, "inbound", *fact),
        tenant=SYSTEM_TENANT,
        payload=message,
        **({"trace_id": trace_id} if trace_id else {}),
    )
    return Outgoing(INBOUND, message.sender, event)
