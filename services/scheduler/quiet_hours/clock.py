"""Where time comes from: a :class:`Clock` is injected wherever "now" matters.

Production code uses :class:`SystemClock`; tests use :class:`FakeClock`, which only moves
when told to, so quiet-hour decisions, deferrals and DST changes run in simulated time.
Every clock returns aware UTC datetimes: local times exist only inside the engine, per zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


def as_utc(moment: datetime, what: str = "now") -> datetime:
    """``moment`` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


class SystemClock:
    """The machine's clock (UTC; the machine's local zone never matters)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock for tests and simulations: it stands still until moved.

    >>> clock = FakeClock(datetime(2026, 7, 14, 6, 0, tzinfo=UTC))
    >>> clock.advance(hours=2).isoformat()
    '2026-07-14T08:00:00+00:00'
    """

    def __init__(self, start: datetime) -> None:
        self._now = as_utc(start, "start")

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> datetime:
        """Jump to ``moment`` (forwards or backwards: a simulation may replay a day)."""
        self._now = as_utc(moment, "moment")
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**kwargs)``; never backwards."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("advance() only moves forward; use set() to go back")
        self._now = self._now + step
        return self._now
