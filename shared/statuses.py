"""Message statuses and the order they move in.

A status only moves forward: an event whose status ranks lower than the stored one is
kept in the timeline but does not change the message. The first final status wins.
"""

from __future__ import annotations

from enum import StrEnum


class MessageType(StrEnum):
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


class Status(StrEnum):
    ACCEPTED = "accepted"  # ingest validated it and published it
    SCHEDULED = "scheduled"  # the scheduler holds it until a later time (quiet hours, send_at)
    QUEUED = "queued"  # the scheduler released it to the dispatcher
    SUBMITTED = "submitted"  # a gateway took it and gave an id
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # the network could not deliver it (receipt)
    FAILED = "failed"  # Herald or the gateway refused it permanently
    SUPPRESSED = "suppressed"  # the scheduler refused it (opt-out, consent, caps)
    REJECTED = "rejected"  # invalid input (Kafka triggers)
    EXPIRED = "expired"  # its validity ran out before delivery


FINAL: frozenset[Status] = frozenset(
    {Status.DELIVERED, Status.UNDELIVERED, Status.FAILED, Status.SUPPRESSED, Status.REJECTED, Status.EXPIRED}
)

RANK: dict[Status, int] = {
    Status.ACCEPTED: 10,
    Status.SCHEDULED: 20,
    Status.QUEUED: 30,
    Status.SUBMITTED: 40,
    **{status: 100 for status in FINAL},
}


def is_final(status: Status) -> bool:
    return status in FINAL


class ReceiptStatus(StrEnum):
    """What a gateway says happened, normalised (SMPP stat values map onto these)."""

    ENROUTE = "enroute"
    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DELETED = "deleted"
    UNKNOWN = "unknown"


RECEIPT_TO_STATUS: dict[ReceiptStatus, Status | None] = {
    ReceiptStatus.ENROUTE: None,  # informational, no status change
    ReceiptStatus.ACCEPTED: None,
    ReceiptStatus.UNKNOWN: None,
    ReceiptStatus.DELIVERED: Status.DELIVERED,
    ReceiptStatus.UNDELIVERED: Status.UNDELIVERED,
    ReceiptStatus.FAILED: Status.FAILED,
    ReceiptStatus.REJECTED: Status.FAILED,
    ReceiptStatus.DELETED: Status.FAILED,
    ReceiptStatus.EXPIRED: Status.EXPIRED,
}
