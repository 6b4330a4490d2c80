"""Quiet-hour decisions: may this marketing message be delivered now, and if not, when?

Pure: the engine reads no clock, file or database. It takes the message's facts, ``now`` (or a
:class:`~services.scheduler.quiet_hours.clock.Clock`), the loaded rules and the tenant's
overrides, and returns a :class:`QuietDecision`.

How it decides (docs/quiet-hours.md, "How the engine decides"):

1. A transactional message is always allowed: quiet hours are about marketing.
2. The recipient's candidate zones: the contact's zone, else the number's (one or several),
   else every zone of the country (:mod:`.zones`).
3. The applicable rules: the country's (or the default), the US state's (contact's state and
   area code's; every state's when neither is known), and the tenant's stricter overrides.
4. Each rule, in each zone it is read in, gives the instants it allows: its windows on each
   local day that is not a day off, turned into UTC with DST handled at the edges (a window
   starting in the hour skipped in spring opens when the clock jumps; one starting in the hour
   repeated in autumn opens on the second pass). The message may go at the instants every
   (rule, zone) pair allows: the intersection. ``next_allowed_at`` is the first such instant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.scheduler.quiet_hours.clock import Clock, SystemClock, as_utc
from services.scheduler.quiet_hours.rules import (
    DAY_NAMES,
    LOCAL,
    NO_OVERRIDES,
    Rule,
    RuleBook,
    TenantOverrides,
    calendar_subdivisions,
    load_rules,
    parse_tenant_overrides,
)
from services.scheduler.quiet_hours.zones import (
    TZDATA_VERSION,
    ZoneResolution,
    load_zone,
    resolve_zones,
    us_state_for_number,
    window_end,
    window_start,
)
from shared.contracts import MessageAccepted
from shared.statuses import MessageType

HORIZONS = (timedelta(days=8), timedelta(days=40), timedelta(days=400))
Span = tuple[datetime, datetime]  # [start, end) in UTC


class NoAllowedTimeError(RuntimeError):
    """The rules together leave no moment within 400 days; the message must be held and looked at."""


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the engine needs to know about one message and its recipient."""

    to: str  # E.164
    country: str  # ISO 3166-1 alpha-2 region of the number (MessageAccepted.country)
    type: MessageType
    contact_timezone: str | None = None  # IANA zone the tenant knows for the contact
    contact_subdivision: str | None = None  # US state ("TX"), ES region ("MD"), FR department ("57")...

    @classmethod
    def from_message(
        cls,
        message: MessageAccepted,
        *,
        contact_timezone: str | None = None,
        contact_subdivision: str | None = None,
    ) -> MessageFacts:
        return cls(message.to, message.country, message.type, contact_timezone, contact_subdivision)


@dataclass(frozen=True)
class QuietDecision:
    allowed: bool
    next_allowed_at: datetime | None  # UTC; None when allowed now
    rule_id: str  # the rule that holds the message, or the rules that allowed it ("us-federal+us-tx")
    reason: str
    zones: tuple[str, ...]  # the candidate zones the rules were read in
    zone_source: str  # contact, number, country, fallback; "" for transactional messages
    rule_ids: tuple[str, ...] = ()  # every rule applied
    allowed_until: datetime | None = None  # when allowed: allowed at least until then (UTC)
    tzdata_version: str = TZDATA_VERSION
    notes: tuple[str, ...] = field(default=())

    def detail(self) -> dict[str, str]:
        """Flat strings for the message timeline (``MessageStatusChanged.detail``)."""
        out = {
            "quiet_hours": "allowed" if self.allowed else "deferred",
            "quiet_hours_rule": self.rule_id,
            "quiet_hours_reason": self.reason,
            "quiet_hours_tzdata": self.tzdata_version,
        }
        if self.zones:
            out["quiet_hours_zones"] = ",".join(self.zones)
            out["quiet_hours_zone_source"] = self.zone_source
        if self.rule_ids:
            out["quiet_hours_rules"] = ",".join(self.rule_ids)
        if self.next_allowed_at is not None:
            out["quiet_hours_next_allowed_at"] = self.next_allowed_at.isoformat()
        return out


@dataclass(frozen=True)
class _Constraint:
    rule: Rule
    zone_key: str
    zone: ZoneInfo
    local: bool  # read in one of the recipient's zones (not a fixed zone of the rule)


