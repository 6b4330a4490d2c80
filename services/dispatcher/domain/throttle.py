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
