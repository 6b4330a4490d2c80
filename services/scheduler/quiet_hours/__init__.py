"""Quiet hours: when a marketing SMS may reach its recipient, by country, US state and time zone.

Pure logic and data (no I/O at decision time): :func:`evaluate` answers "now, or when?" for one
message; the scheduler defers the message to ``next_allowed_at`` instead of dropping it.
See docs/quiet-hours.md for the rules' sources, how the engine decides and how to add a country.
"""

from services.scheduler.quiet_hours.clock import Clock, FakeClock, SystemClock
from services.scheduler.quiet_hours.engine import (
    MessageFacts,
    NoAllowedTimeError,
    QuietDecision,
    QuietHours,
    evaluate,
)
from services.scheduler.quiet_hours.rules import (
    LooserOverrideError,
    RuleBook,
    RulesError,
    TenantOverrides,
    load_rules,
    parse_rules,
    parse_rules_text,
    parse_tenant_overrides,
)
from services.scheduler.quiet_hours.zones import TZDATA_VERSION, UnknownZoneError, resolve_zones

__all__ = [
    "TZDATA_VERSION",
    "Clock",
    "FakeClock",
    "LooserOverrideError",
    "MessageFacts",
    "NoAllowedTimeError",
    "QuietDecision",
    "QuietHours",
    "RuleBook",
    "RulesError",
    "SystemClock",
    "TenantOverrides",
    "UnknownZoneError",
    "evaluate",
    "load_rules",
    "parse_rules",
    "parse_rules_text",
    "parse_tenant_overrides",
    "resolve_zones",
]
