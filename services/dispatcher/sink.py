"""The dispatcher's :class:`EventSink`: receipts and inbound messages from gateway binds go to Kafka."""

from __future__ import annotations

from shared.contracts import DeliveryReceipt, InboundMessage
from shared.events import inbound_event, receipt_event
from shared.kafka import Publisher


class KafkaSink:
    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def receipts(self, items: list[DeliveryReceipt]) -> None:
        await self.publisher.publish([receipt_event(r) for r in items])

    async def inbound(self, items: list[InboundMessage]) -> None:
        await self.publisher.publish([inbound_event(m) for m in items])