# -- public API ---------------------------------------------------------------------------------------
def evaluate(
    facts: MessageFacts,
    now: datetime | Clock,
    tenant_overrides: TenantOverrides | Mapping[str, Any] | None = None,
    *,
    rules: RuleBook | None = None,
) -> QuietDecision:
    """Decide whether ``facts``' message may be delivered at ``now``; see the module docstring.

    ``tenant_overrides`` is best parsed once with
    :func:`~services.scheduler.quiet_hours.rules.parse_tenant_overrides` when the tenant saves
    it (that is where looser overrides are refused); a raw mapping is parsed here, and raises
    :class:`~services.scheduler.quiet_hours.rules.LooserOverrideError` the same way.
    """
    moment = as_utc(now if isinstance(now, datetime) else now.now())
    if facts.type is not MessageType.MARKETING:
        return QuietDecision(
            allowed=True,
            next_allowed_at=None,
            rule_id="transactional",
            reason="transactional messages are never held for quiet hours",
            zones=(),
            zone_source="",
        )
    book = rules or load_rules()
    overrides = (
        tenant_overrides
        if isinstance(tenant_overrides, TenantOverrides)
        else parse_tenant_overrides(tenant_overrides, book) if tenant_overrides else NO_OVERRIDES
    )
    country = (facts.country or "").upper()
    resolution = resolve_zones(facts.to, country, facts.contact_timezone)
    applied, subdivisions, notes = _applicable_rules(book, facts, country, overrides)
    if resolution.note:
        notes.append(resolution.note)
    constraints = _constraints(applied, resolution.zones)
    span = _first_span(constraints, moment, country, facts.contact_subdivision)
    if span is None and len(resolution.zones) > 1:
        primary = resolution.zones[0]
        notes.append(
            f"no moment within {HORIZONS[-1].days} days is allowed in all of {', '.join(resolution.zones)}; "
            f"decided in {primary} alone"
        )
        constraints = _constraints(applied, (primary,))
        span = _first_span(constraints, moment, country, facts.contact_subdivision)
    if span is None:
        raise NoAllowedTimeError(
            f"rules {'+'.join(rule.id for rule in applied)} leave no moment within {HORIZONS[-1].days} days "
            f"for {facts.to} in {', '.join(resolution.zones)}"
        )
    return _decision(span, moment, applied, constraints, resolution, country, facts, subdivisions, notes)


class QuietHours:
    """The engine bound to its rules and a clock: what the scheduler holds on to."""

    def __init__(self, rules: RuleBook | None = None, clock: Clock | None = None) -> None:
        self.rules = rules or load_rules()
        self.clock: Clock = clock or SystemClock()

    def evaluate(
        self, facts: MessageFacts, tenant_overrides: TenantOverrides | Mapping[str, Any] | None = None
    ) -> QuietDecision:
        return evaluate(facts, self.clock.now(), tenant_overrides, rules=self.rules)


# -- rules and constraints ---------------------------------------------------------------------------
def _applicable_rules(
    book: RuleBook, facts: MessageFacts, country: str, overrides: TenantOverrides
) -> tuple[list[Rule], tuple[str, ...], list[str]]:
    notes: list[str] = []
    found = book.country(country) if country else None
    if found is None:
        applied = [book.default]
        subdivisions: tuple[str, ...] = ()
    else:
        applied = [found.rule]
        known: set[str] = set()
        if facts.contact_subdivision:
            raw = facts.contact_subdivision.strip()
            codes = set(found.subdivisions) | set(calendar_subdivisions(country))
            given = raw if raw in codes else raw.upper()
            if given in codes:
                known.add(given)
            else:
                notes.append(f"contact {found.subdivision_label} {facts.contact_subdivision!r} is not a {country} code; ignored")
        if country == "US":
            from_area_code = us_state_for_number(facts.to)
            if from_area_code:
                known.add(from_area_code)
        subdivisions = tuple(sorted(known))
        if found.subdivisions:
            if known:
                applied += [found.subdivisions[code] for code in subdivisions if code in found.subdivisions]
            elif found.when_subdivision_unknown == "all":
                applied += list(found.subdivisions.values())
                notes.append(f"{found.subdivision_label} unknown: every {found.subdivision_label} rule of {country} applies")
    applied += overrides.applicable(country, subdivisions)
    return applied, subdivisions, notes


def _constraints(applied: Sequence[Rule], zones: Sequence[str]) -> list[_Constraint]:
    out: list[_Constraint] = []
    for rule in applied:
        for where in rule.zones:
            if where == LOCAL:
                out += [_Constraint(rule, key, load_zone(key), True) for key in zones]
            else:
                out.append(_Constraint(rule, where, load_zone(where), False))
    return out


