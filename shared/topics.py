"""Every Kafka topic Herald uses, its key, its contract and who reads and writes it.

docs/topics.md is the readable catalogue of this table; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.contracts import (
    DeliveryReceiptEvent,
    Envelope,
    MessageAcceptedEvent,
    MessageOutboundEvent,
    MessageStatusEvent,
    RejectedEventEnvelope,
    TriggerEvent,
)


@dataclass(frozen=True)
class Topic:
    suffix: str
    model: type[Envelope]  # type: ignore[type-arg]
    key: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    description: str
    config: dict[str, str] = field(default_factory=dict)

    def name(self, prefix: str) -> str:
        return f"{prefix}{self.suffix}"


TRIGGERS = Topic(
    "triggers.v1",
    TriggerEvent,
    key="tenant + recipient (any key is accepted)",
    producers=("upstream systems",),
    consumers=("ingest",),
    description="Message requests published by upstream systems; same payload as POST /v1/messages.",
)
ACCEPTED = Topic(
    "messages.accepted.v1",
    MessageAcceptedEvent,
    key="recipient E.164 number",
    producers=("ingest",),
    consumers=("scheduler", "reports"),
    description="Validated messages with their id, encoding and segments.",
)
OUTBOUND = Topic(
    "messages.outbound.v1",
    MessageOutboundEvent,
    key="recipient E.164 number",
    producers=("scheduler",),
    consumers=("dispatcher",),
    description="Messages released for sending now.",
)
STATUS = Topic(
    "messages.status.v1",
    MessageStatusEvent,
    key="message id",
    producers=("scheduler", "dispatcher"),
    consumers=("reports",),
    description="Status changes: queued, suppressed, submitted, failed.",
)
RECEIPTS = Topic(
    "receipts.v1",
    DeliveryReceiptEvent,
    key="gateway message id",
    producers=("ingest",),
    consumers=("reports",),
    description="Delivery receipts from gateways, normalised.",
)
REJECTED = Topic(
    "rejected.v1",
    RejectedEventEnvelope,
    key="source topic",
    producers=("ingest", "scheduler", "dispatcher", "reports"),
    consumers=("operators (dead letters)",),
    description="Input that could not be accepted: the original payload and a machine-readable reason.",
    config={"retention.ms": str(14 * 24 * 3600 * 1000)},
)

ALL: tuple[Topic, ...] = (TRIGGERS, ACCEPTED, OUTBOUND, STATUS, RECEIPTS, REJECTED)
