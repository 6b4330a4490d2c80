"""The scheduler's decisions, pure: one place that says release, defer or suppress, and why.

Each policy looks at a message and the facts loaded for its batch and may return a
:class:`Decision` that stops the message; the first one that does wins. Later policies
(consent, frequency caps, quiet hours) plug into ``POLICIES`` in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from shared.contracts import MessageAccepted
from shared.statuses import MessageType


class Verdict(StrEnum):
    RELEASE = "release"
    SUPPRESS = "suppress"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason_code: str | None = None
    reason: str | None = None


RELEASE = Decision(Verdict.RELEASE)


@dataclass(frozen=True)
class Facts:
    """What the scheduler loaded from PostgreSQL for one batch, keyed by (tenant, number)."""

    suppressions: Mapping[tuple[str, str], str] = field(default_factory=dict)  # → reason


Policy = Callable[[str, MessageAccepted, Facts, datetime], Decision | None]


def suppression_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """A marketing message never reaches a number on the tenant's suppression list."""
    if message.type is not MessageType.MARKETING:
        return None  # transactional messages (codes, receipts) are not marketing opt-outs
    reason = facts.suppressions.get((tenant, message.to))
    if reason is None:
        return None
    return Decision(Verdict.SUPPRESS, "suppressed", f"number is on the suppression list ({reason})")


POLICIES: tuple[Policy, ...] = (suppression_policy,)


def decide(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision:
    for policy in POLICIES:
        decision = policy(tenant, message, facts, now)
        if decision is not None:
            return decision
    return RELEASE
