"""Message statuses and the order they move in.

A status only moves forward: an event whose status ranks lower than the stored one is
kept in the timeline but does not change the message. The first final status wins.

``unknown`` is where a message ends when Herald cannot tell whether the gateway received it
(the answer to its submission was lost and the gateway cannot be asked). It is not ``failed``:
the SMS may well have gone out, so it must not be sent again. It ranks below ``submitted``, so
whatever is learnt later (the gateway's id from a lookup, a receipt) still moves it on.
"""

from __future__ import annotations

from enum import StrEnum


class MessageType(StrEnum):
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


class Status(StrEnum):
    ACCEPTED = "accepted"  # ingest validated it and published it
    SCHEDULED = "scheduled"  # the scheduler holds it until a later time (quiet hours, send_at)
    SUBMITTED = "submitted"  # a gateway took it and gave an id
    UNKNOWN = "unknown"  # sent, but whether the gateway received it cannot be determined (not resent)
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # the network could not deliver it (receipt)
    FAILED = "failed"  # Herald or the gateway refused it permanently
    SUPPRESSED = "suppressed"  # the scheduler refused it (opt-out, consent, caps)
    EXPIRED = "expired"  # its validity ran out before delivery


FINAL: frozenset[Status] = frozenset(
    {Status.DELIVERED, Status.UNDELIVERED, Status.FAILED, Status.SUPPRESSED, Status.EXPIRED}
)

# Where a message may end: the final statuses, and ``unknown`` (Herald does nothing more with
# it, yet a later answer from the gateway still moves it on).
SETTLED: frozenset[Status] = FINAL | {Status.UNKNOWN}

RANK: dict[Status, int] = {
    Status.ACCEPTED: 10,
    Status.SCHEDULED: 20,
    Status.UNKNOWN: 35,
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
