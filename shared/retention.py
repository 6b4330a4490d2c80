"""Retention: what expires when (pure; the jobs' I/O is in shared/retention_store.py).

Every service prunes the tables it owns (docs/data-map.md, "kept"; docs/operations.md,
"Retention"). A kind of data has a default age from the service's settings and may have a
tenant's own age (``tenants.retention``, days per kind). Tables partitioned by day drop a whole
partition once every row it can hold is past the longest age any tenant keeps; rows of tenants
that keep less go earlier, deleted in bounded batches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

# Kinds a tenant may set its own retention for (tenants.retention keys), and who prunes them.
KINDS = {
    "messages": "reports: messages, their timeline (message_events) and their status webhook rows",
    "inbound": "ingest: inbound_messages (replies and keywords received)",
    "clicks": "reports: clicks and conversions",
}
MIN_DAYS = 1
MAX_DAYS = 3650


def parse_tenant_retention(raw: Mapping[str, Any] | None) -> dict[str, int]:
    """A tenant's retention as stored or as asked for; ValueError names what is wrong."""
    out: dict[str, int] = {}
    for kind, days in (raw or {}).items():
        if kind not in KINDS:
            raise ValueError(f"unknown retention kind {kind!r} (kinds: {', '.join(KINDS)})")
        if isinstance(days, bool) or not isinstance(days, int) or not MIN_DAYS <= days <= MAX_DAYS:
            raise ValueError(f"retention of {kind} must be whole days from {MIN_DAYS} to {MAX_DAYS}, got {days!r}")
        out[kind] = days
    return out


def parse_retention_option(values: Iterable[str]) -> dict[str, int | None]:
    """``KIND=DAYS`` pairs from the command line; ``KIND=default`` removes the tenant's own age."""
    out: dict[str, int | None] = {}
    for value in values:
        kind, sep, days = value.partition("=")
        if not sep:
            raise ValueError(f"--retention takes KIND=DAYS, got {value!r}")
        kind = kind.strip()
        if days.strip() == "default":
            if kind not in KINDS:
                raise ValueError(f"unknown retention kind {kind!r} (kinds: {', '.join(KINDS)})")
            out[kind] = None
            continue
        try:
            number = int(days)
        except ValueError:
            raise ValueError(f"retention of {kind} must be whole days, got {days!r}") from None
        out.update(parse_tenant_retention({kind: number}))
    return out


def tenant_overrides(rows: Iterable[tuple[str, Mapping[str, Any] | None]], kind: str) -> dict[str, int]:
    """{tenant: days} of the tenants that set ``kind``; a malformed value is ignored (the default applies)."""
    out: dict[str, int] = {}
    for tenant_id, raw in rows:
        days = (raw or {}).get(kind)
        if not isinstance(days, bool) and isinstance(days, int) and MIN_DAYS <= days <= MAX_DAYS:
            out[tenant_id] = days
    return out


@dataclass(frozen=True)
class Cutoffs:
    """Rows older than their tenant's cutoff expire."""

    default: datetime
    tenants: dict[str, datetime] = field(default_factory=dict)

    def for_tenant(self, tenant_id: str) -> datetime:
        return self.tenants.get(tenant_id, self.default)

    @property
    def oldest_kept(self) -> datetime:
        """Nothing newer than this may go for every tenant: a day partition ending before it is dropped."""
        return min([self.default, *self.tenants.values()])

    @property
    def shorter(self) -> dict[str, datetime]:
        """Tenants whose rows go before the partitions holding them: deleted row by row."""
        floor = self.oldest_kept
        return {t: c for t, c in self.tenants.items() if c > floor}


def cutoffs(now: datetime, default_days: float, overrides: Mapping[str, int]) -> Cutoffs:
    return Cutoffs(now - timedelta(days=default_days), {t: now - timedelta(days=d) for t, d in overrides.items()})


def is_expired(at: datetime, tenant_id: str, limits: Cutoffs) -> bool:
    return at < limits.for_tenant(tenant_id)


# Day partitions: <table>_pYYYYMMDD holds [day 00:00 UTC, next day 00:00 UTC).


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def partition_day(table: str, name: str) -> date | None:
    m = re.fullmatch(re.escape(table) + r"_p(\d{4})(\d{2})(\d{2})", name)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def partitions_to_create(table: str, now: datetime, ahead_days: int, existing: Iterable[str]) -> list[date]:
    """Days from today (UTC) to ``ahead_days`` later that have no partition yet."""
    have = set(existing)
    today = now.astimezone(UTC).date()
    return [d for d in (today + timedelta(days=i) for i in range(ahead_days + 1)) if partition_name(table, d) not in have]


def partitions_to_drop(table: str, existing: Iterable[str], oldest_kept: datetime) -> list[str]:
    """Day partitions that end at or before ``oldest_kept`` (every row in them expired), oldest first."""
    out = []
    for name in existing:
        day = partition_day(table, name)
        if day is not None and day_start(day + timedelta(days=1)) <= oldest_kept:
            out.append((day, name))
    return [name for _, name in sorted(out)]


def due(last_success: datetime | None, now: datetime, interval: timedelta) -> bool:
    """A job runs once per ``interval``: when it never succeeded or its last success is that old."""
    return last_success is None or now - last_success >= interval
