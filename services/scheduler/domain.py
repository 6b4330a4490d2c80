"""The scheduler's decisions, pure: one place that says release, defer or suppress, and why.

Each policy looks at a message and the facts loaded for its batch and may return a
:class:`Decision` that stops or holds the message; the first one that does wins. The order
is the order of precedence: an opted-out number is suppressed before any timing question;
a message scheduled for later is held until then, and quiet hours are judged at the moment
it would go out. Consent and frequency caps plug into ``POLICIES`` in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from services.scheduler.quiet_hours import MessageFacts, NoAllowedTimeError, RuleBook, evaluate, load_rules
from shared.contracts import MessageAccepted
from shared.statuses import MessageType


class Verdict(StrEnum):
    RELEASE = "release"
    DEFER = "defer"  # hold until ``due_at``, then decide again
    SUPPRESS = "suppress"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason_code: str | None = None
    reason: str | None = None
    due_at: datetime | None = None  # DEFER: when to decide again (UTC)
    detail: Mapping[str, str] = field(default_factory=dict)


RELEASE = Decision(Verdict.RELEASE)


@dataclass(frozen=True)
class Facts:
    """What the scheduler loaded from PostgreSQL for one batch, keyed by (tenant, number)."""

    suppressions: Mapping[tuple[str, str], str] = field(default_factory=dict)  # → reason
    # (tenant, number, sender) → reason: opted out of the scope (brand) that sender belongs to
    scoped_suppressions: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    contact_zones: Mapping[tuple[str, str], str] = field(default_factory=dict)  # → IANA zone
    quiet_overrides: Mapping[str, Any] = field(default_factory=dict)  # tenant → TenantOverrides


Policy = Callable[[str, MessageAccepted, Facts, datetime], Decision | None]


def suppression_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """A marketing message never reaches a number on the tenant's suppression list."""
    if message.type is not MessageType.MARKETING:
        return None  # transactional messages (codes, receipts) are not marketing opt-outs
    reason = facts.suppressions.get((tenant, message.to))
    if reason is None:
        scoped = facts.scoped_suppressions.get((tenant, message.to, message.sender or ""))
        if scoped is None:
            return None
        return Decision(Verdict.SUPPRESS, "suppressed", f"number opted out of this sender's scope ({scoped})")
    return Decision(Verdict.SUPPRESS, "suppressed", f"number is on the suppression list ({reason})")


def scheduled_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """A message with ``send_at`` in the future waits for it."""
    if message.send_at is None or message.send_at <= now:
        return None
    due = message.send_at
    return Decision(Verdict.DEFER, "scheduled", f"scheduled for {due.isoformat()}", due, {"send_at": due.isoformat()})


@lru_cache(maxsize=1)
def rulebook() -> RuleBook:
    return load_rules()


# Quiet-hour answers depend on the number only through the longest prefix phonenumbers has
# time-zone data for (plus the area code in the North American plan, which gives the US
# state) and, since every rule edge falls on a whole minute, on the time only through the
# minute. A campaign repeats those keys a lot.
_QUIET_CACHE: dict[tuple[object, ...], Any] = {}
_QUIET_CACHE_MAX = 100_000


def zone_prefix(e164: str) -> str:
    digits = e164.lstrip("+")
    for length in range(min(TIMEZONE_LONGEST_PREFIX, len(digits)), 0, -1):
        if digits[:length] in TIMEZONE_DATA:
            prefix = digits[:length]
            break
    else:
        prefix = ""
    return digits[:4] + "|" + prefix if digits.startswith("1") else prefix


def _quiet_decision(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Any:
    contact_zone = facts.contact_zones.get((tenant, message.to))
    overrides = facts.quiet_overrides.get(tenant)
    key = (message.country, zone_prefix(message.to), contact_zone, now.replace(second=0, microsecond=0))
    if overrides is None and key in _QUIET_CACHE:
        return _QUIET_CACHE[key]
    decision = evaluate(
        MessageFacts.from_message(message, contact_timezone=contact_zone), now, overrides, rules=rulebook()
    )
    if overrides is None:
        if len(_QUIET_CACHE) >= _QUIET_CACHE_MAX:
            _QUIET_CACHE.clear()
        _QUIET_CACHE[key] = decision
    return decision


def quiet_hours_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """Marketing messages wait for the next moment the recipient's rules allow; never dropped."""
    if message.type is not MessageType.MARKETING:
        return None
    try:
        decision = _quiet_decision(tenant, message, facts, now)
    except NoAllowedTimeError as exc:
        return Decision(Verdict.SUPPRESS, "quiet_hours_never", str(exc))
    if decision.allowed:
        return None
    assert decision.next_allowed_at is not None
    return Decision(
        Verdict.DEFER,
        "quiet_hours",
        decision.reason,
        decision.next_allowed_at,
        decision.detail(),
    )


POLICIES: tuple[Policy, ...] = (suppression_policy, scheduled_policy, quiet_hours_policy)


def decide(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision:
    for policy in POLICIES:
        decision = policy(tenant, message, facts, now)
        if decision is not None:
            return decision
    return RELEASE
