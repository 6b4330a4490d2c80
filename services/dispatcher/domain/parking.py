"""Parking: what happens to a message every gateway of its route keeps refusing.

When a batch's retry budget runs out on retriable refusals (connection refused, 503,
throttling), the message was never accepted by a gateway, so it is safe to send later. It is
parked (durable in PostgreSQL, its Kafka record committed) and resent when its route is
healthy again, with a backoff, until its deadline: the end of its validity (then ``expired``)
or a maximum age counted from its release for sending (then ``failed``,
``gateway_unavailable_max_age``). Time is passed in; no I/O here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.dispatcher.domain.retry import backoff
from shared.contracts import MessageOutbound

MAX_AGE_CODE = "gateway_unavailable_max_age"
EXPIRED_CODE = "validity_expired"


@dataclass(frozen=True)
class ParkingPolicy:
    max_age_s: Mapping[str, float]  # message type (transactional / marketing) -> seconds; 0: never park
    tenant_max_age_s: Mapping[str, float] = field(default_factory=dict)  # overrides the type's, any type
    retry_base_s: float = 15.0
    retry_cap_s: float = 300.0

    def max_age(self, tenant: str, message: MessageOutbound) -> float:
        if tenant in self.tenant_max_age_s:
            return self.tenant_max_age_s[tenant]
        return self.max_age_s.get(message.type.value, 0.0)


@dataclass(frozen=True)
class Park:
    retry_at: datetime
    deadline: datetime


@dataclass(frozen=True)
class End:
    state: str  # failed | expired
    reason_code: str
    reason: str


def deadline(policy: ParkingPolicy, tenant: str, message: MessageOutbound) -> datetime | None:
    """When a parked message stops waiting; None if it may not be parked at all."""
    max_age = policy.max_age(tenant, message)
    if max_age <= 0:
        return None
    limit = message.released_at + timedelta(seconds=max_age)
    if message.expires_at is not None and message.expires_at < limit:
        return message.expires_at
    return limit


def end_at(policy: ParkingPolicy, tenant: str, message: MessageOutbound, now: datetime) -> End | None:
    """The final state of a parked message whose deadline has passed (None: keep waiting)."""
    if message.expires_at is not None and now >= message.expires_at:
        return End("expired", EXPIRED_CODE, f"not sent: its validity ended at {message.expires_at.isoformat()}")
    max_age = policy.max_age(tenant, message)
    if now >= message.released_at + timedelta(seconds=max_age):
        return End("failed", MAX_AGE_CODE,
                   f"no gateway of its route accepted it within {max_age:.0f}s of its release"
                   f" (released {message.released_at.isoformat()})")
    return None


def on_refusal(
    policy: ParkingPolicy, tenant: str, message: MessageOutbound, rounds: int, now: datetime,
    rng: random.Random | None = None,
) -> Park | None:
    """A retriable refusal after the retry budget: park it (next try after ``rounds`` parks so
    far), or None when this message may not be parked (parking off for its tenant or type) or
    its deadline has already passed (it fails as before)."""
    until = deadline(policy, tenant, message)
    if until is None or now >= until:
        return None
    delay = backoff(rounds + 1, policy.retry_base_s, policy.retry_cap_s, rng)
    return Park(min(now + timedelta(seconds=delay), until), until)


def woken(previous: Mapping[str, str], current: Mapping[str, str]) -> set[str]:
    """Gateways whose circuit closed since the last look (open or half-open before): their
    parked messages should be tried now rather than at the end of their backoff."""
    return {g for g, state in current.items() if state == "closed" and previous.get(g, "closed") != "closed"}
