"""The dispatcher's :class:`EventSink`: receipts and inbound messages from gateway binds go to Kafka."""

from __future__ import annotations

from shared.contracts import (
    SYSTEM_TENANT,
    DeliveryReceipt,
    DeliveryReceiptEvent,
    InboundMessage,
    InboundMessageEvent,
    derived_event_id,
)
from shared.kafka import Outgoing, Publisher
from shared.topics import INBOUND, RECEIPTS


class KafkaSink:
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def receipts(self, items: list[DeliveryReceipt]) -> None:
        await self.publisher.publish(
            [
                Outgoing(
                    RECEIPTS,
                    r.gateway_message_id,
                    DeliveryReceiptEvent(
                        event_id=derived_event_id(r.gateway, r.gateway_message_id, r.status, r.error_code),
                        tenant=SYSTEM_TENANT,
                        payload=r,
                    ),
                )
                for r in items
            ]
        )

    async def inbound(self, items: list[InboundMessage]) -> None:
        await self.publisher.publish(
            [
                Outgoing(
                    INBOUND,
                    m.sender,
                    InboundMessageEvent(
                        event_id=derived_event_id(m.gateway, m.gateway_message_id or "", m.sender, m.received_at.isoformat()),
                        tenant=SYSTEM_TENANT,
                        payload=m,
                    ),
                )
                for m in items
            ]
        )
