"""Which message led to a conversion? Pure: the contact's recent messages in, one out.

A contact event with a ``value`` (an order) is attributed to the last message to that
contact (by contact id or number) that a person clicked within the window before the
event; if none was clicked, to the last one delivered within the window; else to none.
Only messages sent before the event count, and bot clicks never count.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Attribution = Literal["click", "delivery", "none"]


@dataclass(frozen=True, slots=True)
class Candidate:
    message_id: uuid.UUID
    campaign_id: uuid.UUID | None
    variant: str | None
    journey_id: uuid.UUID | None
    clicked_at: datetime | None  # the latest human click on it before the event, if any
    delivered_at: datetime | None  # its delivery receipt's time, if delivered


@dataclass(frozen=True, slots=True)
class Verdict:
    attribution: Attribution
    message: Candidate | None


def attribute(occurred_at: datetime, window: timedelta, candidates: Iterable[Candidate]) -> Verdict:
    since = occurred_at - window
    candidates = list(candidates)
    clicked = [c for c in candidates if c.clicked_at is not None and since <= c.clicked_at <= occurred_at]
    if clicked:
        return Verdict("click", max(clicked, key=lambda c: (c.clicked_at, str(c.message_id))))
    delivered = [
        c for c in candidates if c.delivered_at is not None and since <= c.delivered_at <= occurred_at
    ]
    if delivered:
        return Verdict("delivery", max(delivered, key=lambda c: (c.delivered_at, str(c.message_id))))
    return Verdict("none", None)