# -- interval arithmetic ------------------------------------------------------------------------------
def _days(first: date, last: date) -> Iterable[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _rule_spans(
    constraint: _Constraint, low: datetime, high: datetime, country: str, contact_subdivision: str | None
) -> list[Span]:
    """The instants in [low, high) that one rule allows, read in one zone."""
    zone, rule = constraint.zone, constraint.rule
    spans: list[Span] = []
    first = low.astimezone(zone).date() - timedelta(days=1)
    last = high.astimezone(zone).date() + timedelta(days=1)
    for day in _days(first, last):
        windows = rule.windows_on(day.weekday())
        if not windows or (rule.holidays and rule.holidays.holiday(day, country, contact_subdivision)):
            continue
        for window in windows:
            start, end = window_start(day, window.start, zone), window_end(day, window.end, zone)
            start, end = max(start, low), min(end, high)
            if start >= end:
                continue
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
    return spans


def _intersect(first: Sequence[Span], second: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    i = j = 0
    while i < len(first) and j < len(second):
        start, end = max(first[i][0], second[j][0]), min(first[i][1], second[j][1])
        if start < end:
            out.append((start, end))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return out


def _first_span(
    constraints: Sequence[_Constraint], now: datetime, country: str, contact_subdivision: str | None
) -> Span | None:
    """The first stretch, at or after ``now``, that every constraint allows."""
    for horizon in HORIZONS:
        high = now + horizon
        common: list[Span] | None = None
        for constraint in constraints:
            spans = _rule_spans(constraint, now, high, country, contact_subdivision)
            common = spans if common is None else _intersect(common, spans)
            if not common:
                break
        if common:
            return common[0]
    return None


# -- explaining ------------------------------------------------------------------------------------------
def _local(moment: datetime, zone: ZoneInfo) -> str:
    local = moment.astimezone(zone)
    return f"{DAY_NAMES[local.weekday()][:3]} {local:%Y-%m-%d %H:%M} {local.tzname()}"


def _why_not(constraint: _Constraint, now: datetime, country: str, contact_subdivision: str | None) -> str | None:
    """Why ``constraint`` forbids ``now``, or None when it allows it."""
    if _rule_spans(constraint, now, now + timedelta(seconds=1), country, contact_subdivision):
        return None
    rule, zone = constraint.rule, constraint.zone
    local = now.astimezone(zone)
    weekday = local.weekday()
    if not rule.windows_on(weekday):
        why = f"{DAY_NAMES[weekday]} is a day off"
    else:
        holiday = rule.holidays.holiday(local.date(), country, contact_subdivision) if rule.holidays else None
        if holiday:
            why = f"{local.date().isoformat()} is a public holiday ({holiday})"
        else:
            why = f"{local:%H:%M} is outside {rule.describe_day(weekday)} on {DAY_NAMES[weekday]}s"
    return f"{rule.name} [{rule.id}], read in {constraint.zone_key} (local {_local(now, zone)}): {why}"


def _decision(
    span: Span,
    now: datetime,
    applied: Sequence[Rule],
    constraints: Sequence[_Constraint],
    resolution: ZoneResolution,
    country: str,
    facts: MessageFacts,
    subdivisions: tuple[str, ...],
    notes: list[str],
) -> QuietDecision:
    zones = tuple(dict.fromkeys(c.zone_key for c in constraints if c.local)) or resolution.zones
    rule_ids = tuple(dict.fromkeys(rule.id for rule in applied))
    where = f"{', '.join(zones)} ({resolution.source})"
    if subdivisions:
        where += f", {facts.country.upper()}-{'/'.join(subdivisions)}"
    extra = (" " + " ".join(f"[{note}]" for note in notes)) if notes else ""
    start, end = span
    if start <= now:
        return QuietDecision(
            allowed=True,
            next_allowed_at=None,
            rule_id="+".join(rule_ids),
            reason=f"allowed by {' + '.join(rule_ids)} in {where} until {end.isoformat()}{extra}",
            zones=zones,
            zone_source=resolution.source,
            rule_ids=rule_ids,
            allowed_until=end,
            notes=tuple(notes),
        )
    blocking = [(c.rule.id, why) for c in constraints if (why := _why_not(c, now, country, facts.contact_subdivision))]
    holder = blocking[0][0] if blocking else rule_ids[0]
    opens = "; ".join(f"{_local(start, load_zone(key))}" for key in zones)
    reason = (
        f"held: {blocking[0][1] if blocking else 'not allowed now'}"
        + (f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else "")
        + f". Next moment allowed by {' + '.join(rule_ids)} in {where}: {start.isoformat()} ({opens}){extra}"
    )
    return QuietDecision(
        allowed=False,
        next_allowed_at=start,
        rule_id=holder,
        reason=reason,
        zones=zones,
        zone_source=resolution.source,
        rule_ids=rule_ids,
        notes=tuple(notes),
    )


__all__ = [
    "MessageFacts",
    "NoAllowedTimeError",
    "QuietDecision",
    "QuietHours",
    "evaluate",
]
