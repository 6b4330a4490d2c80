"""The scheduler's decisions, pure: one place that says release, defer or suppress, and why.

Each policy looks at a message and the facts loaded for its batch and may return a
:class:`Decision` that stops or holds the message; the first one that does wins. The order
is the order of precedence: a disabled tenant sends nothing at all; a cancelled or paused
campaign stops its messages next; an
opted-out number is suppressed before any timing question, and so is a marketing message
without consent; a message scheduled for later is held until then; quiet hours are judged
at the moment it would go out; frequency caps count only messages that really go out, so
they come last. Every decision carries a reason code (docs/campaigns.md lists them).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from services.scheduler.quiet_hours import (
    MessageFacts,
    NoAllowedTimeError,
    RuleBook,
    evaluate,
    load_rules,
)
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


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``max`` marketing messages per contact in any ``window`` (sliding)."""

    max: int
    window: timedelta

    def describe(self) -> str:
        hours = self.window.total_seconds() / 3600
        span = f"{hours / 24:g} days" if hours >= 24 and hours % 24 == 0 else f"{hours:g} h"
        return f"{self.max} per {span}"


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """A tenant's sending policy (tenants.marketing_consent, tenants.frequency_caps)."""

    marketing_consent: str = "required"  # 'required': consent needed; 'opt_out': only a refusal blocks
    caps: tuple[Cap, ...] = ()


@dataclass(frozen=True, slots=True)
class Contact:
    """What the scheduler knows of the contact a number belongs to."""

    contact_id: uuid.UUID
    marketing: bool | None  # current marketing consent; None: never recorded
    time_zone: str | None = None
    subdivision: str | None = None  # attributes.state: US state, ES region...


@dataclass(frozen=True, slots=True)
class CampaignState:
    state: str  # campaigns.state
    caps: tuple[Cap, ...] = ()
    cancel_reason: str | None = None  # campaigns.cancel_reason: 'tenant_disabled', or None (cancelled by its tenant)


# A paused campaign's messages are held this long; a resume re-decides them at once.
PAUSE_RECHECK = timedelta(hours=1)


class Releases:
    """Marketing messages released per (tenant, number), for frequency caps.

    Loaded for a batch and added to as the batch is decided, so two messages to one number
    in the same batch count against each other. A message already released (redelivered
    after a crash) is released again: it is not counted against itself.
    """

    def __init__(self, rows: Mapping[tuple[str, str], Sequence[tuple[uuid.UUID, datetime]]] | None = None) -> None:
        self._by_number: dict[tuple[str, str], dict[uuid.UUID, datetime]] = {
            key: dict(values) for key, values in (rows or {}).items()
        }
        self.added: list[tuple[str, str, uuid.UUID, datetime]] = []

    def released(self, tenant: str, phone: str, message_id: uuid.UUID) -> bool:
        return message_id in self._by_number.get((tenant, phone), {})

    def count(self, tenant: str, phone: str, since: datetime) -> int:
        return sum(1 for at in self._by_number.get((tenant, phone), {}).values() if at > since)

    def add(self, tenant: str, phone: str, message_id: uuid.UUID, at: datetime) -> None:
        entries = self._by_number.setdefault((tenant, phone), {})
        if message_id not in entries:
            entries[message_id] = at
            self.added.append((tenant, phone, message_id, at))


@dataclass(frozen=True)
class Facts:
    """What the scheduler loaded from PostgreSQL for one batch, keyed by (tenant, number)."""

    suppressions: Mapping[tuple[str, str], str] = field(default_factory=dict)  # → reason
    # (tenant, number, sender) → reason: opted out of the scope (brand) that sender belongs to
    scoped_suppressions: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    contacts: Mapping[tuple[str, str], Contact] = field(default_factory=dict)
    policies: Mapping[str, TenantPolicy] = field(default_factory=dict)  # missing: TenantPolicy()
    campaigns: Mapping[uuid.UUID, CampaignState] = field(default_factory=dict)
    releases: Releases = field(default_factory=Releases)
    disabled_tenants: frozenset[str] = frozenset()  # tenants disabled by an operator (tenants.disabled_at)

    def policy(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant) or DEFAULT_POLICY


DEFAULT_POLICY = TenantPolicy()


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


def tenant_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """A disabled tenant sends nothing: every message of it still on its way ends suppressed."""
    return tenant_disabled() if tenant in facts.disabled_tenants else None


def tenant_disabled() -> Decision:
    return Decision(Verdict.SUPPRESS, "tenant_disabled", "the tenant was disabled before this message went out")


def campaign_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """A cancelled campaign sends nothing more; a paused one holds its messages until resumed."""
    if message.campaign_id is None:
        return None
    campaign = facts.campaigns.get(message.campaign_id)
    if campaign is None:
        return None
    if campaign.state == "cancelled" and campaign.cancel_reason == "tenant_disabled":
        return tenant_disabled()  # whichever the scheduler notices first, the reason is the same
    if campaign.state == "cancelled":
        return Decision(Verdict.SUPPRESS, "campaign_cancelled", "the campaign was cancelled before this message went out")
    if campaign.state == "paused":
        return Decision(Verdict.DEFER, "campaign_paused", "the campaign is paused", now + PAUSE_RECHECK,
                        {"campaign_id": str(message.campaign_id)})
    return None


