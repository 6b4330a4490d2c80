"""A token bucket that counts segments, with time passed in (no clock inside)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens (segments) per second
    capacity: float
    tokens: float
    updated: float  # monotonic seconds of the last refill

    @classmethod
    def start(cls, rate: float, now: float, capacity: float | None = None) -> TokenBucket:
        cap = capacity if capacity is not None else max(1.0, rate)
        return cls(rate=rate, capacity=cap, tokens=cap, updated=now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens now (the balance may go negative) and return how long to wait.

        Reserving ahead keeps the long-run rate exact even when one request needs more
        tokens than the bucket holds (a 10-part message on a 5/s gateway).
        """
        self._refill(now)
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def take_free(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens only if the bucket holds them (all of its capacity, for an amount
        past it) and return 0; otherwise take nothing and return the seconds until it will hold them.

        The campaign lanes take tokens this way and the priority lanes with ``reserve``: a code
        then never waits behind a campaign chunk booked ahead, and campaigns get what is left.
        """
        self._refill(now)
        need = min(amount, self.capacity)
        if self.tokens >= need:
            self.tokens -= amount
            return 0.0
        return (need - self.tokens) / self.rate