def consent_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """Marketing goes only to contacts with marketing consent (or, for an 'opt_out' tenant,
    to every number whose contact has not refused it)."""
    if message.type is not MessageType.MARKETING:
        return None
    contact = facts.contacts.get((tenant, message.to))
    if contact is not None and contact.marketing is False:
        return Decision(Verdict.SUPPRESS, "consent_revoked", "the contact withdrew marketing consent")
    if facts.policy(tenant).marketing_consent == "opt_out":
        return None
    if contact is None:
        return Decision(Verdict.SUPPRESS, "no_contact", "marketing needs a contact with marketing consent; none has this number")
    if contact.marketing is None:
        return Decision(Verdict.SUPPRESS, "no_consent", "the contact has no marketing consent on record")
    return None


def frequency_cap_policy(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision | None:
    """At most N marketing messages per contact per window (tenant caps plus the campaign's).

    Transactional messages are exempt and do not count. A capped message is not sent (a cap
    is about this message, not a delay): it ends ``suppressed`` with reason ``frequency_capped``.
    """
    if message.type is not MessageType.MARKETING:
        return None
    if facts.releases.released(tenant, message.to, message.message_id):
        return None  # released before (redelivery): release again, the dispatcher drops duplicates
    caps = facts.policy(tenant).caps
    if message.campaign_id is not None and message.campaign_id in facts.campaigns:
        caps = caps + facts.campaigns[message.campaign_id].caps
    for cap in caps:
        sent = facts.releases.count(tenant, message.to, now - cap.window)
        if sent >= cap.max:
            return Decision(
                Verdict.SUPPRESS, "frequency_capped",
                f"frequency cap of {cap.describe()} reached ({sent} marketing messages in that window)",
                detail={"cap": cap.describe(), "sent_in_window": str(sent)},
            )
    return None


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
    contact = facts.contacts.get((tenant, message.to))
    contact_zone = contact.time_zone if contact else None
    subdivision = contact.subdivision if contact else None
    key = (message.country, zone_prefix(message.to), contact_zone, subdivision, now.replace(second=0, microsecond=0))
    if key in _QUIET_CACHE:
        return _QUIET_CACHE[key]
    decision = evaluate(
        MessageFacts.from_message(message, contact_timezone=contact_zone, contact_subdivision=subdivision),
        now, rules=rulebook(),
    )
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


POLICIES: tuple[Policy, ...] = (
    tenant_policy,
    campaign_policy,
    suppression_policy,
    consent_policy,
    scheduled_policy,
    quiet_hours_policy,
    frequency_cap_policy,
)


def decide(tenant: str, message: MessageAccepted, facts: Facts, now: datetime) -> Decision:
    """The first policy that stops or holds the message decides; else it is released now.

    A released marketing message is recorded in ``facts.releases`` for the caps of the rest
    of the batch (the caller stores ``facts.releases.added``).
    """
    for policy in POLICIES:
        decision = policy(tenant, message, facts, now)
        if decision is not None:
            return decision
    if message.type is MessageType.MARKETING:
        facts.releases.add(tenant, message.to, message.message_id, now)
    return RELEASE


def parse_caps(raw: Any) -> tuple[Cap, ...]:
    """Caps as stored (``[{"max": 1, "window_s": 86400}]``); invalid entries are ignored."""
    caps = []
    for item in raw or ():
        try:
            cap = Cap(int(item["max"]), timedelta(seconds=int(item["window_s"])))
        except (KeyError, TypeError, ValueError):
            continue
        if cap.max >= 0 and cap.window.total_seconds() > 0:
            caps.append(cap)
    return tuple(caps)


CANCELLED_BY_CLIENT = "cancelled_by_client"


def command_decision(action: str, send_at: datetime | None) -> Decision:
    """What a client's command does to a held message: a cancel suppresses it; a reschedule holds
    it until ``send_at`` (decided again then: quiet hours, caps and consent still apply)."""
    if action == "cancel":
        return Decision(Verdict.SUPPRESS, CANCELLED_BY_CLIENT, "cancelled by the client (DELETE /v1/messages/{id})")
    assert send_at is not None
    due = send_at.astimezone(UTC)
    return Decision(Verdict.DEFER, "scheduled", f"rescheduled by the client for {due.isoformat()}", due,
                    {"send_at": due.isoformat(), "rescheduled": "true"})


def marking_tenants(campaign: Iterable[tuple[str, bool]]) -> set[str]:
    """Of a batch's campaign messages as (tenant, passed on to the dispatcher): the tenants whose
    suppressed and held statuses carry ``campaign_page_at``, the mark of what left the campaign
    lanes that ingest keeps for the launcher's pacing (docs/operations.md, fair share). Only
    tenants none of whose campaign messages in the batch went on: those may still be queued at the
    dispatcher, behind a mark this batch would set (the mark is the newest page, not a count)."""
    campaign = list(campaign)
    passed = {tenant for tenant, forwarded in campaign if forwarded}
    return {tenant for tenant, _ in campaign} - passed
